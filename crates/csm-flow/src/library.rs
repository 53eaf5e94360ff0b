//! The voice library: the voice folders under one library folder (each in
//! the layout of [`crate::layout`]), read back for the app's Voices screen,
//! renamed, deleted and exported as a zip.
//!
//! A voice is read through [`VoiceDir`] (`voice.json`, `summary.json`) and
//! its run folder through `csm_core::train::run_dir` (`config.json`,
//! `metrics.jsonl`, the adapters and the voice-score samples); nothing here
//! knows another file name.
//!
//! The export zip (`NAME.zip`, one top folder named after the voice's
//! folder):
//!
//! ```text
//! VOICE/adapter/adapters.safetensors      the best adapter (else the final one), mlx_lm layout
//! VOICE/adapter/adapter_config.json
//! VOICE/adapter/peft/adapter_model.safetensors   the same adapter, PEFT layout
//! VOICE/adapter/peft/adapter_config.json
//! VOICE/config.json                       the run's TrainConfig
//! VOICE/sample.wav                        a sample the adapter spoke (when scored)
//! VOICE/summary.json                      the journey's summary (when written)
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use csm_core::adapter::{self, ADAPTER_CONFIG_FILE, ADAPTER_FILE};
use csm_core::mlx_rs::module::ModuleParameters;
use csm_core::model::load::{load_csm, LoadOptions};
use csm_core::train::run_dir::{RunDir, RunEvent, CONFIG_FILE};
use csm_core::train::{TrainConfig, TrainEvent, VoiceReport};
use serde::Serialize;

use crate::error::FlowError;
use crate::layout::{Stage, StageStatus, VoiceDir, VoiceState};

/// The folder of the PEFT layout inside a run folder (the trainer's
/// `save_mode` lora/both writes it beside the mlx_lm adapter).
const PEFT_DIR: &str = "peft";
/// The PEFT weights file.
const PEFT_WEIGHTS: &str = "adapter_model.safetensors";
/// Longest voice name taken.
const MAX_NAME_CHARS: usize = 120;

/// A library operation failed; every variant names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// The library folder cannot be listed.
    #[error("cannot list the voice library {}: {source}", path.display())]
    List {
        /// The library folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The folder holds no `voice.json`: it is not a voice, and nothing was
    /// done to it.
    #[error("{} is not a voice folder (it has no voice.json); nothing was changed", path.display())]
    NotAVoice {
        /// The folder.
        path: PathBuf,
    },
    /// A voice file cannot be read or written (it names the file). Boxed:
    /// `FlowError` holds every stage's error.
    #[error(transparent)]
    Voice(Box<FlowError>),
    /// A file of the voice's run folder cannot be read.
    #[error("{}: {reason}", path.display())]
    Run {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A name that cannot be a voice's.
    #[error("the voice name {name:?} {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The voice has no trained adapter to export.
    #[error(
        "{} has no trained adapter yet (neither run/adapters_best.safetensors nor \
         run/adapters.safetensors); finish or continue its training first",
        path.display()
    )]
    NoAdapter {
        /// The voice folder.
        path: PathBuf,
    },
    /// The zip exists and `overwrite` was off.
    #[error("{} already exists; choose another file name (nothing was written)", path.display())]
    Exists {
        /// The destination.
        path: PathBuf,
    },
    /// Deleting the voice folder failed part way (what is left is named).
    #[error("cannot delete {}: {source}; delete what is left of it by hand", path.display())]
    Delete {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Reading or writing a file of the export failed.
    #[error("exporting {}: {source}", path.display())]
    Export {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the zip archive failed.
    #[error("writing the zip {}: {source}", path.display())]
    Zip {
        /// The zip file.
        path: PathBuf,
        /// Why.
        source: zip::result::ZipError,
    },
    /// The adapter could not be written in PEFT layout.
    #[error("writing {} in PEFT layout: {reason}", adapter.display())]
    Peft {
        /// The adapter file.
        adapter: PathBuf,
        /// What failed (loading the base model, the adapter, writing).
        reason: String,
    },
}

impl From<FlowError> for LibraryError {
    fn from(e: FlowError) -> Self {
        LibraryError::Voice(Box::new(e))
    }
}

/// The library: its voices, and the folders that could not be read.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Library {
    /// The library folder.
    pub dir: PathBuf,
    /// Every voice that could be read, newest first.
    pub voices: Vec<VoiceEntry>,
    /// Folders with a `voice.json` that could not be read, with the reason
    /// (shown, so the user can delete or repair them).
    pub unreadable: Vec<UnreadableVoice>,
}

/// A voice folder whose `voice.json` (or run) cannot be read.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnreadableVoice {
    /// The folder.
    pub dir: PathBuf,
    /// Why, naming the file.
    pub error: String,
}

/// One voice as the library shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VoiceEntry {
    /// The folder's name.
    pub id: String,
    /// The voice folder.
    pub dir: PathBuf,
    /// The voice's name (`voice.json`).
    pub name: String,
    /// The speaker's name, if given.
    pub speaker_name: Option<String>,
    /// The folder of raw recordings it was made from.
    pub raw_dir: PathBuf,
    /// Seconds since the Unix epoch.
    pub created_unix_s: u64,
    /// When `voice.json` was last written.
    pub updated_unix_s: u64,
    /// Each stage and where it stands, in order.
    pub stages: Vec<StageState>,
    /// `summary.json` is written: the journey is over.
    pub complete: bool,
    /// The dataset, once cut.
    pub dataset: Option<DatasetSize>,
    /// Optimizer steps trained so far (from `metrics.jsonl`).
    pub steps: Option<usize>,
    /// The voice scores, once the base model was scored.
    pub scores: Option<VoiceScores>,
    /// The adapters of its run: best, final, then the checkpoints.
    pub adapters: Vec<AdapterEntry>,
    /// The samples the base model and the best checkpoint spoke (the files
    /// that exist).
    pub samples: Vec<SampleEntry>,
    /// The models of its run (`config.json`), for generating with it.
    pub models: Option<RunModels>,
}

/// A stage and its status.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageState {
    /// The stage.
    pub stage: Stage,
    /// Where it stands.
    pub status: StageStatus,
    /// Seconds spent in it.
    pub seconds: f64,
}

/// How much audio the voice trained on.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSize {
    /// Recordings in the dataset.
    pub recordings: usize,
    /// Minutes of audio read.
    pub minutes_in: f64,
    /// Minutes in the utterances trained and validated on.
    pub minutes_used: f64,
    /// Utterances.
    pub utterances: usize,
}

/// One scoring's summary (the core's `VoiceSummary` of a step).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScoreSet {
    /// Steps of the weights scored (0: the base model).
    pub step: usize,
    /// Mean similarity to the speaker.
    pub similarity: Option<f32>,
    /// Word error rate.
    pub wer: Option<f32>,
    /// Character error rate.
    pub cer: Option<f32>,
    /// Health warnings over the samples.
    pub health_warnings: usize,
}

/// The base model's, the best checkpoint's and the last checkpoint's scores.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VoiceScores {
    /// Step 0.
    pub base: Option<ScoreSet>,
    /// The best checkpoint (by the scores), if one was scored.
    pub best: Option<ScoreSet>,
    /// The last checkpoint scored.
    pub last: Option<ScoreSet>,
}

/// Which adapter of the run.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum AdapterKind {
    /// `adapters_best.safetensors`: the best checkpoint by the voice scores.
    Best,
    /// `adapters.safetensors`: the end of training.
    Final,
    /// A training checkpoint.
    Checkpoint,
}

/// An adapter file of the voice's run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdapterEntry {
    /// Which.
    pub kind: AdapterKind,
    /// Its step, where known.
    pub step: Option<usize>,
    /// The file (mlx_lm layout; the app's generation takes it as it is).
    pub path: PathBuf,
}

/// A spoken sample of a voice scoring.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SampleEntry {
    /// Steps of the weights that spoke it (0: the base model).
    pub step: usize,
    /// The prompt's number (1-based).
    pub prompt: usize,
    /// What it was asked to say.
    pub text: String,
    /// The WAV file.
    pub path: PathBuf,
    /// Its similarity to the speaker.
    pub similarity: Option<f32>,
    /// Its word error rate.
    pub wer: Option<f32>,
    /// Length in seconds.
    pub duration_secs: f64,
}

/// The models a voice's run used (`config.json`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunModels {
    /// The CSM checkpoint.
    pub model_path: PathBuf,
    /// The Mimi codec, when given.
    pub mimi_path: Option<PathBuf>,
    /// The tokenizer, when given.
    pub tokenizer_path: Option<PathBuf>,
    /// The speaker id the voice trained as.
    pub speaker_id: u32,
}

/// What [`export_voice`] wrote.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportReport {
    /// The zip file.
    pub path: PathBuf,
    /// The adapter exported.
    pub adapter: AdapterEntry,
    /// Whether the PEFT layout was copied from the run (`false`: written
    /// from the adapter here).
    pub peft_copied: bool,
    /// The entries of the zip, in order.
    pub entries: Vec<String>,
}

/// Lists the voices under `library` (each sub-folder with a
/// `voice.json`), newest first. A missing library folder is an empty
/// library.
///
/// # Errors
/// [`LibraryError::List`] when the folder exists and cannot be listed.
pub fn list_voices(library: &Path) -> Result<Library, LibraryError> {
    let mut out = Library {
        dir: library.to_path_buf(),
        voices: Vec::new(),
        unreadable: Vec::new(),
    };
    let entries = match std::fs::read_dir(library) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(LibraryError::List {
                path: library.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden || !VoiceDir::new(&dir).exists() {
            continue;
        }
        match read_voice(&dir) {
            Ok(v) => out.voices.push(v),
            Err(e) => out.unreadable.push(UnreadableVoice {
                dir,
                error: e.to_string(),
            }),
        }
    }
    out.voices.sort_by(|a, b| {
        (b.created_unix_s, &b.id)
            .partial_cmp(&(a.created_unix_s, &a.id))
            .expect("ids and times compare")
    });
    out.unreadable.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(out)
}

/// Reads one voice folder.
///
/// # Errors
/// [`LibraryError::NotAVoice`] without `voice.json`; [`LibraryError::Voice`]
/// when it (or `summary.json`) cannot be read; [`LibraryError::Run`] when
/// the run's `config.json` or `metrics.jsonl` exists and cannot be read.
pub fn read_voice(dir: &Path) -> Result<VoiceEntry, LibraryError> {
    let voice = VoiceDir::new(dir);
    if !voice.exists() {
        return Err(LibraryError::NotAVoice {
            path: dir.to_path_buf(),
        });
    }
    let state = voice.read_state()?;
    let summary = voice.read_summary()?;
    let run = RunDir::new(voice.run_dir());
    let config = read_run_config(&run)?;
    let reports = read_reports(&run)?;
    let scores = scores_of(&reports.voice).or_else(|| {
        summary.as_ref().map(|s| VoiceScores {
            base: s.base.as_ref().map(score_of_summary),
            best: s.best.as_ref().map(score_of_summary),
            last: s.last.as_ref().map(score_of_summary),
        })
    });
    let samples = samples_of(&reports.voice);
    let adapters = adapters_of(&run, reports.last_step);
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(VoiceEntry {
        id,
        dir: dir.to_path_buf(),
        stages: stages_of(&state),
        complete: summary.is_some(),
        dataset: state.dataset.as_ref().map(|d| DatasetSize {
            recordings: d.recordings,
            minutes_in: d.minutes_in,
            minutes_used: d.minutes_used,
            utterances: d.utterances,
        }),
        steps: reports.last_step,
        scores,
        adapters,
        samples,
        models: config.map(|c| RunModels {
            model_path: c.model_path,
            mimi_path: c.mimi_path,
            tokenizer_path: c.tokenizer_path,
            speaker_id: c.speaker_id,
        }),
        name: state.name,
        speaker_name: state.speaker_name,
        raw_dir: state.raw_dir,
        created_unix_s: state.created_unix_s,
        updated_unix_s: state.updated_unix_s,
    })
}

/// Renames the voice (its `voice.json` name; the folder keeps its name, so
/// paths to it stay valid). Returns the voice as read back.
///
/// # Errors
/// [`LibraryError::InvalidName`] for an empty, too long or multi-line
/// name; [`LibraryError::NotAVoice`]; [`LibraryError::Voice`] when
/// `voice.json` cannot be read or written.
pub fn rename_voice(dir: &Path, name: &str) -> Result<VoiceEntry, LibraryError> {
    let name = check_name(name)?;
    let voice = VoiceDir::new(dir);
    if !voice.exists() {
        return Err(LibraryError::NotAVoice {
            path: dir.to_path_buf(),
        });
    }
    let mut state = voice.read_state()?;
    state.name = name;
    voice.write_state(&mut state)?;
    read_voice(dir)
}

/// A name as it will be stored: trimmed, one line, at most
/// [`MAX_NAME_CHARS`] characters.
///
/// # Errors
/// [`LibraryError::InvalidName`] saying what is wrong.
pub fn check_name(name: &str) -> Result<String, LibraryError> {
    let bad = |reason| LibraryError::InvalidName {
        name: name.to_string(),
        reason,
    };
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(bad("is empty; type a name"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(bad("has a line break or control character; use one line"));
    }
    if trimmed.chars().count() > MAX_NAME_CHARS {
        return Err(bad("is longer than 120 characters"));
    }
    Ok(trimmed.to_string())
}

/// Deletes the voice folder and everything in it (dataset, run, adapters,
/// samples; the raw recordings it was made from are elsewhere and stay).
/// The folder is first renamed to a hidden name beside it, so a delete cut
/// short never leaves a half voice in the library.
///
/// # Errors
/// [`LibraryError::NotAVoice`] (nothing is touched), [`LibraryError::Delete`].
pub fn delete_voice(dir: &Path) -> Result<(), LibraryError> {
    if !VoiceDir::new(dir).exists() {
        return Err(LibraryError::NotAVoice {
            path: dir.to_path_buf(),
        });
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doomed = dir.with_file_name(format!(".{name}.deleting-{}", std::process::id()));
    std::fs::rename(dir, &doomed).map_err(|source| LibraryError::Delete {
        path: dir.to_path_buf(),
        source,
    })?;
    std::fs::remove_dir_all(&doomed).map_err(|source| LibraryError::Delete {
        path: doomed.clone(),
        source,
    })
}

/// Writes the voice as a zip at `dest` (see the module docs for what is in
/// it): to a temporary file beside `dest`, renamed into place at the end,
/// so an existing file is replaced whole or not at all. The PEFT layout is
/// copied from the run's `peft/` when it holds the exported adapter (the
/// final one), else written here with `csm_core::adapter::save_peft`, which
/// loads the run's base model.
///
/// # Errors
/// [`LibraryError::NotAVoice`], [`LibraryError::NoAdapter`],
/// [`LibraryError::Exists`] (with `overwrite` off), [`LibraryError::Peft`],
/// [`LibraryError::Export`], [`LibraryError::Zip`]. Nothing is left at
/// `dest` or beside it on error.
pub fn export_voice(
    dir: &Path,
    dest: &Path,
    overwrite: bool,
) -> Result<ExportReport, LibraryError> {
    let voice = read_voice(dir)?;
    if dest.exists() && !overwrite {
        return Err(LibraryError::Exists {
            path: dest.to_path_buf(),
        });
    }
    let adapter = voice
        .adapters
        .iter()
        .find(|a| a.kind == AdapterKind::Best)
        .or_else(|| voice.adapters.iter().find(|a| a.kind == AdapterKind::Final))
        .cloned()
        .ok_or_else(|| LibraryError::NoAdapter {
            path: dir.to_path_buf(),
        })?;
    let run = RunDir::new(VoiceDir::new(dir).run_dir());
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "voice.zip".into());
    let staging = dest.with_file_name(format!(".{file_name}.export-{}", std::process::id()));
    let result = write_export(&voice, &run, &adapter, dest, &staging);
    let _ = std::fs::remove_dir_all(&staging);
    if result.is_err() {
        let _ = std::fs::remove_file(staging.with_extension("zip"));
    }
    result
}

fn write_export(
    voice: &VoiceEntry,
    run: &RunDir,
    adapter: &AdapterEntry,
    dest: &Path,
    staging: &Path,
) -> Result<ExportReport, LibraryError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LibraryError::Export { path, source }
    };
    std::fs::create_dir_all(staging).map_err(io(staging))?;
    // The PEFT layout of this adapter: the run's own when it is the final
    // adapter's, else written from the adapter on its base model.
    let run_peft = run.path().join(PEFT_DIR);
    let peft_copied = adapter.kind == AdapterKind::Final
        && run_peft.join(PEFT_WEIGHTS).is_file()
        && run_peft.join(ADAPTER_CONFIG_FILE).is_file();
    let peft = if peft_copied {
        run_peft
    } else {
        let out = staging.join(PEFT_DIR);
        write_peft(run, &adapter.path, &out)?;
        out
    };
    let top = if voice.id.is_empty() {
        "voice"
    } else {
        &voice.id
    };
    let mut files: Vec<(String, PathBuf)> = vec![
        (
            format!("{top}/adapter/{ADAPTER_FILE}"),
            adapter.path.clone(),
        ),
        (
            format!("{top}/adapter/{ADAPTER_CONFIG_FILE}"),
            run.path().join(ADAPTER_CONFIG_FILE),
        ),
        (
            format!("{top}/adapter/{PEFT_DIR}/{PEFT_WEIGHTS}"),
            peft.join(PEFT_WEIGHTS),
        ),
        (
            format!("{top}/adapter/{PEFT_DIR}/{ADAPTER_CONFIG_FILE}"),
            peft.join(ADAPTER_CONFIG_FILE),
        ),
        (format!("{top}/{CONFIG_FILE}"), run.config_path()),
    ];
    if let Some(sample) = export_sample(voice, adapter) {
        files.push((format!("{top}/sample.wav"), sample));
    }
    let summary = VoiceDir::new(&voice.dir).summary_file();
    if summary.is_file() {
        files.push((format!("{top}/summary.json"), summary));
    }

    let tmp_zip = staging.with_extension("zip");
    let zip_err = |source| LibraryError::Zip {
        path: dest.to_path_buf(),
        source,
    };
    let file = File::create(&tmp_zip).map_err(io(&tmp_zip))?;
    let mut zip = zip::ZipWriter::new(file);
    let mut buf = Vec::new();
    for (name, path) in &files {
        // Weights and audio barely compress; JSON does.
        let method = if name.ends_with(".json") {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .large_file(std::fs::metadata(path).map_err(io(path))?.len() >= u32::MAX as u64);
        zip.start_file(name.as_str(), options).map_err(zip_err)?;
        buf.clear();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(io(path))?;
        zip.write_all(&buf).map_err(io(&tmp_zip))?;
    }
    let file = zip.finish().map_err(zip_err)?;
    file.sync_all().map_err(io(&tmp_zip))?;
    drop(file);
    std::fs::rename(&tmp_zip, dest).map_err(io(dest))?;
    Ok(ExportReport {
        path: dest.to_path_buf(),
        adapter: adapter.clone(),
        peft_copied,
        entries: files.into_iter().map(|(n, _)| n).collect(),
    })
}

/// The exported adapter's own sample (the first prompt it spoke), else the
/// summary's sample.
fn export_sample(voice: &VoiceEntry, adapter: &AdapterEntry) -> Option<PathBuf> {
    let step = adapter.step?;
    voice
        .samples
        .iter()
        .find(|s| s.step == step && s.path.is_file())
        .map(|s| s.path.clone())
        .or_else(|| {
            let summary = VoiceDir::new(&voice.dir).read_summary().ok()??;
            let wav = VoiceDir::new(&voice.dir).resolve(summary.sample_wav.as_deref()?);
            wav.is_file().then_some(wav)
        })
}

/// Writes the adapter at `weights` (mlx_lm layout, `adapter_config.json`
/// beside it) in PEFT layout into `out`, on the run's base model.
fn write_peft(run: &RunDir, weights: &Path, out: &Path) -> Result<(), LibraryError> {
    let fail = |reason: String| LibraryError::Peft {
        adapter: weights.to_path_buf(),
        reason,
    };
    let cfg: TrainConfig = run.read_config().map_err(|e| fail(e.to_string()))?;
    let mut loaded = load_csm(&cfg.model_path, &LoadOptions::default()).map_err(|e| {
        fail(format!(
            "loading its base model {}: {e}",
            cfg.model_path.display()
        ))
    })?;
    // Only the adapter's tensors are trainable, as in training: PEFT
    // export writes the model's trainable parameters.
    loaded.model.freeze_parameters(true);
    adapter::load_mlx(&mut loaded.model, weights).map_err(|e| fail(e.to_string()))?;
    adapter::unfreeze_adapters(&mut loaded.model, cfg.lora_bias)
        .map_err(|e| fail(e.to_string()))?;
    let config = loaded.model.config.clone();
    adapter::save_peft(
        out,
        &loaded.model,
        &cfg.lora_spec(),
        &config,
        Some(&cfg.model_path),
    )
    .map_err(|e| fail(e.to_string()))
}

/// The run's `config.json`; `None` before training wrote it.
fn read_run_config(run: &RunDir) -> Result<Option<TrainConfig>, LibraryError> {
    if !run.config_path().is_file() {
        return Ok(None);
    }
    run.read_config().map(Some).map_err(|e| LibraryError::Run {
        path: run.config_path(),
        reason: e.to_string(),
    })
}

/// What the library reads of `metrics.jsonl`.
#[derive(Default)]
struct Reports {
    voice: Vec<VoiceReport>,
    last_step: Option<usize>,
}

fn read_reports(run: &RunDir) -> Result<Reports, LibraryError> {
    if !run.metrics_path().is_file() {
        return Ok(Reports::default());
    }
    let records = run.read_metrics().map_err(|e| LibraryError::Run {
        path: run.metrics_path(),
        reason: e.to_string(),
    })?;
    let mut out = Reports::default();
    for r in records {
        match r.event {
            RunEvent::Train(TrainEvent::VoiceScores(v)) => out.voice.push(v),
            RunEvent::Train(TrainEvent::Step(s)) => out.last_step = Some(s.step),
            _ => {}
        }
    }
    Ok(out)
}

/// The later report of `step` (a resumed run may score a step twice).
fn report_at(reports: &[VoiceReport], step: usize) -> Option<&VoiceReport> {
    reports.iter().rev().find(|r| r.step == step)
}

fn score_of(r: &VoiceReport) -> ScoreSet {
    ScoreSet {
        step: r.step,
        similarity: r.summary.similarity,
        wer: r.summary.wer,
        cer: r.summary.cer,
        health_warnings: r.summary.health_warnings,
    }
}

fn score_of_summary(s: &crate::layout::Scores) -> ScoreSet {
    ScoreSet {
        step: s.step,
        similarity: s.similarity,
        wer: s.wer,
        cer: s.cer,
        health_warnings: s.health_warnings,
    }
}

/// Base, best and last scores from the run's reports; `None` when nothing
/// was scored.
fn scores_of(reports: &[VoiceReport]) -> Option<VoiceScores> {
    let last = reports.last()?;
    let best = last.best_step.and_then(|s| report_at(reports, s));
    Some(VoiceScores {
        base: report_at(reports, 0).map(score_of),
        best: best.map(score_of),
        last: (last.step > 0).then(|| score_of(last)),
    })
}

/// The base model's and the best checkpoint's samples that exist on disk.
fn samples_of(reports: &[VoiceReport]) -> Vec<SampleEntry> {
    let best = reports.last().and_then(|r| r.best_step);
    let mut steps = vec![0];
    steps.extend(best);
    steps
        .into_iter()
        .filter_map(|s| report_at(reports, s))
        .flat_map(|r| {
            r.samples
                .iter()
                .filter(|v| v.path.is_file())
                .map(|v| SampleEntry {
                    step: r.step,
                    prompt: v.prompt,
                    text: v.text.clone(),
                    path: v.path.clone(),
                    similarity: v.similarity,
                    wer: v.wer,
                    duration_secs: v.duration_secs,
                })
        })
        .collect()
}

fn adapters_of(run: &RunDir, last_step: Option<usize>) -> Vec<AdapterEntry> {
    let mut out = Vec::new();
    let best = run.best_adapter_path();
    if best.is_file() {
        out.push(AdapterEntry {
            kind: AdapterKind::Best,
            step: run.best_adapter_step(),
            path: best,
        });
    }
    if let Some(path) = run.final_adapter() {
        out.push(AdapterEntry {
            kind: AdapterKind::Final,
            step: last_step,
            path,
        });
    }
    out.extend(run.checkpoints().into_iter().map(|c| AdapterEntry {
        kind: AdapterKind::Checkpoint,
        step: Some(c.step),
        path: c.path,
    }));
    out
}

fn stages_of(state: &VoiceState) -> Vec<StageState> {
    Stage::ALL
        .iter()
        .map(|&stage| {
            let rec = state.stages.get(&stage);
            StageState {
                stage,
                status: state.status(stage),
                seconds: rec.map_or(0.0, |r| r.seconds),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use csm_core::cancel::CancelToken;
    use csm_core::demo::create_demo;
    use csm_core::train::metrics::JsonlObserver;
    use csm_core::train::{LrSchedule, NullObserver, RunSettings};

    use super::*;
    use crate::layout::VoiceState;

    /// A voice folder as the flow leaves it after training without voice
    /// scores: `voice.json` (through the layout's writer) and `run/`
    /// trained for two steps on the demo by csm-core's trainer (final
    /// adapter in mlx_lm and PEFT layouts, checkpoints, metrics).
    fn trained_voice(root: &Path, library: &Path) -> PathBuf {
        let demo = create_demo(&root.join("demo"), 4, 7).expect("demo builds (needs espeak-ng)");
        let dir = library.join("ann");
        let voice = VoiceDir::new(&dir);
        let mut state = VoiceState::new("Ann".into(), None, root.join("raw"));
        voice.write_state(&mut state).unwrap();
        let cfg = TrainConfig {
            model_path: demo.model.clone(),
            mimi_path: Some(demo.mimi.clone()),
            tokenizer_path: Some(demo.tokenizer.clone()),
            audio_dir: demo.audio_dir.clone(),
            transcript_dir: demo.transcript_dir.clone(),
            output_dir: voice.run_dir(),
            context_turns: 0,
            lora_r: 4,
            lora_alpha: 8.0,
            learning_rate: 1e-3,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            batch_size: 2,
            epochs: 1,
            val_split: 0.0,
            val_every: 0,
            save_every: 1,
            seed: 1,
            ..TrainConfig::default()
        };
        std::fs::create_dir_all(voice.run_dir()).unwrap();
        let mut quiet = NullObserver;
        let mut obs = JsonlObserver::new(&voice.run_dir(), &mut quiet).unwrap();
        let settings = RunSettings::new(root.join("codes"));
        csm_core::train::train(&cfg, &settings, &mut obs, &CancelToken::new())
            .expect("the demo trains");
        dir
    }

    fn zip_entry(zip: &Path, name: &str) -> Vec<u8> {
        let mut archive = zip::ZipArchive::new(File::open(zip).unwrap()).unwrap();
        let mut out = Vec::new();
        archive
            .by_name(name)
            .unwrap_or_else(|e| panic!("{name} in {}: {e}", zip.display()))
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn names_are_one_trimmed_line() {
        assert_eq!(check_name("  Ann's voice \n").unwrap(), "Ann's voice");
        for bad in ["", "   ", "two\nlines", &"x".repeat(121)] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.starts_with("the voice name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_missing_library_is_empty_and_folders_without_voice_json_are_not_voices() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = list_voices(&tmp.path().join("none")).unwrap();
        assert!(lib.voices.is_empty() && lib.unreadable.is_empty());
        let plain = tmp.path().join("photos");
        std::fs::create_dir_all(&plain).unwrap();
        std::fs::write(plain.join("keep.txt"), "mine").unwrap();
        assert!(list_voices(tmp.path()).unwrap().voices.is_empty());
        for err in [
            delete_voice(&plain).unwrap_err(),
            rename_voice(&plain, "x").unwrap_err(),
            export_voice(&plain, &tmp.path().join("x.zip"), false).unwrap_err(),
        ] {
            assert!(matches!(err, LibraryError::NotAVoice { .. }), "{err}");
        }
        assert_eq!(
            std::fs::read_to_string(plain.join("keep.txt")).unwrap(),
            "mine"
        );
        assert!(!tmp.path().join("x.zip").exists());
    }

    /// One trained voice through every operation (training is the slow
    /// part, so it is done once).
    #[test]
    fn a_trained_voice_is_listed_renamed_exported_and_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let library = tmp.path().join("voices");
        let dir = trained_voice(tmp.path(), &library);
        // A voice whose voice.json is broken is listed as unreadable.
        let broken = library.join("broken");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("voice.json"), "{").unwrap();

        let lib = list_voices(&library).unwrap();
        assert_eq!(lib.voices.len(), 1, "{lib:?}");
        assert_eq!(lib.unreadable.len(), 1);
        assert!(
            lib.unreadable[0].error.contains("voice.json"),
            "{:?}",
            lib.unreadable
        );
        let v = &lib.voices[0];
        assert_eq!((v.id.as_str(), v.name.as_str()), ("ann", "Ann"));
        // Two steps (4 recordings, batches of 2), a checkpoint each, no scores.
        assert_eq!(v.steps, Some(2));
        assert!(v.scores.is_none() && v.samples.is_empty() && !v.complete);
        let kinds: Vec<_> = v.adapters.iter().map(|a| (a.kind, a.step)).collect();
        assert_eq!(
            kinds[0],
            (AdapterKind::Final, Some(2)),
            "the final adapter first (no best without scores): {kinds:?}"
        );
        assert!(kinds[1..]
            .iter()
            .all(|(k, _)| *k == AdapterKind::Checkpoint));
        let run = RunDir::new(dir.join("run"));
        assert_eq!(
            v.models.as_ref().unwrap().model_path,
            run.read_config().unwrap().model_path
        );

        // Rename: voice.json's name, the folder stays.
        let renamed = rename_voice(&dir, "  Ann, take two ").unwrap();
        assert_eq!(
            (renamed.name.as_str(), renamed.dir.as_path()),
            ("Ann, take two", dir.as_path())
        );
        assert_eq!(
            VoiceDir::new(&dir).read_state().unwrap().name,
            "Ann, take two"
        );
        assert!(rename_voice(&dir, "\n").is_err());
        assert_eq!(
            VoiceDir::new(&dir).read_state().unwrap().name,
            "Ann, take two"
        );

        // Export: the final adapter, its PEFT layout copied from the run.
        let zip = tmp.path().join("out").join("ann.zip");
        std::fs::create_dir_all(zip.parent().unwrap()).unwrap();
        let report = export_voice(&dir, &zip, false).unwrap();
        assert!(report.peft_copied);
        assert_eq!(report.adapter.kind, AdapterKind::Final);
        assert_eq!(
            report.entries,
            [
                "ann/adapter/adapters.safetensors",
                "ann/adapter/adapter_config.json",
                "ann/adapter/peft/adapter_model.safetensors",
                "ann/adapter/peft/adapter_config.json",
                "ann/config.json",
            ]
        );
        let read = |p: PathBuf| std::fs::read(p).unwrap();
        assert_eq!(
            zip_entry(&zip, "ann/adapter/adapters.safetensors"),
            read(run.path().join(ADAPTER_FILE))
        );
        assert_eq!(zip_entry(&zip, "ann/config.json"), read(run.config_path()));
        let peft_weights = read(run.path().join("peft").join(PEFT_WEIGHTS));
        assert_eq!(
            zip_entry(&zip, "ann/adapter/peft/adapter_model.safetensors"),
            peft_weights
        );
        // Nothing is left beside the zip; an existing zip is kept without overwrite.
        let beside: Vec<_> = std::fs::read_dir(zip.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(beside, ["ann.zip"]);
        let before = read(zip.clone());
        assert!(matches!(
            export_voice(&dir, &zip, false),
            Err(LibraryError::Exists { .. })
        ));
        assert_eq!(read(zip.clone()), before);

        // Without the run's peft/, the PEFT layout is written from the
        // adapter on the base model: the same bytes the trainer wrote.
        let peft_dir = run.path().join("peft");
        std::fs::rename(&peft_dir, tmp.path().join("peft-aside")).unwrap();
        let report = export_voice(&dir, &zip, true).unwrap();
        assert!(!report.peft_copied);
        assert_eq!(
            zip_entry(&zip, "ann/adapter/peft/adapter_model.safetensors"),
            peft_weights
        );
        assert_eq!(
            zip_entry(&zip, "ann/adapter/peft/adapter_config.json"),
            read(tmp.path().join("peft-aside").join(ADAPTER_CONFIG_FILE))
        );

        // Without any adapter there is nothing to export, and nothing is written.
        let adapter = run.path().join(ADAPTER_FILE);
        std::fs::rename(&adapter, tmp.path().join("adapter-aside")).unwrap();
        let none = tmp.path().join("out").join("none.zip");
        assert!(matches!(
            export_voice(&dir, &none, false),
            Err(LibraryError::NoAdapter { .. })
        ));
        assert!(!none.exists());

        // Delete: the whole folder, and nothing hidden left beside it.
        delete_voice(&dir).unwrap();
        assert!(!dir.exists());
        let left: Vec<_> = std::fs::read_dir(&library)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["broken"]);
        assert!(list_voices(&library).unwrap().voices.is_empty());
    }
}
