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
pub fn pair_bias(pair: Tensor<4>, weights: Tensor<2>) -> Tensor<4> {
    let [b, q, k, c] = pair.dims();
    let h = weights.dims()[1];
    pair.reshape([b * q * k, c])
        .matmul(weights)
        .reshape([b, q, k, h])
        .permute([0, 3, 1, 2])
}

impl MsaRowAttentionWithPairBias {
    /// Returns the update to the MSA of each member of a batch (the residual is added by the
    /// caller). The rows of all members are attended in one call, each biased by its own pair.
    ///
    /// # Shapes
    /// - msa: `[B, S, N, c_m]`, msa_mask: `[B, S, N]`, pair: `[B, N, N, c_z]`
    /// - output: `[B, S, N, c_m]`
    pub fn forward(&self, msa: Tensor<4>, msa_mask: Tensor<3>, pair: Tensor<4>) -> Tensor<4> {
        let [b, s, n, c] = msa.dims();
        let msa = self.query_norm.forward(msa).reshape([b * s, n, c]);
        let bias = pair_bias(self.feat_2d_norm.forward(pair), self.feat_2d_weights.val());
        self.attention
            .forward_self(msa, msa_mask.reshape([b * s, n]), Some(bias))
            .reshape([b, s, n, c])
    }
}
