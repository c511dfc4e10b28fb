//! Every device input of one pass of the recycling loop, uploaded (and the template embeddings
//! computed) before the pass runs: the pass itself then writes no host data to the device, so
//! that it can be recorded once as a graph and replayed (`super::graph`).

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::templates::{TemplateMemo, template_inputs, template_torsion_features};
use super::{AlphaFold, GLYCINE};
use crate::features::{BatchFeatures, to_int_tensor};
use crate::template_embedding::TemplateInputs;

/// The template embeddings a pass reads.
#[derive(Clone, Debug)]
pub(crate) struct TemplateTensors {
    /// The template pair stack's output, the pointwise attention's memory `[B * N * N, T, c_t]`
    /// (models with a template pair stack).
    pub pair_memory: Option<Tensor<3>>,
    /// Which template slots hold a template `[B, T]`.
    pub mask: Tensor<2>,
    /// The torsion MSA rows `[B, T, N, c_m]` and their mask `[B, T, N]` (models with a
    /// torsion embedding).
    pub torsion_rows: Option<(Tensor<4>, Tensor<3>)>,
}

/// The inputs of one pass, on the device.
#[derive(Clone, Debug)]
pub(crate) struct PassInputs {
    /// `[B, N]`
    pub seq_mask: Tensor<2>,
    /// `[B, N, 22]`
    pub target_feat: Tensor<3>,
    /// `[B, S, N, 49]`
    pub msa_feat: Tensor<4>,
    /// Relative-position classes `[B, N, N]`.
    pub relpos: Tensor<3, Int>,
    /// `[B, S, N]`
    pub msa_mask: Tensor<3>,
    /// `[B, S_extra, N, 25]`
    pub extra_feat: Tensor<4>,
    /// `[B, S_extra, N]`
    pub extra_msa_mask: Tensor<3>,
    /// 1 for glycine (its pseudo-beta is CA), else 0: `[B, N, 1]`.
    pub is_glycine: Tensor<3>,
    /// `[B, N]`
    pub aatype: Tensor<2, Int>,
    /// The template embeddings, where the designs have templates and the model layers that
    /// embed them.
    pub templates: Option<TemplateTensors>,
}

impl PassInputs {
    /// Uploads the features of `f` and computes the template embeddings (kept in `memo` from
    /// one pass to the next, see [`TemplateMemo`]).
    pub fn prepare(
        model: &AlphaFold,
        f: &BatchFeatures<'_>,
        template_pair_mask: Option<&Tensor<3>>,
        memo: &mut TemplateMemo,
        device: &Device,
    ) -> Self {
        let (b, n) = (f.len(), f.num_residues());
        let seq_mask: Tensor<2> = f.stacked(|d| &d.seq_mask, device);
        let aatype = f.aatype();
        let is_glycine: Vec<f32> = aatype
            .iter()
            .map(|&a| f32::from(u8::from(a == GLYCINE)))
            .collect();
        let has_template_layers =
            model.template_embedding.is_some() || model.template_torsion_embedding.is_some();
        let templates = f.num_templates().filter(|_| has_template_layers).map(|t| {
            memo.keep_if_same_inputs(f);
            let pair_memory = model.template_embedding.as_ref().map(|embedding| {
                memo.pair_memory(|| {
                    let pair_mask = seq_mask.clone().unsqueeze_dim::<3>(2)
                        * seq_mask.clone().unsqueeze_dim::<3>(1);
                    let templates: Vec<TemplateInputs> =
                        (0..t).map(|i| template_inputs(f, i, device)).collect();
                    embedding.embed_templates(pair_mask, &templates, template_pair_mask)
                })
            });
            let torsion_rows = model.template_torsion_embedding.as_ref().map(|torsion| {
                memo.torsion_rows(|| {
                    let (features, psi_mask) = template_torsion_features(f, device);
                    (torsion.forward(features), psi_mask)
                })
            });
            TemplateTensors {
                pair_memory,
                mask: f.stacked_templates(|t| &t.mask, device),
                torsion_rows,
            }
        });
        Self {
            target_feat: f.stacked(|d| &d.target_feat, device),
            msa_feat: f.stacked(|d| &d.msa_feat, device),
            relpos: f.relpos_classes(device),
            msa_mask: f.stacked(|d| &d.msa_mask, device),
            extra_feat: f.stacked(|d| &d.extra_feat, device),
            extra_msa_mask: f.stacked(|d| &d.extra_msa_mask, device),
            is_glycine: Tensor::from_data(TensorData::new(is_glycine, [b, n, 1]), device),
            aatype: to_int_tensor::<2>(&aatype, vec![b, n], device),
            seq_mask,
            templates,
        }
    }
}
