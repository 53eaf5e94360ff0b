//! Wire types of the training stream in docs/ipc.md, ready for the
//! `start_training` command. The JSON shape is pinned by
//! `docs/ipc-fixtures/training-events.json`, which the UI tests read too.

use std::path::PathBuf;

use csm_core::train::{SpeakerValReport, VoiceReport, VoiceSetupReport};
use serde::Serialize;

/// Run phase shown in the UI's phase stepper.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Loading the model, codec and tokenizer.
    Loading,
    /// Encoding the clips with Mimi.
    Encoding,
    /// Optimizer steps.
    Training,
    /// Computing validation loss.
    Validating,
    /// Writing the final adapter.
    Saving,
}

/// What a checkpoint holds (`--save-mode both` sends one event per kind).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SaveMode {
    /// LoRA adapter only.
    Lora,
    /// Merged full weights.
    Full,
}

/// Health warnings.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum WarningKind {
    /// A non-finite loss or gradient.
    Nan,
    /// Loss rising far above its minimum.
    Divergence,
    /// Gradient norm far above its recent median.
    GradSpike,
    /// Anything else worth showing.
    Other,
}

/// How a run that did not fail ended.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FinishStatus {
    /// All epochs done.
    Completed,
    /// `stop_training` was called; a checkpoint was saved.
    Stopped,
}

/// One optimizer step. Non-finite losses serialize as `null`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepData {
    /// 1-based optimizer step.
    pub step: u64,
    /// Steps in the whole run.
    pub total_steps: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Weighted total loss.
    pub loss: f32,
    /// Codebook-0 (backbone) loss.
    pub semantic_loss: f32,
    /// Codebooks 1..N (decoder) loss.
    pub acoustic_loss: f32,
    /// Learning rate used for this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Audio frames processed per second.
    pub frames_per_sec: f64,
    /// MLX active memory in bytes.
    pub memory_bytes: u64,
    /// Seconds since the run started.
    pub elapsed_secs: f64,
    /// Estimated seconds left, once known.
    pub eta_secs: Option<f64>,
}

impl StepData {
    /// The UI's record of a core step report; `steps_per_epoch` turns the
    /// step into a fractional epoch.
    pub fn from_report(r: &csm_core::train::StepReport, steps_per_epoch: u64) -> Self {
        StepData {
            step: r.step as u64,
            total_steps: r.total_steps as u64,
            epoch: r.step as f64 / steps_per_epoch.max(1) as f64,
            loss: r.loss,
            semantic_loss: r.semantic_loss,
            acoustic_loss: r.acoustic_loss,
            lr: f64::from(r.lr),
            grad_norm: r.grad_norm,
            frames_per_sec: f64::from(r.frames_per_sec),
            memory_bytes: r.memory_bytes,
            elapsed_secs: r.elapsed_secs,
            eta_secs: r.eta_secs.is_finite().then_some(r.eta_secs),
        }
    }
}

/// The error payload of a `failed` event: the same `{kind, message}` as command errors.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventError {
    /// One of the `kind`s in docs/ipc.md.
    pub kind: String,
    /// Full, human-readable message.
    pub message: String,
}

/// Everything `start_training` sends on its `Channel<TrainingEvent>`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "event",
    content = "data"
)]
pub enum TrainingEvent {
    /// The job was accepted and the data split is known.
    Started {
        /// Run id (also the run folder name).
        run_id: String,
        /// `<output_dir>/<run_id>`.
        run_dir: PathBuf,
        /// Optimizer steps in the run.
        total_steps: u64,
        /// Optimizer steps per epoch.
        steps_per_epoch: u64,
        /// Clips in the training split.
        train_examples: u64,
        /// Clips in the validation split.
        val_examples: u64,
    },
    /// A new phase, or progress within one.
    Phase {
        /// The phase.
        phase: Phase,
        /// Optional detail line.
        message: Option<String>,
        /// Items done in this phase (e.g. clips encoded).
        done: Option<u64>,
        /// Items in this phase.
        total: Option<u64>,
    },
    /// One optimizer step.
    Step(StepData),
    /// A validation pass.
    Validation {
        /// Step it ran after.
        step: u64,
        /// Weighted total loss.
        loss: f32,
        /// Codebook-0 loss.
        semantic_loss: f32,
        /// Decoder codebooks loss.
        acoustic_loss: f32,
        /// Each speaker's part, by id, when the dataset has several
        /// (absent otherwise): the core's `SpeakerValReport` (camelCase).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        speakers: Vec<SpeakerValReport>,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Step it was written at.
        step: u64,
        /// Checkpoint folder.
        path: PathBuf,
        /// What it holds.
        mode: SaveMode,
    },
    /// An audio sample was generated from a checkpoint.
    Sample {
        /// Step of the checkpoint.
        step: u64,
        /// WAV file.
        path: PathBuf,
        /// Spoken text.
        text: String,
        /// Length in seconds.
        duration_secs: f32,
    },
    /// Voice scores are on: the held-out context clip, the prompts and
    /// what the speaker is measured on (the core's report as it is, once,
    /// before the base model's scores).
    VoiceSetup(VoiceSetupReport),
    /// The base model (step 0) or a checkpoint spoke the prompts and was
    /// scored (the core's report as it is: similarity, WER/CER and health
    /// per sample and over them, the best step so far).
    VoiceScores(VoiceReport),
    /// Something the user should know; the run continues.
    Warning {
        /// Step it refers to, if any.
        step: Option<u64>,
        /// Category.
        kind: WarningKind,
        /// Full message.
        message: String,
    },
    /// The run ended normally or was stopped.
    Finished {
        /// Completed or stopped.
        status: FinishStatus,
        /// Last step done.
        step: u64,
        /// Total run time.
        elapsed_secs: f64,
        /// Best validation loss, if any validation ran.
        best_val_loss: Option<f32>,
        /// Final adapter, if one was written.
        adapter_path: Option<PathBuf>,
    },
    /// The run failed.
    Failed {
        /// Step it failed at, if training had started.
        step: Option<u64>,
        /// Why.
        error: EventError,
    },
}

#[cfg(test)]
mod tests {
    use csm_core::generate::StopReason;
    use csm_core::train::{VoiceSample, VoiceSummary};

    use super::*;

    /// The same events the fixture file holds, built from the Rust types.
    fn events() -> Vec<TrainingEvent> {
        let run = PathBuf::from("/runs/20261125-141500");
        vec![
            TrainingEvent::Started {
                run_id: "20261125-141500".into(),
                run_dir: run.clone(),
                total_steps: 250,
                steps_per_epoch: 50,
                train_examples: 100,
                val_examples: 11,
            },
            TrainingEvent::Phase {
                phase: Phase::Loading,
                message: Some("Loading CSM checkpoint".into()),
                done: None,
                total: None,
            },
            TrainingEvent::Phase {
                phase: Phase::Encoding,
                message: Some("Encoding audio with Mimi".into()),
                done: Some(3),
                total: Some(111),
            },
            TrainingEvent::Phase {
                phase: Phase::Training,
                message: None,
                done: None,
                total: None,
            },
            TrainingEvent::Step(StepData {
                step: 1,
                total_steps: 250,
                epoch: 0.02,
                loss: 6.5,
                semantic_loss: 3.25,
                acoustic_loss: 3.25,
                lr: 0.00001,
                grad_norm: 2.5,
                frames_per_sec: 310.5,
                memory_bytes: 5_400_000_000,
                elapsed_secs: 2.0,
                eta_secs: Some(498.0),
            }),
            TrainingEvent::Step(StepData {
                step: 2,
                total_steps: 250,
                epoch: 0.04,
                loss: f32::NAN,
                semantic_loss: f32::INFINITY,
                acoustic_loss: 3.0,
                lr: 0.00002,
                grad_norm: f32::NAN,
                frames_per_sec: 305.0,
                memory_bytes: 5_400_000_000,
                elapsed_secs: 4.0,
                eta_secs: None,
            }),
            TrainingEvent::Warning {
                step: Some(2),
                kind: WarningKind::Nan,
                message: "loss is NaN at step 2; skipping the update".into(),
            },
            TrainingEvent::Validation {
                step: 50,
                loss: 4.5,
                semantic_loss: 2.5,
                acoustic_loss: 2.0,
                speakers: Vec::new(),
            },
            TrainingEvent::Validation {
                step: 100,
                loss: 4.75,
                semantic_loss: 2.5,
                acoustic_loss: 2.25,
                speakers: vec![
                    SpeakerValReport {
                        speaker: "alice".into(),
                        id: 0,
                        loss: 4.5,
                        semantic_loss: 2.5,
                        acoustic_loss: 2.0,
                        examples: 2,
                    },
                    SpeakerValReport {
                        speaker: "bob".into(),
                        id: 1,
                        loss: 5.0,
                        semantic_loss: 2.5,
                        acoustic_loss: 2.5,
                        examples: 1,
                    },
                ],
            },
            TrainingEvent::Checkpoint {
                step: 100,
                path: run.join("checkpoints/step-100"),
                mode: SaveMode::Lora,
            },
            TrainingEvent::Sample {
                step: 100,
                path: run.join("samples/step-100.wav"),
                text: "Hello there.".into(),
                duration_secs: 2.5,
            },
            TrainingEvent::VoiceSetup(VoiceSetupReport {
                held_out_recording: "clip_007".into(),
                held_out_utterance: 2,
                held_out_secs: 4.25,
                context_text: "It was a bright cold day.".into(),
                prompts: vec!["Hello there.".into(), "Why not?".into()],
                reference_recordings: 12,
                reference_chars_per_sec: Some(14.5),
                transcribed: true,
            }),
            TrainingEvent::VoiceScores(voice_report(0, None, 0.5, 0.25, None, false)),
            TrainingEvent::VoiceScores(voice_report(
                100,
                Some(run.join("checkpoints/checkpoint_step_0000100.safetensors")),
                0.75,
                0.125,
                Some(100),
                true,
            )),
            TrainingEvent::Phase {
                phase: Phase::Saving,
                message: None,
                done: None,
                total: None,
            },
            TrainingEvent::Finished {
                status: FinishStatus::Completed,
                step: 250,
                elapsed_secs: 500.0,
                best_val_loss: Some(4.5),
                adapter_path: Some(run.join("adapter.safetensors")),
            },
            TrainingEvent::Failed {
                step: Some(7),
                error: EventError {
                    kind: "training".into(),
                    message: "MLX: out of memory allocating 2.1 GB".into(),
                },
            },
        ]
    }

    /// A scoring of two prompts: the first healthy, the second cut by the
    /// length cap and not embeddable.
    fn voice_report(
        step: usize,
        checkpoint: Option<PathBuf>,
        similarity: f32,
        wer: f32,
        best_step: Option<usize>,
        new_best: bool,
    ) -> VoiceReport {
        let dir = PathBuf::from(format!("/runs/20261125-141500/samples/step_{step:07}"));
        let sample = |prompt: usize, text: &str| VoiceSample {
            prompt,
            text: text.into(),
            path: dir.join(format!("prompt_{prompt}.wav")),
            transcript: Some(text.to_lowercase()),
            similarity: Some(similarity),
            wer: Some(wer),
            cer: Some(wer / 2.0),
            stop_reason: StopReason::Eos,
            duration_secs: 1.5,
            leading_silence_secs: 0.125,
            trailing_silence_secs: 0.25,
            longest_pause_secs: 0.0,
            clipped_fraction: 0.0,
            chars_per_sec: Some(12.0),
            rate_ratio: Some(0.75),
            warnings: Vec::new(),
        };
        let cut = VoiceSample {
            similarity: None,
            wer: Some(1.0),
            cer: Some(1.0),
            transcript: Some(String::new()),
            stop_reason: StopReason::LengthLimit,
            warnings: vec!["generation hit the length limit without ending".into()],
            ..sample(2, "Why not?")
        };
        VoiceReport {
            step,
            checkpoint,
            summary: VoiceSummary {
                similarity: Some(similarity / 2.0),
                wer: Some(wer),
                cer: Some(wer / 2.0),
                health_warnings: 1,
                samples: 2,
            },
            samples: vec![sample(1, "Hello there."), cut],
            best_step,
            new_best,
        }
    }

    #[test]
    fn wire_format_matches_the_shared_fixture() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/ipc-fixtures/training-events.json"))
                .unwrap();
        let ours = serde_json::to_value(events()).unwrap();
        let (a, b) = (ours.as_array().unwrap(), fixture.as_array().unwrap());
        assert_eq!(a.len(), b.len());
        for (ours, theirs) in a.iter().zip(b) {
            assert_eq!(ours, theirs);
        }
    }
}
