//! Errors of the Whisper module.

use std::path::PathBuf;

use crate::checkpoint::CheckpointError;

/// Everything that can go wrong while loading or running Whisper.
#[derive(Debug, thiserror::Error)]
pub enum WhisperError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File at fault.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// File at fault.
        path: PathBuf,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A config value is missing, inconsistent or unsupported.
    #[error("invalid Whisper config{}: {message}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Config {
        /// File at fault, if any.
        path: Option<PathBuf>,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer could not be built or used.
    #[error("Whisper tokenizer: {0}")]
    Tokenizer(String),
    /// Reading or strict loading of the checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// An input has the wrong shape, rate or value.
    #[error("invalid Whisper input: {0}")]
    Input(String),
    /// Reading or resampling audio failed.
    #[error(transparent)]
    Audio(#[from] crate::data::DataError),
    /// A recording holds nothing to transcribe (silent, or no window was
    /// heard as speech).
    #[error("{path}: {reason}")]
    NoSpeech {
        /// The recording.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The caller's [`crate::cancel::CancelToken`] was triggered.
    #[error("transcription cancelled")]
    Cancelled,
    /// An MLX operation failed.
    #[error("MLX error in Whisper: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

impl WhisperError {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        WhisperError::Config {
            path: None,
            message: message.into(),
        }
    }
}
