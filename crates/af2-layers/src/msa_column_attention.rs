//! MSA column-wise gated self-attention (Algorithm 8).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::{GatedAttention, GatedAttentionConfig, LayerNorm, LayerNormConfig};

/// Configuration of [`MsaColumnAttention`].
#[derive(Config, Debug)]
pub struct MsaColumnAttentionConfig {
    /// MSA channels.
    pub msa_channels: usize,
    /// Heads.
    pub num_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
}

/// Attention along MSA columns (across sequences, per residue).
#[derive(Module, Debug)]
pub struct MsaColumnAttention {
    /// LayerNorm of the MSA.
    pub query_norm: LayerNorm,
    /// The attention.
    pub attention: GatedAttention,
}

impl MsaColumnAttentionConfig {
    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> MsaColumnAttention {
        let c = self.msa_channels;
        MsaColumnAttention {
            query_norm: LayerNormConfig::new(c).init(device),
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

impl MsaColumnAttention {
    /// Returns the update to the MSA.
    ///
    /// # Shapes
    /// - msa: `[S, N, c_m]`, msa_mask: `[S, N]`
    /// - output: `[S, N, c_m]`
    pub fn forward(&self, msa: Tensor<3>, msa_mask: Tensor<2>) -> Tensor<3> {
        let columns = self.query_norm.forward(msa.swap_dims(0, 1));
        let mask = msa_mask.swap_dims(0, 1);
        self.attention
            .forward(columns.clone(), columns, mask, None)
            .swap_dims(0, 1)
    }
}
