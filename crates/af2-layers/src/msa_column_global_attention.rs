//! MSA column-wise global attention of the extra-MSA stack (Algorithm 19).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::msa_column_attention::attend_columns;
use crate::{GlobalAttention, GlobalAttentionConfig, LayerNorm, LayerNormConfig};

/// Configuration of [`MsaColumnGlobalAttention`].
#[derive(Config, Debug)]
pub struct MsaColumnGlobalAttentionConfig {
    /// Extra-MSA channels.
    pub msa_channels: usize,
    /// Heads.
    pub num_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
}

/// Global attention along the columns of the extra MSA.
#[derive(Module, Debug)]
pub struct MsaColumnGlobalAttention {
    /// LayerNorm of the MSA.
    pub query_norm: LayerNorm,
    /// The global attention.
    pub attention: GlobalAttention,
}

impl MsaColumnGlobalAttentionConfig {
    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> MsaColumnGlobalAttention {
        let c = self.msa_channels;
        MsaColumnGlobalAttention {
            query_norm: LayerNormConfig::new(c).init(device),
            attention: GlobalAttentionConfig::new(
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

impl MsaColumnGlobalAttention {
    /// Returns the update to the extra MSA of each member of a batch.
    ///
    /// # Shapes
    /// - msa: `[B, S, N, c_e]`, msa_mask: `[B, S, N]`
    /// - output: `[B, S, N, c_e]`
    pub fn forward(&self, msa: Tensor<4>, msa_mask: Tensor<3>) -> Tensor<4> {
        attend_columns(&self.query_norm, msa, msa_mask, |columns, mask| {
            self.attention.forward(columns, mask)
        })
    }
}
