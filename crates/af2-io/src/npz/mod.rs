//! Reading and writing numpy `.npz` archives (zip files of `.npy` members).
//!
//! Both stored and deflated members are read (numpy's `savez` and `savez_compressed`). Members
//! are read fully into memory and decoded with strict size checks, so truncated or corrupt
//! archives produce an [`IoError`] naming the file (and the array, where one is at fault).

mod array;
mod npy;

pub use array::{Array, Element, NdArray};
pub(crate) use array::{element_count, with_inner};

use crate::atomic::write_atomically;
use crate::error::{IoError, Result};
use npyz::zip::{self, CompressionMethod, ZipArchive, write::FileOptions};
use npyz::{AutoSerialize, WriterBuilder};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::Path;

/// Reads every array of an `.npz` archive, keyed by array name (the member name without `.npy`).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Array>> {
    let file = File::open(path).map_err(|e| IoError::io(path, "open", e))?;
    let mut zip = ZipArchive::new(BufReader::new(file)).map_err(|e| zip_error(path, e))?;
    let mut arrays = BTreeMap::new();
    for index in 0..zip.len() {
        if let Some((key, array)) = read_member(&mut zip, index, path)?
            && arrays.insert(key.clone(), array).is_some()
        {
            return Err(array_error(path, &key, "duplicate array name in archive"));
        }
    }
    Ok(arrays)
}

/// Reads and decodes one archive member; `None` for members that are not `.npy` files.
fn read_member<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    index: usize,
    path: &Path,
) -> Result<Option<(String, Array)>> {
    let mut member = zip.by_index(index).map_err(|e| zip_error(path, e))?;
    if member.is_dir() {
        return Ok(None);
    }
    let Some(key) = npyz::npz::array_name_from_file_name(member.name()).map(str::to_string) else {
        return Ok(None);
    };
    let declared = member.size();
    let mut bytes = Vec::new();
    // `take` bounds the read by the declared size (the vector grows only as data arrives).
    // One byte of slack makes the zip reader hit end-of-member, where it verifies the CRC,
    // and reveals members longer than declared.
    (&mut member)
        .take(declared.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| array_error(path, &key, &format!("read failed: {e}")))?;
    if u64::try_from(bytes.len()).ok() != Some(declared) {
        return Err(array_error(
            path,
            &key,
            &format!(
                "member has {} bytes, its zip entry declares {declared}",
                bytes.len()
            ),
        ));
    }
    let array = npy::decode_npy(&bytes).map_err(|m| array_error(path, &key, &m))?;
    Ok(Some((key, array)))
}

/// Writes arrays to an `.npz` archive that numpy's `np.load` reads (uncompressed members, like
/// `np.savez`). The file is written to a temporary file in the same directory and then renamed
/// over `path`, so readers never see a partial file.
pub fn write_npz(path: &Path, arrays: &[(String, Array)]) -> Result<()> {
    check_unique_names(path, arrays)?;
    write_atomically(path, |file| {
        let mut writer = npyz::npz::NpzWriter::new(std::io::BufWriter::new(file));
        for (key, array) in arrays {
            with_inner!(array, a => write_member(&mut writer, key, a))?;
        }
        let mut buffered = writer.zip_writer().finish().map_err(zip_io_error)?;
        buffered.flush()
    })
}

/// Rejects duplicate array names (numpy would silently keep only one).
fn check_unique_names(path: &Path, arrays: &[(String, Array)]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (key, _) in arrays {
        if !seen.insert(key.as_str()) {
            return Err(array_error(path, key, "duplicate array name"));
        }
    }
    Ok(())
}

/// Writes one array as a stored `.npy` member.
fn write_member<W, T>(
    writer: &mut npyz::npz::NpzWriter<W>,
    key: &str,
    array: &NdArray<T>,
) -> std::io::Result<()>
where
    W: Write + Seek,
    T: AutoSerialize + Copy,
{
    let shape: Vec<u64> = array.shape.iter().map(|&d| d as u64).collect();
    // Members of 4 GiB or more need zip64 extensions.
    let large = std::mem::size_of_val(array.data.as_slice()) >= (1usize << 32) - (1 << 20);
    let options = FileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(large);
    let mut npy = writer
        .array::<T>(key, options)?
        .default_dtype()
        .shape(&shape)
        .begin_nd()?;
    npy.extend(array.data.iter().copied())?;
    npy.finish()
}

/// Maps a zip error to an [`IoError::Zip`] naming the archive.
fn zip_error(path: &Path, error: zip::result::ZipError) -> IoError {
    IoError::Zip {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

/// Maps a zip error to an `io::Error` (inside write callbacks).
fn zip_io_error(error: zip::result::ZipError) -> std::io::Error {
    match error {
        zip::result::ZipError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Builds an [`IoError::Array`].
fn array_error(path: &Path, key: &str, message: &str) -> IoError {
    IoError::Array {
        path: path.to_path_buf(),
        key: key.to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_roundtrips_every_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npz");
        let arrays: Vec<(String, Array)> = vec![
            (
                "f32".into(),
                NdArray::new(vec![2, 3], vec![1.5f32, -2.0, 0.0, 3.25, f32::MAX, -0.0])
                    .unwrap()
                    .into(),
            ),
            (
                "f64".into(),
                NdArray::new(vec![], vec![0.1f64]).unwrap().into(),
            ),
            (
                "i32".into(),
                NdArray::new(vec![3], vec![1i32, -2, 3]).unwrap().into(),
            ),
            (
                "i64".into(),
                NdArray::new(vec![1, 2], vec![i64::MIN, i64::MAX])
                    .unwrap()
                    .into(),
            ),
            (
                "u8".into(),
                NdArray::new(vec![2], vec![0u8, 255]).unwrap().into(),
            ),
            (
                "bool".into(),
                NdArray::new(vec![2, 1], vec![true, false]).unwrap().into(),
            ),
            (
                "empty".into(),
                NdArray::new(vec![0, 4], Vec::<f32>::new()).unwrap().into(),
            ),
            (
                "nested/name//x".into(),
                NdArray::new(vec![1], vec![7i16]).unwrap().into(),
            ),
        ];
        write_npz(&path, &arrays).unwrap();
        let back = read_npz(&path).unwrap();
        assert_eq!(back.len(), arrays.len());
        for (key, array) in &arrays {
            assert_eq!(&back[key], array, "{key}");
        }
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let a: Array = NdArray::new(vec![1], vec![1.0f32]).unwrap().into();
        let err = write_npz(
            &dir.path().join("d.npz"),
            &[("x".into(), a.clone()), ("x".into(), a)],
        )
        .unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
    }
}
