//! Errors of the Mimi codec: configs, checkpoints and inputs.

use std::path::{Path, PathBuf};

use crate::checkpoint::CheckpointError;

/// Everything that can go wrong while building, loading or running Mimi.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File at fault.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON config file is malformed.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// File at fault.
        path: PathBuf,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A config value is missing, inconsistent or unsupported.
    #[error("invalid Mimi config: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
    /// Same as [`CodecError::Config`], located in a file.
    #[error("invalid Mimi config in {path}: {message}")]
    ConfigFile {
        /// File at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint's key names match no known Mimi layout.
    #[error(
        "{source_name}: unknown Mimi checkpoint layout (expected kyutai names like \
         `encoder.model.0.conv.conv.weight` or transformers names like \
         `encoder.layers.0.conv.weight`, optionally under `codec_model.`); first keys: {sample}"
    )]
    UnknownLayout {
        /// Where the weights came from.
        source_name: String,
        /// A few of the keys found.
        sample: String,
    },
    /// A tensor needed to convert a checkpoint is absent or mis-shaped.
    #[error("{source_name}: tensor `{key}`: {message}")]
    Tensor {
        /// Where the weights came from.
        source_name: String,
        /// Tensor name in the checkpoint.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Reading or strict loading of the checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The input to `encode` or `decode` has the wrong shape or type.
    #[error("invalid Mimi input: {message}")]
    Input {
        /// What is wrong.
        message: String,
    },
    /// An MLX operation failed.
    #[error("MLX error in Mimi: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

impl CodecError {
    /// Attaches a file name to a config error.
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            CodecError::Config { message } => CodecError::ConfigFile {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        }
    }
}
