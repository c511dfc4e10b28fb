//! Our converted weight format: safetensors with native names, `F32` little-endian tensors,
//! and metadata recording the format version and the inferred [`ModelDims`] as JSON.

use super::ParamStore;
use super::dims::ModelDims;
use super::layout::check_layout;
use super::names::native_to_haiku;
use crate::atomic::write_atomically;
use crate::error::{IoError, Result};
use crate::npz::{NdArray, element_count};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// Metadata key holding the [`ModelDims`] JSON.
pub const DIMS_KEY: &str = "af2.dims";
/// Metadata key holding [`FORMAT_VERSION`].
pub const FORMAT_VERSION_KEY: &str = "af2.format_version";
/// Version of our safetensors layout (native names, f32).
pub const FORMAT_VERSION: &str = "1";
/// Metadata key holding the naming convention (`"native"`).
pub const NAMING_KEY: &str = "af2.names";

/// Path shown in errors about in-memory buffers.
const MEMORY: &str = "<memory>";

/// Encodes a native store as safetensors bytes. The metadata always records the format
/// version; it records the dims under [`DIMS_KEY`] when the store is a complete AlphaFold
/// store (dims can be inferred), so partial stores (e.g. a single layer in a test) still encode.
pub fn safetensors_bytes(store: &ParamStore) -> Result<Vec<u8>> {
    let dims = native_to_haiku(store)
        .and_then(|haiku| ModelDims::infer(&haiku))
        .ok();
    encode(store, &BTreeMap::new(), dims.as_ref(), Path::new(MEMORY))
}

/// Writes a complete native store as a safetensors file, atomically. The store's dims are
/// inferred and its layout is checked first (so the file always loads with
/// [`super::load_weights`]); `metadata` entries are added to the header (the `af2.*` keys are
/// set by this function and override entries of the same name).
pub fn write_safetensors(
    store: &ParamStore,
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let dims = native_to_haiku(store)
        .and_then(|haiku| ModelDims::infer(&haiku))
        .map_err(|e| e.in_file(path))?;
    check_layout(store, &dims).map_err(|e| e.in_file(path))?;
    let bytes = encode(store, metadata, Some(&dims), path)?;
    write_atomically(path, |file| {
        let mut writer = std::io::BufWriter::new(file);
        writer.write_all(&bytes)?;
        writer.flush()
    })
}

/// Serialises tensors and metadata.
fn encode(
    store: &ParamStore,
    extra: &BTreeMap<String, String>,
    dims: Option<&ModelDims>,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut metadata: HashMap<String, String> = extra.clone().into_iter().collect();
    metadata.insert(FORMAT_VERSION_KEY.into(), FORMAT_VERSION.into());
    metadata.insert(NAMING_KEY.into(), "native".into());
    if let Some(dims) = dims {
        let json = serde_json::to_string(dims).map_err(|e| st_error(path, e.to_string()))?;
        metadata.insert(DIMS_KEY.into(), json);
    }
    for (name, t) in &store.tensors {
        if element_count(&t.shape) != Some(t.data.len()) {
            return Err(st_error(
                path,
                format!(
                    "tensor '{name}': shape {:?} does not match its {} elements",
                    t.shape,
                    t.data.len()
                ),
            ));
        }
    }
    let views = store
        .tensors
        .iter()
        .map(|(name, t)| (name.as_str(), F32View(t)));
    safetensors::serialize(views, Some(metadata)).map_err(|e| st_error(path, e.to_string()))
}

/// Borrowed view of an f32 tensor; bytes are produced one tensor at a time while serialising.
struct F32View<'a>(&'a NdArray<f32>);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(f32_bytes(&self.0.data))
    }

    fn data_len(&self) -> usize {
        self.0.data.len() * std::mem::size_of::<f32>()
    }
}

/// Little-endian bytes of an f32 slice.
fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Reads a safetensors file of f32 tensors into a store (names as stored).
pub fn read_safetensors(path: &Path) -> Result<ParamStore> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, "open", e))?;
    decode_safetensors(&bytes, path)
}

/// Reads the string metadata of a safetensors file.
pub fn read_safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, "open", e))?;
    decode_metadata(&bytes, path)
}

/// Decodes the metadata of safetensors bytes; `path` is used in error messages.
pub(crate) fn decode_metadata(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, String>> {
    let (_, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| st_error(path, e.to_string()))?;
    Ok(metadata
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect())
}

/// Decodes safetensors bytes into a store; `path` is used in error messages.
pub fn decode_safetensors(bytes: &[u8], path: &Path) -> Result<ParamStore> {
    let parsed = SafeTensors::deserialize(bytes).map_err(|e| st_error(path, e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in parsed.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(st_error(
                path,
                format!("tensor '{name}' has dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let tensor = NdArray::new(view.shape().to_vec(), data)
            .map_err(|e| st_error(path, format!("tensor '{name}': {e}")))?;
        tensors.insert(name.to_string(), tensor);
    }
    Ok(ParamStore { tensors })
}

/// Builds an [`IoError::Safetensors`].
fn st_error(path: &Path, message: String) -> IoError {
    IoError::Safetensors {
        path: path.to_path_buf(),
        message,
    }
}
