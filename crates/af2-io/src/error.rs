//! The crate's error type.
//!
//! Every error that comes from a file names the file; errors about one array name its key and,
//! where a shape is involved, the expected and the found shape. Errors raised on in-memory data
//! (name mapping, dimension inference, layout checks) are wrapped in [`IoError::InFile`] by the
//! functions that read a file, so that the final message still names the file.

use std::fmt;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;

/// How many layout problems an [`IoError::Layout`] message shows before summarising the rest.
pub const MAX_SHOWN_PROBLEMS: usize = 10;

/// Errors of the `af2-io` crate.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The file does not exist.
    #[error("{}: file not found", .path.display())]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// An operating-system level read or write failure.
    #[error("{}: failed to {action}: {source}", .path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being done ("read", "write", "rename", ...).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a readable zip/npz archive (truncated, corrupt or not a zip at all).
    #[error("{}: not a valid npz archive: {message}", .path.display())]
    Zip {
        /// The archive.
        path: PathBuf,
        /// What the zip reader reported.
        message: String,
    },
    /// One array of an npz archive could not be decoded.
    #[error("{}: array '{key}': {message}", .path.display())]
    Array {
        /// The archive.
        path: PathBuf,
        /// The array's name inside the archive.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// The file is neither an npz archive nor a safetensors file.
    #[error("{}: unrecognised file format: {message}", .path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Why it was not recognised.
        message: String,
    },
    /// A safetensors file (or buffer) could not be parsed or written.
    #[error("{}: invalid safetensors data: {message}", .path.display())]
    Safetensors {
        /// The file (or `<memory>` for in-memory buffers).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A required parameter or feature is missing.
    #[error("missing key '{key}'")]
    MissingKey {
        /// The key that was looked up.
        key: String,
    },
    /// An array has the wrong shape.
    #[error("key '{key}': expected shape {expected:?}, found shape {found:?}")]
    Shape {
        /// The array's name.
        key: String,
        /// The shape that was required.
        expected: Vec<usize>,
        /// The shape that was present.
        found: Vec<usize>,
    },
    /// A parameter name that the haiku ↔ native mapping table does not know.
    #[error("unknown parameter name '{key}': {message}")]
    UnknownName {
        /// The name.
        key: String,
        /// Why it could not be mapped.
        message: String,
    },
    /// A value or shape is inconsistent with the rest of the data.
    #[error("key '{key}': {message}")]
    Invalid {
        /// The array (or metadata entry) concerned.
        key: String,
        /// What is inconsistent.
        message: String,
    },
    /// A value could not be converted to another element type.
    #[error("cannot convert {from} array to {to}: {message}")]
    Conversion {
        /// The source element type.
        from: &'static str,
        /// The target element type.
        to: &'static str,
        /// Why (e.g. the first non-integral value).
        message: String,
    },
    /// The weights do not have the expected key/shape layout.
    #[error("{}", LayoutSummary(.problems))]
    Layout {
        /// All problems found (the message shows the first [`MAX_SHOWN_PROBLEMS`]).
        problems: Vec<LayoutProblem>,
    },
    /// An error about the contents of a file, with the file's name attached.
    #[error("{}: {source}", .path.display())]
    InFile {
        /// The file whose contents are at fault.
        path: PathBuf,
        /// The error about its contents.
        #[source]
        source: Box<IoError>,
    },
}

impl IoError {
    /// Attaches a file name to an error about in-memory data. Errors that already name a file
    /// are returned unchanged.
    pub fn in_file(self, path: &Path) -> IoError {
        if self.names_file() {
            self
        } else {
            IoError::InFile {
                path: path.to_path_buf(),
                source: Box::new(self),
            }
        }
    }

    /// Whether this error's message already names a file.
    fn names_file(&self) -> bool {
        !matches!(
            self,
            IoError::MissingKey { .. }
                | IoError::Shape { .. }
                | IoError::UnknownName { .. }
                | IoError::Invalid { .. }
                | IoError::Conversion { .. }
                | IoError::Layout { .. }
        )
    }

    /// Builds an [`IoError::Io`].
    pub(crate) fn io(path: &Path, action: &'static str, source: std::io::Error) -> IoError {
        if source.kind() == std::io::ErrorKind::NotFound && action == "open" {
            return IoError::NotFound {
                path: path.to_path_buf(),
            };
        }
        IoError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    /// Builds an [`IoError::Invalid`].
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> IoError {
        IoError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// One discrepancy between a parameter store and the expected layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutProblem {
    /// An expected key is absent.
    Missing {
        /// The key.
        key: String,
        /// Its expected shape.
        expected: Vec<usize>,
    },
    /// A key is present that the layout does not contain.
    Extra {
        /// The key.
        key: String,
        /// Its shape.
        found: Vec<usize>,
    },
    /// A key is present with the wrong shape.
    WrongShape {
        /// The key.
        key: String,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape present.
        found: Vec<usize>,
    },
}

impl fmt::Display for LayoutProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutProblem::Missing { key, expected } => {
                write!(f, "missing key '{key}' (expected shape {expected:?})")
            }
            LayoutProblem::Extra { key, found } => {
                write!(f, "unexpected key '{key}' (found shape {found:?})")
            }
            LayoutProblem::WrongShape {
                key,
                expected,
                found,
            } => write!(
                f,
                "key '{key}': expected shape {expected:?}, found shape {found:?}"
            ),
        }
    }
}

/// Formats the first few layout problems and a count of the rest.
struct LayoutSummary<'a>(&'a [LayoutProblem]);

impl fmt::Display for LayoutSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problems = self.0;
        write!(f, "weight layout mismatch ({} problems)", problems.len())?;
        for problem in problems.iter().take(MAX_SHOWN_PROBLEMS) {
            write!(f, "\n  - {problem}")?;
        }
        if problems.len() > MAX_SHOWN_PROBLEMS {
            write!(
                f,
                "\n  ... and {} more",
                problems.len() - MAX_SHOWN_PROBLEMS
            )?;
        }
        Ok(())
    }
}
