//! AlphaFold weights: the released haiku `.npz` layout, our native names, layout checks,
//! inferred model dimensions and our safetensors format.

mod convert;
mod dims;
mod layout;
mod names;
mod safetensors;

pub use self::convert::{ConversionSummary, convert_npz_to_safetensors, converted_file_name};
pub use self::dims::{ModelDims, StackDims, StructureDims, TemplateDims};
pub use self::layout::{
    AFFINE_UPDATE_DIM, ATOM37, EXTRA_MSA_FEAT_DIM, MSA_FEAT_DIM, PREV_POS_BINS, RELPOS_DIM,
    TARGET_FEAT_DIM, TORSION_OUTPUTS, check_haiku_layout, check_layout, expected_haiku_layout,
    expected_native_layout, layout_problems,
};
pub use self::names::{
    HAIKU_ROOT, NativeTarget, PARAM_RENAMES, RULES, Rule, haiku_into_native, haiku_to_native,
    map_haiku_name, native_into_haiku, native_name_to_haiku, native_to_haiku,
};
pub use self::safetensors::{
    DIMS_KEY, FORMAT_VERSION, FORMAT_VERSION_KEY, NAMING_KEY, decode_safetensors, read_safetensors,
    read_safetensors_metadata, safetensors_bytes, write_safetensors,
};

use crate::error::{IoError, Result};
use crate::npz::{Array, NdArray, read_npz};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A set of named f32 parameters (haiku or native names, depending on context).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamStore {
    /// Parameters by name.
    pub tensors: BTreeMap<String, NdArray<f32>>,
}

impl ParamStore {
    /// Number of arrays.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of floats over all arrays.
    pub fn num_floats(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// Looks a parameter up, with an error naming the key if it is absent.
    pub fn get(&self, name: &str) -> Result<&NdArray<f32>> {
        self.tensors.get(name).ok_or_else(|| IoError::MissingKey {
            key: name.to_string(),
        })
    }

    /// Describes the first difference from `other` (names, shapes, or bit patterns of values),
    /// or `None` if both stores are bitwise identical.
    pub fn first_difference(&self, other: &ParamStore) -> Option<String> {
        if let Some(name) = self
            .tensors
            .keys()
            .find(|k| !other.tensors.contains_key(*k))
        {
            return Some(format!("'{name}' is missing from the second store"));
        }
        if let Some(name) = other
            .tensors
            .keys()
            .find(|k| !self.tensors.contains_key(*k))
        {
            return Some(format!("'{name}' is missing from the first store"));
        }
        self.tensors.iter().find_map(|(name, a)| {
            let b = other.tensors.get(name)?;
            if a.shape != b.shape || a.data.len() != b.data.len() {
                return Some(format!(
                    "'{name}': shape {:?} ({} values) vs {:?} ({} values)",
                    a.shape,
                    a.data.len(),
                    b.shape,
                    b.data.len()
                ));
            }
            let i = a
                .data
                .iter()
                .zip(&b.data)
                .position(|(x, y)| x.to_bits() != y.to_bits())?;
            Some(format!(
                "'{name}': element {i} is {} vs {}",
                a.data[i], b.data[i]
            ))
        })
    }
}

/// Reads the released-layout `.npz` (haiku names as stored). Float64 arrays are converted to
/// f32; any non-float array is an error naming the file and key.
pub fn read_haiku_npz(path: &Path) -> Result<ParamStore> {
    let mut tensors = BTreeMap::new();
    for (key, array) in read_npz(path)? {
        let tensor = match array {
            Array::F32(a) => a,
            Array::F64(a) => a.map(|&v| v as f32),
            other => {
                return Err(IoError::Array {
                    path: path.to_path_buf(),
                    message: format!("weights must be float32, found {}", other.dtype_name()),
                    key,
                });
            }
        };
        tensors.insert(key, tensor);
    }
    Ok(ParamStore { tensors })
}

/// Weights ready for the model: native names, their dims, and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedWeights {
    /// Parameters with native names (one tensor per layer).
    pub native: ParamStore,
    /// Dimensions inferred from the parameter shapes.
    pub dims: ModelDims,
    /// The file they were loaded from.
    pub source: PathBuf,
}

/// The on-disk formats [`load_weights`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// The released haiku `.npz` (a zip archive).
    Npz,
    /// Our safetensors file with native names.
    Safetensors,
}

/// Detects the format of a weights file from its first bytes (not its extension): zip archives
/// start with `PK`; safetensors files with an 8-byte little-endian header length and then `{`.
pub fn detect_format(path: &Path) -> Result<WeightFormat> {
    let file = std::fs::File::open(path).map_err(|e| IoError::io(path, "open", e))?;
    let mut head = Vec::with_capacity(9);
    file.take(9)
        .read_to_end(&mut head)
        .map_err(|e| IoError::io(path, "read", e))?;
    if head.starts_with(b"PK") {
        return Ok(WeightFormat::Npz);
    }
    if head.len() == 9 && head[8] == b'{' {
        return Ok(WeightFormat::Safetensors);
    }
    Err(IoError::UnknownFormat {
        path: path.to_path_buf(),
        message: format!(
            "expected an npz (zip) archive or a safetensors file, found leading bytes {:02x?}",
            head
        ),
    })
}

/// Loads weights for the model from either the released `.npz` (haiku names: layout checked,
/// then mapped to native names) or our safetensors (native names: mapped to haiku names, dims
/// inferred and layout checked; dims recorded in the metadata must agree).
pub fn load_weights(path: &Path) -> Result<LoadedWeights> {
    match detect_format(path)? {
        WeightFormat::Npz => load_npz(path),
        WeightFormat::Safetensors => load_safetensors(path),
    }
}

/// [`load_weights`] for the released `.npz`.
fn load_npz(path: &Path) -> Result<LoadedWeights> {
    let haiku = read_haiku_npz(path)?;
    let dims = ModelDims::infer(&haiku).map_err(|e| e.in_file(path))?;
    check_haiku_layout(&haiku, &dims).map_err(|e| e.in_file(path))?;
    let native = haiku_into_native(haiku).map_err(|e| e.in_file(path))?;
    Ok(LoadedWeights {
        native,
        dims,
        source: path.to_path_buf(),
    })
}

/// [`load_weights`] for our safetensors.
fn load_safetensors(path: &Path) -> Result<LoadedWeights> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, "read", e))?;
    let native = decode_safetensors(&bytes, path)?;
    let metadata = self::safetensors::decode_metadata(&bytes, path)?;
    drop(bytes);
    let haiku = native_to_haiku(&native).map_err(|e| e.in_file(path))?;
    let dims = ModelDims::infer(&haiku).map_err(|e| e.in_file(path))?;
    check_haiku_layout(&haiku, &dims).map_err(|e| e.in_file(path))?;
    check_metadata(&metadata, &dims).map_err(|e| e.in_file(path))?;
    Ok(LoadedWeights {
        native,
        dims,
        source: path.to_path_buf(),
    })
}

/// Checks the format version and, if present, that the recorded dims equal the inferred ones.
fn check_metadata(metadata: &BTreeMap<String, String>, dims: &ModelDims) -> Result<()> {
    if let Some(version) = metadata.get(FORMAT_VERSION_KEY)
        && version != FORMAT_VERSION
    {
        return Err(IoError::invalid(
            FORMAT_VERSION_KEY,
            format!("unsupported format version {version} (expected {FORMAT_VERSION})"),
        ));
    }
    if let Some(json) = metadata.get(DIMS_KEY) {
        let recorded: ModelDims = serde_json::from_str(json)
            .map_err(|e| IoError::invalid(DIMS_KEY, format!("invalid JSON: {e}")))?;
        if &recorded != dims {
            return Err(IoError::invalid(
                DIMS_KEY,
                format!("recorded dims {recorded:?} differ from the dims of the tensors {dims:?}"),
            ));
        }
    }
    Ok(())
}
