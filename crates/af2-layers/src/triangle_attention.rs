//! Triangular gated self-attention around the starting node (Algorithm 13) and the ending
//! node (Algorithm 14).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::msa_row_attention::pair_bias;
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
        let (pair, mask) = if self.ending_node {
            (pair.swap_dims(1, 2), pair_mask.swap_dims(1, 2))
        } else {
            (pair, pair_mask)
        };
        let [b, n, _, c] = pair.dims();
        let pair = self.query_norm.forward(pair);
        let bias = pair_bias(pair.clone(), self.feat_2d_weights.val());
        let rows = pair.reshape([b * n, n, c]);
        let out = self
            .attention
            .forward_self(rows, mask.reshape([b * n, n]), Some(bias))
            .reshape([b, n, n, c]);
        if self.ending_node {
            out.swap_dims(1, 2)
        } else {
            out
        }
    }
}
