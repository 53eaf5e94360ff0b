//! Errors of the speaker encoder.

use std::path::PathBuf;

use crate::checkpoint::CheckpointError;
use crate::data::DataError;

/// Everything that can go wrong while loading or running the encoder.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// The weights file could not be read or does not match the network.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The weights file is not resemblyzer's `VoiceEncoder` checkpoint.
    #[error("{path} is not a resemblyzer VoiceEncoder checkpoint: {message}")]
    Layout {
        /// File at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Reading or resampling audio failed.
    #[error(transparent)]
    Audio(#[from] DataError),
    /// The audio has nothing to embed (empty, or silent after trimming).
    #[error("{what}: {message}")]
    Input {
        /// The audio at fault (a file name, or "audio").
        what: String,
        /// What is wrong.
        message: String,
    },
    /// An MLX operation failed.
    #[error("MLX error in the speaker encoder: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}
