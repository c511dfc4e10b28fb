//! MSA row-wise gated self-attention with pair bias (Algorithm 7).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::{GatedAttention, GatedAttentionConfig, LayerNorm, LayerNormConfig};

/// Configuration of [`MsaRowAttentionWithPairBias`].
#[derive(Config, Debug)]
pub struct MsaRowAttentionWithPairBiasConfig {
    /// MSA channels.
    pub msa_channels: usize,
    /// Pair channels.
    pub pair_channels: usize,
    /// Heads.
    pub num_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
}

/// Row attention over the MSA, biased by a projection of the pair representation.
#[derive(Module, Debug)]
pub struct MsaRowAttentionWithPairBias {
    /// LayerNorm of the MSA.
    pub query_norm: LayerNorm,
    /// LayerNorm of the pair.
    pub feat_2d_norm: LayerNorm,
    /// Pair-to-bias projection `[c_z, heads]`.
    pub feat_2d_weights: Param<Tensor<2>>,
    /// The attention.
    pub attention: GatedAttention,
}

impl MsaRowAttentionWithPairBiasConfig {
    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> MsaRowAttentionWithPairBias {
        let c = self.msa_channels;
        MsaRowAttentionWithPairBias {
            query_norm: LayerNormConfig::new(c).init(device),
            feat_2d_norm: LayerNormConfig::new(self.pair_channels).init(device),
            feat_2d_weights: Param::from_tensor(Tensor::zeros(
                [self.pair_channels, self.num_heads],
                device,
            )),
            attention: GatedAttentionConfig::new(
                c,
                c,
                self.num_heads,
                self.head_dim,
                self.head_dim,
                c,
            )
            .init(device),
        }
    }
}

/// Projects normalised pairs `[B, Q, K, c]` to a per-head bias `[B, H, Q, K]`: one bias group
/// per pair of the batch (see [`crate::attention::attention_core`]).
///
/// Up to [`TRANSPOSED_BIAS_MAX_PAIRS`] pairs the product is taken transposed, `[1, H, c] ·
/// [B, c, Q*K]`, so that it comes out in the attention's layout with no transposing copy
/// after it: on an H100 that took 1.4% (alone) to 2.5% (beside the outer product mean's new
/// order) off an Evoformer block at L = 128, B = 1, where the copy's fixed cost counts; at 16
/// and 32 times the pairs it was up to 1% slower than the product and the copy
/// (docs/PERFORMANCE.md, thirteenth session).
pub fn pair_bias(pair: Tensor<4>, weights: Tensor<2>) -> Tensor<4> {
    let [b, q, k, _] = pair.dims();
    if b * q * k <= TRANSPOSED_BIAS_MAX_PAIRS {
        pair_bias_transposed(pair, weights)
    } else {
        pair_bias_permuted(pair, weights)
    }
}

/// [`pair_bias`] as `[1, H, c] · [B, c, Q*K]`, contiguous in `[B, H, Q, K]`.
fn pair_bias_transposed(pair: Tensor<4>, weights: Tensor<2>) -> Tensor<4> {
    let [b, q, k, c] = pair.dims();
    let h = weights.dims()[1];
    weights
        .transpose()
        .unsqueeze::<3>()
        .matmul(pair.reshape([b, q * k, c]).swap_dims(1, 2))
        .reshape([b, h, q, k])
}

/// [`pair_bias`] as `[B*Q*K, c] · [c, H]`, a permuted view of the product.
fn pair_bias_permuted(pair: Tensor<4>, weights: Tensor<2>) -> Tensor<4> {
    let [b, q, k, c] = pair.dims();
    let h = weights.dims()[1];
    pair.reshape([b * q * k, c])
        .matmul(weights)
        .reshape([b, q, k, h])
        .permute([0, 3, 1, 2])
}

/// The most pairs [`pair_bias`] projects in the transposed order (`B = 1` up to `L = 256`).
pub const TRANSPOSED_BIAS_MAX_PAIRS: usize = 1 << 16;

impl MsaRowAttentionWithPairBias {
    /// Returns the update to the MSA of each member of a batch (the residual is added by the
    /// caller). The rows of all members are attended in one call, each biased by its own pair.
    ///
    /// # Shapes
    /// - msa: `[B, S, N, c_m]`, msa_mask: `[B, S, N]`, pair: `[B, N, N, c_z]`
    /// - output: `[B, S, N, c_m]`
    pub fn forward(&self, msa: Tensor<4>, msa_mask: Tensor<3>, pair: Tensor<4>) -> Tensor<4> {
        self.apply(msa, msa_mask, pair, false)
    }

    /// `msa + forward(msa, ..)`: the residual update, the add done by the output projection's
    /// kernel where it runs (f16 on a GPU with matrix instructions).
    ///
    /// # Shapes
    /// - msa: `[B, S, N, c_m]`, msa_mask: `[B, S, N]`, pair: `[B, N, N, c_z]`
    /// - output: `[B, S, N, c_m]`
    pub fn forward_residual(
        &self,
        msa: Tensor<4>,
        msa_mask: Tensor<3>,
        pair: Tensor<4>,
    ) -> Tensor<4> {
        self.apply(msa, msa_mask, pair, true)
    }

    fn apply(&self, msa: Tensor<4>, msa_mask: Tensor<3>, pair: Tensor<4>, add: bool) -> Tensor<4> {
        let [b, s, n, c] = msa.dims();
        let residual = add.then(|| msa.clone().reshape([b * s, n, c]));
        let normed = self.query_norm.forward(msa).reshape([b * s, n, c]);
        let bias = self
            .feat_2d_norm
            .pair_bias(pair, self.feat_2d_weights.val());
        let mask = msa_mask.reshape([b * s, n]);
        self.attention
            .forward_self_plus(normed, mask, Some(bias), residual)
            .reshape([b, s, n, c])
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
        let mut row = MsaRowAttentionWithPairBiasConfig::new(4, 6, 2, 3).init(&device);
        row.feat_2d_weights = Param::from_tensor(Tensor::random(
            [6, 2],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        row.attention = crate::attention::randomized(row.attention);
        let msa = Tensor::<4>::random([2, 3, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        let pair = Tensor::<4>::random([2, 5, 5, 6], Distribution::Normal(0.0, 1.0), &device);
        let mask = Tensor::<3>::random([2, 3, 5], Distribution::Uniform(0.0, 1.0), &device)
            .greater_elem(0.3)
            .float();
        let update = row.forward(msa.clone(), mask.clone(), pair.clone());
        let ours = row.forward_residual(msa.clone(), mask, pair);
        let scale: f32 = update.clone().abs().max().into_scalar();
        assert!(scale > 0.1, "a non-trivial update (max {scale})");
        let diff: f32 = (ours - (msa + update)).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn both_orders_of_the_pair_bias_agree() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let pair = Tensor::<4>::random([2, 5, 6, 7], Distribution::Normal(0.0, 1.0), &device);
        let weights = Tensor::<2>::random([7, 3], Distribution::Normal(0.0, 1.0), &device);
        let transposed = pair_bias_transposed(pair.clone(), weights.clone());
        let permuted = pair_bias_permuted(pair.clone(), weights.clone());
        assert_eq!(transposed.dims(), [2, 3, 5, 6]);
        // One (b, h, q, k) entry by hand: sum_c pair[b, q, k, c] * weights[c, h].
        let expected: f32 = (pair.slice([1..2, 4..5, 2..3, 0..7]).reshape([7])
            * weights.slice([0..7, 2..3]).reshape([7]))
        .sum()
        .into_scalar();
        let entry: f32 = transposed
            .clone()
            .slice([1..2, 2..3, 4..5, 2..3])
            .into_scalar();
        assert!((entry - expected).abs() < 1e-5, "{entry} vs {expected}");
        let diff: f32 = (transposed - permuted).abs().max().into_scalar();
        // The same products summed in another order: f32 rounding only.
        assert!(diff < 1e-5, "orders differ by {diff}");
    }
}
