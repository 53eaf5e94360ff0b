//! How [`crate::run_voice`] reports: one [`FlowEvent`] at a time to a
//! [`FlowObserver`], from the calling thread or from the thread that
//! downloads the models beside transcription (never both at once: the
//! calls are made under a lock). The CLI draws progress bars from them;
//! the app forwards them over IPC (they serialize as
//! `{"event": "stageProgress", "data": {...}}`).

use serde::Serialize;

use crate::layout::{SettingChoice, Stage, Summary};

/// What a progress count counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Bytes downloaded.
    Bytes,
    /// Seconds of audio transcribed.
    AudioSeconds,
    /// Recordings read and cut.
    Recordings,
    /// Utterances Mimi-encoded before training.
    Utterances,
    /// Optimizer steps.
    Steps,
}

/// How a stage ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageEnd {
    /// It did its work.
    Done,
    /// Nothing to do, or done by an earlier run.
    Skipped,
}

/// One event of the journey.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase", tag = "event", content = "data")]
#[non_exhaustive]
pub enum FlowEvent {
    /// The journey begins in this voice folder (first event of a run; the
    /// app proofreads `dataset_dir` while the run goes on).
    Opened {
        /// The voice folder.
        voice_dir: std::path::PathBuf,
        /// Its dataset folder (`audio/`, `transcripts/`, `alignments/`).
        dataset_dir: std::path::PathBuf,
    },
    /// A stage begins. The download stage may still run when transcription
    /// starts (its files come on another thread); its `StageFinished` then
    /// comes later.
    StageStarted {
        /// Which.
        stage: Stage,
        /// One line on what it will do.
        detail: String,
    },
    /// Progress inside a stage. `total` may grow (a download learns a
    /// file's size when it starts).
    StageProgress {
        /// Which.
        stage: Stage,
        /// Done so far, in `unit`.
        done: f64,
        /// In all, in `unit` (0 when not known yet).
        total: f64,
        /// What is counted.
        unit: Unit,
        /// Seconds left at the pace of this run so far; `None` until
        /// something is done.
        eta_s: Option<f64>,
        /// What is being worked on ("sesame/csm-1b/model.safetensors",
        /// "talk_03").
        item: Option<String>,
    },
    /// A line worth showing (a transcript, a checkpoint, a warning).
    Message {
        /// The stage it belongs to.
        stage: Stage,
        /// The line.
        text: String,
    },
    /// The training settings, as chosen by the recipe and the overrides.
    Settings {
        /// Every choice, with its reason.
        choices: Vec<SettingChoice>,
    },
    /// An event of the trainer, as it writes it to `metrics.jsonl`
    /// (steps, validation, voice scores, checkpoints).
    Train(csm_core::train::TrainEvent),
    /// A stage ended.
    StageFinished {
        /// Which.
        stage: Stage,
        /// Done or skipped.
        end: StageEnd,
        /// Seconds it took in this run.
        seconds: f64,
        /// One line on what it did.
        note: String,
    },
    /// The journey is over; `summary.json` is written.
    Finished {
        /// Its content.
        summary: Box<Summary>,
    },
}

/// Receives [`FlowEvent`]s.
pub trait FlowObserver {
    /// Called from the working thread or the download thread, one call at
    /// a time; keep it quick (the other thread may be waiting).
    fn on_event(&mut self, event: &FlowEvent);
}

impl<F: FnMut(&FlowEvent)> FlowObserver for F {
    fn on_event(&mut self, event: &FlowEvent) {
        self(event)
    }
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullObserver;

impl FlowObserver for NullObserver {
    fn on_event(&mut self, _event: &FlowEvent) {}
}

/// Seconds left when `done` of `total` took `elapsed_s`, at that pace.
pub fn eta(done: f64, total: f64, elapsed_s: f64) -> Option<f64> {
    (done > 0.0 && total >= done && elapsed_s > 0.0).then(|| elapsed_s * (total - done) / done)
}
