//! THE mapping between AlphaFold's haiku parameter names and our native names.
//!
//! Haiku names look like `alphafold/alphafold_iteration/<module path>//<param>`; native names
//! are dot-separated, e.g. `evoformer.blocks.0.msa_row_attention_with_pair_bias.attention.query_w`.
//!
//! The mapping:
//! 1. strips [`HAIKU_ROOT`];
//! 2. replaces the module-path prefix by a native prefix using [`RULES`] (first match wins,
//!    matching whole path segments); stacked modules carry a leading layer axis in haiku and
//!    become one native tensor per layer, `<native prefix>.<i>.`;
//! 3. turns the remaining `/` and `//` separators into `.`;
//! 4. renames the parameter: `weights` → `weight`, `scale` → `gamma`, `offset` → `beta`.
//!
//! Every mapped name is checked to map back to the haiku name it came from, so the mapping is
//! a bijection on every store it accepts.

use super::ParamStore;
use crate::error::{IoError, Result};
use crate::npz::NdArray;
use std::collections::BTreeMap;

/// The prefix of every parameter in the released AlphaFold monomer weights.
pub const HAIKU_ROOT: &str = "alphafold/alphafold_iteration/";

/// One row of the mapping table: a haiku module-path prefix and its native prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Haiku module-path prefix, relative to [`HAIKU_ROOT`], without a trailing `/`.
    pub haiku: &'static str,
    /// Native prefix without a trailing `.`; for stacked rules the layer index follows it.
    pub native: &'static str,
    /// Whether haiku stores these parameters with a leading layer axis.
    pub stacked: bool,
}

/// Shorthand constructor for [`RULES`].
const fn rule(haiku: &'static str, native: &'static str, stacked: bool) -> Rule {
    Rule {
        haiku,
        native,
        stacked,
    }
}

/// The mapping table, haiku module prefix → native prefix. The first matching rule wins.
pub const RULES: &[Rule] = &[
    rule("evoformer/evoformer_iteration", "evoformer.blocks", true),
    rule("evoformer/extra_msa_stack", "extra_msa_stack.blocks", true),
    rule(
        "evoformer/template_embedding/single_template_embedding/template_pair_stack/__layer_stack_no_state",
        "template_embedding.template_pair_stack.blocks",
        true,
    ),
    rule(
        "evoformer/template_embedding/single_template_embedding",
        "template_embedding",
        false,
    ),
    rule(
        "evoformer/template_embedding/attention",
        "template_embedding.attention",
        false,
    ),
    rule(
        "evoformer/preprocess_1d",
        "input_embedder.preprocess_1d",
        false,
    ),
    rule(
        "evoformer/preprocess_msa",
        "input_embedder.preprocess_msa",
        false,
    ),
    rule("evoformer/left_single", "input_embedder.left_single", false),
    rule(
        "evoformer/right_single",
        "input_embedder.right_single",
        false,
    ),
    // Sic: the upstream module name is misspelt.
    rule(
        "evoformer/pair_activiations",
        "input_embedder.pair_activiations",
        false,
    ),
    rule(
        "evoformer/prev_pos_linear",
        "recycling_embedder.prev_pos_linear",
        false,
    ),
    rule(
        "evoformer/prev_msa_first_row_norm",
        "recycling_embedder.prev_msa_first_row_norm",
        false,
    ),
    rule(
        "evoformer/prev_pair_norm",
        "recycling_embedder.prev_pair_norm",
        false,
    ),
    rule(
        "evoformer/template_single_embedding",
        "template_torsion_embedding.template_single_embedding",
        false,
    ),
    rule(
        "evoformer/template_projection",
        "template_torsion_embedding.template_projection",
        false,
    ),
    rule(
        "evoformer/extra_msa_activations",
        "extra_msa_stack.extra_msa_activations",
        false,
    ),
    rule(
        "evoformer/single_activations",
        "evoformer.single_activations",
        false,
    ),
    rule("structure_module", "structure_module", false),
    rule("predicted_lddt_head", "heads.predicted_lddt_head", false),
    rule(
        "predicted_aligned_error_head",
        "heads.predicted_aligned_error_head",
        false,
    ),
    rule("distogram_head", "heads.distogram_head", false),
    rule("masked_msa_head", "heads.masked_msa_head", false),
    rule(
        "experimentally_resolved_head",
        "heads.experimentally_resolved_head",
        false,
    ),
];

/// Parameter renames, haiku → native. Every other parameter name is kept.
pub const PARAM_RENAMES: &[(&str, &str)] = &[
    ("weights", "weight"),
    ("scale", "gamma"),
    ("offset", "beta"),
];

/// A haiku key resolved against the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeTarget {
    /// The matching rule.
    pub rule: Rule,
    /// The native name after the rule's prefix (and layer index), e.g. `attention.query_w`.
    pub suffix: String,
}

impl NativeTarget {
    /// The native name; `layer` must be `Some` exactly for stacked rules.
    pub fn name(&self, layer: Option<usize>) -> String {
        match layer {
            Some(i) => format!("{}.{i}.{}", self.rule.native, self.suffix),
            None => format!("{}.{}", self.rule.native, self.suffix),
        }
    }
}

/// Resolves a haiku key to its native target, checking that the mapping is invertible.
pub fn map_haiku_name(key: &str) -> Result<NativeTarget> {
    let target = resolve_haiku(key)?;
    let layer = target.rule.stacked.then_some(0);
    let (back, _) = native_name_to_haiku(&target.name(layer))?;
    if back != key {
        return Err(unknown(
            key,
            format!("maps to a native name that maps back to '{back}'"),
        ));
    }
    Ok(target)
}

/// Resolves a haiku key against [`RULES`] without the invertibility check.
fn resolve_haiku(key: &str) -> Result<NativeTarget> {
    let relative = key
        .strip_prefix(HAIKU_ROOT)
        .ok_or_else(|| unknown(key, format!("does not start with '{HAIKU_ROOT}'")))?;
    let (module, param) = relative
        .rsplit_once("//")
        .ok_or_else(|| unknown(key, "has no '//' between module path and parameter"))?;
    let rule = RULES
        .iter()
        .find(|r| segment_prefix(module, r.haiku, '/').is_some())
        .ok_or_else(|| unknown(key, "no rule in the mapping table matches its module path"))?;
    let rest = segment_prefix(module, rule.haiku, '/').unwrap_or_default();
    let mut parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let native_param = rename(param, PARAM_RENAMES.iter().map(|&(h, n)| (h, n)));
    parts.push(native_param);
    if parts
        .iter()
        .any(|p| p.is_empty() || p.contains('.') || p.contains('/'))
    {
        return Err(unknown(key, "has an empty segment or a '.' in a segment"));
    }
    Ok(NativeTarget {
        rule: *rule,
        suffix: parts.join("."),
    })
}

/// Maps a native name back to its haiku key and, for stacked modules, its layer index.
pub fn native_name_to_haiku(name: &str) -> Result<(String, Option<usize>)> {
    let (rule, layer, suffix) = match_native(name)?;
    let (module_rest, param) = match suffix.rsplit_once('.') {
        Some((module, param)) => (module, param),
        None => ("", suffix),
    };
    if param.is_empty() || module_rest.split('.').any(|s| s.contains('/')) {
        return Err(unknown(name, "malformed native name"));
    }
    if !module_rest.is_empty() && module_rest.split('.').any(str::is_empty) {
        return Err(unknown(name, "has an empty segment"));
    }
    let haiku_param = rename(param, PARAM_RENAMES.iter().map(|&(h, n)| (n, h)));
    let mut module = format!("{HAIKU_ROOT}{}", rule.haiku);
    if !module_rest.is_empty() {
        module.push('/');
        module.push_str(&module_rest.replace('.', "/"));
    }
    let key = format!("{module}//{haiku_param}");
    // The forward mapping must give the same name back (no two names share a haiku key).
    let forward = resolve_haiku(&key)?.name(layer);
    if forward != name {
        return Err(unknown(
            name,
            format!("maps to haiku key '{key}', which maps back to '{forward}'"),
        ));
    }
    Ok((key, layer))
}

/// Finds the rule with the longest native prefix matching `name`; returns the rule, the layer
/// index (stacked rules) and the remaining suffix.
fn match_native(name: &str) -> Result<(Rule, Option<usize>, &str)> {
    let mut best: Option<(Rule, Option<usize>, &str)> = None;
    for rule in RULES {
        let Some(rest) = segment_prefix(name, rule.native, '.') else {
            continue;
        };
        let candidate = if rule.stacked {
            let Some((index, suffix)) = rest.split_once('.') else {
                continue;
            };
            let Some(layer) = parse_layer(index) else {
                continue;
            };
            (*rule, Some(layer), suffix)
        } else {
            (*rule, None, rest)
        };
        if candidate.2.is_empty() {
            continue;
        }
        if best.is_none_or(|(b, _, _)| rule.native.len() > b.native.len()) {
            best = Some(candidate);
        }
    }
    best.ok_or_else(|| {
        unknown(
            name,
            "no rule in the mapping table matches this native name",
        )
    })
}

/// Parses a layer index written without leading zeros.
fn parse_layer(text: &str) -> Option<usize> {
    let canonical = text == "0" || (!text.starts_with('0') && !text.is_empty());
    if canonical && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

/// If `path` equals `prefix` or continues it at a `sep` boundary, returns the remainder
/// (without the separator).
fn segment_prefix<'a>(path: &'a str, prefix: &str, sep: char) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some(rest)
    } else {
        rest.strip_prefix(sep)
    }
}

/// Applies the first matching `(from, to)` rename.
fn rename<'a>(param: &'a str, mut table: impl Iterator<Item = (&'a str, &'a str)>) -> &'a str {
    table
        .find(|&(from, _)| from == param)
        .map_or(param, |(_, to)| to)
}

/// Builds an [`IoError::UnknownName`].
fn unknown(key: &str, message: impl Into<String>) -> IoError {
    IoError::UnknownName {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Converts a store with haiku names to native names (see the module docs), splitting stacked
/// parameters into one tensor per layer.
pub fn haiku_to_native(store: &ParamStore) -> Result<ParamStore> {
    haiku_into_native(store.clone())
}

/// Like [`haiku_to_native`], consuming the store to avoid copying unstacked tensors.
pub fn haiku_into_native(store: ParamStore) -> Result<ParamStore> {
    let mut native = BTreeMap::new();
    for (key, tensor) in store.tensors {
        let target = map_haiku_name(&key)?;
        if target.rule.stacked {
            for (i, layer) in split_layers(&key, &tensor)?.into_iter().enumerate() {
                insert_unique(&mut native, target.name(Some(i)), layer)?;
            }
        } else {
            insert_unique(&mut native, target.name(None), tensor)?;
        }
    }
    Ok(ParamStore { tensors: native })
}

/// Converts a store with native names back to haiku names, restacking per-layer tensors.
pub fn native_to_haiku(store: &ParamStore) -> Result<ParamStore> {
    native_into_haiku(store.clone())
}

/// Like [`native_to_haiku`], consuming the store.
pub fn native_into_haiku(store: ParamStore) -> Result<ParamStore> {
    let mut haiku = BTreeMap::new();
    let mut stacks: BTreeMap<String, BTreeMap<usize, (String, NdArray<f32>)>> = BTreeMap::new();
    for (name, tensor) in store.tensors {
        match native_name_to_haiku(&name)? {
            (key, Some(layer)) => {
                stacks.entry(key).or_default().insert(layer, (name, tensor));
            }
            (key, None) => insert_unique(&mut haiku, key, tensor)?,
        }
    }
    for (key, layers) in stacks {
        let stacked = stack_layers(&key, layers)?;
        insert_unique(&mut haiku, key, stacked)?;
    }
    Ok(ParamStore { tensors: haiku })
}

/// Splits a tensor along its leading (layer) axis.
fn split_layers(key: &str, tensor: &NdArray<f32>) -> Result<Vec<NdArray<f32>>> {
    let layers = tensor.shape.first().copied().unwrap_or(0);
    if layers == 0 {
        return Err(IoError::invalid(
            key,
            format!(
                "stacked parameter needs a non-empty leading layer axis, found shape {:?}",
                tensor.shape
            ),
        ));
    }
    (0..layers)
        .map(|i| {
            tensor
                .index_axis0(i)
                .ok_or_else(|| IoError::invalid(key, format!("cannot take layer {i}")))
        })
        .collect()
}

/// Stacks per-layer tensors (indices must be exactly `0..n`, shapes equal) along a new axis 0.
fn stack_layers(
    key: &str,
    layers: BTreeMap<usize, (String, NdArray<f32>)>,
) -> Result<NdArray<f32>> {
    let count = layers.len();
    let mut shape = Vec::new();
    let mut data = Vec::new();
    for (expected_index, (index, (name, tensor))) in layers.into_iter().enumerate() {
        if index != expected_index {
            return Err(IoError::invalid(
                key,
                format!(
                    "layer {expected_index} is missing (found layers up to {index}, e.g. '{name}')"
                ),
            ));
        }
        if index == 0 {
            shape = tensor.shape.clone();
            data.reserve(tensor.data.len() * count);
        } else if tensor.shape != shape {
            return Err(IoError::Shape {
                key: name,
                expected: shape,
                found: tensor.shape,
            });
        }
        data.extend_from_slice(&tensor.data);
    }
    let mut full_shape = vec![count];
    full_shape.extend(shape);
    Ok(NdArray {
        shape: full_shape,
        data,
    })
}

/// Inserts a tensor, failing if the name is already taken.
fn insert_unique(
    map: &mut BTreeMap<String, NdArray<f32>>,
    name: String,
    tensor: NdArray<f32>,
) -> Result<()> {
    if map.contains_key(&name) {
        return Err(IoError::invalid(name, "two parameters map to this name"));
    }
    map.insert(name, tensor);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(key: &str, layer: Option<usize>) -> String {
        map_haiku_name(key).unwrap().name(layer)
    }

    #[test]
    fn documented_examples() {
        assert_eq!(
            native(
                "alphafold/alphafold_iteration/evoformer/evoformer_iteration/msa_row_attention_with_pair_bias/attention//query_w",
                Some(1)
            ),
            "evoformer.blocks.1.msa_row_attention_with_pair_bias.attention.query_w"
        );
        assert_eq!(
            native(
                "alphafold/alphafold_iteration/structure_module/fold_iteration/invariant_point_attention/q_scalar//weights",
                None
            ),
            "structure_module.fold_iteration.invariant_point_attention.q_scalar.weight"
        );
        assert_eq!(
            native(
                "alphafold/alphafold_iteration/evoformer/preprocess_1d//weights",
                None
            ),
            "input_embedder.preprocess_1d.weight"
        );
        assert_eq!(
            native(
                "alphafold/alphafold_iteration/evoformer/template_embedding/attention//query_w",
                None
            ),
            "template_embedding.attention.query_w"
        );
        assert_eq!(
            native(
                "alphafold/alphafold_iteration/evoformer/template_embedding/single_template_embedding/output_layer_norm//scale",
                None
            ),
            "template_embedding.output_layer_norm.gamma"
        );
        assert_eq!(
            native(
                "alphafold/alphafold_iteration/evoformer/template_embedding/single_template_embedding/template_pair_stack/__layer_stack_no_state/pair_transition/input_layer_norm//offset",
                Some(0)
            ),
            "template_embedding.template_pair_stack.blocks.0.pair_transition.input_layer_norm.beta"
        );
    }

    #[test]
    fn inverse_of_examples() {
        let (key, layer) = native_name_to_haiku("template_embedding.attention.output_b").unwrap();
        assert_eq!(
            key,
            "alphafold/alphafold_iteration/evoformer/template_embedding/attention//output_b"
        );
        assert_eq!(layer, None);
        let (key, layer) =
            native_name_to_haiku("extra_msa_stack.blocks.3.msa_transition.transition1.weight")
                .unwrap();
        assert_eq!(
            key,
            "alphafold/alphafold_iteration/evoformer/extra_msa_stack/msa_transition/transition1//weights"
        );
        assert_eq!(layer, Some(3));
    }

    #[test]
    fn unknown_and_ambiguous_names_are_errors() {
        for bad in [
            "alphafold/alphafold_iteration/evoformer/unknown_module//weights",
            "other_root/evoformer/preprocess_1d//weights",
            "alphafold/alphafold_iteration/evoformer/preprocess_1d/weights",
            "alphafold/alphafold_iteration/evoformer/preprocess_1dx//weights",
            // Would collide with template_embedding/attention on the way back.
            "alphafold/alphafold_iteration/evoformer/template_embedding/single_template_embedding/attention//query_w",
            // Native-style parameter names are not invertible.
            "alphafold/alphafold_iteration/structure_module/initial_projection//weight",
        ] {
            let err = map_haiku_name(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
        for bad in [
            "nothing.weight",
            "evoformer.blocks.01.x.weight",
            "evoformer.blocks.x.weight",
            "evoformer.blocks.0",
        ] {
            assert!(native_name_to_haiku(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn restacking_requires_contiguous_layers() {
        let t = |v: f32| NdArray {
            shape: vec![2],
            data: vec![v, v],
        };
        let mut store = ParamStore::default();
        store.tensors.insert(
            "evoformer.blocks.0.pair_transition.transition1.bias".into(),
            t(0.0),
        );
        store.tensors.insert(
            "evoformer.blocks.2.pair_transition.transition1.bias".into(),
            t(2.0),
        );
        let err = native_to_haiku(&store).unwrap_err().to_string();
        assert!(err.contains("layer 1 is missing"), "{err}");
    }
}
