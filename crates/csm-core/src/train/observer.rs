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
    /// Per speaker, by id, when the dataset has several (absent
    /// otherwise): `loss` is theirs pooled by target counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub speakers: Vec<SpeakerValReport>,
}

/// One speaker's part of a validation ([`ValReport::speakers`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpeakerValReport {
    /// The speaker's name (a folder, a `speakers.json` name).
    pub speaker: String,
    /// Its CSM speaker id.
    pub id: u32,
    /// Weighted total loss over its validation examples.
    #[serde(deserialize_with = "f32_or_nan")]
    pub loss: f32,
    /// Codebook-0 part.
    #[serde(deserialize_with = "f32_or_nan")]
    pub semantic_loss: f32,
    /// Codebooks 1..N-1 part.
    #[serde(deserialize_with = "f32_or_nan")]
    pub acoustic_loss: f32,
    /// Its validation examples (their target turn is its).
    pub examples: usize,
}

/// The set-up of a run's voice scores, reported once before the base
/// model is scored (camelCase, as the reports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoiceSetupReport {
    /// Recording whose utterance is held out of training as the samples'
    /// context.
    pub held_out_recording: String,
    /// That utterance's index in its recording (0 for a recording used
    /// whole).
    pub held_out_utterance: usize,
    /// Its length, seconds.
    pub held_out_secs: f64,
    /// What it says.
    pub context_text: String,
    /// The prompts each scoring speaks, in order (`prompt` 1, 2, ...).
    pub prompts: Vec<String>,
    /// Training recordings whose embeddings make the speaker's.
    pub reference_recordings: usize,
    /// The speaker's pace on them, characters per second.
    pub reference_chars_per_sec: Option<f64>,
    /// Whether samples are transcribed (WER/CER and the WER gate).
    pub transcribed: bool,
}

/// The scores of one model state, over its samples. The numbers the best
/// checkpoint is chosen by (`train::voice::best_index`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoiceSummary {
    /// Mean cosine similarity to the speaker over the samples; a sample
    /// with nothing to embed counts as 0. `None` only without samples.
    pub similarity: Option<f32>,
    /// Word error rate over all samples (edits / reference words), when
    /// transcribed.
    pub wer: Option<f32>,
    /// Character error rate over all samples, when transcribed.
    pub cer: Option<f32>,
    /// Health warnings over all samples.
    pub health_warnings: usize,
    /// Samples scored.
    pub samples: usize,
}

/// One spoken prompt and its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoiceSample {
    /// Which prompt, 1-based (the order of [`VoiceSetupReport::prompts`]).
    pub prompt: usize,
    /// What it should say.
    pub text: String,
    /// The WAV file (24 kHz mono).
    pub path: PathBuf,
    /// What Whisper heard, when transcribed.
    pub transcript: Option<String>,
    /// Cosine similarity to the speaker; `None` when nothing in the sample
    /// could be embedded.
    pub similarity: Option<f32>,
    /// Word error rate against `text`, when transcribed.
    pub wer: Option<f32>,
    /// Character error rate against `text`, when transcribed.
    pub cer: Option<f32>,
    /// Why generation stopped (`eos` is the healthy end).
    pub stop_reason: crate::generate::StopReason,
    /// Length, seconds.
    pub duration_secs: f64,
    /// Silence before the speech, seconds.
    pub leading_silence_secs: f64,
    /// Silence after the speech, seconds.
    pub trailing_silence_secs: f64,
    /// Longest pause inside the speech, seconds.
    pub longest_pause_secs: f64,
    /// Fraction of samples clipped.
    pub clipped_fraction: f64,
    /// Pace, characters of `text` per second of speech.
    pub chars_per_sec: Option<f64>,
    /// Pace over the speaker's own (1: the same).
    pub rate_ratio: Option<f64>,
    /// Health warnings, one sentence each (generation that did not end by
    /// itself, silences, pauses, clipping, pace).
    pub warnings: Vec<String>,
}

/// Voice scores of the base model (step 0) or of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoiceReport {
    /// Optimizer steps of the weights scored; 0 is the base model.
    pub step: usize,
    /// The checkpoint scored (`None` for the base model).
    pub checkpoint: Option<PathBuf>,
    /// Over the samples.
    pub summary: VoiceSummary,
    /// Per prompt, in order.
    pub samples: Vec<VoiceSample>,
    /// The best checkpoint so far, this one included (`None` at step 0).
    pub best_step: Option<usize>,
    /// Whether this checkpoint became the best: `adapters_best.safetensors`
    /// now holds its adapter.
    pub new_best: bool,
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
    /// Voice scores are on: what they are scored against (once, before
    /// the base model's scores).
    VoiceSetup(VoiceSetupReport),
    /// The base model (step 0) or a checkpoint spoke the prompts and was
    /// scored.
    VoiceScores(VoiceReport),
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
