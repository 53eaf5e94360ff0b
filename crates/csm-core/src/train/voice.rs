//! Voice scores during training: does the voice sound like the speaker, and
//! does it say the words? At step 0 (the base model, before any update) and
//! at every checkpoint the model speaks the run's prompts
//! ([`VoiceConfig::prompts`]) after a clip of the speaker held out of
//! training, with generation's guards on; each sample is scored
//! ([`crate::score`]) and the best checkpoint's adapter is kept as
//! `adapters_best.safetensors`.
//!
//! # The held-out clip
//!
//! [`hold_out`] takes one utterance out of the training split: the last
//! training utterance of a recording (so no training example has it as
//! context), preferring clips of 2-12 s, then the recording that comes
//! first in an order fixed by the seed and the recording's name (as the
//! validation split is chosen). For a recording used whole, that is the
//! recording. The run's dataset report says which (`csm prepare`, the
//! `voiceSetup` event).
//!
//! # What is scored
//!
//! - **Similarity**: cosine between the sample's GE2E embedding and the
//!   speaker's, the normalised mean over their training recordings (each
//!   the normalised mean of its training utterances). Computed once.
//! - **WER/CER** against the prompt, when a Whisper model transcribes the
//!   samples (English, text normalised as in [`crate::score::text`]);
//!   over a checkpoint's samples: edits / reference words (characters).
//! - **Health**: whether generation ended by itself, silences, pauses,
//!   clipping and pace against the speaker's own pace on their training
//!   utterances ([`crate::score::health`]).
//!
//! # The best checkpoint
//!
//! Chosen among checkpoints (the base model is the reference line, never
//! the best) by [`best_index`]:
//!
//! 1. With WER, a checkpoint *passes the gate* when its WER is at most
//!    `max(0.20, base model's WER + 0.10)` ([`wer_gate`]); without Whisper
//!    every checkpoint passes.
//! 2. A checkpoint that passes beats one that does not.
//! 3. Among those that pass, the higher mean similarity wins.
//! 4. Among those that fail, the lower WER wins, then the higher similarity.
//! 5. Ties go to the earlier step.
//!
//! `adapters_best.safetensors` is written (atomically, mlx_lm layout, the
//! step in its header) each time a checkpoint becomes the best. On resume
//! the scores so far are read back from `metrics.jsonl`
//! ([`RunDir::voice_reports`]), so the best survives a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::VoiceConfig;
use super::observer::{
    Phase, TrainEvent, TrainingObserver, VoiceReport, VoiceSample, VoiceSetupReport, VoiceSummary,
};
use super::run_dir::RunDir;
use crate::adapter::{self, Adapter, AdapterError, LoraSpec};
use crate::cancel::CancelToken;
use crate::checkpoint::CheckpointError;
use crate::codec::Mimi;
use crate::data::audio::{resample, write_wav, WavEncoding};
use crate::data::{DataError, Dataset, Utterance, UtteranceId, TARGET_SAMPLE_RATE};
use crate::generate::{
    GenerateError, GenerateHooks, Generated, Generator, SamplingConfig, Segment, StopReason,
};
use crate::model::Csm;
use crate::score::health::{
    health_warnings, reference_rate, sample_health, HealthLimits, HealthOptions, SpeakingRate,
};
use crate::score::text::{char_error_rate, word_error_rate, ErrorRate};
use crate::speaker::{cosine_similarity, mean_embedding, SpeakerEncoder, SpeakerError};
use crate::tokenizer::TextTokenizer;
use crate::whisper::{TranscribeOptions, Whisper, WhisperError};
use mlx_rs::module::Module;

/// A checkpoint whose WER is at most this passes the gate, whatever the
/// base model's.
pub const WER_GATE: f32 = 0.20;
/// ... and so does one at most this much above the base model's WER.
pub const WER_GATE_OVER_BASE: f32 = 0.10;
/// Context clips of this length (seconds) are preferred.
const CONTEXT_SECS: std::ops::RangeInclusive<f64> = 2.0..=12.0;
/// Whisper's sample rate.
const WHISPER_RATE: u32 = 16_000;

/// What can stop the voice scores (and with them the run).
#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    /// The speaker encoder cannot be loaded or run.
    #[error("--speaker-encoder {path}: {source}")]
    Encoder {
        /// The weights file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SpeakerError,
    },
    /// Embedding failed for another reason than silent audio.
    #[error("voice scores: the speaker encoder failed: {0}")]
    Embedding(#[from] SpeakerError),
    /// Whisper cannot be loaded.
    #[error("--whisper-model {path}: {source}")]
    WhisperLoad {
        /// The model folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: WhisperError,
    },
    /// Transcribing a sample failed.
    #[error("voice scores: transcribing a sample failed: {0}")]
    Transcribe(#[source] WhisperError),
    /// The dataset leaves nothing to hold out, or no speech to embed.
    #[error("voice scores: {0}")]
    Data(String),
    /// Speaking a prompt failed.
    #[error("voice scores: speaking a prompt failed: {0}")]
    Generate(#[from] GenerateError),
    /// Writing a sample or resampling failed.
    #[error(transparent)]
    Audio(#[from] DataError),
    /// Writing `adapters_best.safetensors` failed.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// Reading a checkpoint back (on resume) failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// What the voice scores keep of the dataset: the held-out clip and the
/// speaker's training utterances, by recording (their audio is shared
/// with the dataset, not copied).
#[derive(Debug, Clone)]
pub struct VoiceData {
    /// The utterance held out of training, the samples' context.
    pub clip: Utterance,
    /// Training utterances, one list per recording.
    pub recordings: Vec<Vec<Utterance>>,
}

/// Takes the context clip of the voice scores out of `dataset`'s training
/// split (see the module docs for the choice) and returns it with the
/// remaining training utterances.
///
/// # Errors
/// [`VoiceError::Data`] when fewer than two training utterances exist.
pub fn hold_out(dataset: &mut Dataset, seed: u64) -> Result<VoiceData, VoiceError> {
    if dataset.train.len() < 2 {
        return Err(VoiceError::Data(format!(
            "one training utterance is held out as the samples' context, and this dataset has \
             {} in its training split: add recordings, or turn voice scores off \
             (--no-voice-scores)",
            dataset.train.len()
        )));
    }
    // The last training utterance of each recording: no training example
    // has it as context.
    let mut last: BTreeMap<usize, UtteranceId> = BTreeMap::new();
    for &id in &dataset.train {
        let entry = last.entry(id.conversation).or_insert(id);
        if id.utterance > entry.utterance {
            *entry = id;
        }
    }
    let chosen = last
        .values()
        .copied()
        .min_by_key(|&id| {
            let u = dataset.utterance(id);
            (
                !CONTEXT_SECS.contains(&u.duration_s()),
                crate::rng::mix64(seed ^ crate::data::hash_str(&u.recording_id)),
                u.recording_id.clone(),
            )
        })
        .expect("the training split is not empty");
    dataset.train.retain(|&id| id != chosen);
    let mut by_recording: BTreeMap<usize, Vec<Utterance>> = BTreeMap::new();
    for &id in &dataset.train {
        by_recording
            .entry(id.conversation)
            .or_default()
            .push(dataset.utterance(id).clone());
    }
    Ok(VoiceData {
        clip: dataset.utterance(chosen).clone(),
        recordings: by_recording.into_values().collect(),
    })
}

/// The WER a checkpoint may have and still pass the gate:
/// `max(WER_GATE, base WER + WER_GATE_OVER_BASE)`.
pub fn wer_gate(base: Option<&VoiceSummary>) -> f32 {
    base.and_then(|b| b.wer)
        .map_or(WER_GATE, |w| WER_GATE.max(w + WER_GATE_OVER_BASE))
}

/// Whether `a` beats `b` by the rule of the module docs (strictly: a tie
/// is not a win, so the earlier of two equal checkpoints stays best).
fn beats(a: &VoiceSummary, b: &VoiceSummary, gate: f32) -> bool {
    let passes = |s: &VoiceSummary| s.wer.is_none_or(|w| w <= gate);
    let sim = |s: &VoiceSummary| s.similarity.unwrap_or(f32::NEG_INFINITY);
    let wer = |s: &VoiceSummary| s.wer.unwrap_or(f32::INFINITY);
    match (passes(a), passes(b)) {
        (true, false) => true,
        (false, true) => false,
        (true, true) => sim(a) > sim(b),
        (false, false) => wer(a) < wer(b) || (wer(a) == wer(b) && sim(a) > sim(b)),
    }
}

/// The best of `checkpoints` (in step order) by the rule of the module
/// docs, against the base model's scores; `None` when there is none.
pub fn best_index(base: Option<&VoiceSummary>, checkpoints: &[VoiceSummary]) -> Option<usize> {
    let gate = wer_gate(base);
    let mut best: Option<usize> = None;
    for (i, c) in checkpoints.iter().enumerate() {
        if best.is_none_or(|b| beats(c, &checkpoints[b], gate)) {
            best = Some(i);
        }
    }
    best
}

/// Base, best and last scores of a run, for the end-of-run table.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceOutcome {
    /// The base model's.
    pub base: Option<VoiceSummary>,
    /// The best checkpoint's, with its step.
    pub best: Option<(usize, VoiceSummary)>,
    /// The last checkpoint's, with its step.
    pub last: Option<(usize, VoiceSummary)>,
}

/// The model as the run holds it, to speak with and to save from.
pub struct VoiceModel<'a> {
    /// The model with its adapters.
    pub csm: &'a Csm,
    /// The codec.
    pub mimi: &'a Mimi,
    /// The text tokenizer.
    pub tokenizer: &'a TextTokenizer,
    /// The adapters' spec (for `adapter_config.json`).
    pub spec: &'a LoraSpec,
    /// The base checkpoint (noted in `adapter_config.json`).
    pub base_model: &'a Path,
}

/// Speaks the prompts, scores the samples and keeps the best checkpoint.
#[derive(Debug)]
pub struct VoiceScorer {
    encoder: SpeakerEncoder,
    whisper: Option<Whisper>,
    /// The speaker's embedding.
    embedding: Vec<f32>,
    /// The speaker's pace.
    rate: Option<SpeakingRate>,
    context: Segment,
    setup: VoiceSetupReport,
    seed: u64,
    base: Option<VoiceSummary>,
    /// Checkpoint scores by step.
    checkpoints: BTreeMap<usize, VoiceSummary>,
}

impl VoiceScorer {
    /// Loads the encoder (and Whisper), embeds the speaker's training
    /// utterances and measures their pace, then reports the set-up
    /// (`voiceSetup`). `speaker_id` and `seed` are the run's.
    ///
    /// # Errors
    /// A model that cannot be loaded (naming its flag), or no training
    /// utterance with speech in it.
    pub fn new(
        config: &VoiceConfig,
        data: VoiceData,
        speaker_id: u32,
        seed: u64,
        observer: &mut dyn TrainingObserver,
    ) -> Result<Self, VoiceError> {
        let encoder = SpeakerEncoder::load(&config.speaker_encoder).map_err(|source| {
            VoiceError::Encoder {
                path: config.speaker_encoder.clone(),
                source,
            }
        })?;
        let whisper = match &config.whisper_model {
            Some(dir) => Some(
                Whisper::load(dir).map_err(|source| VoiceError::WhisperLoad {
                    path: dir.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let total: usize = data.recordings.iter().map(Vec::len).sum();
        observer.on_event(&TrainEvent::Phase {
            phase: Phase::Loading,
            detail: format!(
                "voice scores: embedding the speaker's {total} training utterances ({} recordings)",
                data.recordings.len()
            ),
        });
        let mut per_recording = Vec::new();
        for recording in &data.recordings {
            let mut embeddings = Vec::new();
            for u in recording {
                match encoder.embed_audio(u.samples(), TARGET_SAMPLE_RATE) {
                    Ok(e) => embeddings.push(e),
                    // An utterance with nothing voiced says nothing of the voice.
                    Err(SpeakerError::Input { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            per_recording.extend(mean_embedding(&embeddings));
        }
        let embedding = mean_embedding(&per_recording).ok_or_else(|| {
            VoiceError::Data(
                "no training utterance has speech the speaker encoder can embed".into(),
            )
        })?;
        let rate = reference_rate(
            data.recordings
                .iter()
                .flatten()
                .map(|u| (u.samples(), TARGET_SAMPLE_RATE, u.text.as_str())),
            &HealthOptions::default(),
        );
        let clip = &data.clip;
        let setup = VoiceSetupReport {
            held_out_recording: clip.recording_id.clone(),
            held_out_utterance: clip.index,
            held_out_secs: clip.duration_s(),
            context_text: clip.text.clone(),
            prompts: config.prompts.clone(),
            reference_recordings: per_recording.len(),
            reference_chars_per_sec: rate.map(|r| r.chars_per_s),
            transcribed: whisper.is_some(),
        };
        observer.on_event(&TrainEvent::VoiceSetup(setup.clone()));
        Ok(VoiceScorer {
            encoder,
            whisper,
            embedding,
            rate,
            context: Segment {
                speaker: speaker_id,
                text: clip.text.clone(),
                audio: Some(clip.samples().to_vec()),
            },
            setup,
            seed,
            base: None,
            checkpoints: BTreeMap::new(),
        })
    }

    /// What the scores are against (the `voiceSetup` report).
    pub fn setup(&self) -> &VoiceSetupReport {
        &self.setup
    }

    /// On resume from step `step`: takes the scores of steps up to `step`
    /// from `run`'s `metrics.jsonl` (the later record of a step wins), and
    /// makes `adapters_best.safetensors` hold the best of them, from its
    /// checkpoint if the file holds another step. Returns what the user
    /// should know (as warnings).
    ///
    /// # Errors
    /// The best checkpoint's file exists but cannot be read, or the best
    /// adapter cannot be written.
    pub fn restore(&mut self, run: &RunDir, step: usize) -> Result<Vec<String>, VoiceError> {
        let mut warnings = Vec::new();
        let reports = match run.voice_reports() {
            Ok(r) => r,
            Err(e) => {
                warnings.push(format!(
                    "voice scores: the scores before step {step} are unknown ({e}); the best \
                     checkpoint is chosen among the coming ones"
                ));
                Vec::new()
            }
        };
        for r in reports.into_iter().filter(|r| r.step <= step) {
            if r.step == 0 {
                self.base = Some(r.summary);
            } else {
                self.checkpoints.insert(r.step, r.summary);
            }
        }
        let Some(best) = self.best_step() else {
            return Ok(warnings);
        };
        if run.best_adapter_step() != Some(best) {
            let checkpoint = run.checkpoint_path(best);
            if checkpoint.is_file() {
                let adapter = super::state::read_adapter(&checkpoint)?;
                run.write_best_adapter(&adapter, best)?;
            } else {
                warnings.push(format!(
                    "voice scores: the best checkpoint so far (step {best}) is no longer on disk \
                     and {} does not hold it; it is rewritten when a checkpoint scores better",
                    run.best_adapter_path().display()
                ));
            }
        }
        Ok(warnings)
    }

    /// The best checkpoint's step so far.
    pub fn best_step(&self) -> Option<usize> {
        let steps: Vec<usize> = self.checkpoints.keys().copied().collect();
        let rows: Vec<VoiceSummary> = self.checkpoints.values().cloned().collect();
        best_index(self.base.as_ref(), &rows).map(|i| steps[i])
    }

    /// Base, best and last scores so far.
    pub fn outcome(&self) -> VoiceOutcome {
        let best = self.best_step().map(|s| (s, self.checkpoints[&s].clone()));
        VoiceOutcome {
            base: self.base.clone(),
            best,
            last: self
                .checkpoints
                .last_key_value()
                .map(|(s, v)| (*s, v.clone())),
        }
    }

    /// Speaks every prompt with `model` as it is at `step` (0: the base
    /// model; otherwise the checkpoint `checkpoint`), writes the samples
    /// into `run`, scores them, updates `adapters_best.safetensors` when
    /// this checkpoint becomes the best, and reports (`voiceScores`).
    /// Returns `false`, with nothing recorded, when `cancel` stopped it.
    ///
    /// # Errors
    /// Generation, transcription, embedding or writing failed.
    pub fn score(
        &mut self,
        model: &VoiceModel<'_>,
        step: usize,
        checkpoint: Option<&Path>,
        run: &RunDir,
        observer: &mut dyn TrainingObserver,
        cancel: &CancelToken,
    ) -> Result<bool, VoiceError> {
        // Clones share the weight buffers; nothing is copied.
        let mut generator = Generator::new(
            model.csm.clone(),
            model.mimi.clone(),
            model.tokenizer.clone(),
        )?;
        generator.csm.training_mode(false);
        let mut samples = Vec::new();
        let mut edits: Vec<Edits> = Vec::new();
        for (i, text) in self.setup.prompts.iter().enumerate() {
            // The same draws at every step: only the weights differ.
            let sampling = SamplingConfig {
                seed: self.seed.wrapping_add(i as u64),
                ..SamplingConfig::default()
            };
            let hooks = GenerateHooks {
                cancel: Some(cancel),
                ..GenerateHooks::default()
            };
            let context = std::slice::from_ref(&self.context);
            let out = match generator.generate_with(
                context,
                text,
                self.context.speaker,
                &sampling,
                hooks,
            ) {
                Err(GenerateError::Cancelled { .. }) => return Ok(false),
                other => other?,
            };
            let path = run.voice_sample_path(step, i + 1);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| DataError::Io {
                    path: dir.to_path_buf(),
                    source: e,
                })?;
            }
            write_wav(&path, &out.audio, TARGET_SAMPLE_RATE, WavEncoding::Int16)?;
            let Some((sample, rates)) = self.score_sample(i + 1, text, &out, path, cancel)? else {
                return Ok(false);
            };
            samples.push(sample);
            edits.extend(rates);
        }
        let summary = summarize(&samples, &edits);
        let new_best = if step == 0 {
            self.base = Some(summary.clone());
            false
        } else {
            self.checkpoints.insert(step, summary.clone());
            self.best_step() == Some(step)
        };
        let tensors = adapter::adapter_tensors(model.csm);
        // A run without adapters has no adapter to keep.
        if new_best && !tensors.is_empty() {
            let adapter = Adapter {
                spec: model.spec.clone(),
                tensors,
                base_model: Some(model.base_model.to_path_buf()),
                source: checkpoint.map_or_else(|| run.path().to_path_buf(), Path::to_path_buf),
            };
            run.write_best_adapter(&adapter, step)?;
        }
        observer.on_event(&TrainEvent::VoiceScores(VoiceReport {
            step,
            checkpoint: checkpoint.map(Path::to_path_buf),
            summary,
            samples,
            best_step: self.best_step(),
            new_best,
        }));
        Ok(true)
    }

    /// Scores one spoken prompt; `None` when `cancel` stopped Whisper.
    fn score_sample(
        &self,
        prompt: usize,
        text: &str,
        out: &Generated,
        path: PathBuf,
        cancel: &CancelToken,
    ) -> Result<Option<(VoiceSample, Option<Edits>)>, VoiceError> {
        let audio = &out.audio;
        let rate_hz = TARGET_SAMPLE_RATE;
        let similarity = if audio.is_empty() {
            None
        } else {
            match self.encoder.embed_audio(audio, rate_hz) {
                Ok(e) => Some(cosine_similarity(&e, &self.embedding)),
                Err(SpeakerError::Input { .. }) => None,
                Err(e) => return Err(e.into()),
            }
        };
        let (transcript, rates) = match &self.whisper {
            Some(whisper) => {
                let heard = if audio.is_empty() {
                    String::new()
                } else {
                    let at_16k = resample(audio, rate_hz, WHISPER_RATE)?;
                    let options = TranscribeOptions {
                        language: Some("en".into()),
                        ..TranscribeOptions::default()
                    };
                    match whisper.transcribe(&at_16k, &options, &mut |_| {}, cancel) {
                        Ok(t) => t.text.trim().to_string(),
                        Err(WhisperError::Cancelled) => return Ok(None),
                        Err(e) => return Err(VoiceError::Transcribe(e)),
                    }
                };
                let rates = (word_error_rate(text, &heard), char_error_rate(text, &heard));
                (Some(heard), Some(rates))
            }
            None => (None, None),
        };
        let health = sample_health(audio, rate_hz, Some(text), &HealthOptions::default());
        let rate_ratio = health
            .rate
            .zip(self.rate)
            .filter(|(_, own)| own.chars_per_s > 0.0)
            .map(|(r, own)| r.ratio_to(&own));
        let mut warnings = Vec::new();
        let stopped_by = match out.stop_reason {
            StopReason::Eos => None,
            StopReason::LengthLimit => Some("the length limit for its text"),
            StopReason::Silence => Some("the silence guard"),
            StopReason::MaxAudio => Some("the maximum length"),
        };
        if let Some(by) = stopped_by {
            warnings.push(format!(
                "did not end by itself: {by} stopped it after {:.1} s",
                health.duration_s + out.trimmed_s
            ));
        }
        warnings.extend(health_warnings(
            &health,
            rate_ratio,
            &HealthLimits::default(),
        ));
        if similarity.is_none() && health.speech_s > 0.0 {
            warnings.push("the speaker encoder found no voice in it (similarity 0)".into());
        }
        let sample = VoiceSample {
            prompt,
            text: text.to_string(),
            path,
            transcript,
            similarity,
            wer: rates.as_ref().map(|(w, _)| w.rate as f32),
            cer: rates.as_ref().map(|(_, c)| c.rate as f32),
            stop_reason: out.stop_reason,
            duration_secs: health.duration_s,
            leading_silence_secs: health.leading_silence_s,
            trailing_silence_secs: health.trailing_silence_s,
            longest_pause_secs: health.longest_pause_s,
            clipped_fraction: health.clipped_fraction,
            chars_per_sec: health.rate.map(|r| r.chars_per_s),
            rate_ratio,
            warnings,
        };
        Ok(Some((sample, rates)))
    }
}

/// A sample's word and character edits (WER, CER).
type Edits = (ErrorRate, ErrorRate);

/// A checkpoint's summary of its samples and their edits.
fn summarize(samples: &[VoiceSample], edits: &[Edits]) -> VoiceSummary {
    let similarity = (!samples.is_empty()).then(|| {
        samples
            .iter()
            .map(|s| s.similarity.unwrap_or(0.0))
            .sum::<f32>()
            / samples.len() as f32
    });
    // Edits over reference tokens, over all samples.
    let pooled = |pick: fn(&Edits) -> &ErrorRate| -> Option<f32> {
        let reference: usize = edits.iter().map(|e| pick(e).reference_len).sum();
        let wrong: usize = edits
            .iter()
            .map(|e| {
                let r = pick(e);
                r.substitutions + r.deletions + r.insertions
            })
            .sum();
        (!edits.is_empty()).then(|| wrong as f32 / reference.max(1) as f32)
    };
    VoiceSummary {
        similarity,
        wer: pooled(|e| &e.0),
        cer: pooled(|e| &e.1),
        health_warnings: samples.iter().map(|s| s.warnings.len()).sum(),
        samples: samples.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(similarity: f32, wer: Option<f32>) -> VoiceSummary {
        VoiceSummary {
            similarity: Some(similarity),
            wer,
            cer: wer.map(|w| w / 2.0),
            health_warnings: 0,
            samples: 3,
        }
    }

    #[test]
    fn without_wer_the_most_similar_checkpoint_wins_and_ties_go_to_the_earlier() {
        let rows = [
            row(0.61, None),
            row(0.74, None),
            row(0.70, None),
            row(0.74, None),
        ];
        assert_eq!(best_index(None, &rows), Some(1));
        assert_eq!(
            best_index(Some(&row(0.9, None)), &rows),
            Some(1),
            "the base is never best"
        );
        assert_eq!(best_index(None, &[]), None);
    }

    #[test]
    fn the_wer_gate_excludes_a_more_similar_checkpoint_that_mumbles() {
        let base = row(0.55, Some(0.04));
        assert_eq!(wer_gate(Some(&base)), WER_GATE);
        // 0.82 similar but 45% WER: gated out; 0.71 at 8% wins.
        let rows = [
            row(0.66, Some(0.05)),
            row(0.82, Some(0.45)),
            row(0.71, Some(0.08)),
        ];
        assert_eq!(best_index(Some(&base), &rows), Some(2));
        // Exactly at the gate passes.
        let rows = [row(0.66, Some(0.05)), row(0.80, Some(0.20))];
        assert_eq!(best_index(Some(&base), &rows), Some(1));
    }

    #[test]
    fn the_gate_follows_a_base_model_that_whisper_already_struggles_with() {
        let base = row(0.5, Some(0.35));
        assert!((wer_gate(Some(&base)) - 0.45).abs() < 1e-6);
        let rows = [
            row(0.60, Some(0.44)),
            row(0.75, Some(0.50)),
            row(0.70, Some(0.30)),
        ];
        assert_eq!(best_index(Some(&base), &rows), Some(2));
    }

    #[test]
    fn when_nothing_passes_the_gate_the_lowest_wer_wins() {
        let base = row(0.5, Some(0.0));
        let rows = [
            row(0.9, Some(0.6)),
            row(0.4, Some(0.3)),
            row(0.8, Some(0.3)),
        ];
        assert_eq!(
            best_index(Some(&base), &rows),
            Some(2),
            "lowest WER, then similarity"
        );
        // One that passes beats every one that does not.
        let mut with_pass = rows.to_vec();
        with_pass.push(row(0.1, Some(0.1)));
        assert_eq!(best_index(Some(&base), &with_pass), Some(3));
    }

    #[test]
    fn a_checkpoint_without_similarity_ranks_last_among_those_that_pass() {
        let mut silent = row(0.0, None);
        silent.similarity = None;
        assert_eq!(best_index(None, &[silent.clone(), row(0.2, None)]), Some(1));
        assert_eq!(best_index(None, &[silent]), Some(0));
    }

    #[test]
    fn summaries_pool_edits_and_count_unembeddable_samples_as_zero() {
        let edit = |wrong, reference| ErrorRate {
            rate: wrong as f64 / reference as f64,
            substitutions: wrong,
            deletions: 0,
            insertions: 0,
            reference_len: reference,
        };
        let sample = |similarity, warnings: usize| VoiceSample {
            prompt: 1,
            text: "t".into(),
            path: "p.wav".into(),
            transcript: None,
            similarity,
            wer: None,
            cer: None,
            stop_reason: StopReason::Eos,
            duration_secs: 1.0,
            leading_silence_secs: 0.0,
            trailing_silence_secs: 0.0,
            longest_pause_secs: 0.0,
            clipped_fraction: 0.0,
            chars_per_sec: None,
            rate_ratio: None,
            warnings: vec!["w".into(); warnings],
        };
        let samples = [sample(Some(0.9), 1), sample(None, 2), sample(Some(0.6), 0)];
        let edits = [(edit(1, 10), edit(2, 40)), (edit(3, 5), edit(5, 20))];
        let s = summarize(&samples, &edits);
        assert!((s.similarity.unwrap() - 0.5).abs() < 1e-6);
        assert!((s.wer.unwrap() - 4.0 / 15.0).abs() < 1e-6);
        assert!((s.cer.unwrap() - 7.0 / 60.0).abs() < 1e-6);
        assert_eq!((s.health_warnings, s.samples), (3, 3));
        assert_eq!(summarize(&samples, &[]).wer, None);
    }
}
