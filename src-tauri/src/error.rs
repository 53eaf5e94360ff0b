//! The error every command returns; it crosses IPC as `{ kind, message }`
//! (docs/ipc.md, "Errors").

use std::path::{Path, PathBuf};

use serde::ser::SerializeStruct;

/// Command failure. `kind` strings are the `ErrorKind` union in `ui/src/lib/api.ts`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A path the user gave does not exist.
    #[error("{} does not exist", .0.display())]
    NotFound(PathBuf),
    /// Arguments that cannot be acted on.
    #[error("{0}")]
    InvalidInput(String),
    /// Anything else (a bug or an environment problem).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on; "not found" gets its own kind.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(path.to_path_buf())
        } else {
            Error::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// The `kind` field sent to the frontend.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::NotFound(_) => "notFound",
            Error::InvalidInput(_) => "invalidInput",
            Error::Internal(_) => "internal",
        }
    }
}

impl serde::Serialize for Error {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Error", 2)?;
        s.serialize_field("kind", self.kind())?;
        s.serialize_field("message", &self.to_string())?;
        s.end()
    }
}

/// Result of every command.
pub type Result<T> = std::result::Result<T, Error>;
