//! What can go wrong on the way from recordings to a voice. Each error
//! names the file, folder, model or setting at fault and what to do.

use std::path::PathBuf;

use crate::layout::Stage;

/// An error of [`crate::run_voice`] or the voice folder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// A file of the voice folder cannot be read as it should be.
    #[error("{}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file or folder cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The request cannot be carried out as given.
    #[error("{0}")]
    Request(String),
    /// The raw folder has nothing usable.
    #[error("{}: {reason}", raw_dir.display())]
    NoRecordings {
        /// The raw folder.
        raw_dir: PathBuf,
        /// Why nothing can be used.
        reason: String,
    },
    /// A download failed.
    #[error("downloading {what}: {source}")]
    Download {
        /// The bundle or file.
        what: String,
        /// The hub's error (boxed: it is large, and rare).
        source: Box<csm_hub::HubError>,
    },
    /// Whisper failed (loading, a folder, cancellation).
    #[error("transcribing: {0}")]
    Whisper(#[from] csm_core::whisper::WhisperError),
    /// The dataset cannot be read or cut.
    #[error("the dataset: {0}")]
    Data(#[from] csm_core::data::DataError),
    /// Training failed.
    #[error("training: {0}")]
    Train(#[from] csm_core::train::TrainError),
    /// Stopped through the cancel token, in `stage`; a re-run continues.
    #[error("stopped during the {stage} stage; run again to continue")]
    Cancelled {
        /// Where it stopped.
        stage: Stage,
    },
}
