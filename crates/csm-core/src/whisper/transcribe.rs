//! The long-form loop of openai-whisper `transcribe()`: log-mel of the whole
//! recording (plus 30 s of zeros), language detection on the first window
//! when none is given, then windows of up to 30 s from `seek`:
//!
//! * decode with temperature fallback: the next temperature is tried when
//!   the text compresses too well (> 2.4, repetition) or the mean
//!   log-probability is too low (< -1), unless the window looks silent;
//! * a window whose no-speech probability is above 0.6 and whose mean
//!   log-probability is below -1 is skipped whole;
//! * segments are cut at consecutive timestamp tokens; `seek` moves to the
//!   last complete timestamp, or by the whole window when the text ends on
//!   a single timestamp or has none; with word timestamps, to the last
//!   word's end;
//! * the previous windows' text is the prompt of the next one, until a
//!   window needed a temperature above 0.5.
//!
//! Not ported: beam search, `clip_timestamps`, `carry_initial_prompt` and
//! `hallucination_silence_threshold`.

use super::audio::{log_mel_spectrogram, LogMel, MelWindows};
use super::config::{FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE};
use super::decode::{decode, detect_language, DecodeOptions, DecodeResult, SuppressTokens};
use super::error::WhisperError;
use super::load::Whisper;
use super::timing::{add_word_timestamps, TimedSegment};
use crate::cancel::CancelToken;

pub use super::timing::WordTiming;

/// Settings of [`Whisper::transcribe`] (openai-whisper's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct TranscribeOptions {
    /// Language code; `None` detects it on the first 30 s.
    pub language: Option<String>,
    /// Translate to English.
    pub translate: bool,
    /// Temperatures tried in turn; `[0.0]` is greedy with no fallback.
    pub temperatures: Vec<f32>,
    /// Fall back when the text's compression ratio is above this.
    pub compression_ratio_threshold: Option<f64>,
    /// Fall back when the mean token log-probability is below this.
    pub logprob_threshold: Option<f64>,
    /// Skip a window whose no-speech probability is above this (and whose
    /// mean log-probability is below `logprob_threshold`).
    pub no_speech_threshold: Option<f64>,
    /// Prompt each window with the text so far.
    pub condition_on_previous_text: bool,
    /// Text prompting the first window.
    pub initial_prompt: Option<String>,
    /// Time every word (cross-attention + DTW).
    pub word_timestamps: bool,
    /// Most tokens per window (`None` = 224).
    pub sample_len: Option<usize>,
    /// Tokens suppressed at every step.
    pub suppress_tokens: SuppressTokens,
    /// Seed of the sampler at temperatures above 0.
    pub seed: u64,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        TranscribeOptions {
            language: None,
            translate: false,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            initial_prompt: None,
            word_timestamps: false,
            sample_len: None,
            suppress_tokens: SuppressTokens::NonSpeech,
            seed: 0,
        }
    }
}

/// One transcribed segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Index in the transcript.
    pub id: usize,
    /// First mel frame of the window it came from.
    pub seek: usize,
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Text (not trimmed; empty for a zero-length segment).
    pub text: String,
    /// Tokens, timestamps included.
    pub tokens: Vec<u32>,
    /// Temperature of the decode that produced it.
    pub temperature: f32,
    /// Mean log-probability of that decode.
    pub avg_logprob: f64,
    /// Compression ratio of that decode's text.
    pub compression_ratio: f64,
    /// No-speech probability of that window.
    pub no_speech_prob: f64,
    /// Timed words (with `word_timestamps`).
    pub words: Vec<WordTiming>,
}

impl TimedSegment for Segment {
    fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    fn bounds(&mut self) -> (&mut f64, &mut f64) {
        (&mut self.start, &mut self.end)
    }
    fn words_mut(&mut self) -> &mut Vec<WordTiming> {
        &mut self.words
    }
}

/// A whole recording's transcription.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// Language used (given or detected).
    pub language: String,
    /// All text.
    pub text: String,
    /// Segments in order.
    pub segments: Vec<Segment>,
    /// Length of the audio, seconds.
    pub duration_s: f64,
}

/// Progress of [`Whisper::transcribe`].
#[derive(Debug, Clone, PartialEq)]
pub enum TranscribeEvent {
    /// The language was detected (probability of the chosen one).
    Language {
        /// Code.
        code: String,
        /// Its probability.
        probability: f32,
    },
    /// A window was decoded.
    Window {
        /// Audio seconds done.
        done_s: f64,
        /// Audio seconds in all.
        total_s: f64,
        /// Segments added by this window.
        new_segments: usize,
    },
}

fn frames_to_s(frames: usize) -> f64 {
    frames as f64 * HOP_LENGTH as f64 / SAMPLE_RATE as f64
}

impl Whisper {
    /// Transcribes 16 kHz mono audio (see the module docs).
    ///
    /// # Errors
    /// [`WhisperError::Cancelled`] when `cancel` fires (checked before each
    /// window), or model/tokenizer errors.
    pub fn transcribe(
        &self,
        audio: &[f32],
        options: &TranscribeOptions,
        observer: &mut dyn FnMut(TranscribeEvent),
        cancel: &CancelToken,
    ) -> Result<Transcript, WhisperError> {
        let mel = log_mel_spectrogram(audio, self.model.config.num_mel_bins as usize, N_SAMPLES)?;
        self.transcribe_mel(&mel, options, observer, cancel)
    }

    /// [`Whisper::transcribe`] from log-mel features computed with
    /// `padding = N_SAMPLES`.
    pub fn transcribe_mel(
        &self,
        mel: &LogMel,
        options: &TranscribeOptions,
        observer: &mut dyn FnMut(TranscribeEvent),
        cancel: &CancelToken,
    ) -> Result<Transcript, WhisperError> {
        self.transcribe_windows(&mut &*mel, options, observer, cancel)
    }

    /// [`Whisper::transcribe`] from a source of feature windows: whole
    /// features in memory, or a recording streamed from its file
    /// ([`super::audio::RecordingMel`]) so that its length does not bound
    /// memory.
    ///
    /// # Errors
    /// As [`Whisper::transcribe`], plus the source's decoding errors.
    pub fn transcribe_windows(
        &self,
        mel: &mut dyn MelWindows,
        options: &TranscribeOptions,
        observer: &mut dyn FnMut(TranscribeEvent),
        cancel: &CancelToken,
    ) -> Result<Transcript, WhisperError> {
        let (model, tok) = (&self.model, &self.tokenizer);
        let content_frames = mel.total_frames().saturating_sub(N_FRAMES);
        let total_s = frames_to_s(content_frames);
        if options.temperatures.is_empty() {
            return Err(WhisperError::Input("no temperature to decode with".into()));
        }

        let language = match &options.language {
            Some(code) => {
                tok.language_token(code)
                    .ok_or_else(|| WhisperError::Input(format!("unknown language {code:?}")))?;
                code.clone()
            }
            None if tok.special.languages.is_empty() => "en".to_string(),
            None => {
                if cancel.is_cancelled() {
                    return Err(WhisperError::Cancelled);
                }
                let features = model.encoder.forward(&mel.read_window(0, N_FRAMES)?)?;
                let (id, probs) = detect_language(model, tok, &features)?;
                let code = tok.language_code(id).unwrap_or("en").to_string();
                let probability = probs.iter().find(|(c, _)| *c == code).map_or(0.0, |p| p.1);
                observer(TranscribeEvent::Language {
                    code: code.clone(),
                    probability,
                });
                code
            }
        };
        let language_token = tok.language_token(&language);
        let sot_sequence = tok.sot_sequence(language_token, options.translate);
        let ts_begin = tok.special.timestamp_begin;
        let eot = tok.special.eot;
        let input_stride = N_FRAMES / model.config.max_source_positions as usize; // 2
        let time_precision = frames_to_s(input_stride); // 0.02 s

        let mut all_tokens: Vec<u32> = Vec::new();
        let mut all_segments: Vec<Segment> = Vec::new();
        let mut prompt_reset_since = 0;
        let initial_prompt_len = match &options.initial_prompt {
            Some(p) => {
                let t = tok.encode(&format!(" {}", p.trim()))?;
                all_tokens.extend(&t);
                t.len()
            }
            None => 0,
        };
        let mut last_speech_timestamp = 0.0;
        let mut seek = 0usize;
        let mut window_index = 0u64;
        while seek < content_frames {
            if cancel.is_cancelled() {
                return Err(WhisperError::Cancelled);
            }
            let time_offset = frames_to_s(seek);
            let segment_size = N_FRAMES.min(content_frames - seek);
            let segment_duration = frames_to_s(segment_size);
            let features = model
                .encoder
                .forward(&mel.read_window(seek, segment_size)?)?;
            let base = DecodeOptions {
                translate: options.translate,
                language: Some(language.clone()),
                sample_len: options.sample_len,
                suppress_tokens: options.suppress_tokens.clone(),
                prompt: all_tokens[prompt_reset_since..].to_vec(),
                ..DecodeOptions::default()
            };
            let result = self.decode_with_fallback(&features, &base, options, window_index)?;
            window_index += 1;

            if let Some(threshold) = options.no_speech_threshold {
                let mut skip = result.no_speech_prob > threshold;
                if options
                    .logprob_threshold
                    .is_some_and(|lp| result.avg_logprob > lp)
                {
                    skip = false;
                }
                if skip {
                    seek += segment_size;
                    observer(TranscribeEvent::Window {
                        done_s: frames_to_s(seek.min(content_frames)),
                        total_s,
                        new_segments: 0,
                    });
                    continue;
                }
            }

            let previous_seek = seek;
            let tokens = &result.tokens;
            let is_ts: Vec<bool> = tokens.iter().map(|&t| t >= ts_begin).collect();
            let n = tokens.len();
            let single_timestamp_ending = n >= 2 && !is_ts[n - 2] && is_ts[n - 1];
            let consecutive: Vec<usize> = (1..n).filter(|&i| is_ts[i - 1] && is_ts[i]).collect();
            let new_segment = |start: f64, end: f64, toks: &[u32]| Segment {
                id: 0,
                seek,
                start,
                end,
                text: tok.decode(
                    &toks
                        .iter()
                        .copied()
                        .filter(|&t| t < eot)
                        .collect::<Vec<_>>(),
                ),
                tokens: toks.to_vec(),
                temperature: result.temperature,
                avg_logprob: result.avg_logprob,
                compression_ratio: result.compression_ratio,
                no_speech_prob: result.no_speech_prob,
                words: Vec::new(),
            };
            let mut current: Vec<Segment> = Vec::new();
            if !consecutive.is_empty() {
                let mut slices = consecutive.clone();
                if single_timestamp_ending {
                    slices.push(n);
                }
                let mut last_slice = 0;
                for &cut in &slices {
                    let piece = &tokens[last_slice..cut];
                    let start_pos = (piece[0] - ts_begin) as f64;
                    let end_pos = (piece[piece.len() - 1] - ts_begin) as f64;
                    current.push(new_segment(
                        time_offset + start_pos * time_precision,
                        time_offset + end_pos * time_precision,
                        piece,
                    ));
                    last_slice = cut;
                }
                if single_timestamp_ending {
                    seek += segment_size;
                } else {
                    let last_pos = (tokens[last_slice - 1] - ts_begin) as usize;
                    seek += last_pos * input_stride;
                }
            } else {
                let mut duration = segment_duration;
                if let Some(&last) = tokens.iter().rev().find(|&&t| t >= ts_begin) {
                    if last != ts_begin {
                        duration = (last - ts_begin) as f64 * time_precision;
                    }
                }
                current.push(new_segment(time_offset, time_offset + duration, tokens));
                seek += segment_size;
            }

            if options.word_timestamps {
                add_word_timestamps(
                    &mut current,
                    model,
                    tok,
                    &sot_sequence,
                    &features,
                    segment_size,
                    previous_seek,
                    Some(&language),
                    last_speech_timestamp,
                )?;
                let last_end = get_end(&current);
                if !single_timestamp_ending {
                    if let Some(end) = last_end.filter(|&e| e > time_offset) {
                        seek = (end * FRAMES_PER_SECOND as f64).round() as usize;
                    }
                }
                if let Some(end) = last_end {
                    last_speech_timestamp = end;
                }
            }

            for s in &mut current {
                if s.start == s.end || s.text.trim().is_empty() {
                    s.text.clear();
                    s.tokens.clear();
                    s.words.clear();
                }
            }
            let added = current.len();
            for mut s in current {
                s.id = all_segments.len();
                all_tokens.extend(&s.tokens);
                all_segments.push(s);
            }
            if !options.condition_on_previous_text || result.temperature > 0.5 {
                prompt_reset_since = all_tokens.len();
            }
            observer(TranscribeEvent::Window {
                done_s: frames_to_s(seek.min(content_frames)),
                total_s,
                new_segments: added,
            });
        }
        Ok(Transcript {
            language,
            text: tok.decode(&all_tokens[initial_prompt_len..]),
            segments: all_segments,
            duration_s: total_s,
        })
    }

    fn decode_with_fallback(
        &self,
        features: &mlx_rs::Array,
        base: &DecodeOptions,
        options: &TranscribeOptions,
        window_index: u64,
    ) -> Result<DecodeResult, WhisperError> {
        let mut last = None;
        for (k, &t) in options.temperatures.iter().enumerate() {
            let opts = DecodeOptions {
                temperature: t,
                seed: crate::rng::mix64(options.seed ^ (window_index << 8) ^ k as u64),
                ..base.clone()
            };
            let result = decode(&self.model, &self.tokenizer, features, &opts)?;
            let mut fallback = false;
            if options
                .compression_ratio_threshold
                .is_some_and(|c| result.compression_ratio > c)
            {
                fallback = true; // too repetitive
            }
            if options
                .logprob_threshold
                .is_some_and(|l| result.avg_logprob < l)
            {
                fallback = true; // too unlikely
            }
            if options
                .no_speech_threshold
                .is_some_and(|n| result.no_speech_prob > n)
                && options
                    .logprob_threshold
                    .is_some_and(|l| result.avg_logprob < l)
            {
                fallback = false; // silence: nothing better to find
            }
            let done = !fallback;
            last = Some(result);
            if done {
                break;
            }
        }
        Ok(last.expect("at least one temperature"))
    }
}

/// End of the last word, else of the last segment.
fn get_end(segments: &[Segment]) -> Option<f64> {
    segments
        .iter()
        .rev()
        .flat_map(|s| s.words.iter().rev())
        .map(|w| w.end)
        .next()
        .or_else(|| segments.last().map(|s| s.end))
}
