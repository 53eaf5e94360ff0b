//! The proofreading table of the Dataset screen, over
//! `csm_core::data::proofread`: `save_transcript` (atomic; an alignment
//! whose words no longer match becomes stale), `exclude_recording` /
//! `restore_recording` (moved to and from `excluded/` folders, never
//! deleted) and `list_excluded`.

use std::path::{Path, PathBuf};

use csm_core::data::proofread::{self, AlignmentState, ExcludedRecording, ProofreadError};
use csm_core::data::DatasetLayout;
use serde::{Deserialize, Serialize};
use tauri::{AppHandle, Runtime, State};

use crate::error::{blocking, Error, Result};
use crate::state::AllowedPaths;

/// The dataset's folders, as `scan_dataset` returned them (mirrors
/// `DatasetFolders` in `api.ts`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetFolders {
    /// Audio folder.
    pub audio_dir: PathBuf,
    /// Transcript folder.
    pub transcript_dir: PathBuf,
    /// Alignment folder, if the dataset has one.
    pub alignment_dir: Option<PathBuf>,
}

impl DatasetFolders {
    fn layout(&self) -> DatasetLayout {
        DatasetLayout::new(
            &self.audio_dir,
            &self.transcript_dir,
            self.alignment_dir.clone(),
        )
    }

    /// Every folder must exist and have been given to the app by the user.
    fn check<R: Runtime>(&self, app: &AppHandle<R>, allowed: &AllowedPaths) -> Result<()> {
        for d in [Some(&self.audio_dir), Some(&self.transcript_dir)]
            .into_iter()
            .chain([self.alignment_dir.as_ref()])
            .flatten()
        {
            if !d.is_dir() {
                return Err(Error::NotFound(d.clone()));
            }
            allowed.check(app, d)?;
        }
        Ok(())
    }
}

impl From<ProofreadError> for Error {
    fn from(e: ProofreadError) -> Self {
        match e {
            ProofreadError::Io { path, source } => Error::io(&path, source),
            // Nothing was moved: a file of that name is in the way.
            ProofreadError::Exists { path } => Error::AlreadyExists(path),
            e => Error::InvalidInput(e.to_string()),
        }
    }
}

/// Result of `save_transcript` (mirrors `SavedTranscript` in `api.ts`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavedTranscript {
    /// The transcript file.
    pub path: PathBuf,
    /// The text as saved (trimmed).
    pub text: String,
    /// What happened to the word alignment.
    pub alignment: AlignmentState,
}

/// Saves the text of recording `id` (`transcripts/ID.txt`, replaced
/// atomically).
///
/// # Errors
/// `notFound`/`invalidInput` for the folders, `invalidInput` for an empty
/// text or a bad id, `io`.
#[tauri::command]
pub async fn save_transcript<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    folders: DatasetFolders,
    id: String,
    text: String,
) -> Result<SavedTranscript> {
    folders.check(&app, &allowed)?;
    blocking("save_transcript", move || {
        let saved = proofread::save_transcript(&folders.layout(), &id, &text)?;
        Ok(SavedTranscript {
            path: saved.path,
            text: saved.text,
            alignment: saved.alignment,
        })
    })
    .await
}

/// Moves recording `id` into the `excluded/` folders.
///
/// # Errors
/// `alreadyExists` (nothing moved), `invalidInput` (no such recording),
/// `io`, and the folder checks.
#[tauri::command]
pub async fn exclude_recording<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    folders: DatasetFolders,
    id: String,
) -> Result<ExcludedRecording> {
    folders.check(&app, &allowed)?;
    blocking("exclude_recording", move || {
        Ok(proofread::exclude(&folders.layout(), &id)?)
    })
    .await
}

/// Moves an excluded recording back; returns where its files are.
///
/// # Errors
/// As [`exclude_recording`].
#[tauri::command]
pub async fn restore_recording<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    folders: DatasetFolders,
    id: String,
) -> Result<Vec<PathBuf>> {
    folders.check(&app, &allowed)?;
    blocking("restore_recording", move || {
        Ok(proofread::restore(&folders.layout(), &id)?)
    })
    .await
}

/// The excluded recordings of the dataset.
///
/// # Errors
/// The folder checks, `io`.
#[tauri::command]
pub async fn list_excluded<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    folders: DatasetFolders,
) -> Result<Vec<ExcludedRecording>> {
    folders.check(&app, &allowed)?;
    blocking("list_excluded", move || {
        Ok(proofread::list_excluded(&folders.layout())?)
    })
    .await
}

/// Whether recording `file` (a name in the audio folder) has only a stale
/// alignment (for the scan's rows).
pub fn alignment_stale(layout: &DatasetLayout, file: &str) -> bool {
    Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|id| proofread::has_stale_alignment(layout, id))
}
