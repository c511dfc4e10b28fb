//! Weights on the real fixture layouts: name mapping, layout checks, dims, safetensors, loading.

mod common;

use af2_io::weights::{
    self, DIMS_KEY, ModelDims, ParamStore, check_haiku_layout, check_layout, haiku_to_native,
    load_weights, native_to_haiku, read_haiku_npz, read_safetensors, read_safetensors_metadata,
    write_safetensors,
};
use af2_io::{IoError, NdArray};
use common::{FIXTURES, fixture};
use std::collections::BTreeMap;

const ROOT: &str = "alphafold/alphafold_iteration/";

fn haiku(name: &str) -> ParamStore {
    read_haiku_npz(&fixture(name, "params.npz")).expect("fixture params.npz reads")
}

#[test]
fn haiku_native_roundtrip_is_exact_on_all_fixtures() {
    for name in FIXTURES {
        let store = haiku(name);
        assert_eq!(store.len(), 338, "{name}");
        let native = haiku_to_native(&store).unwrap();
        assert_eq!(native.num_floats(), store.num_floats(), "{name}");
        assert!(native.tensors.keys().all(|k| !k.contains('/')), "{name}");
        let back = native_to_haiku(&native).unwrap();
        assert_eq!(back.first_difference(&store), None, "{name}");
    }
}

#[test]
fn native_names_split_stacked_layers() {
    let store = haiku("r0_n20"); // 3 Evoformer blocks, 2 extra-MSA blocks
    let native = haiku_to_native(&store).unwrap();
    let key = format!(
        "{ROOT}evoformer/evoformer_iteration/msa_row_attention_with_pair_bias/attention//query_w"
    );
    let stacked = &store.tensors[&key];
    assert_eq!(stacked.shape, vec![3, 32, 4, 8]);
    for i in 0..3 {
        let layer = &native.tensors
            [&format!("evoformer.blocks.{i}.msa_row_attention_with_pair_bias.attention.query_w")];
        assert_eq!(layer.shape, vec![32, 4, 8]);
        let n = layer.data.len();
        assert_eq!(layer.data, stacked.data[i * n..(i + 1) * n]);
    }
    assert!(
        !native
            .tensors
            .contains_key("evoformer.blocks.3.msa_row_attention_with_pair_bias.attention.query_w")
    );
    assert!(
        native
            .tensors
            .contains_key("extra_msa_stack.blocks.1.msa_column_global_attention.attention.key_w")
    );
    assert!(
        native.tensors.contains_key(
            "structure_module.fold_iteration.invariant_point_attention.q_scalar.weight"
        )
    );
    assert!(
        native
            .tensors
            .contains_key("heads.predicted_lddt_head.input_layer_norm.gamma")
    );
    assert!(
        native
            .tensors
            .contains_key("input_embedder.pair_activiations.bias")
    );
}

#[test]
fn layout_check_passes_on_fixtures() {
    for name in FIXTURES {
        let store = haiku(name);
        let dims = ModelDims::infer(&store).unwrap();
        check_haiku_layout(&store, &dims).unwrap();
        check_layout(&haiku_to_native(&store).unwrap(), &dims).unwrap();
    }
}

/// Reads `config` from a fixture's meta.json.
fn meta_config(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name, "meta.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    meta["config"]["model"].clone()
}

fn u(v: &serde_json::Value) -> usize {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}")) as usize
}

#[test]
fn inferred_dims_match_meta_config() {
    let dims = ModelDims::infer(&haiku("msa_template_n16")).unwrap();
    // The widths the brief names explicitly.
    assert_eq!(
        (
            dims.msa_channel,
            dims.pair_channel,
            dims.extra_msa_channel,
            dims.seq_channel
        ),
        (32, 16, 16, 48)
    );
    assert_eq!(dims.template.as_ref().unwrap().channel, 16);
    assert_eq!(dims.structure.channel, 48);
    // And everything else, from the full config in meta.json.
    let cfg = meta_config("msa_template_n16");
    let e = &cfg["embeddings_and_evoformer"];
    assert_eq!(dims.msa_channel, u(&e["msa_channel"]));
    assert_eq!(dims.pair_channel, u(&e["pair_channel"]));
    assert_eq!(dims.extra_msa_channel, u(&e["extra_msa_channel"]));
    assert_eq!(dims.seq_channel, u(&e["seq_channel"]));
    assert_eq!(dims.evoformer_blocks, u(&e["evoformer_num_block"]));
    assert_eq!(dims.extra_msa_blocks, u(&e["extra_msa_stack_num_block"]));
    let ev = &e["evoformer"];
    let (cm, cz, ce) = (dims.msa_channel, dims.pair_channel, dims.extra_msa_channel);
    let row_heads = u(&ev["msa_row_attention_with_pair_bias"]["num_head"]);
    let col_heads = u(&ev["msa_column_attention"]["num_head"]);
    let tri_heads = u(&ev["triangle_attention_starting_node"]["num_head"]);
    let s = &dims.evoformer;
    assert_eq!(
        (s.msa_row_heads, s.msa_row_head_dim),
        (row_heads, cm / row_heads)
    );
    assert_eq!(
        (s.msa_col_heads, s.msa_col_head_dim),
        (col_heads, cm / col_heads)
    );
    assert_eq!(
        s.msa_transition_hidden,
        cm * u(&ev["msa_transition"]["num_intermediate_factor"])
    );
    assert_eq!(
        s.opm_channel,
        u(&ev["outer_product_mean"]["num_outer_channel"])
    );
    assert_eq!(
        s.tri_mul_channel,
        u(&ev["triangle_multiplication_outgoing"]["num_intermediate_channel"])
    );
    assert_eq!(
        (s.tri_att_heads, s.tri_att_head_dim),
        (tri_heads, cz / tri_heads)
    );
    assert_eq!(
        s.pair_transition_hidden,
        cz * u(&ev["pair_transition"]["num_intermediate_factor"])
    );
    let x = &dims.extra_msa;
    assert_eq!(
        (x.msa_row_heads, x.msa_row_head_dim),
        (row_heads, ce / row_heads)
    );
    assert_eq!(
        (x.msa_col_heads, x.msa_col_head_dim),
        (col_heads, ce / col_heads)
    );
    assert_eq!(x.msa_transition_hidden, ce * 4);

    let t = dims.template.as_ref().unwrap();
    let tc = &e["template"];
    let tps = &tc["template_pair_stack"];
    assert_eq!(t.blocks, u(&tps["num_block"]));
    let ct = u(&tps["triangle_attention_ending_node"]["value_dim"]);
    assert_eq!(t.channel, ct);
    let th = u(&tps["triangle_attention_starting_node"]["num_head"]);
    assert_eq!((t.tri_att_heads, t.tri_att_head_dim), (th, ct / th));
    assert_eq!(
        t.tri_mul_channel,
        u(&tps["triangle_multiplication_outgoing"]["num_intermediate_channel"])
    );
    assert_eq!(
        t.transition_hidden,
        ct * u(&tps["pair_transition"]["num_intermediate_factor"])
    );
    let ah = u(&tc["attention"]["num_head"]);
    assert_eq!(t.pointwise_heads, ah);
    assert_eq!(t.pointwise_key_dim, u(&tc["attention"]["key_dim"]) / ah);
    assert_eq!(t.pointwise_value_dim, u(&tc["attention"]["value_dim"]) / ah);
    assert_eq!((t.pair_feat_channels, t.single_feat_channels), (88, 57));

    let heads = &cfg["heads"];
    let sm = &heads["structure_module"];
    let st = &dims.structure;
    assert_eq!(st.channel, u(&sm["num_channel"]));
    assert_eq!(st.ipa_heads, u(&sm["num_head"]));
    assert_eq!(st.scalar_qk, u(&sm["num_scalar_qk"]));
    assert_eq!(st.point_qk, u(&sm["num_point_qk"]));
    assert_eq!(st.scalar_v, u(&sm["num_scalar_v"]));
    assert_eq!(st.point_v, u(&sm["num_point_v"]));
    assert_eq!(st.sidechain_channel, u(&sm["sidechain"]["num_channel"]));
    assert_eq!(
        dims.plddt_channel,
        u(&heads["predicted_lddt"]["num_channels"])
    );
    assert_eq!(dims.plddt_bins, u(&heads["predicted_lddt"]["num_bins"]));
    assert_eq!(dims.distogram_bins, u(&heads["distogram"]["num_bins"]));
    assert_eq!(
        dims.pae_bins,
        Some(u(&heads["predicted_aligned_error"]["num_bins"]))
    );
    assert_eq!(
        dims.masked_msa_classes,
        u(&heads["masked_msa"]["num_output"])
    );
}

#[test]
fn block_counts_differ_between_fixtures() {
    let r0 = ModelDims::infer(&haiku("r0_n20")).unwrap();
    assert_eq!((r0.evoformer_blocks, r0.extra_msa_blocks), (3, 2));
    let cfg = meta_config("r0_n20");
    let e = &cfg["embeddings_and_evoformer"];
    assert_eq!(r0.evoformer_blocks, u(&e["evoformer_num_block"]));
    assert_eq!(r0.extra_msa_blocks, u(&e["extra_msa_stack_num_block"]));
}

fn layout_error(store: &ParamStore, dims: &ModelDims) -> String {
    match check_haiku_layout(store, dims) {
        Err(e @ IoError::Layout { .. }) => e.to_string(),
        other => panic!("expected a layout error, got {other:?}"),
    }
}

#[test]
fn layout_check_reports_missing_key() {
    let mut store = haiku("msa_template_n16");
    let dims = ModelDims::infer(&store).unwrap();
    let key = format!("{ROOT}evoformer/evoformer_iteration/msa_transition/transition2//bias");
    store.tensors.remove(&key);
    let msg = layout_error(&store, &dims);
    assert!(
        msg.contains(&format!("missing key '{key}' (expected shape [2, 32])")),
        "{msg}"
    );
    assert!(msg.contains("(1 problems)"), "{msg}");
}

#[test]
fn layout_check_reports_extra_key() {
    let mut store = haiku("msa_template_n16");
    let dims = ModelDims::infer(&store).unwrap();
    let key = format!("{ROOT}structure_module/bogus//weights");
    store
        .tensors
        .insert(key.clone(), NdArray::new(vec![3, 2], vec![0.0; 6]).unwrap());
    let msg = layout_error(&store, &dims);
    assert!(
        msg.contains(&format!("unexpected key '{key}' (found shape [3, 2])")),
        "{msg}"
    );
}

#[test]
fn layout_check_reports_wrong_shape() {
    let mut store = haiku("msa_template_n16");
    let dims = ModelDims::infer(&store).unwrap();
    let key = format!("{ROOT}evoformer/evoformer_iteration/msa_transition/transition1//weights");
    let t = store.tensors.get_mut(&key).unwrap();
    t.shape = vec![2, 128, 32];
    let msg = layout_error(&store, &dims);
    assert!(
        msg.contains(&format!(
            "key '{key}': expected shape [2, 32, 128], found shape [2, 128, 32]"
        )),
        "{msg}"
    );
}

#[test]
fn layout_check_shows_only_the_first_ten_problems() {
    let mut store = haiku("msa_template_n16");
    let dims = ModelDims::infer(&store).unwrap();
    let keys: Vec<String> = store
        .tensors
        .keys()
        .filter(|k| k.contains("evoformer_iteration"))
        .take(15)
        .cloned()
        .collect();
    for k in &keys {
        store.tensors.remove(k);
    }
    let msg = layout_error(&store, &dims);
    assert!(
        msg.contains("(15 problems)") && msg.contains("... and 5 more"),
        "{msg}"
    );
}

#[test]
fn native_layout_check_catches_a_missing_layer() {
    let store = haiku("r0_n20");
    let dims = ModelDims::infer(&store).unwrap();
    let mut native = haiku_to_native(&store).unwrap();
    native
        .tensors
        .remove("evoformer.blocks.2.pair_transition.transition1.bias");
    let err = check_layout(&native, &dims).unwrap_err().to_string();
    assert!(
        err.contains("pair_transition/transition1//bias") && err.contains("[2, 64]"),
        "{err}"
    );
}

#[test]
fn unknown_haiku_key_is_an_error_naming_it() {
    let mut store = haiku("single_seq_n24");
    let key = format!("{ROOT}evoformer/mystery_module//weights");
    store
        .tensors
        .insert(key.clone(), NdArray::new(vec![1], vec![0.0]).unwrap());
    let err = haiku_to_native(&store).unwrap_err().to_string();
    assert!(err.contains(&key), "{err}");
}

#[test]
fn models_without_templates_or_pae_infer_and_check() {
    let mut store = haiku("msa_template_n16");
    store
        .tensors
        .retain(|k, _| !k.contains("template") && !k.contains("predicted_aligned_error"));
    let dims = ModelDims::infer(&store).unwrap();
    assert_eq!(dims.template, None);
    assert_eq!(dims.pae_bins, None);
    check_haiku_layout(&store, &dims).unwrap();
    let native = haiku_to_native(&store).unwrap();
    assert_eq!(native_to_haiku(&native).unwrap(), store);
}

#[test]
fn infer_names_the_missing_key() {
    let mut store = haiku("msa_template_n16");
    let key = format!(
        "{ROOT}structure_module/fold_iteration/invariant_point_attention//trainable_point_weights"
    );
    store.tensors.remove(&key);
    let err = ModelDims::infer(&store).unwrap_err().to_string();
    assert!(err.contains(&key), "{err}");
}

#[test]
fn safetensors_roundtrip_is_bitwise_and_records_dims() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let store = haiku(name);
        let dims = ModelDims::infer(&store).unwrap();
        let native = haiku_to_native(&store).unwrap();
        let path = dir.path().join(format!("{name}.safetensors"));
        let extra = BTreeMap::from([("source".to_string(), name.to_string())]);
        write_safetensors(&native, &path, &extra).unwrap();
        let back = read_safetensors(&path).unwrap();
        assert_eq!(back.first_difference(&native), None, "{name}");
        let meta = read_safetensors_metadata(&path).unwrap();
        assert_eq!(meta["source"], name);
        let recorded: ModelDims = serde_json::from_str(&meta[DIMS_KEY]).unwrap();
        assert_eq!(recorded, dims);
        // In-memory encoding decodes to the same tensors.
        let bytes = weights::safetensors_bytes(&native).unwrap();
        let decoded = weights::decode_safetensors(&bytes, &path).unwrap();
        assert_eq!(decoded.first_difference(&native), None, "{name}");
    }
    // Only the final files, no temporaries.
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        FIXTURES.len()
    );
}

#[test]
fn load_weights_accepts_both_formats_by_magic() {
    let dir = tempfile::tempdir().unwrap();
    let npz = fixture("msa_template_n16", "params.npz");
    let from_npz = load_weights(&npz).unwrap();
    assert_eq!(from_npz.source, npz);
    assert_eq!(
        from_npz.dims,
        ModelDims::infer(&haiku("msa_template_n16")).unwrap()
    );
    // Wrong extensions: detection is by content.
    let st = dir.path().join("weights.npz");
    write_safetensors(&from_npz.native, &st, &BTreeMap::new()).unwrap();
    let from_st = load_weights(&st).unwrap();
    assert_eq!(from_st.dims, from_npz.dims);
    assert_eq!(from_st.native.first_difference(&from_npz.native), None);
    let zip = dir.path().join("weights.safetensors");
    std::fs::copy(&npz, &zip).unwrap();
    assert_eq!(load_weights(&zip).unwrap().native, from_npz.native);
}

#[test]
fn load_weights_rejects_recorded_dims_that_disagree() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load_weights(&fixture("single_seq_n24", "params.npz")).unwrap();
    let mut wrong = loaded.dims.clone();
    wrong.plddt_bins += 1;
    let bytes_of: Vec<(String, Vec<u8>, Vec<usize>)> = loaded
        .native
        .tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let views = bytes_of.iter().map(|(k, b, s)| {
        (
            k.as_str(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
        )
    });
    let meta = std::collections::HashMap::from([(
        DIMS_KEY.to_string(),
        serde_json::to_string(&wrong).unwrap(),
    )]);
    let path = dir.path().join("bad.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &path).unwrap();
    let err = load_weights(&path).unwrap_err().to_string();
    assert!(
        err.contains("bad.safetensors") && err.contains(DIMS_KEY),
        "{err}"
    );
}

#[test]
fn load_weights_missing_file_names_the_path() {
    let path = std::path::Path::new("/nonexistent/dir/params_model_1.npz");
    let err = load_weights(path).unwrap_err();
    assert!(matches!(err, IoError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("/nonexistent/dir/params_model_1.npz"),
        "{err}"
    );
}

#[test]
fn load_weights_layout_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = haiku("msa_template_n16");
    let key = format!("{ROOT}distogram_head/half_logits//bias");
    store.tensors.remove(&key);
    let arrays: Vec<(String, af2_io::Array)> = store
        .tensors
        .into_iter()
        .map(|(k, t)| (k, t.into()))
        .collect();
    let path = dir.path().join("broken.npz");
    af2_io::npz::write_npz(&path, &arrays).unwrap();
    let err = load_weights(&path).unwrap_err().to_string();
    assert!(err.contains("broken.npz") && err.contains(&key), "{err}");
}

#[test]
fn write_safetensors_refuses_incomplete_stores() {
    let dir = tempfile::tempdir().unwrap();
    let mut native = haiku_to_native(&haiku("msa_template_n16")).unwrap();
    native.tensors.remove("heads.masked_msa_head.logits.bias");
    let path = dir.path().join("partial.safetensors");
    let err = write_safetensors(&native, &path, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("partial.safetensors") && err.contains("masked_msa_head/logits//bias"),
        "{err}"
    );
    assert!(!path.exists());
    // The in-memory encoder accepts partial stores (e.g. one module's weights).
    let bytes = weights::safetensors_bytes(&native).unwrap();
    let back = weights::decode_safetensors(&bytes, &path).unwrap();
    assert_eq!(back.first_difference(&native), None);
}
