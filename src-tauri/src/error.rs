//! The error every command returns; it crosses IPC as `{ kind, message }`
//! (plus `url` for `accessDenied`; docs/ipc.md, "Errors").

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
    /// A file type or checkpoint layout the app cannot read.
    #[error("{0}")]
    UnsupportedFormat(String),
    /// A checkpoint exists but cannot be loaded.
    #[error("{0}")]
    ModelLoad(String),
    /// No usable audio output device.
    #[error("{0}")]
    NoAudioDevice(String),
    /// Any other playback failure.
    #[error("{0}")]
    Audio(String),
    /// `start_training` while a run is active.
    #[error("{0}")]
    AlreadyRunning(String),
    /// `stop_training` for a run that is not active.
    #[error("{0}")]
    NotRunning(String),
    /// The trainer failed.
    #[error("{0}")]
    Training(String),
    /// Sample generation failed.
    #[error("{0}")]
    Generation(String),
    /// The user stopped the operation (`cancel_generation`); nothing was written.
    #[error("{0}")]
    Cancelled(String),
    /// A destination that must be new already exists (nothing was changed).
    #[error("{} already exists; choose another folder or move it away first", .0.display())]
    AlreadyExists(PathBuf),
    /// A hub download failed (refused, not found, broken, corrupt, no
    /// space); the message names the repo or file and what to do.
    #[error("{0}")]
    Download(String),
    /// The hub refused a gated or private repo (HTTP 401/403): the message
    /// says to accept its licence at `url` and give a token.
    #[error("{message}")]
    AccessDenied {
        /// What happened and what to do.
        message: String,
        /// The repo's page on the hub, where its licence is accepted.
        url: String,
    },
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
            Error::UnsupportedFormat(_) => "unsupportedFormat",
            Error::ModelLoad(_) => "modelLoad",
            Error::NoAudioDevice(_) => "noAudioDevice",
            Error::Audio(_) => "audio",
            Error::AlreadyRunning(_) => "alreadyRunning",
            Error::NotRunning(_) => "notRunning",
            Error::Training(_) => "training",
            Error::Generation(_) => "generation",
            Error::Cancelled(_) => "cancelled",
            Error::AlreadyExists(_) => "alreadyExists",
            Error::Download(_) => "download",
            Error::AccessDenied { .. } => "accessDenied",
            Error::Internal(_) => "internal",
        }
    }
}

/// A run folder the core could not read: "not found" keeps its kind, a
/// config that is not one is `invalidInput`.
impl From<csm_core::train::run_dir::RunDirError> for Error {
    fn from(e: csm_core::train::run_dir::RunDirError) -> Self {
        use csm_core::train::run_dir::RunDirError;
        match e {
            RunDirError::Read { path, source } => Error::io(&path, source),
            e @ RunDirError::Config { .. } => Error::InvalidInput(e.to_string()),
        }
    }
}

/// A file the core failed to write (its `CheckpointError`); "not found"
/// keeps its kind.
impl From<csm_core::checkpoint::CheckpointError> for Error {
    fn from(e: csm_core::checkpoint::CheckpointError) -> Self {
        use csm_core::checkpoint::CheckpointError;
        match e {
            CheckpointError::Io { path, source } => Error::io(&path, source),
            e => Error::Internal(e.to_string()),
        }
    }
}

impl serde::Serialize for Error {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let url = match self {
            Error::AccessDenied { url, .. } => Some(url),
            _ => None,
        };
        let mut s = serializer.serialize_struct("Error", 2 + usize::from(url.is_some()))?;
        s.serialize_field("kind", self.kind())?;
        s.serialize_field("message", &self.to_string())?;
        if let Some(url) = url {
            s.serialize_field("url", url)?;
        }
        s.end()
    }
}

/// Runs `f` on a blocking task (every command's work goes through here).
pub(crate) async fn blocking<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tauri::async_runtime::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("{name} task failed: {e}")))?
}

/// Result of every command.
pub type Result<T> = std::result::Result<T, Error>;
