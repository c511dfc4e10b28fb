//! The expected key → shape layout of the released AlphaFold monomer weights, derived from
//! [`ModelDims`], and the check of a parameter store against it.

use super::ParamStore;
use super::dims::{ModelDims, StackDims, TemplateDims, prefix};
use super::names::{HAIKU_ROOT, native_to_haiku};
use crate::error::{IoError, LayoutProblem, Result};
use std::collections::BTreeMap;

/// Width of `target_feat` (input embedder).
pub const TARGET_FEAT_DIM: usize = 22;
/// Width of `msa_feat`.
pub const MSA_FEAT_DIM: usize = 49;
/// Width of the extra-MSA features (one-hot 23 + has_deletion + deletion_value).
pub const EXTRA_MSA_FEAT_DIM: usize = 25;
/// Width of the relative-position one-hot (2 × max_relative_feature(32) + 1).
pub const RELPOS_DIM: usize = 65;
/// Number of recycled-position distogram bins.
pub const PREV_POS_BINS: usize = 15;
/// Width of the structure module's affine update (3 rotation + 3 translation).
pub const AFFINE_UPDATE_DIM: usize = 6;
/// Torsion angles × (sin, cos) predicted by the side-chain module.
pub const TORSION_OUTPUTS: usize = 14;
/// Atom-37 channels of the experimentally-resolved head.
pub const ATOM37: usize = 37;

/// Collects keys under one module prefix, optionally with a leading layer axis.
struct Scope<'a> {
    out: &'a mut BTreeMap<String, Vec<usize>>,
    prefix: String,
    lead: Option<usize>,
}

impl<'a> Scope<'a> {
    /// A scope under `HAIKU_ROOT + prefix` (prefix ends in `/` or is empty).
    fn new(out: &'a mut BTreeMap<String, Vec<usize>>, prefix: &str, lead: Option<usize>) -> Self {
        Scope {
            out,
            prefix: format!("{HAIKU_ROOT}{prefix}"),
            lead,
        }
    }

    /// One parameter `module//param` (module relative to the scope; may be empty).
    fn param(&mut self, module: &str, param: &str, shape: &[usize]) {
        let full: Vec<usize> = self
            .lead
            .iter()
            .copied()
            .chain(shape.iter().copied())
            .collect();
        let path = format!("{}{module}", self.prefix);
        let path = path.trim_end_matches('/');
        self.out.insert(format!("{path}//{param}"), full);
    }

    /// `hk.Linear`: `weights [i, o]`, `bias [o]`.
    fn linear(&mut self, module: &str, i: usize, o: usize) {
        self.param(module, "weights", &[i, o]);
        self.param(module, "bias", &[o]);
    }

    /// `hk.LayerNorm`: `scale [c]`, `offset [c]`.
    fn norm(&mut self, module: &str, c: usize) {
        self.param(module, "scale", &[c]);
        self.param(module, "offset", &[c]);
    }

    /// AlphaFold `Attention`: queries from `cq` channels, keys/values from `ckv`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        m: &str,
        cq: usize,
        ckv: usize,
        h: usize,
        dk: usize,
        dv: usize,
        out: usize,
        gating: bool,
    ) {
        self.param(m, "query_w", &[cq, h, dk]);
        self.param(m, "key_w", &[ckv, h, dk]);
        self.param(m, "value_w", &[ckv, h, dv]);
        if gating {
            self.param(m, "gating_w", &[cq, h, dv]);
            self.param(m, "gating_b", &[h, dv]);
        }
        self.param(m, "output_w", &[h, dv, out]);
        self.param(m, "output_b", &[out]);
    }

    /// AlphaFold `GlobalAttention` (extra-MSA column attention): single key/value head.
    fn global_attention(&mut self, m: &str, c: usize, h: usize, d: usize) {
        self.param(m, "query_w", &[c, h, d]);
        self.param(m, "key_w", &[c, d]);
        self.param(m, "value_w", &[c, d]);
        self.param(m, "gating_w", &[c, h, d]);
        self.param(m, "gating_b", &[h, d]);
        self.param(m, "output_w", &[h, d, c]);
        self.param(m, "output_b", &[c]);
    }

    /// `Transition`: layer norm and a two-layer MLP `c → hidden → c`.
    fn transition(&mut self, m: &str, c: usize, hidden: usize) {
        self.norm(&format!("{m}/input_layer_norm"), c);
        self.linear(&format!("{m}/transition1"), c, hidden);
        self.linear(&format!("{m}/transition2"), hidden, c);
    }

    /// Unfused `TriangleMultiplication` with intermediate width `t`.
    fn triangle_multiplication(&mut self, m: &str, c: usize, t: usize) {
        self.norm(&format!("{m}/layer_norm_input"), c);
        for name in [
            "left_projection",
            "right_projection",
            "left_gate",
            "right_gate",
        ] {
            self.linear(&format!("{m}/{name}"), c, t);
        }
        self.norm(&format!("{m}/center_layer_norm"), t);
        self.linear(&format!("{m}/output_projection"), t, c);
        self.linear(&format!("{m}/gating_linear"), c, c);
    }

    /// `TriangleAttention` over a pair representation of `c` channels.
    fn triangle_attention(&mut self, m: &str, c: usize, h: usize, d: usize) {
        self.norm(&format!("{m}/query_norm"), c);
        self.param(m, "feat_2d_weights", &[c, h]);
        self.attention(&format!("{m}/attention"), c, c, h, d, d, c, true);
    }

    /// The pair updates shared by every stack: triangle multiplications, triangle
    /// attentions and the pair transition.
    fn pair_updates(
        &mut self,
        cz: usize,
        tri_mul: usize,
        heads: usize,
        head_dim: usize,
        hidden: usize,
    ) {
        self.triangle_multiplication("triangle_multiplication_outgoing", cz, tri_mul);
        self.triangle_multiplication("triangle_multiplication_incoming", cz, tri_mul);
        self.triangle_attention("triangle_attention_starting_node", cz, heads, head_dim);
        self.triangle_attention("triangle_attention_ending_node", cz, heads, head_dim);
        self.transition("pair_transition", cz, hidden);
    }

    /// One Evoformer (or extra-MSA) block with MSA width `c` and pair width `cz`.
    fn evoformer_block(&mut self, c: usize, cz: usize, s: &StackDims, global_column: bool) {
        let row = "msa_row_attention_with_pair_bias";
        self.norm(&format!("{row}/query_norm"), c);
        self.norm(&format!("{row}/feat_2d_norm"), cz);
        self.param(row, "feat_2d_weights", &[cz, s.msa_row_heads]);
        let (h, d) = (s.msa_row_heads, s.msa_row_head_dim);
        self.attention(&format!("{row}/attention"), c, c, h, d, d, c, true);
        let (h, d) = (s.msa_col_heads, s.msa_col_head_dim);
        if global_column {
            self.norm("msa_column_global_attention/query_norm", c);
            self.global_attention("msa_column_global_attention/attention", c, h, d);
        } else {
            self.norm("msa_column_attention/query_norm", c);
            self.attention("msa_column_attention/attention", c, c, h, d, d, c, true);
        }
        self.transition("msa_transition", c, s.msa_transition_hidden);
        let opm = "outer_product_mean";
        self.norm(&format!("{opm}/layer_norm_input"), c);
        self.linear(&format!("{opm}/left_projection"), c, s.opm_channel);
        self.linear(&format!("{opm}/right_projection"), c, s.opm_channel);
        self.param(opm, "output_w", &[s.opm_channel, s.opm_channel, cz]);
        self.param(opm, "output_b", &[cz]);
        let hidden = s.pair_transition_hidden;
        self.pair_updates(
            cz,
            s.tri_mul_channel,
            s.tri_att_heads,
            s.tri_att_head_dim,
            hidden,
        );
    }
}

/// The full expected key → shape list of the released monomer weights (haiku names) for the
/// given dimensions; template modules only if `dims.template` is set, the PAE head only if
/// `dims.pae_bins` is set.
pub fn expected_haiku_layout(dims: &ModelDims) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    embedder_layout(&mut out, dims);
    let (cm, cz, ce) = (dims.msa_channel, dims.pair_channel, dims.extra_msa_channel);
    let lead = Some(dims.extra_msa_blocks);
    Scope::new(&mut out, prefix::EXTRA_MSA, lead).evoformer_block(ce, cz, &dims.extra_msa, true);
    let lead = Some(dims.evoformer_blocks);
    Scope::new(&mut out, prefix::EVOFORMER, lead).evoformer_block(cm, cz, &dims.evoformer, false);
    if let Some(t) = &dims.template {
        template_layout(&mut out, dims, t);
    }
    structure_layout(&mut out, dims);
    heads_layout(&mut out, dims);
    out
}

/// Input embedder, recycling embedder, extra-MSA activations and single activations.
fn embedder_layout(out: &mut BTreeMap<String, Vec<usize>>, dims: &ModelDims) {
    let (cm, cz) = (dims.msa_channel, dims.pair_channel);
    let mut s = Scope::new(out, "evoformer/", None);
    s.linear("preprocess_1d", TARGET_FEAT_DIM, cm);
    s.linear("preprocess_msa", MSA_FEAT_DIM, cm);
    s.linear("left_single", TARGET_FEAT_DIM, cz);
    s.linear("right_single", TARGET_FEAT_DIM, cz);
    s.linear("pair_activiations", RELPOS_DIM, cz);
    s.linear("prev_pos_linear", PREV_POS_BINS, cz);
    s.norm("prev_msa_first_row_norm", cm);
    s.norm("prev_pair_norm", cz);
    s.linear(
        "extra_msa_activations",
        EXTRA_MSA_FEAT_DIM,
        dims.extra_msa_channel,
    );
    s.linear("single_activations", cm, dims.seq_channel);
}

/// Template pair embedding, template pair stack, point-wise attention and torsion embedding.
fn template_layout(out: &mut BTreeMap<String, Vec<usize>>, dims: &ModelDims, t: &TemplateDims) {
    let (cm, cz, ct) = (dims.msa_channel, dims.pair_channel, t.channel);
    let mut s = Scope::new(out, prefix::SINGLE_TEMPLATE, None);
    s.linear("embedding2d", t.pair_feat_channels, ct);
    s.norm("output_layer_norm", ct);
    let mut s = Scope::new(out, prefix::TEMPLATE_STACK, Some(t.blocks));
    s.pair_updates(
        ct,
        t.tri_mul_channel,
        t.tri_att_heads,
        t.tri_att_head_dim,
        t.transition_hidden,
    );
    let mut s = Scope::new(out, "evoformer/", None);
    let (h, dk, dv) = (
        t.pointwise_heads,
        t.pointwise_key_dim,
        t.pointwise_value_dim,
    );
    s.attention("template_embedding/attention", cz, ct, h, dk, dv, cz, false);
    s.linear("template_single_embedding", t.single_feat_channels, cm);
    s.linear("template_projection", cm, cm);
}

/// Structure module: IPA, transition, backbone update and side-chain module.
fn structure_layout(out: &mut BTreeMap<String, Vec<usize>>, dims: &ModelDims) {
    let st = &dims.structure;
    let (c, cz, cs, sc, h) = (
        st.channel,
        dims.pair_channel,
        dims.seq_channel,
        st.sidechain_channel,
        st.ipa_heads,
    );
    let mut s = Scope::new(out, "structure_module/", None);
    s.norm("single_layer_norm", cs);
    s.linear("initial_projection", cs, c);
    s.norm("pair_layer_norm", cz);
    let mut s = Scope::new(out, prefix::IPA, None);
    s.linear("q_scalar", c, h * st.scalar_qk);
    s.linear("kv_scalar", c, h * (st.scalar_qk + st.scalar_v));
    s.linear("q_point_local", c, h * 3 * st.point_qk);
    s.linear("kv_point_local", c, h * 3 * (st.point_qk + st.point_v));
    s.param("", "trainable_point_weights", &[h]);
    s.linear("attention_2d", cz, h);
    s.linear(
        "output_projection",
        h * (st.scalar_v + 4 * st.point_v + cz),
        c,
    );
    let mut s = Scope::new(out, "structure_module/fold_iteration/", None);
    s.norm("attention_layer_norm", c);
    for name in ["transition", "transition_1", "transition_2"] {
        s.linear(name, c, c);
    }
    s.norm("transition_layer_norm", c);
    s.linear("affine_update", c, AFFINE_UPDATE_DIM);
    s.linear("rigid_sidechain/input_projection", c, sc);
    s.linear("rigid_sidechain/input_projection_1", c, sc);
    for name in ["resblock1", "resblock2", "resblock1_1", "resblock2_1"] {
        s.linear(&format!("rigid_sidechain/{name}"), sc, sc);
    }
    s.linear("rigid_sidechain/unnormalized_angles", sc, TORSION_OUTPUTS);
}

/// Output heads.
fn heads_layout(out: &mut BTreeMap<String, Vec<usize>>, dims: &ModelDims) {
    let (c, pc) = (dims.structure.channel, dims.plddt_channel);
    let mut s = Scope::new(out, "", None);
    s.norm("predicted_lddt_head/input_layer_norm", c);
    s.linear("predicted_lddt_head/act_0", c, pc);
    s.linear("predicted_lddt_head/act_1", pc, pc);
    s.linear("predicted_lddt_head/logits", pc, dims.plddt_bins);
    s.linear(
        "distogram_head/half_logits",
        dims.pair_channel,
        dims.distogram_bins,
    );
    s.linear(
        "experimentally_resolved_head/logits",
        dims.seq_channel,
        ATOM37,
    );
    s.linear(
        "masked_msa_head/logits",
        dims.msa_channel,
        dims.masked_msa_classes,
    );
    if let Some(bins) = dims.pae_bins {
        s.linear(
            "predicted_aligned_error_head/logits",
            dims.pair_channel,
            bins,
        );
    }
}

/// Compares a store's key → shape list with a layout; returns every problem found.
pub fn layout_problems(
    store: &ParamStore,
    expected: &BTreeMap<String, Vec<usize>>,
) -> Vec<LayoutProblem> {
    let mut problems = Vec::new();
    for (key, shape) in expected {
        match store.tensors.get(key) {
            None => problems.push(LayoutProblem::Missing {
                key: key.clone(),
                expected: shape.clone(),
            }),
            Some(t) if &t.shape != shape => problems.push(LayoutProblem::WrongShape {
                key: key.clone(),
                expected: shape.clone(),
                found: t.shape.clone(),
            }),
            Some(_) => {}
        }
    }
    for (key, t) in &store.tensors {
        if !expected.contains_key(key) {
            problems.push(LayoutProblem::Extra {
                key: key.clone(),
                found: t.shape.clone(),
            });
        }
    }
    problems
}

/// Checks a haiku-named store against [`expected_haiku_layout`]: every missing key, extra key
/// and wrong shape is reported in one [`IoError::Layout`].
pub fn check_haiku_layout(store: &ParamStore, dims: &ModelDims) -> Result<()> {
    let problems = layout_problems(store, &expected_haiku_layout(dims));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(IoError::Layout { problems })
    }
}

/// Checks a native-named store: converts it with [`native_to_haiku`] and checks that.
pub fn check_layout(native: &ParamStore, dims: &ModelDims) -> Result<()> {
    check_haiku_layout(&native_to_haiku(native)?, dims)
}

/// The expected native key → shape list (the haiku layout mapped through the name table).
pub fn expected_native_layout(dims: &ModelDims) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut out = BTreeMap::new();
    for (key, shape) in expected_haiku_layout(dims) {
        let target = super::names::map_haiku_name(&key)?;
        if target.rule.stacked {
            let (&layers, rest) = shape
                .split_first()
                .ok_or_else(|| IoError::invalid(&key, "stacked parameter without layer axis"))?;
            for i in 0..layers {
                out.insert(target.name(Some(i)), rest.to_vec());
            }
        } else {
            out.insert(target.name(None), shape);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_model_1_ptm_has_338_arrays_and_93m_floats() {
        // Figures from the released params_model_1_ptm.npz.
        let layout = expected_haiku_layout(&ModelDims::model_1_ptm());
        assert_eq!(layout.len(), 338);
        let floats: usize = layout.values().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(floats, 93_237_338);
    }

    #[test]
    fn dims_inferred_from_the_full_layout_roundtrip() {
        let dims = ModelDims::model_1_ptm();
        let store = ParamStore {
            tensors: expected_haiku_layout(&dims)
                .into_iter()
                .map(|(k, shape)| {
                    (
                        k,
                        crate::npz::NdArray {
                            shape,
                            data: Vec::new(),
                        },
                    )
                })
                .collect(),
        };
        assert_eq!(ModelDims::infer(&store).unwrap(), dims);
        let mut no_templates = dims.clone();
        no_templates.template = None;
        no_templates.pae_bins = None;
        let layout = expected_haiku_layout(&no_templates);
        assert!(layout.keys().all(|k| !k.contains("template")));
        assert!(
            layout
                .keys()
                .all(|k| !k.contains("predicted_aligned_error"))
        );
    }

    #[test]
    fn native_layout_has_one_entry_per_layer() {
        let dims = ModelDims::model_1_ptm();
        let native = expected_native_layout(&dims).unwrap();
        assert_eq!(
            native["evoformer.blocks.47.msa_transition.transition1.weight"],
            vec![256, 1024]
        );
        assert!(native.contains_key(
            "template_embedding.template_pair_stack.blocks.1.pair_transition.input_layer_norm.gamma"
        ));
        assert_eq!(
            native["structure_module.fold_iteration.invariant_point_attention.trainable_point_weights"],
            vec![12]
        );
    }
}
