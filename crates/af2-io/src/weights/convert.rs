//! Converting the released weights to our safetensors format, with a bit-for-bit check.

use super::{
    ModelDims, check_haiku_layout, haiku_into_native, load_weights, read_haiku_npz,
    write_safetensors,
};
use crate::error::{IoError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What [`convert_npz_to_safetensors`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionSummary {
    /// The released `.npz` read.
    pub input: PathBuf,
    /// The safetensors file written.
    pub output: PathBuf,
    /// Dimensions inferred from the parameter shapes.
    pub dims: ModelDims,
    /// Arrays in the haiku layout.
    pub haiku_arrays: usize,
    /// Native tensors written.
    pub native_tensors: usize,
    /// Floats written.
    pub floats: usize,
}

/// The default name of a converted file: `params_model_1_ptm.npz` → `model_1_ptm.safetensors`.
pub fn converted_file_name(input: &Path) -> Option<String> {
    let stem = input.file_stem()?.to_str()?;
    let name = stem.strip_prefix("params_").unwrap_or(stem);
    Some(format!("{name}.safetensors"))
}

/// Reads released weights (`params_model_*.npz`), checks their layout, writes them as our
/// safetensors (atomically, creating the output's directory), loads the result back and checks
/// that every tensor is bitwise equal and the dims agree. The metadata records the source file
/// name under `af2.source`.
pub fn convert_npz_to_safetensors(input: &Path, output: &Path) -> Result<ConversionSummary> {
    let haiku = read_haiku_npz(input)?;
    let dims = ModelDims::infer(&haiku).map_err(|e| e.in_file(input))?;
    check_haiku_layout(&haiku, &dims).map_err(|e| e.in_file(input))?;
    let haiku_arrays = haiku.len();
    let native = haiku_into_native(haiku).map_err(|e| e.in_file(input))?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| IoError::io(dir, "create directory", e))?;
    }
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = BTreeMap::from([("af2.source".to_string(), name)]);
    write_safetensors(&native, output, &metadata)?;
    let loaded = load_weights(output)?;
    if loaded.dims != dims {
        return Err(IoError::invalid(
            "dims",
            format!("dims after reload differ: {:?} vs {:?}", loaded.dims, dims),
        )
        .in_file(output));
    }
    if let Some(difference) = loaded.native.first_difference(&native) {
        return Err(
            IoError::invalid("tensors", format!("reloaded tensors differ: {difference}"))
                .in_file(output),
        );
    }
    Ok(ConversionSummary {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        dims,
        haiku_arrays,
        native_tensors: native.len(),
        floats: native.num_floats(),
    })
}
