//! Atomic file writes: write a temporary file beside the target, then rename it into place.

use crate::error::{IoError, Result};
use std::fs::File;
use std::path::Path;

/// Writes `path` atomically: `write` fills a temporary file created in the same directory,
/// which is flushed to disk and then renamed over `path`. On any error the temporary file is
/// removed and `path` is left untouched.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".af2-tmp-")
        .tempfile_in(dir)
        .map_err(|e| IoError::io(path, "create temporary file", e))?;
    write(tmp.as_file()).map_err(|e| IoError::io(path, "write", e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| IoError::io(path, "sync", e))?;
    set_readable_permissions(tmp.as_file(), path)?;
    tmp.persist(path)
        .map_err(|e| IoError::io(path, "rename into place", e.error))?;
    Ok(())
}

/// Temporary files are created private (0600); give the final file the usual 0644.
#[cfg(unix)]
fn set_readable_permissions(file: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| IoError::io(path, "set permissions", e))
}

/// Non-unix platforms keep the default permissions.
#[cfg(not(unix))]
fn set_readable_permissions(_file: &File, _path: &Path) -> Result<()> {
    Ok(())
}
