//! Model widths inferred from the shapes of a haiku-named parameter store.
//!
//! Nothing here is hard-coded: the released weights and the small test fixtures both load.
//! Only the fixed input-feature widths of the monomer data pipeline are constants (see
//! [`super::layout`]).

use super::ParamStore;
use super::names::HAIKU_ROOT;
use crate::error::{IoError, Result};
use serde::{Deserialize, Serialize};

/// All widths and depths of an AlphaFold monomer model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDims {
    /// MSA representation channels (c_m, 256 in the released models).
    pub msa_channel: usize,
    /// Pair representation channels (c_z, 128).
    pub pair_channel: usize,
    /// Extra-MSA representation channels (c_e, 64).
    pub extra_msa_channel: usize,
    /// Single representation channels (c_s, 384).
    pub seq_channel: usize,
    /// Number of Evoformer blocks (48).
    pub evoformer_blocks: usize,
    /// Number of extra-MSA stack blocks (4).
    pub extra_msa_blocks: usize,
    /// Widths inside the Evoformer blocks.
    pub evoformer: StackDims,
    /// Widths inside the extra-MSA blocks.
    pub extra_msa: StackDims,
    /// Template module widths; `None` for models without templates (model_3/4/5).
    pub template: Option<TemplateDims>,
    /// Structure module widths.
    pub structure: StructureDims,
    /// Hidden channels of the pLDDT head.
    pub plddt_channel: usize,
    /// Number of pLDDT bins (50).
    pub plddt_bins: usize,
    /// Number of distogram bins (64).
    pub distogram_bins: usize,
    /// Number of PAE bins; `Some` for the `_ptm` models.
    pub pae_bins: Option<usize>,
    /// Number of masked-MSA classes (23).
    pub masked_msa_classes: usize,
}

/// Widths inside one Evoformer-like stack (main Evoformer or extra-MSA stack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackDims {
    /// Heads of the MSA row attention with pair bias.
    pub msa_row_heads: usize,
    /// Per-head width of the MSA row attention.
    pub msa_row_head_dim: usize,
    /// Heads of the MSA column (or column-global) attention.
    pub msa_col_heads: usize,
    /// Per-head width of the MSA column attention.
    pub msa_col_head_dim: usize,
    /// Hidden width of the MSA transition.
    pub msa_transition_hidden: usize,
    /// Projection width of the outer product mean.
    pub opm_channel: usize,
    /// Intermediate width of the triangle multiplications.
    pub tri_mul_channel: usize,
    /// Heads of the triangle attentions.
    pub tri_att_heads: usize,
    /// Per-head width of the triangle attentions.
    pub tri_att_head_dim: usize,
    /// Hidden width of the pair transition.
    pub pair_transition_hidden: usize,
}

/// Widths of the template embedding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateDims {
    /// Template pair representation channels (c_t, 64).
    pub channel: usize,
    /// Blocks of the template pair stack (2).
    pub blocks: usize,
    /// Intermediate width of the template triangle multiplications.
    pub tri_mul_channel: usize,
    /// Heads of the template triangle attentions.
    pub tri_att_heads: usize,
    /// Per-head width of the template triangle attentions.
    pub tri_att_head_dim: usize,
    /// Hidden width of the template pair transition.
    pub transition_hidden: usize,
    /// Heads of the template point-wise attention.
    pub pointwise_heads: usize,
    /// Per-head key width of the template point-wise attention.
    pub pointwise_key_dim: usize,
    /// Per-head value width of the template point-wise attention.
    pub pointwise_value_dim: usize,
    /// Input width of the template pair features (88).
    pub pair_feat_channels: usize,
    /// Input width of the template torsion (single) features (57).
    pub single_feat_channels: usize,
}

/// Widths of the structure module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StructureDims {
    /// Structure-module channels (384).
    pub channel: usize,
    /// Invariant point attention heads (12).
    pub ipa_heads: usize,
    /// Scalar query/key width per head (16).
    pub scalar_qk: usize,
    /// Query/key points per head (4).
    pub point_qk: usize,
    /// Scalar value width per head (16).
    pub scalar_v: usize,
    /// Value points per head (8).
    pub point_v: usize,
    /// Side-chain module channels (128).
    pub sidechain_channel: usize,
}

/// Haiku module prefixes (relative to [`HAIKU_ROOT`]) used by inference and the layout.
pub(crate) mod prefix {
    /// Evoformer blocks (stacked).
    pub const EVOFORMER: &str = "evoformer/evoformer_iteration/";
    /// Extra-MSA blocks (stacked).
    pub const EXTRA_MSA: &str = "evoformer/extra_msa_stack/";
    /// The per-template embedding.
    pub const SINGLE_TEMPLATE: &str = "evoformer/template_embedding/single_template_embedding/";
    /// Template pair stack blocks (stacked).
    pub const TEMPLATE_STACK: &str = "evoformer/template_embedding/single_template_embedding/template_pair_stack/__layer_stack_no_state/";
    /// Invariant point attention.
    pub const IPA: &str = "structure_module/fold_iteration/invariant_point_attention/";
}

/// Read access to the shapes of a haiku store, with errors naming the key.
struct Shapes<'a>(&'a ParamStore);

impl Shapes<'_> {
    /// Full key for a name relative to [`HAIKU_ROOT`].
    fn key(rel: &str) -> String {
        format!("{HAIKU_ROOT}{rel}")
    }

    /// Whether a key is present.
    fn has(&self, rel: &str) -> bool {
        self.0.tensors.contains_key(&Self::key(rel))
    }

    /// The shape of `rel`, which must have rank `N`.
    fn get<const N: usize>(&self, rel: &str) -> Result<[usize; N]> {
        let key = Self::key(rel);
        let tensor = self
            .0
            .tensors
            .get(&key)
            .ok_or_else(|| IoError::MissingKey { key: key.clone() })?;
        <[usize; N]>::try_from(tensor.shape.as_slice()).map_err(|_| {
            IoError::invalid(
                key,
                format!("expected a rank-{N} array, found shape {:?}", tensor.shape),
            )
        })
    }
}

/// `value / divisor`, failing (naming `rel`) unless it divides exactly and is non-zero.
fn exact_div(rel: &str, value: usize, divisor: usize, what: &str) -> Result<usize> {
    if divisor == 0 || !value.is_multiple_of(divisor) || value == 0 {
        return Err(IoError::invalid(
            Shapes::key(rel),
            format!("{what}: width {value} is not a positive multiple of {divisor}"),
        ));
    }
    Ok(value / divisor)
}

impl ModelDims {
    /// The dimensions of the released `params_model_1_ptm.npz` (338 arrays, 93,237,338
    /// floats; checked against [`super::expected_haiku_layout`] in the tests). For benchmarks
    /// that need the full-width architecture without the weight file.
    pub fn model_1_ptm() -> ModelDims {
        let evoformer = StackDims {
            msa_row_heads: 8,
            msa_row_head_dim: 32,
            msa_col_heads: 8,
            msa_col_head_dim: 32,
            msa_transition_hidden: 1024,
            opm_channel: 32,
            tri_mul_channel: 128,
            tri_att_heads: 4,
            tri_att_head_dim: 32,
            pair_transition_hidden: 512,
        };
        let extra_msa = StackDims {
            msa_row_head_dim: 8,
            msa_col_head_dim: 8,
            msa_transition_hidden: 256,
            ..evoformer.clone()
        };
        ModelDims {
            msa_channel: 256,
            pair_channel: 128,
            extra_msa_channel: 64,
            seq_channel: 384,
            evoformer_blocks: 48,
            extra_msa_blocks: 4,
            evoformer,
            extra_msa,
            template: Some(TemplateDims {
                channel: 64,
                blocks: 2,
                tri_mul_channel: 64,
                tri_att_heads: 4,
                tri_att_head_dim: 16,
                transition_hidden: 128,
                pointwise_heads: 4,
                pointwise_key_dim: 16,
                pointwise_value_dim: 16,
                pair_feat_channels: 88,
                single_feat_channels: 57,
            }),
            structure: StructureDims {
                channel: 384,
                ipa_heads: 12,
                scalar_qk: 16,
                point_qk: 4,
                scalar_v: 16,
                point_v: 8,
                sidechain_channel: 128,
            },
            plddt_channel: 128,
            plddt_bins: 50,
            distogram_bins: 64,
            pae_bins: Some(64),
            masked_msa_classes: 23,
        }
    }

    /// Infers every width from the shapes of a haiku-named store. Errors name the key that was
    /// missing or inconsistent. Use [`super::check_haiku_layout`] afterwards to verify that
    /// every other array agrees.
    pub fn infer(haiku: &ParamStore) -> Result<ModelDims> {
        let s = Shapes(haiku);
        let [_, msa_channel] = s.get("evoformer/preprocess_1d//weights")?;
        let [_, pair_channel] = s.get("evoformer/left_single//weights")?;
        let [_, extra_msa_channel] = s.get("evoformer/extra_msa_activations//weights")?;
        let [_, seq_channel] = s.get("evoformer/single_activations//weights")?;
        let (evoformer_blocks, evoformer) =
            infer_stack(&s, prefix::EVOFORMER, "msa_column_attention")?;
        let (extra_msa_blocks, extra_msa) =
            infer_stack(&s, prefix::EXTRA_MSA, "msa_column_global_attention")?;
        let [_, plddt_channel] = s.get("predicted_lddt_head/act_0//weights")?;
        let [_, plddt_bins] = s.get("predicted_lddt_head/logits//weights")?;
        let [_, distogram_bins] = s.get("distogram_head/half_logits//weights")?;
        let [_, masked_msa_classes] = s.get("masked_msa_head/logits//weights")?;
        let pae_key = "predicted_aligned_error_head/logits//weights";
        let pae_bins = if s.has(pae_key) {
            Some(s.get::<2>(pae_key)?[1])
        } else {
            None
        };
        Ok(ModelDims {
            msa_channel,
            pair_channel,
            extra_msa_channel,
            seq_channel,
            evoformer_blocks,
            extra_msa_blocks,
            evoformer,
            extra_msa,
            template: infer_template(&s)?,
            structure: infer_structure(&s)?,
            plddt_channel,
            plddt_bins,
            distogram_bins,
            pae_bins,
            masked_msa_classes,
        })
    }
}

/// Infers the depth and widths of a stacked Evoformer-like module under `p`.
fn infer_stack(s: &Shapes, p: &str, column_attention: &str) -> Result<(usize, StackDims)> {
    let [blocks, _, msa_row_heads, msa_row_head_dim] = s.get(&format!(
        "{p}msa_row_attention_with_pair_bias/attention//query_w"
    ))?;
    let [_, _, msa_col_heads, msa_col_head_dim] =
        s.get(&format!("{p}{column_attention}/attention//query_w"))?;
    let [_, _, msa_transition_hidden] =
        s.get(&format!("{p}msa_transition/transition1//weights"))?;
    let [_, _, opm_channel] = s.get(&format!("{p}outer_product_mean/left_projection//weights"))?;
    let pair = infer_pair_stack(s, p)?;
    Ok((
        blocks,
        StackDims {
            msa_row_heads,
            msa_row_head_dim,
            msa_col_heads,
            msa_col_head_dim,
            msa_transition_hidden,
            opm_channel,
            tri_mul_channel: pair.tri_mul_channel,
            tri_att_heads: pair.tri_att_heads,
            tri_att_head_dim: pair.tri_att_head_dim,
            pair_transition_hidden: pair.transition_hidden,
        },
    ))
}

/// Widths of the pair part of a stacked block (shared by all three stacks).
struct PairStackDims {
    blocks: usize,
    tri_mul_channel: usize,
    tri_att_heads: usize,
    tri_att_head_dim: usize,
    transition_hidden: usize,
}

/// Infers the pair-update widths of the stacked module under `p`.
fn infer_pair_stack(s: &Shapes, p: &str) -> Result<PairStackDims> {
    let [blocks, _, tri_mul_channel] = s.get(&format!(
        "{p}triangle_multiplication_outgoing/left_projection//weights"
    ))?;
    let [_, _, tri_att_heads, tri_att_head_dim] = s.get(&format!(
        "{p}triangle_attention_starting_node/attention//query_w"
    ))?;
    let [_, _, transition_hidden] = s.get(&format!("{p}pair_transition/transition1//weights"))?;
    Ok(PairStackDims {
        blocks,
        tri_mul_channel,
        tri_att_heads,
        tri_att_head_dim,
        transition_hidden,
    })
}

/// Infers the template widths, or `None` when the model has no template embedding.
fn infer_template(s: &Shapes) -> Result<Option<TemplateDims>> {
    let embedding = format!("{}embedding2d//weights", prefix::SINGLE_TEMPLATE);
    if !s.has(&embedding) {
        return Ok(None);
    }
    let [pair_feat_channels, channel] = s.get(&embedding)?;
    let pair = infer_pair_stack(s, prefix::TEMPLATE_STACK)?;
    let [_, pointwise_heads, pointwise_key_dim] =
        s.get("evoformer/template_embedding/attention//query_w")?;
    let [_, _, pointwise_value_dim] = s.get("evoformer/template_embedding/attention//value_w")?;
    let [single_feat_channels, _] = s.get("evoformer/template_single_embedding//weights")?;
    Ok(Some(TemplateDims {
        channel,
        blocks: pair.blocks,
        tri_mul_channel: pair.tri_mul_channel,
        tri_att_heads: pair.tri_att_heads,
        tri_att_head_dim: pair.tri_att_head_dim,
        transition_hidden: pair.transition_hidden,
        pointwise_heads,
        pointwise_key_dim,
        pointwise_value_dim,
        pair_feat_channels,
        single_feat_channels,
    }))
}

/// Infers the structure-module widths; the IPA head count comes from `trainable_point_weights`.
fn infer_structure(s: &Shapes) -> Result<StructureDims> {
    let ipa = prefix::IPA;
    let [_, channel] = s.get("structure_module/initial_projection//weights")?;
    // `ipa` ends in `/`, so this is `invariant_point_attention//trainable_point_weights`.
    let [ipa_heads] = s.get(&format!("{ipa}/trainable_point_weights"))?;
    let q_key = format!("{ipa}q_scalar//weights");
    let [_, q_scalar] = s.get(&q_key)?;
    let scalar_qk = exact_div(&q_key, q_scalar, ipa_heads, "q_scalar / heads")?;
    let kv_key = format!("{ipa}kv_scalar//weights");
    let [_, kv_scalar] = s.get(&kv_key)?;
    let scalar_v = exact_div(&kv_key, kv_scalar, ipa_heads, "kv_scalar / heads")?
        .checked_sub(scalar_qk)
        .filter(|&v| v > 0)
        .ok_or_else(|| {
            IoError::invalid(
                Shapes::key(&kv_key),
                format!("width {kv_scalar} leaves no scalar values after {ipa_heads} heads x {scalar_qk} query/key"),
            )
        })?;
    let qp_key = format!("{ipa}q_point_local//weights");
    let [_, q_point] = s.get(&qp_key)?;
    let point_qk = exact_div(
        &qp_key,
        q_point,
        ipa_heads * 3,
        "q_point_local / (3 x heads)",
    )?;
    let kvp_key = format!("{ipa}kv_point_local//weights");
    let [_, kv_point] = s.get(&kvp_key)?;
    let point_v = exact_div(
        &kvp_key,
        kv_point,
        ipa_heads * 3,
        "kv_point_local / (3 x heads)",
    )?
    .checked_sub(point_qk)
    .filter(|&v| v > 0)
    .ok_or_else(|| {
        IoError::invalid(
            Shapes::key(&kvp_key),
            format!("width {kv_point} leaves no value points after {point_qk} query/key points"),
        )
    })?;
    let [_, sidechain_channel] =
        s.get("structure_module/fold_iteration/rigid_sidechain/input_projection//weights")?;
    Ok(StructureDims {
        channel,
        ipa_heads,
        scalar_qk,
        point_qk,
        scalar_v,
        point_v,
        sidechain_channel,
    })
}
