//! The voice folder: the one place that knows its file names and formats.
//! `csm voice` and the app write it through [`VoiceDir`] and read it back
//! the same way.
//!
//! ```text
//! VOICE_DIR/
//!   voice.json        the voice's state (VoiceState): names, raw folder,
//!                       each stage's status and timings, the models used,
//!                       the dataset's size, the settings chosen and why
//!   dataset/audio/    24 kHz WAVs, one per raw recording
//!   dataset/transcripts/  NAME.txt (Whisper's, or the raw folder's own)
//!   dataset/alignments/   NAME.json word timings (transcribed ones only)
//!   run/              the training run folder, exactly as
//!                       `csm finetune-lora --output-dir` writes it
//!                       (config.json, metrics.jsonl, checkpoints,
//!                       adapters*.safetensors, samples/)
//!   summary.json      written once training is done (Summary)
//! ```
//!
//! Every file here is written to a temporary name beside it and renamed
//! into place, so a reader never sees half a file, and read strictly: an
//! unknown field, a missing one or another format is an error naming the
//! file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::FlowError;

/// `voice.json`'s `format`.
pub const VOICE_FORMAT: &str = "csm-voice-v1";
/// `summary.json`'s `format`.
pub const SUMMARY_FORMAT: &str = "csm-voice-summary-v1";
/// The voice's state.
pub const VOICE_FILE: &str = "voice.json";
/// The end-of-journey summary.
pub const SUMMARY_FILE: &str = "summary.json";
/// The dataset folder (`audio/`, `transcripts/`, `alignments/`).
pub const DATASET_DIR: &str = "dataset";
/// The training run folder.
pub const RUN_DIR: &str = "run";

/// The stages of the journey, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Fetch the models that are named by bundle and not cached.
    Download,
    /// Transcribe the recordings that have no transcript.
    Transcribe,
    /// Cut the recordings into utterances and check them; choose settings.
    Dataset,
    /// Fine-tune with voice scores at every checkpoint.
    Train,
    /// Write `summary.json`.
    Summary,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 5] = [
        Stage::Download,
        Stage::Transcribe,
        Stage::Dataset,
        Stage::Train,
        Stage::Summary,
    ];

    /// Its name in files and messages (`download`, `transcribe`...).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Download => "download",
            Stage::Transcribe => "transcribe",
            Stage::Dataset => "dataset",
            Stage::Train => "train",
            Stage::Summary => "summary",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Not started yet.
    #[default]
    Pending,
    /// Started and not finished: running now, or the process died in it
    /// (a re-run continues it).
    Running,
    /// Finished.
    Done,
    /// Nothing to do (e.g. no model to download: every path was given).
    Skipped,
    /// Stopped on request (Ctrl-C, the app's Cancel); a re-run continues.
    Cancelled,
    /// Failed; `error` says why. A re-run tries again.
    Failed,
}

impl StageStatus {
    /// Done or skipped: a re-run does not run it again.
    pub fn is_finished(self) -> bool {
        matches!(self, StageStatus::Done | StageStatus::Skipped)
    }
}

/// One stage's record in `voice.json`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRecord {
    /// Where it stands.
    pub status: StageStatus,
    /// Seconds spent in it over every run: a resumed stage adds up the
    /// attempts that ended, by Ctrl-C or an error included; an attempt
    /// killed outright (SIGKILL, power loss) records nothing.
    pub seconds: f64,
    /// Times it was started.
    pub attempts: u32,
    /// When it last started (seconds since the Unix epoch).
    pub started_unix_s: Option<u64>,
    /// When it last finished, was stopped or failed.
    pub finished_unix_s: Option<u64>,
    /// One line on what it did ("3 recordings transcribed, 1 had a
    /// transcript", "every model given as a path").
    pub note: Option<String>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// Where a model comes from, as asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// A file or folder given by the caller: used as it is, not downloaded.
    Path(PathBuf),
    /// A csm-hub bundle by name (`csm-1b`, `whisper-large-v3-turbo`,
    /// `speaker-encoder`...): taken from the cache, downloaded when missing.
    Bundle(String),
}

/// The model files a voice was made with, as resolved (after download).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPaths {
    /// The CSM checkpoint (`--model-path`).
    pub model: PathBuf,
    /// The Mimi codec; `None`: found next to the model.
    pub mimi: Option<PathBuf>,
    /// The text tokenizer; `None`: found next to the model.
    pub tokenizer: Option<PathBuf>,
    /// The Whisper folder (transcription and WER).
    pub whisper: PathBuf,
    /// resemblyzer's `pretrained.pt` (similarity).
    pub speaker_encoder: PathBuf,
}

/// What the dataset stage found: the audio training uses.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInfo {
    /// Recordings in the dataset folder.
    pub recordings: usize,
    /// Of those, with a transcript from the raw folder (not transcribed).
    pub given_transcripts: usize,
    /// Raw recordings that could not be used, with the reason.
    pub failed: Vec<FailedRecording>,
    /// Minutes of audio read.
    pub minutes_in: f64,
    /// Minutes in the utterances (after trimming and cutting).
    pub minutes_used: f64,
    /// Utterances in total.
    pub utterances: usize,
    /// Utterances in the training split.
    pub train_utterances: usize,
    /// Utterances held out for validation.
    pub validation_utterances: usize,
    /// Skipped recordings and other notes of the cutting.
    pub warnings: Vec<String>,
}

/// A raw recording left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedRecording {
    /// Its file name in the raw folder.
    pub file: String,
    /// Why.
    pub reason: String,
}

/// Who chose a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Chooser {
    /// The rules of [`crate::recipe`].
    Recipe,
    /// The caller (a flag, the app's form).
    Override,
}

/// One training setting, its value and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingChoice {
    /// The `TrainConfig` field (`lora_r`, `epochs`...), which is also the
    /// flag's name in snake_case.
    pub name: String,
    /// Its value.
    pub value: serde_json::Value,
    /// Who chose it.
    pub chosen_by: Chooser,
    /// One line on why (for an override: what the recipe would have
    /// chosen).
    pub reason: String,
}

/// The device the settings were chosen for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    /// `cpu` or `gpu`.
    pub kind: crate::recipe::DeviceKind,
    /// Its memory in bytes (a GPU's own, the machine's RAM for the CPU).
    pub memory_bytes: u64,
    /// Where the figure comes from ("GPU memory", "system RAM"...).
    pub memory_source: String,
}

/// `voice.json`: the voice's state between runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceState {
    /// Always [`VOICE_FORMAT`].
    pub format: String,
    /// The voice's name (the folder's name unless given).
    pub name: String,
    /// The speaker's name, if given (shown; the voice trains as speaker
    /// id 0 either way).
    pub speaker_name: Option<String>,
    /// The folder of raw recordings.
    pub raw_dir: PathBuf,
    /// When the voice was created (seconds since the Unix epoch).
    pub created_unix_s: u64,
    /// When this file was last written.
    pub updated_unix_s: u64,
    /// Each stage's record, by stage.
    pub stages: BTreeMap<Stage, StageRecord>,
    /// The models, once resolved.
    pub models: Option<ModelPaths>,
    /// The dataset, once cut.
    pub dataset: Option<DatasetInfo>,
    /// The device the settings were chosen for.
    pub device: Option<DeviceInfo>,
    /// The training settings chosen (recipe and overrides), in the order
    /// they are printed.
    pub settings: Vec<SettingChoice>,
}

impl VoiceState {
    /// A new voice: every stage pending.
    pub fn new(name: String, speaker_name: Option<String>, raw_dir: PathBuf) -> Self {
        let now = unix_now();
        VoiceState {
            format: VOICE_FORMAT.into(),
            name,
            speaker_name,
            raw_dir,
            created_unix_s: now,
            updated_unix_s: now,
            stages: Stage::ALL
                .iter()
                .map(|s| (*s, StageRecord::default()))
                .collect(),
            models: None,
            dataset: None,
            device: None,
            settings: Vec::new(),
        }
    }

    /// The record of `stage` (created pending if the file lacked it).
    pub fn stage(&mut self, stage: Stage) -> &mut StageRecord {
        self.stages.entry(stage).or_default()
    }

    /// The status of `stage`.
    pub fn status(&self, stage: Stage) -> StageStatus {
        self.stages
            .get(&stage)
            .map(|r| r.status)
            .unwrap_or_default()
    }
}

/// Scores of one model (the base or a checkpoint), as in
/// `csm_core::train::VoiceSummary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scores {
    /// The step (0: the base model).
    pub step: usize,
    /// Mean similarity to the speaker.
    pub similarity: Option<f32>,
    /// Word error rate of the samples.
    pub wer: Option<f32>,
    /// Character error rate.
    pub cer: Option<f32>,
    /// Health warnings over the samples.
    pub health_warnings: usize,
}

/// `summary.json`: what the journey gave. Paths are relative to the voice
/// folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Always [`SUMMARY_FORMAT`].
    pub format: String,
    /// The voice's name.
    pub name: String,
    /// The speaker's name.
    pub speaker_name: Option<String>,
    /// Minutes of audio in the utterances trained and validated on.
    pub minutes_used: f64,
    /// Utterances.
    pub utterances: usize,
    /// Optimizer steps trained.
    pub steps: usize,
    /// Seconds per stage, over every run.
    pub stage_seconds: BTreeMap<Stage, f64>,
    /// Their sum.
    pub total_seconds: f64,
    /// The base model's scores.
    pub base: Option<Scores>,
    /// The best checkpoint's.
    pub best: Option<Scores>,
    /// The last checkpoint's.
    pub last: Option<Scores>,
    /// `run/adapters_best.safetensors`, when a checkpoint was scored.
    pub best_adapter: Option<PathBuf>,
    /// `run/adapters.safetensors`.
    pub final_adapter: Option<PathBuf>,
    /// A sample spoken by the best checkpoint (else the last scored one).
    pub sample_wav: Option<PathBuf>,
}

/// A voice folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceDir(PathBuf);

impl VoiceDir {
    /// The folder at `path` (nothing is read or created).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `voice.json`.
    pub fn voice_file(&self) -> PathBuf {
        self.0.join(VOICE_FILE)
    }

    /// `summary.json`.
    pub fn summary_file(&self) -> PathBuf {
        self.0.join(SUMMARY_FILE)
    }

    /// `dataset/`.
    pub fn dataset_dir(&self) -> PathBuf {
        self.0.join(DATASET_DIR)
    }

    /// `dataset/audio/`.
    pub fn audio_dir(&self) -> PathBuf {
        self.dataset_dir().join("audio")
    }

    /// `dataset/transcripts/`.
    pub fn transcripts_dir(&self) -> PathBuf {
        self.dataset_dir().join("transcripts")
    }

    /// `dataset/alignments/`.
    pub fn alignments_dir(&self) -> PathBuf {
        self.dataset_dir().join("alignments")
    }

    /// `run/`: the training run folder.
    pub fn run_dir(&self) -> PathBuf {
        self.0.join(RUN_DIR)
    }

    /// `rel` (a path of `summary.json`) under this folder.
    pub fn resolve(&self, rel: &Path) -> PathBuf {
        self.0.join(rel)
    }

    /// Whether `voice.json` exists.
    pub fn exists(&self) -> bool {
        self.voice_file().is_file()
    }

    /// Reads `voice.json` strictly.
    ///
    /// # Errors
    /// [`FlowError::Read`] naming the file: missing, unreadable, not JSON,
    /// unknown or missing fields, another format.
    pub fn read_state(&self) -> Result<VoiceState, FlowError> {
        let path = self.voice_file();
        let state: VoiceState = read_json(&path)?;
        check_format(&path, &state.format, VOICE_FORMAT)?;
        Ok(state)
    }

    /// Writes `voice.json` atomically, with `updated_unix_s` set to now.
    ///
    /// # Errors
    /// [`FlowError::Write`] naming the file.
    pub fn write_state(&self, state: &mut VoiceState) -> Result<(), FlowError> {
        state.updated_unix_s = unix_now();
        write_json_atomic(&self.voice_file(), state)
    }

    /// Reads `summary.json` strictly; `Ok(None)` when there is none.
    ///
    /// # Errors
    /// As [`VoiceDir::read_state`].
    pub fn read_summary(&self) -> Result<Option<Summary>, FlowError> {
        let path = self.summary_file();
        if !path.exists() {
            return Ok(None);
        }
        let summary: Summary = read_json(&path)?;
        check_format(&path, &summary.format, SUMMARY_FORMAT)?;
        Ok(Some(summary))
    }

    /// Writes `summary.json` atomically.
    ///
    /// # Errors
    /// [`FlowError::Write`] naming the file.
    pub fn write_summary(&self, summary: &Summary) -> Result<(), FlowError> {
        write_json_atomic(&self.summary_file(), summary)
    }
}

fn check_format(path: &Path, found: &str, expected: &str) -> Result<(), FlowError> {
    if found == expected {
        return Ok(());
    }
    Err(FlowError::Read {
        path: path.to_path_buf(),
        reason: format!(
            "its format is `{found}`, this version reads `{expected}`; make the voice again \
             in a new folder"
        ),
    })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads `path` as JSON of type `T`, strictly.
///
/// # Errors
/// [`FlowError::Read`] naming the file and what is wrong.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, FlowError> {
    let text = std::fs::read_to_string(path).map_err(|e| FlowError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| FlowError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes `value` as pretty JSON to a temporary file beside `path`, then
/// renames it into place.
///
/// # Errors
/// [`FlowError::Write`] naming the file.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), FlowError> {
    let err = |source| FlowError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let json = serde_json::to_string_pretty(value).expect("voice files serialize") + "\n";
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, json).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_is_read_strictly() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VoiceDir::new(tmp.path().join("v"));
        let mut state = VoiceState::new("me".into(), Some("Ann".into()), "/raw".into());
        state.stage(Stage::Transcribe).status = StageStatus::Done;
        dir.write_state(&mut state).unwrap();
        assert_eq!(dir.read_state().unwrap(), state);
        let text = std::fs::read_to_string(dir.voice_file()).unwrap();
        assert!(text.contains("\"transcribe\""), "{text}");

        // An unknown field, or another format, is an error naming the file.
        let json = text.replacen("\"name\"", "\"nmae\"", 1);
        std::fs::write(dir.voice_file(), json).unwrap();
        let err = dir.read_state().unwrap_err().to_string();
        assert!(err.contains("voice.json") && err.contains("nmae"), "{err}");
        let json = text.replace(VOICE_FORMAT, "csm-voice-v9");
        std::fs::write(dir.voice_file(), json).unwrap();
        let err = dir.read_state().unwrap_err().to_string();
        assert!(err.contains("csm-voice-v9"), "{err}");
        assert!(dir.read_summary().unwrap().is_none());
    }
}
