//! Did the voice work? Scores of a generated sample against its speaker:
//! similarity of voice ([`crate::speaker`]), intelligibility ([`text`]: WER
//! and CER of a transcript against the prompt) and health ([`health`]:
//! silences, pauses, clipping, speaking rate against the speaker's own).
//!
//! Similarity is the cosine between the sample's speaker embedding and the
//! speaker's embedding, the normalised mean of the embeddings of their
//! recordings ([`SpeakerReference`]). Transcribing is the caller's: this
//! module takes the transcript as text.

pub mod health;
pub mod text;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::audio::read_wav;
use crate::data::DataError;
use crate::speaker::{cosine_similarity, mean_embedding, SpeakerEncoder, SpeakerError};
use health::{reference_rate, sample_health, HealthOptions, SampleHealth, SpeakingRate};
use text::{char_error_rate, word_error_rate, ErrorRate};

/// Errors while scoring.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// Embedding a recording or a sample failed.
    #[error(transparent)]
    Speaker(#[from] SpeakerError),
    /// Reading audio failed.
    #[error(transparent)]
    Audio(#[from] DataError),
    /// The reference folder cannot be listed or holds no WAV file.
    #[error("{path}: {message}")]
    Reference {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A speaker as their recordings describe them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeakerReference {
    /// Normalised mean of the recordings' embeddings.
    pub embedding: Vec<f32>,
    /// Recordings embedded.
    pub recordings: usize,
    /// Their speaking rate, over the recordings that have a transcript.
    pub rate: Option<SpeakingRate>,
}

/// A recording of the speaker: audio and, if known, what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    /// The WAV file.
    pub audio: PathBuf,
    /// Its transcript.
    pub text: Option<String>,
}

/// The WAV files of `audio_dir` (sorted), each with the transcript of the
/// dataset layout, `../transcripts/<stem>.txt`, when there is one.
///
/// # Errors
/// [`ScoreError::Reference`] if the folder cannot be read or has no WAV.
pub fn dataset_recordings(audio_dir: &Path) -> Result<Vec<Recording>, ScoreError> {
    let fail = |message: String| ScoreError::Reference {
        path: audio_dir.to_path_buf(),
        message,
    };
    let entries = std::fs::read_dir(audio_dir).map_err(|e| fail(e.to_string()))?;
    let mut wavs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("wav"))
        })
        .collect();
    wavs.sort();
    if wavs.is_empty() {
        return Err(fail("no .wav files".into()));
    }
    let transcripts = audio_dir.parent().map(|p| p.join("transcripts"));
    Ok(wavs
        .into_iter()
        .map(|audio| {
            let text = transcripts
                .as_ref()
                .zip(audio.file_stem())
                .and_then(|(dir, stem)| {
                    std::fs::read_to_string(dir.join(stem).with_extension("txt")).ok()
                })
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty());
            Recording { audio, text }
        })
        .collect())
}

impl SpeakerReference {
    /// Embeds every recording and measures the rate of those with a text.
    pub fn from_recordings(
        encoder: &SpeakerEncoder,
        recordings: &[Recording],
        options: &HealthOptions,
    ) -> Result<Self, ScoreError> {
        let mut embeddings = Vec::with_capacity(recordings.len());
        let mut timed = Vec::new();
        for recording in recordings {
            let audio = read_wav(&recording.audio)?;
            let mono = audio.to_mono();
            embeddings.push(encoder.embed_audio(&mono, audio.sample_rate).map_err(
                |e| match e {
                    SpeakerError::Input { message, .. } => SpeakerError::Input {
                        what: recording.audio.display().to_string(),
                        message,
                    },
                    other => other,
                },
            )?);
            if let Some(text) = &recording.text {
                timed.push((mono, audio.sample_rate, text.as_str()));
            }
        }
        let embedding = mean_embedding(&embeddings).ok_or_else(|| ScoreError::Reference {
            path: PathBuf::new(),
            message: "no recordings to embed".into(),
        })?;
        let rate = reference_rate(
            timed.iter().map(|(s, sr, t)| (s.as_slice(), *sr, *t)),
            options,
        );
        Ok(SpeakerReference {
            embedding,
            recordings: recordings.len(),
            rate,
        })
    }
}

/// Everything measured on one sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleScore {
    /// Cosine with the speaker's embedding, when a reference was given.
    pub similarity: Option<f32>,
    /// Word error rate of the transcript against the text.
    pub wer: Option<ErrorRate>,
    /// Character error rate of the transcript against the text.
    pub cer: Option<ErrorRate>,
    /// Silences, pauses, clipping, rate.
    pub health: SampleHealth,
    /// Speaking rate over the speaker's (characters per second).
    pub rate_ratio: Option<f64>,
}

/// What to score a sample against; every part is optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoreInputs<'a> {
    /// The text the sample should say (WER/CER, speaking rate).
    pub text: Option<&'a str>,
    /// What a transcriber heard in the sample.
    pub transcript: Option<&'a str>,
    /// The speaker, and the encoder that embedded them.
    pub speaker: Option<(&'a SpeakerEncoder, &'a SpeakerReference)>,
}

/// Scores mono `samples` at `sample_rate`.
///
/// # Errors
/// [`ScoreError::Speaker`] if the sample cannot be embedded (silent).
pub fn score_sample(
    samples: &[f32],
    sample_rate: u32,
    inputs: &ScoreInputs<'_>,
    options: &HealthOptions,
) -> Result<SampleScore, ScoreError> {
    let similarity = match inputs.speaker {
        Some((encoder, reference)) => {
            let embedding = encoder.embed_audio(samples, sample_rate)?;
            Some(cosine_similarity(&embedding, &reference.embedding))
        }
        None => None,
    };
    let (wer, cer) = match (inputs.text, inputs.transcript) {
        (Some(text), Some(heard)) => (
            Some(word_error_rate(text, heard)),
            Some(char_error_rate(text, heard)),
        ),
        _ => (None, None),
    };
    let health = sample_health(samples, sample_rate, inputs.text, options);
    let rate_ratio = health
        .rate
        .zip(inputs.speaker.and_then(|(_, r)| r.rate))
        .map(|(own, reference)| own.ratio_to(&reference));
    Ok(SampleScore {
        similarity,
        wer,
        cer,
        health,
        rate_ratio,
    })
}
