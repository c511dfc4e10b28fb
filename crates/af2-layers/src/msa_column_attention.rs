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

/// Runs `attend` on the columns of a batch of MSAs: the normalised `[B, S, N, c]` as `B * N`
/// rows of `S` sequences, with their `[B * N, S]` masks; returns its update in MSA layout.
pub(crate) fn attend_columns(
    norm: &LayerNorm,
    msa: Tensor<4>,
    msa_mask: Tensor<3>,
    attend: impl FnOnce(Tensor<3>, Tensor<2>) -> Tensor<3>,
) -> Tensor<4> {
    let [b, s, n, c] = msa.dims();
    let columns = norm.forward(msa.swap_dims(1, 2)).reshape([b * n, s, c]);
    let mask = msa_mask.swap_dims(1, 2).reshape([b * n, s]);
    attend(columns, mask).reshape([b, n, s, c]).swap_dims(1, 2)
}

impl MsaColumnAttention {
    /// Returns the update to the MSA of each member of a batch; the columns of all members are
    /// attended in one call.
    ///
    /// # Shapes
    /// - msa: `[B, S, N, c_m]`, msa_mask: `[B, S, N]`
    /// - output: `[B, S, N, c_m]`
    pub fn forward(&self, msa: Tensor<4>, msa_mask: Tensor<3>) -> Tensor<4> {
        attend_columns(&self.query_norm, msa, msa_mask, |columns, mask| {
            self.attention.forward_self(columns, mask, None)
        })
    }
}
