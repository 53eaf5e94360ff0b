//! The run folder (`--output-dir`): the one place that knows its file
//! names and formats. The trainer writes through it, and the CLI and the
//! app read runs back through it.
//!
//! ```text
//! OUTPUT/
//!   config.json                          the TrainConfig as started (pretty JSON)
//!   metrics.jsonl                        one event a line: {"data":…,"event":…,"time":…}
//!   checkpoint_step_NNNNNNN.safetensors  training checkpoints (train::state), newest kept
//!   checkpoint_latest.safetensors        link to (on Windows: copy of) the newest
//!   adapters.safetensors                 the final adapter, mlx_lm layout,
//!   adapter_config.json                    with its config (crate::adapter)
//!   adapters_best.safetensors            with voice scores: the best checkpoint's
//!                                          adapter, mlx_lm layout (same config;
//!                                          its step in the header's `step`)
//!   samples/step_NNNNNNN/prompt_K.wav    with voice scores: what each scoring spoke
//!   samples/step_NNNNNNN.wav             --generate-samples (several speakers:
//!                                          step_NNNNNNN_speakerID.wav, one each)
//!   peft/  merged/  samples/             other outputs, as the run was asked
//! ```
//!
//! `metrics.jsonl` records are [`TrainEvent`]s in their serde form; voice
//! scores are `voiceSetup` and `voiceScores` records
//! ([`RunDir::voice_reports`] reads the latter back).
//!
//! Writes are atomic (a temporary file renamed into place), except
//! `metrics.jsonl`, which is appended to a line at a time; a reader skips a
//! line cut short by a crash.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::config::TrainConfig;
use super::observer::{TrainEvent, VoiceReport};
use crate::adapter::{Adapter, AdapterError, ADAPTER_FILE};
use crate::checkpoint::write::write_atomic;
use crate::checkpoint::CheckpointError;

/// The run's config as started.
pub const CONFIG_FILE: &str = "config.json";
/// The run's events, one JSON object a line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Link to the newest training checkpoint.
pub const LATEST_CHECKPOINT: &str = "checkpoint_latest.safetensors";
/// The adapter of the best checkpoint by the voice scores (mlx_lm layout,
/// beside `adapters.safetensors` and sharing its `adapter_config.json`).
pub const BEST_ADAPTER_FILE: &str = "adapters_best.safetensors";
/// Key of the step in [`BEST_ADAPTER_FILE`]'s safetensors header.
const BEST_STEP_KEY: &str = "step";
/// Folder of the spoken samples.
pub const SAMPLES_DIR: &str = "samples";
const CHECKPOINT_PREFIX: &str = "checkpoint_step_";
const CHECKPOINT_SUFFIX: &str = ".safetensors";

/// Reading a run folder failed.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A config file is not a run config.
    #[error("{path} is not a valid run config: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What serde found.
        #[source]
        source: serde_json::Error,
    },
}

/// A run folder (it need not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(PathBuf);

/// A training checkpoint of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointFile {
    /// Optimizer steps it holds.
    pub step: usize,
    /// The file.
    pub path: PathBuf,
}

impl RunDir {
    /// The run folder at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir(path.into())
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.0.join(CONFIG_FILE)
    }

    /// `metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.0.join(METRICS_FILE)
    }

    /// `checkpoint_latest.safetensors`.
    pub fn latest_checkpoint_path(&self) -> PathBuf {
        self.0.join(LATEST_CHECKPOINT)
    }

    /// `checkpoint_step_NNNNNNN.safetensors` of `step`.
    pub fn checkpoint_path(&self, step: usize) -> PathBuf {
        self.0
            .join(format!("{CHECKPOINT_PREFIX}{step:07}{CHECKPOINT_SUFFIX}"))
    }

    /// The final adapter's weights (`adapters.safetensors`), once the run
    /// has written them.
    pub fn final_adapter(&self) -> Option<PathBuf> {
        Some(self.0.join(ADAPTER_FILE)).filter(|p| p.is_file())
    }

    /// `adapters_best.safetensors` (see [`BEST_ADAPTER_FILE`]).
    pub fn best_adapter_path(&self) -> PathBuf {
        self.0.join(BEST_ADAPTER_FILE)
    }

    /// The step whose adapter `adapters_best.safetensors` holds, read from
    /// its header; `None` when the file is missing or has no step.
    pub fn best_adapter_step(&self) -> Option<usize> {
        crate::checkpoint::write::read_safetensors_metadata(&self.best_adapter_path())
            .ok()?
            .get(BEST_STEP_KEY)?
            .parse()
            .ok()
    }

    /// Writes `adapter` as `adapters_best.safetensors` (+
    /// `adapter_config.json`), atomically, noting `step` in its header.
    ///
    /// # Errors
    /// A file cannot be written.
    pub fn write_best_adapter(&self, adapter: &Adapter, step: usize) -> Result<(), AdapterError> {
        let meta = std::collections::HashMap::from([(BEST_STEP_KEY.to_string(), step.to_string())]);
        adapter.save_mlx_as(&self.0, BEST_ADAPTER_FILE, &meta)
    }

    /// The `--generate-samples` sample of `step`: `samples/step_NNNNNNN.wav`,
    /// or `samples/step_NNNNNNN_speakerID.wav` for speaker `ID` of a run
    /// with several speakers.
    pub fn sample_path(&self, step: usize, speaker: Option<u32>) -> PathBuf {
        let name = match speaker {
            None => format!("step_{step:07}.wav"),
            Some(id) => format!("step_{step:07}_speaker{id}.wav"),
        };
        self.0.join(SAMPLES_DIR).join(name)
    }

    /// `samples/step_NNNNNNN/prompt_K.wav`: what prompt `prompt` (1-based)
    /// sounded like at `step` (0: the base model).
    pub fn voice_sample_path(&self, step: usize, prompt: usize) -> PathBuf {
        self.0
            .join(SAMPLES_DIR)
            .join(format!("step_{step:07}"))
            .join(format!("prompt_{prompt}.wav"))
    }

    /// The `voiceScores` records of `metrics.jsonl`, in file order (a run
    /// resumed from an earlier checkpoint may have scored a step twice;
    /// the later record is the one that counts).
    ///
    /// # Errors
    /// The file is missing or unreadable.
    pub fn voice_reports(&self) -> Result<Vec<VoiceReport>, RunDirError> {
        Ok(self
            .read_metrics()?
            .into_iter()
            .filter_map(|r| match r.event {
                RunEvent::Train(TrainEvent::VoiceScores(v)) => Some(v),
                _ => None,
            })
            .collect())
    }

    /// Whether the folder holds a run: `config.json` and `metrics.jsonl`.
    pub fn is_run(&self) -> bool {
        self.config_path().is_file() && self.metrics_path().is_file()
    }

    /// Writes `config.json` (pretty JSON) atomically.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_config(&self, config: &TrainConfig) -> Result<(), CheckpointError> {
        write_config_file(&self.config_path(), config)
    }

    /// Reads `config.json`.
    ///
    /// # Errors
    /// The file is missing, unreadable or not a [`TrainConfig`].
    pub fn read_config(&self) -> Result<TrainConfig, RunDirError> {
        read_config_file(&self.config_path())
    }

    /// Opens `metrics.jsonl` for appending (creating the folder and the
    /// file when missing).
    ///
    /// # Errors
    /// The folder or file cannot be created or opened.
    pub fn open_metrics(&self) -> std::io::Result<MetricsLog> {
        std::fs::create_dir_all(&self.0)?;
        let path = self.metrics_path();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(MetricsLog { file, path })
    }

    /// Every record of `metrics.jsonl`, in file order. Lines that are not a
    /// record (cut by a crash, or an event this version does not know) are
    /// skipped.
    ///
    /// # Errors
    /// The file is missing or unreadable.
    pub fn read_metrics(&self) -> Result<Vec<MetricsRecord>, RunDirError> {
        let path = self.metrics_path();
        let text = std::fs::read_to_string(&path).map_err(|source| RunDirError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(text.lines().filter_map(MetricsRecord::parse).collect())
    }

    /// The `checkpoint_step_*.safetensors` files, oldest first.
    pub fn checkpoints(&self) -> Vec<CheckpointFile> {
        let mut found: Vec<CheckpointFile> = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let step = checkpoint_step(&e.file_name().to_string_lossy())?;
                Some(CheckpointFile {
                    step,
                    path: e.path(),
                })
            })
            .collect();
        found.sort_by_key(|c| c.step);
        found
    }

    /// Atomically re-points [`LATEST_CHECKPOINT`] at `checkpoint` (a file
    /// of this folder): a relative symlink where there are symlinks, a copy
    /// elsewhere.
    ///
    /// # Errors
    /// The link cannot be written.
    pub fn point_latest(&self, checkpoint: &Path) -> Result<(), CheckpointError> {
        let latest = self.latest_checkpoint_path();
        let tmp = self
            .0
            .join(format!(".{LATEST_CHECKPOINT}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let io = |source| CheckpointError::Io {
            path: latest.clone(),
            source,
        };
        #[cfg(unix)]
        std::os::unix::fs::symlink(checkpoint.file_name().unwrap_or_default(), &tmp).map_err(io)?;
        #[cfg(not(unix))]
        std::fs::copy(checkpoint, &tmp).map_err(io)?;
        std::fs::rename(&tmp, &latest).map_err(io)
    }

    /// Deletes all but the newest `keep` step checkpoints, never `spare`.
    /// Best effort: a file that cannot be deleted stays.
    pub fn prune_checkpoints(&self, keep: usize, spare: &Path) {
        let all = self.checkpoints();
        let excess = all.len().saturating_sub(keep);
        for old in all.into_iter().take(excess) {
            if old.path.file_name() != spare.file_name() {
                let _ = std::fs::remove_file(old.path);
            }
        }
    }
}

/// Reads a run config file: a run's `config.json`, or one the app exported
/// (what `csm finetune-lora --config` takes).
///
/// # Errors
/// The file is missing, unreadable or not a [`TrainConfig`].
pub fn read_config_file(path: &Path) -> Result<TrainConfig, RunDirError> {
    let text = std::fs::read_to_string(path).map_err(|source| RunDirError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| RunDirError::Config {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a run config file atomically, in `config.json`'s format (pretty
/// JSON, fields in [`TrainConfig`]'s order): the app's exported configs are
/// the files `--config` reads.
///
/// # Errors
/// The file cannot be written.
pub fn write_config_file(path: &Path, config: &TrainConfig) -> Result<(), CheckpointError> {
    let json = serde_json::to_string_pretty(config).expect("config serialises");
    write_atomic(path, json.as_bytes())
}

/// Whether `path` names a training checkpoint of a run folder
/// (`checkpoint_step_*.safetensors` or `checkpoint_latest.safetensors`),
/// as opposed to an adapter in mlx_lm layout.
pub fn is_checkpoint_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == LATEST_CHECKPOINT || checkpoint_step(n).is_some())
}

/// The step of a `checkpoint_step_NNNNNNN.safetensors` file name.
pub fn checkpoint_step(file_name: &str) -> Option<usize> {
    file_name
        .strip_prefix(CHECKPOINT_PREFIX)?
        .strip_suffix(CHECKPOINT_SUFFIX)?
        .parse()
        .ok()
}

/// Seconds since the Unix epoch, the `time` of a record.
fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// `metrics.jsonl` open for appending (see [`RunDir::open_metrics`]).
#[derive(Debug)]
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` with the wall-clock time.
    ///
    /// # Errors
    /// The line cannot be written.
    pub fn append(&mut self, event: &TrainEvent) -> std::io::Result<()> {
        let mut value = serde_json::to_value(event).expect("events serialise");
        value["time"] = serde_json::json!(now_secs());
        writeln!(self.file, "{value}")
    }

    /// Appends a `failed` record: the run ended with an error of `kind`
    /// (the app's error kinds, e.g. `training`) saying `message`.
    ///
    /// # Errors
    /// The line cannot be written.
    pub fn append_failure(&mut self, kind: &str, message: &str) -> std::io::Result<()> {
        let line = serde_json::json!({
            "event": "failed",
            "data": { "kind": kind, "message": message },
            "time": now_secs(),
        });
        writeln!(self.file, "{line}")
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone)]
pub struct MetricsRecord {
    /// When it was written, in seconds since the Unix epoch (`None` in
    /// files that lack it).
    pub time: Option<f64>,
    /// What happened.
    pub event: RunEvent,
}

/// What a record says.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// An event of the trainer.
    Train(TrainEvent),
    /// The run ended with an error (written by [`MetricsLog::append_failure`]).
    Failed {
        /// The error kind.
        kind: String,
        /// The message.
        message: String,
    },
}

impl MetricsRecord {
    /// Parses one line; `None` for anything that is not a record.
    pub fn parse(line: &str) -> Option<Self> {
        let mut value: Value = serde_json::from_str(line).ok()?;
        let time = value.get("time").and_then(Value::as_f64);
        if let Some(map) = value.as_object_mut() {
            map.remove("time");
        }
        let event = if value["event"] == "failed" {
            let data = &value["data"];
            RunEvent::Failed {
                kind: data["kind"].as_str().unwrap_or_default().to_string(),
                message: data["message"].as_str().unwrap_or_default().to_string(),
            }
        } else {
            RunEvent::Train(serde_json::from_value(value).ok()?)
        };
        Some(MetricsRecord { time, event })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{Phase, StepReport, ValReport};

    fn step(step: usize, loss: f32) -> TrainEvent {
        TrainEvent::Step(StepReport {
            step,
            total_steps: 10,
            epoch: 1,
            loss,
            semantic_loss: 1.5,
            acoustic_loss: 2.5,
            lr: 1e-3,
            grad_norm: 0.5,
            frames_per_sec: 100.0,
            comm_bytes: 0,
            comm_secs: 0.0,
            memory_bytes: 1 << 20,
            peak_memory_bytes: 2 << 20,
            elapsed_secs: 1.25,
            eta_secs: f64::NAN,
        })
    }

    #[test]
    fn metrics_lines_keep_their_format_and_read_back_typed() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let mut log = run.open_metrics().unwrap();
        log.append(&TrainEvent::Started {
            total_steps: 10,
            start_step: 0,
            train_examples: 8,
            val_examples: 2,
            trainable_params: 1024,
        })
        .unwrap();
        log.append(&TrainEvent::Phase {
            phase: Phase::Training,
            detail: "go".into(),
        })
        .unwrap();
        log.append(&step(1, f32::NAN)).unwrap();
        log.append(&TrainEvent::Validation(ValReport {
            step: 1,
            loss: 3.0,
            semantic_loss: 1.0,
            acoustic_loss: 2.0,
            examples: 2,
            speakers: Vec::new(),
        }))
        .unwrap();
        log.append_failure("training", "boom").unwrap();
        drop(log);

        let text = std::fs::read_to_string(run.metrics_path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "one line per event:\n{text}");
        // The layout History and plotting scripts read: sorted keys, struct
        // variants in snake_case, reports in camelCase, NaN as null.
        assert!(
            lines[0].starts_with(
                r#"{"data":{"start_step":0,"total_steps":10,"train_examples":8,"trainable_params":1024,"val_examples":2},"event":"started","time":"#
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[2].contains(r#""loss":null"#) && lines[2].contains(r#""etaSecs":null"#),
            "{}",
            lines[2]
        );
        assert!(
            lines[4].starts_with(
                r#"{"data":{"kind":"training","message":"boom"},"event":"failed","time":"#
            ),
            "{}",
            lines[4]
        );

        // A torn last line (a crash mid-write) is skipped.
        std::fs::write(run.metrics_path(), format!("{text}{{\"data\":{{\"st")).unwrap();
        let records = run.read_metrics().unwrap();
        assert_eq!(records.len(), 5, "{records:?}");
        assert!(records.iter().all(|r| r.time.is_some_and(|t| t > 1e9)));
        match &records[0].event {
            RunEvent::Train(TrainEvent::Started { train_examples, .. }) => {
                assert_eq!(*train_examples, 8);
            }
            other => panic!("expected started, got {other:?}"),
        }
        match &records[2].event {
            RunEvent::Train(TrainEvent::Step(r)) => {
                assert!(r.loss.is_nan(), "null comes back as NaN");
                assert!(r.eta_secs.is_nan());
                assert_eq!(
                    (r.step, r.semantic_loss, r.peak_memory_bytes),
                    (1, 1.5, 2 << 20)
                );
            }
            other => panic!("expected a step, got {other:?}"),
        }
        assert!(matches!(
            &records[3].event,
            RunEvent::Train(TrainEvent::Validation(v)) if v.loss == 3.0 && v.examples == 2
        ));
        assert!(matches!(
            &records[4].event,
            RunEvent::Failed { kind, message } if kind == "training" && message == "boom"
        ));
    }

    fn voice_report(step: usize, similarity: f32) -> VoiceReport {
        use crate::train::{VoiceSample, VoiceSummary};
        VoiceReport {
            step,
            checkpoint: (step > 0).then(|| format!("checkpoint_step_{step:07}.safetensors").into()),
            summary: VoiceSummary {
                similarity: Some(similarity),
                wer: None,
                cer: None,
                health_warnings: 1,
                samples: 1,
            },
            samples: vec![VoiceSample {
                prompt: 1,
                text: "Hi.".into(),
                path: format!("samples/step_{step:07}/prompt_1.wav").into(),
                transcript: None,
                similarity: Some(similarity),
                wer: None,
                cer: None,
                stop_reason: crate::generate::StopReason::LengthLimit,
                duration_secs: 2.5,
                leading_silence_secs: 0.1,
                trailing_silence_secs: 0.2,
                longest_pause_secs: 0.0,
                clipped_fraction: 0.0,
                chars_per_sec: Some(12.0),
                rate_ratio: Some(1.1),
                warnings: vec!["did not end by itself".into()],
            }],
            best_step: (step > 0).then_some(step),
            new_best: step > 0,
        }
    }

    #[test]
    fn voice_records_keep_their_format_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut log = run.open_metrics().unwrap();
        log.append(&TrainEvent::VoiceScores(voice_report(0, 0.5)))
            .unwrap();
        log.append(&step(1, 2.0)).unwrap();
        log.append(&TrainEvent::VoiceScores(voice_report(4, 0.75)))
            .unwrap();
        drop(log);
        let text = std::fs::read_to_string(run.metrics_path()).unwrap();
        let first = text.lines().next().unwrap();
        // The record the app reads: camelCase report, stop reasons in camelCase.
        assert!(
            first.starts_with(
                r#"{"data":{"bestStep":null,"checkpoint":null,"newBest":false,"samples":[{"cer":null,"charsPerSec":12.0,"clippedFraction":0.0,"durationSecs":2.5,"leadingSilenceSecs":0.1,"longestPauseSecs":0.0,"path":"samples/step_0000000/prompt_1.wav","prompt":1,"rateRatio":1.1,"similarity":0.5,"stopReason":"lengthLimit","text":"Hi.","trailingSilenceSecs":0.2,"transcript":null,"warnings":["did not end by itself"],"wer":null}],"step":0,"summary":{"cer":null,"healthWarnings":1,"samples":1,"similarity":0.5,"wer":null}},"event":"voiceScores","time":"#
            ),
            "{first}"
        );
        let reports = run.voice_reports().unwrap();
        assert_eq!(reports, [voice_report(0, 0.5), voice_report(4, 0.75)]);
        assert_eq!(
            run.voice_sample_path(200, 2),
            dir.path().join("samples/step_0000200/prompt_2.wav")
        );
        assert!(RunDir::new(dir.path().join("none"))
            .voice_reports()
            .is_err());
    }

    #[test]
    fn step_records_of_older_files_read_with_defaults() {
        // Before comm and peak memory were reported.
        let line = r#"{"data":{"acousticLoss":2.0,"elapsedSecs":3.0,"epoch":1,"framesPerSec":5.0,"gradNorm":null,"loss":4.0,"lr":0.001,"memoryBytes":7,"semanticLoss":2.0,"step":2,"totalSteps":9},"event":"step","time":1.0}"#;
        let rec = MetricsRecord::parse(line).expect("a step record");
        let RunEvent::Train(TrainEvent::Step(r)) = rec.event else {
            panic!("expected a step");
        };
        assert_eq!((r.step, r.peak_memory_bytes, r.comm_bytes), (2, 0, 0));
        assert!(r.grad_norm.is_nan() && r.eta_secs.is_nan());
        assert_eq!(rec.time, Some(1.0));
    }

    #[test]
    fn config_round_trips_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let config = TrainConfig {
            lora_r: 16,
            ..TrainConfig::default()
        };
        run.write_config(&config).unwrap();
        assert_eq!(
            std::fs::read_to_string(run.config_path()).unwrap(),
            serde_json::to_string_pretty(&config).unwrap(),
            "pretty JSON, no trailing newline"
        );
        assert_eq!(run.read_config().unwrap(), config);
        std::fs::write(run.config_path(), r#"{"lora_rank": 4}"#).unwrap();
        let err = run.read_config().unwrap_err().to_string();
        assert!(
            err.contains("config.json is not a valid run config"),
            "{err}"
        );
        let missing = RunDir::new(dir.path().join("nope")).read_config();
        assert!(matches!(missing, Err(RunDirError::Read { .. })));
    }

    #[test]
    fn checkpoints_are_listed_by_step_pointed_at_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert!(run.checkpoints().is_empty());
        for step in [12, 3, 100, 7] {
            std::fs::write(run.checkpoint_path(step), step.to_string()).unwrap();
        }
        std::fs::write(dir.path().join("checkpoint_step_x.safetensors"), "").unwrap();
        assert_eq!(
            run.checkpoint_path(7).file_name().unwrap(),
            "checkpoint_step_0000007.safetensors"
        );
        let steps: Vec<usize> = run.checkpoints().iter().map(|c| c.step).collect();
        assert_eq!(steps, [3, 7, 12, 100]);
        assert!(is_checkpoint_file(&run.checkpoint_path(7)));
        assert!(is_checkpoint_file(&run.latest_checkpoint_path()));
        assert!(!is_checkpoint_file(&dir.path().join(ADAPTER_FILE)));
        assert!(!is_checkpoint_file(
            &dir.path().join("checkpoint_step_x.safetensors")
        ));

        run.point_latest(&run.checkpoint_path(100)).unwrap();
        assert_eq!(
            std::fs::read_to_string(run.latest_checkpoint_path()).unwrap(),
            "100"
        );
        run.point_latest(&run.checkpoint_path(12)).unwrap();
        assert_eq!(
            std::fs::read_to_string(run.latest_checkpoint_path()).unwrap(),
            "12"
        );

        // Keep two, and never the one just written even when it is older.
        run.prune_checkpoints(2, &run.checkpoint_path(3));
        let steps: Vec<usize> = run.checkpoints().iter().map(|c| c.step).collect();
        assert_eq!(steps, [3, 12, 100]);
    }

    #[test]
    fn a_run_has_config_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert!(!run.is_run());
        run.write_config(&TrainConfig::default()).unwrap();
        assert!(!run.is_run());
        run.open_metrics().unwrap();
        assert!(run.is_run());
        assert_eq!(run.final_adapter(), None);
        std::fs::write(dir.path().join(ADAPTER_FILE), "").unwrap();
        assert_eq!(run.final_adapter(), Some(dir.path().join(ADAPTER_FILE)));
    }
}
