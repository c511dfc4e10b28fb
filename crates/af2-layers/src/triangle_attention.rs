//! Triangular gated self-attention around the starting node (Algorithm 13) and the ending
//! node (Algorithm 14).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::{GatedAttention, GatedAttentionConfig, LayerNorm, LayerNormConfig};

/// Configuration of [`TriangleAttention`].
#[derive(Config, Debug)]
pub struct TriangleAttentionConfig {
    /// Pair channels.
    pub pair_channels: usize,
    /// Heads.
    pub num_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// `false`: around the starting node (rows); `true`: around the ending node (columns).
    pub ending_node: bool,
}

/// Triangle attention; the ending-node form is the starting-node form on the transposed pair.
#[derive(Module, Debug)]
pub struct TriangleAttention {
    /// LayerNorm of the pair.
    pub query_norm: LayerNorm,
    /// Pair-to-bias projection `[c_z, heads]`.
    pub feat_2d_weights: Param<Tensor<2>>,
    /// The attention.
    pub attention: GatedAttention,
    ending_node: bool,
}

impl TriangleAttentionConfig {
    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> TriangleAttention {
        let c = self.pair_channels;
        TriangleAttention {
            query_norm: LayerNormConfig::new(c).init(device),
            feat_2d_weights: Param::from_tensor(Tensor::zeros([c, self.num_heads], device)),
            attention: GatedAttentionConfig::new(
                c,
                c,
                self.num_heads,
                self.head_dim,
                self.head_dim,
                c,
            )
            .init(device),
            ending_node: self.ending_node,
        }
    }
}

impl TriangleAttention {
    /// Returns the update to the pair representation of each pair of a batch; the rows of all
    /// pairs are attended in one call, each biased by its own pair.
    ///
    /// # Shapes
    /// - pair: `[B, N, N, c_z]`, pair_mask: `[B, N, N]`
    /// - output: `[B, N, N, c_z]`
    pub fn forward(&self, pair: Tensor<4>, pair_mask: Tensor<3>) -> Tensor<4> {
        self.apply(pair, pair_mask, false)
    }

    /// `pair + forward(pair)`. Around the starting node the add is done by the output
    /// projection's kernel where it runs (f16 on a GPU with matrix instructions); around the
    /// ending node it stays a separate add, which reads the transposed update in place (the
    /// kernel would need both the pair and its update copied into the transposed layout).
    ///
    /// # Shapes
    /// - pair: `[B, N, N, c_z]`, pair_mask: `[B, N, N]`
    /// - output: `[B, N, N, c_z]`
    pub fn forward_residual(&self, pair: Tensor<4>, pair_mask: Tensor<3>) -> Tensor<4> {
        if self.ending_node {
            return pair.clone() + self.apply(pair, pair_mask, false);
        }
        self.apply(pair, pair_mask, true)
    }

    fn apply(&self, pair: Tensor<4>, pair_mask: Tensor<3>, add_input: bool) -> Tensor<4> {
        let (pair, mask) = if self.ending_node {
            (pair.swap_dims(1, 2), pair_mask.swap_dims(1, 2))
        } else {
            (pair, pair_mask)
        };
        let [b, n, _, c] = pair.dims();
        let input = add_input.then(|| pair.clone().reshape([b * n, n, c]));
        let (pair, bias) = self
            .query_norm
            .forward_with_pair_bias(pair, self.feat_2d_weights.val());
        let rows = pair.reshape([b * n, n, c]);
        let mask = mask.reshape([b * n, n]);
        let out = self
            .attention
            .forward_self_plus(rows, mask, Some(bias), input)
            .reshape([b, n, n, c]);
        if self.ending_node {
            out.swap_dims(1, 2)
        } else {
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn residual_form_adds_the_input() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let pair = Tensor::<4>::random([2, 5, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        let mask = Tensor::<3>::random([2, 5, 5], Distribution::Uniform(0.0, 1.0), &device)
            .greater_elem(0.3)
            .float();
        // Around the starting node (around the ending node the add is the same expression).
        {
            let ending_node = false;
            let mut tri = TriangleAttentionConfig::new(4, 2, 3, ending_node).init(&device);
            tri.feat_2d_weights = Param::from_tensor(Tensor::random(
                [4, 2],
                Distribution::Normal(0.0, 1.0),
                &device,
            ));
            tri.attention = crate::attention::randomized(tri.attention);
            let expected = pair.clone() + tri.forward(pair.clone(), mask.clone());
            let ours = tri.forward_residual(pair.clone(), mask.clone());
            let scale: f32 = expected.clone().abs().max().into_scalar();
            let diff: f32 = (ours - expected).abs().max().into_scalar();
            assert_eq!(diff, 0.0, "ending node {ending_node} (scale {scale})");
        }
    }
}
