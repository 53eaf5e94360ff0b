//! The Dataset screen's speakers: `dataset_speakers` (who speaks each
//! recording, as a run would resolve it: `csm_core::data::speakers::plan`)
//! and `save_speakers` (the user's names, ids and assignments, checked with
//! `speakers::plan_with`, then written as `speakers.json` through
//! `speakers::write_speakers_file`, atomically). The library owns the
//! layouts and the file's format; nothing here reads audio.

use std::path::PathBuf;

use csm_core::data::speakers::{self, SpeakerPlan, SpeakersFile};
use csm_core::data::{DataSource, Speaker};
use csm_core::train::TrainConfig;
use serde::Serialize;
use tauri::{AppHandle, Runtime, State};

use super::dataset::check_dataset;
use crate::error::{blocking, Error, Result};
use crate::state::AllowedPaths;

/// Mirrors `DatasetSpeakers` in `ui/src/lib/api.ts`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpeakers {
    /// `oneSpeaker` (the run's `speaker_id`), `speakersFile` (one folder,
    /// `speakers.json` says who speaks) or `speakerFolders`.
    pub layout: &'static str,
    /// Where `speakers.json` is, or would be saved.
    pub speakers_file: PathBuf,
    /// Whether that file exists.
    pub file_exists: bool,
    /// Its contents (the core's serde: `speakers` name → id,
    /// `recordings` id → name or id), when it exists and reads.
    pub file: Option<SpeakersFile>,
    /// The names-to-ids table a run would use, by id (empty for one
    /// speaker, or when `error` is set).
    pub speakers: Vec<Speaker>,
    /// Every recording with its speakers (empty when `error` is set).
    pub recordings: Vec<RecordingSpeakers>,
    /// Why a run would refuse the speakers (the core's message, naming
    /// the file and key), if it would.
    pub error: Option<String>,
}

/// Who speaks one recording.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingSpeakers {
    /// Its id: the file stem, or `SPEAKER/stem` in the per-speaker layout.
    pub id: String,
    /// The speaker of its words that no alignment label names.
    pub speaker: Option<u32>,
    /// Every speaker heard in it, by id (several: a conversation).
    pub speakers: Vec<u32>,
}

/// The speakers of the dataset `config` names (`data_dir`, or its folders
/// with `speakers_file`), as a run would resolve them with the ids
/// `config.speakers` fixes.
///
/// # Errors
/// `notFound` / `invalidInput` for folders that are missing or were not
/// chosen, `invalidInput` for a layout the core refuses (a mixed one). A
/// `speakers.json` a run would refuse is no error: it comes back in
/// `error`, so the user can fix it here.
#[tauri::command]
pub async fn dataset_speakers<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    config: TrainConfig,
) -> Result<DatasetSpeakers> {
    check_dataset(&app, &allowed, &config)?;
    blocking("dataset_speakers", move || view(&config)).await
}

/// Checks the user's `file` against the dataset of `config` (every
/// recording spoken by someone, ids unique, names known) and writes it as
/// the dataset's `speakers.json` (replaced atomically); returns the new
/// view. Nothing is written when the check fails.
///
/// # Errors
/// `invalidInput` naming the key at fault (e.g. `recordings.007`), or a
/// folder not chosen; `notFound`; `io` naming the file.
#[tauri::command]
pub async fn save_speakers<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    config: TrainConfig,
    file: SpeakersFile,
) -> Result<DatasetSpeakers> {
    check_dataset(&app, &allowed, &config)?;
    let source = source(&config)?;
    allowed.check(&app, &source.speakers_file_target())?;
    blocking("save_speakers", move || save(&config, &file)).await
}

fn source(config: &TrainConfig) -> Result<DataSource> {
    config
        .data_source()
        .map_err(|e| Error::InvalidInput(e.to_string()))
}

fn layout(source: &DataSource) -> &'static str {
    match source {
        DataSource::OneSpeaker { .. } => "oneSpeaker",
        DataSource::SpeakersFile { .. } => "speakersFile",
        DataSource::SpeakerFolders { .. } => "speakerFolders",
    }
}

/// Synchronous body of [`dataset_speakers`].
pub fn view(config: &TrainConfig) -> Result<DatasetSpeakers> {
    let source = source(config)?;
    let mut error = None;
    let file = match source.speakers_file() {
        Some(path) => match speakers::read_speakers_file(path) {
            Ok(f) => Some(f),
            Err(e) => {
                error = Some(e.to_string());
                None
            }
        },
        None => None,
    };
    let plan = match error {
        Some(_) => None,
        None => match speakers::plan(&source, &config.speakers) {
            Ok(plan) => Some(plan),
            Err(e) => {
                error = Some(e.to_string());
                None
            }
        },
    };
    Ok(described(&source, file, plan, error))
}

fn described(
    source: &DataSource,
    file: Option<SpeakersFile>,
    plan: Option<SpeakerPlan>,
    error: Option<String>,
) -> DatasetSpeakers {
    let target = source.speakers_file_target();
    let (speakers, recordings) = match plan {
        Some(plan) if source.has_speakers() => (
            plan.speakers,
            plan.recordings
                .into_iter()
                .map(|r| RecordingSpeakers {
                    id: r.id,
                    speaker: r.speaker,
                    speakers: r.speakers,
                })
                .collect(),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    DatasetSpeakers {
        layout: layout(source),
        file_exists: target.is_file(),
        speakers_file: target,
        file,
        speakers,
        recordings,
        error,
    }
}

/// Synchronous body of [`save_speakers`].
pub fn save(config: &TrainConfig, file: &SpeakersFile) -> Result<DatasetSpeakers> {
    let source = source(config)?;
    let target = source.speakers_file_target();
    // Checked in memory first: a refused edit leaves the old file as it was.
    speakers::plan_with(&source, file, &config.speakers)
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    speakers::write_speakers_file(&target, file).map_err(|e| match e {
        csm_core::data::DataError::Io { path, source } => Error::io(&path, source),
        other => Error::InvalidInput(other.to_string()),
    })?;
    // The dataset now has its speakers.json: the run of a one-folder
    // dataset reads it through `speakers_file`.
    let saved = TrainConfig {
        speakers_file: Some(target),
        ..config.clone()
    };
    view(&saved)
}
