//! Output heads: pLDDT (Algorithm 29), predicted aligned error, distogram, masked MSA and
//! experimentally resolved.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use af2_layers::{LayerNorm, LayerNormConfig, Linear, linear};

use crate::model::design_slice;

/// Widths of the heads.
#[derive(Config, Debug)]
pub struct HeadsConfig {
    /// MSA channels.
    pub msa_channels: usize,
    /// Pair channels.
    pub pair_channels: usize,
    /// Single channels.
    pub seq_channels: usize,
    /// Structure module channels.
    pub structure_channels: usize,
    /// Hidden channels of the pLDDT head.
    pub plddt_channels: usize,
    /// pLDDT bins (50).
    pub plddt_bins: usize,
    /// Distogram bins (64).
    pub distogram_bins: usize,
    /// Masked-MSA classes (23).
    pub masked_msa_classes: usize,
    /// PAE bins (64), for `_ptm` models.
    pub pae_bins: Option<usize>,
}

/// pLDDT head (Algorithm 29).
#[derive(Module, Debug)]
pub struct PredictedLddtHead {
    /// LayerNorm of the structure module activation.
    pub input_layer_norm: LayerNorm,
    /// First hidden layer.
    pub act_0: Linear,
    /// Second hidden layer.
    pub act_1: Linear,
    /// Bin logits.
    pub logits: Linear,
}

/// A head that is one linear layer named `logits`.
#[derive(Module, Debug)]
pub struct LogitsHead {
    /// The projection.
    pub logits: Linear,
}

/// Distogram head: symmetrised half logits.
#[derive(Module, Debug)]
pub struct DistogramHead {
    /// The projection.
    pub half_logits: Linear,
}

/// All heads of a monomer model.
#[derive(Module, Debug)]
pub struct Heads {
    /// pLDDT.
    pub predicted_lddt_head: PredictedLddtHead,
    /// Predicted aligned error (`_ptm` models only).
    pub predicted_aligned_error_head: Option<LogitsHead>,
    /// Distogram.
    pub distogram_head: DistogramHead,
    /// Masked MSA.
    pub masked_msa_head: LogitsHead,
    /// Experimentally resolved.
    pub experimentally_resolved_head: LogitsHead,
}

impl HeadsConfig {
    /// Zero-initialised heads.
    pub fn init(&self, device: &Device) -> Heads {
        let logits = |d_in, d_out| LogitsHead {
            logits: linear(d_in, d_out, device),
        };
        Heads {
            predicted_lddt_head: PredictedLddtHead {
                input_layer_norm: LayerNormConfig::new(self.structure_channels).init(device),
                act_0: linear(self.structure_channels, self.plddt_channels, device),
                act_1: linear(self.plddt_channels, self.plddt_channels, device),
                logits: linear(self.plddt_channels, self.plddt_bins, device),
            },
            predicted_aligned_error_head: self.pae_bins.map(|b| logits(self.pair_channels, b)),
            distogram_head: DistogramHead {
                half_logits: linear(self.pair_channels, self.distogram_bins, device),
            },
            masked_msa_head: logits(self.msa_channels, self.masked_msa_classes),
            experimentally_resolved_head: logits(self.seq_channels, 37),
        }
    }
}

/// Raw head outputs of one design.
#[derive(Clone, Debug)]
pub struct HeadLogits {
    /// `[N, 50]`
    pub plddt: Tensor<2>,
    /// `[N, N, 64]`
    pub pae: Option<Tensor<3>>,
    /// `[N, N, 64]`
    pub distogram: Tensor<3>,
    /// `[S, N, 23]`
    pub masked_msa: Tensor<3>,
    /// `[N, 37]`
    pub experimentally_resolved: Tensor<2>,
}

/// Raw head outputs of a batch of designs: [`HeadLogits`] with a leading design axis `B`.
#[derive(Clone, Debug)]
pub struct BatchHeadLogits {
    /// `[B, N, 50]`
    pub plddt: Tensor<3>,
    /// `[B, N, N, 64]`
    pub pae: Option<Tensor<4>>,
    /// `[B, N, N, 64]`
    pub distogram: Tensor<4>,
    /// `[B, S, N, 23]`
    pub masked_msa: Tensor<4>,
    /// `[B, N, 37]`
    pub experimentally_resolved: Tensor<3>,
}

impl BatchHeadLogits {
    /// The logits of design `d`.
    pub fn design(&self, d: usize) -> HeadLogits {
        HeadLogits {
            plddt: design_slice(&self.plddt, d),
            pae: self.pae.as_ref().map(|t| design_slice(t, d)),
            distogram: design_slice(&self.distogram, d),
            masked_msa: design_slice(&self.masked_msa, d),
            experimentally_resolved: design_slice(&self.experimentally_resolved, d),
        }
    }
}

impl Heads {
    /// # Shapes
    /// - msa: `[B, S, N, c_m]` (cluster rows only), pair: `[B, N, N, c_z]`,
    ///   single: `[B, N, c_s]`, structure: `[B, N, c_sm]`
    pub fn forward(
        &self,
        msa: Tensor<4>,
        pair: Tensor<4>,
        single: Tensor<3>,
        structure: Tensor<3>,
    ) -> BatchHeadLogits {
        let lddt = &self.predicted_lddt_head;
        let act = lddt.input_layer_norm.forward(structure);
        let act = relu(lddt.act_1.forward(relu(lddt.act_0.forward(act))));
        let half = self.distogram_head.half_logits.forward(pair.clone());
        BatchHeadLogits {
            plddt: lddt.logits.forward(act),
            pae: self
                .predicted_aligned_error_head
                .as_ref()
                .map(|h| h.logits.forward(pair)),
            distogram: half.clone() + half.swap_dims(1, 2),
            masked_msa: self.masked_msa_head.logits.forward(msa),
            experimentally_resolved: self.experimentally_resolved_head.logits.forward(single),
        }
    }
}
