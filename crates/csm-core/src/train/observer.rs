//! How a run reports progress and how it is stopped: the loop never prints;
//! the CLI (progress bar, `metrics.jsonl`) and the app (IPC channel)
//! implement [`TrainingObserver`] and hold a [`crate::cancel::CancelToken`].

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// What the run is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Reading the model, codec and tokenizer.
    Loading,
    /// Scanning the dataset and Mimi-encoding audio not yet in the cache.
    EncodingAudio,
    /// Optimizer steps.
    Training,
    /// Writing checkpoints and final outputs.
    Saving,
}

/// One optimizer step's numbers. `metrics.jsonl` holds them in this serde
/// form; a non-finite number is written as `null` and reads back as NaN.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    /// Optimizer step, 1-based.
    pub step: usize,
    /// Steps in the whole run.
    pub total_steps: usize,
    /// Epoch, 1-based.
    pub epoch: usize,
    /// Weighted total loss.
    #[serde(deserialize_with = "f32_or_nan")]
    pub loss: f32,
    /// Codebook-0 cross-entropy.
    #[serde(deserialize_with = "f32_or_nan")]
    pub semantic_loss: f32,
    /// Mean cross-entropy of codebooks 1..N-1 on the selected frames.
    #[serde(deserialize_with = "f32_or_nan")]
    pub acoustic_loss: f32,
    /// Learning rate used for this step.
    #[serde(deserialize_with = "f32_or_nan")]
    pub lr: f32,
    /// Gradient norm before clipping.
    #[serde(deserialize_with = "f32_or_nan")]
    pub grad_norm: f32,
    /// Frames (all ranks together) processed per second in this step.
    #[serde(deserialize_with = "f32_or_nan")]
    pub frames_per_sec: f32,
    /// Bytes this rank sent in the gradient all-reduce (0 on one process).
    #[serde(default)]
    pub comm_bytes: u64,
    /// Seconds spent in the gradient all-reduce.
    #[serde(default)]
    pub comm_secs: f64,
    /// MLX active memory after the step, bytes.
    pub memory_bytes: u64,
    /// Peak MLX memory so far, bytes.
    #[serde(default)]
    pub peak_memory_bytes: u64,
    /// Seconds since training started.
    #[serde(deserialize_with = "f64_or_nan")]
    pub elapsed_secs: f64,
    /// Estimated seconds left (NaN while unknown).
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub eta_secs: f64,
}

/// Validation result (NaN as in [`StepReport`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValReport {
    /// Step after which validation ran.
    pub step: usize,
    /// Weighted total loss over the validation set.
    #[serde(deserialize_with = "f32_or_nan")]
    pub loss: f32,
    /// Codebook-0 part.
    #[serde(deserialize_with = "f32_or_nan")]
    pub semantic_loss: f32,
    /// Codebooks 1..N-1 part.
    #[serde(deserialize_with = "f32_or_nan")]
    pub acoustic_loss: f32,
    /// Validation examples.
    #[serde(default)]
    pub examples: usize,
}

/// Everything the run reports, in order. This serde form is the record of
/// `metrics.jsonl` (see `train::run_dir`): variant names in camelCase,
/// fields of the struct variants in snake_case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "event", content = "data")]
pub enum TrainEvent {
    /// The run started (or resumed) with this many steps in total.
    Started {
        /// Steps of the whole run.
        total_steps: usize,
        /// Step it resumes after (0 for a fresh run).
        start_step: usize,
        /// Training examples.
        train_examples: usize,
        /// Validation examples.
        val_examples: usize,
        /// Trainable parameters.
        trainable_params: usize,
    },
    /// A new phase began.
    Phase {
        /// The phase.
        phase: Phase,
        /// A short human description.
        detail: String,
    },
    /// Progress inside a phase (e.g. audio files encoded).
    Progress {
        /// Done so far.
        done: usize,
        /// Total.
        total: usize,
    },
    /// An optimizer step finished.
    Step(StepReport),
    /// A validation pass finished.
    Validation(ValReport),
    /// A checkpoint was written.
    Checkpoint {
        /// Step it holds.
        step: usize,
        /// The file.
        path: PathBuf,
    },
    /// A sample was spoken with the current weights.
    Sample {
        /// Step it was generated at.
        step: usize,
        /// The WAV file.
        path: PathBuf,
    },
    /// Something worth the user's attention that does not stop the run.
    Warning {
        /// What happened.
        message: String,
    },
    /// The run ended normally or was cancelled after saving.
    Finished {
        /// Last step done.
        step: usize,
        /// Whether it stopped early on request.
        cancelled: bool,
        /// Output directory.
        output_dir: PathBuf,
    },
}

fn nan() -> f64 {
    f64::NAN
}

/// A number, or `null` (how serde_json writes NaN and infinities) as NaN.
fn f32_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
}

/// As [`f32_or_nan`], for `f64`.
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Receives the run's events. Implementations must be cheap: they run on
/// the training thread between steps.
pub trait TrainingObserver {
    /// Called for every event, in order.
    fn on_event(&mut self, event: &TrainEvent);
}

/// An observer that ignores everything (library use, tests).
#[derive(Debug, Default)]
pub struct NullObserver;

impl TrainingObserver for NullObserver {
    fn on_event(&mut self, _event: &TrainEvent) {}
}

/// Collects events in memory (tests, small tools).
#[derive(Debug, Default)]
pub struct RecordingObserver {
    /// Events so far.
    pub events: Vec<TrainEvent>,
}

impl TrainingObserver for RecordingObserver {
    fn on_event(&mut self, event: &TrainEvent) {
        self.events.push(event.clone());
    }
}
