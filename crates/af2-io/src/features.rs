//! Model input features: the `features.npz` written by the reference pipeline.
//!
//! Every array has a leading recycle axis of size R+1; slice `[r]` is what iteration `r` sees.

use crate::error::{IoError, Result};
use crate::npz::{Array, read_npz};
use std::collections::BTreeMap;
use std::path::Path;

/// Reads a features `.npz` (all arrays, any numeric dtype). Errors name the file.
pub fn read_features(path: &Path) -> Result<BTreeMap<String, Array>> {
    read_npz(path)
}

/// Takes slice `[recycle]` of the leading (recycle) axis of every array. Errors name the key
/// whose leading axis is too short (or that has no axis).
pub fn feature_slice(
    arrays: &BTreeMap<String, Array>,
    recycle: usize,
) -> Result<BTreeMap<String, Array>> {
    arrays
        .iter()
        .map(|(key, array)| {
            let slice = array.index_axis0(recycle).ok_or_else(|| {
                IoError::invalid(
                    key,
                    format!(
                        "cannot take recycle slice {recycle} of an array of shape {:?}",
                        array.shape()
                    ),
                )
            })?;
            Ok((key.clone(), slice))
        })
        .collect()
}

/// Number of recycle slices (the common leading-axis length), or an error naming the first key
/// that disagrees. An empty map has zero slices.
pub fn num_recycle_slices(arrays: &BTreeMap<String, Array>) -> Result<usize> {
    let mut count = None;
    for (key, array) in arrays {
        let lead =
            array.shape().first().copied().ok_or_else(|| {
                IoError::invalid(key, "scalar feature has no leading recycle axis")
            })?;
        match count {
            None => count = Some(lead),
            Some(c) if c != lead => {
                return Err(IoError::invalid(
                    key,
                    format!("leading axis {lead} differs from the other features' {c}"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(count.unwrap_or(0))
}
