//! Decoding one 30 s window, as openai-whisper `decoding.py` does for one
//! audio with `beam_size=None`: the initial tokens (`<|startofprev|>` +
//! prompt, the SOT sequence, `<|notimestamps|>` when timestamps are off, a
//! prefix), language detection from the logits after `<|startoftranscript|>`,
//! then a greedy (T = 0) or sampled loop over a KV cache with the logit
//! filters `SuppressBlank`, `SuppressTokens` and `ApplyTimestampRules`; the
//! no-speech probability is read at the SOT position of the first step.

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;

use super::error::WhisperError;
use super::model::WhisperModel;
use super::tokenizer::WhisperTokenizer;
use crate::rng::Rng;

/// Which tokens to suppress at every step.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum SuppressTokens {
    /// openai-whisper's `"-1"`: the tokenizer's non-speech tokens.
    #[default]
    NonSpeech,
    /// Exactly these ids (the task, SOT and no-speech tokens are always
    /// added, as openai-whisper does).
    List(Vec<u32>),
}

/// Options of one window's decode (openai-whisper `DecodingOptions`).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOptions {
    /// Translate to English instead of transcribing.
    pub translate: bool,
    /// Language code (`"en"`); `None` detects it from the audio.
    pub language: Option<String>,
    /// 0 = greedy; above 0, sampling from `softmax(logits / T)`.
    pub temperature: f32,
    /// Most tokens to sample; `None` = half the decoder context (224).
    pub sample_len: Option<usize>,
    /// Decode text only (`<|notimestamps|>`).
    pub without_timestamps: bool,
    /// Latest allowed first timestamp, seconds (`None` = any).
    pub max_initial_timestamp: Option<f32>,
    /// Forbid a blank or EOT as the first token.
    pub suppress_blank: bool,
    /// Tokens suppressed at every step.
    pub suppress_tokens: SuppressTokens,
    /// Previous text as tokens (after `<|startofprev|>`).
    pub prompt: Vec<u32>,
    /// Forced first tokens of the answer.
    pub prefix: Vec<u32>,
    /// Seed of the sampler (T > 0 only).
    pub seed: u64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            translate: false,
            language: None,
            temperature: 0.0,
            sample_len: None,
            without_timestamps: false,
            max_initial_timestamp: Some(1.0),
            suppress_blank: true,
            suppress_tokens: SuppressTokens::NonSpeech,
            prompt: Vec::new(),
            prefix: Vec::new(),
            seed: 0,
        }
    }
}

/// What one window's decode gives.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeResult {
    /// Language code used (given or detected).
    pub language: String,
    /// Probabilities of every language, when it was detected.
    pub language_probs: Option<Vec<(String, f32)>>,
    /// Sampled tokens, without the initial tokens and the final EOT.
    pub tokens: Vec<u32>,
    /// Decoded text (timestamps dropped), trimmed.
    pub text: String,
    /// Sum of the sampled tokens' log-probabilities (EOT included) over
    /// `tokens.len() + 1`.
    pub avg_logprob: f64,
    /// Probability of `<|nospeech|>` after `<|startoftranscript|>`.
    pub no_speech_prob: f64,
    /// Temperature used.
    pub temperature: f32,
    /// `len(text) / len(zlib(text))`, see [`compression_ratio`].
    pub compression_ratio: f64,
}

/// `utf8 bytes / zlib-compressed bytes` of `text`, openai-whisper's
/// repetition measure (`len(b) / len(zlib.compress(b))`; 0 for no text).
///
/// The compressor is the C zlib at level 6 (Python's default), so the
/// length is Python's to the byte; miniz_oxide differs by up to 15 bytes
/// on short repetitive texts and flips the 2.4 threshold for some
/// (`zlib_lengths_equal_pythons` checks 112 texts).
pub fn compression_ratio(text: &str) -> f64 {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return 0.0;
    }
    bytes.len() as f64 / zlib_len(bytes) as f64
}

/// Length of `zlib.compress(bytes)` (level 6, header and checksum
/// included).
fn zlib_len(bytes: &[u8]) -> usize {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    // Writing into a Vec cannot fail.
    z.write_all(bytes).expect("in-memory zlib");
    z.finish().expect("in-memory zlib").len()
}

/// `log_softmax(x)[i]` for every `i`, in f64.
pub(crate) fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    x.iter().map(|&v| v as f64 - lse).collect()
}

fn logsumexp(x: &[f64]) -> f64 {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + x.iter().map(|&v| (v - max).exp()).sum::<f64>().ln()
}

fn argmax(x: &[f32]) -> usize {
    // First index of the maximum, as torch.argmax.
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Row `row` of `[1, L, V]` logits as a host vector.
fn logits_row(logits: &Array, row: i32) -> Result<Vec<f32>, WhisperError> {
    Ok(logits
        .index((0, row, ..))
        .contiguous()?
        .as_slice::<f32>()
        .to_vec())
}

/// Detects the language: the most likely language token after
/// `<|startoftranscript|>`.
///
/// # Shapes
/// `audio_features: [1, 1500, D]`
pub fn detect_language(
    model: &WhisperModel,
    tok: &WhisperTokenizer,
    audio_features: &Array,
) -> Result<(u32, Vec<(String, f32)>), WhisperError> {
    let mut cache = model.decoder.new_cache(audio_features)?;
    let sot = Array::from_slice(&[tok.special.sot as i32], &[1, 1]);
    let (h, _) = model.decoder.forward(&sot, &mut cache, false)?;
    let logits = logits_row(&model.decoder.logits(&h)?, 0)?;
    let langs = &tok.special.languages;
    if langs.is_empty() {
        return Err(WhisperError::Input(
            "this model has no language tokens".into(),
        ));
    }
    let values: Vec<f32> = langs.iter().map(|(_, id)| logits[*id as usize]).collect();
    let lp = log_softmax(&values);
    let best = argmax(&values);
    let probs = langs
        .iter()
        .zip(&lp)
        .map(|((code, _), l)| (code.clone(), l.exp() as f32))
        .collect();
    Ok((langs[best].1, probs))
}

/// The logit filters of one decode.
struct Filters {
    sample_begin: usize,
    blank: Option<Vec<u32>>,
    suppress: Vec<u32>,
    timestamps: Option<Option<u32>>,
    eot: u32,
    ts_begin: u32,
    no_timestamps: u32,
}

impl Filters {
    fn apply(&self, logits: &mut [f32], tokens: &[u32]) {
        let ninf = f32::NEG_INFINITY;
        if let Some(blank) = &self.blank {
            if tokens.len() == self.sample_begin {
                for &t in blank {
                    logits[t as usize] = ninf;
                }
            }
        }
        for &t in &self.suppress {
            logits[t as usize] = ninf;
        }
        let Some(max_initial) = self.timestamps else {
            return;
        };
        let (eot, tb) = (self.eot as usize, self.ts_begin as usize);
        logits[self.no_timestamps as usize] = ninf;
        let seq = &tokens[self.sample_begin..];
        let is_ts = |t: u32| t >= self.ts_begin;
        let last_ts = seq.last().is_some_and(|&t| is_ts(t));
        let penult_ts = seq.len() < 2 || is_ts(seq[seq.len() - 2]);
        if last_ts {
            if penult_ts {
                logits[tb..].fill(ninf);
            } else {
                logits[..eot].fill(ninf);
            }
        }
        if let Some(&last) = seq.iter().rev().find(|&&t| is_ts(t)) {
            // Timestamps never decrease, and a segment is never empty.
            let upto = if last_ts && !penult_ts {
                last
            } else {
                last + 1
            } as usize;
            logits[tb..upto.max(tb)].fill(ninf);
        }
        if tokens.len() == self.sample_begin {
            logits[..tb].fill(ninf);
            if let Some(max) = max_initial {
                let last_allowed = tb + max as usize;
                if last_allowed + 1 < logits.len() {
                    logits[last_allowed + 1..].fill(ninf);
                }
            }
        }
        let lp = log_softmax(logits);
        let ts_mass = logsumexp(&lp[tb..]);
        let max_text = lp[..tb].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if ts_mass > max_text {
            logits[..tb].fill(ninf);
        }
    }
}

/// Decodes one window of encoder output.
///
/// # Shapes
/// `audio_features: [1, 1500, D]`
pub fn decode(
    model: &WhisperModel,
    tok: &WhisperTokenizer,
    audio_features: &Array,
    options: &DecodeOptions,
) -> Result<DecodeResult, WhisperError> {
    let sp = &tok.special;
    let n_ctx = model.config.max_target_positions as usize;
    let sample_len = options.sample_len.unwrap_or(n_ctx / 2);

    let (language_token, language_probs) = match &options.language {
        Some(code) => {
            let id = tok
                .language_token(code)
                .ok_or_else(|| WhisperError::Input(format!("unknown language {code:?}")))?;
            (Some(id), None)
        }
        None if sp.languages.is_empty() => (None, None),
        None => {
            let (id, probs) = detect_language(model, tok, audio_features)?;
            (Some(id), Some(probs))
        }
    };
    let language = language_token
        .and_then(|id| tok.language_code(id))
        .unwrap_or("en")
        .to_string();

    let mut initial = Vec::new();
    if !options.prompt.is_empty() {
        initial.push(sp.sot_prev);
        let keep = options.prompt.len().min(n_ctx / 2 - 1);
        initial.extend_from_slice(&options.prompt[options.prompt.len() - keep..]);
    }
    let sot_index = initial.len();
    initial.extend(tok.sot_sequence(language_token, options.translate));
    if options.without_timestamps {
        initial.push(sp.no_timestamps);
    }
    let max_prefix = (n_ctx / 2).saturating_sub(sample_len);
    let prefix_keep = options.prefix.len().min(max_prefix);
    initial.extend_from_slice(&options.prefix[options.prefix.len() - prefix_keep..]);
    let sample_begin = initial.len();

    let suppress = {
        let mut s = match &options.suppress_tokens {
            SuppressTokens::NonSpeech => tok.non_speech_tokens()?,
            SuppressTokens::List(l) => l.clone(),
        };
        s.extend([
            sp.transcribe,
            sp.translate,
            sp.sot,
            sp.sot_prev,
            sp.sot_lm,
            sp.no_speech,
        ]);
        s.sort_unstable();
        s.dedup();
        s
    };
    let filters = Filters {
        sample_begin,
        blank: options
            .suppress_blank
            .then(|| -> Result<Vec<u32>, WhisperError> {
                let mut b = tok.encode(" ")?;
                b.push(sp.eot);
                Ok(b)
            })
            .transpose()?,
        suppress,
        timestamps: (!options.without_timestamps).then(|| {
            // Timestamp steps are 30 s / 1500 encoder positions.
            let precision = 30.0 / model.config.max_source_positions as f32;
            options
                .max_initial_timestamp
                .map(|t| (t / precision).round() as u32)
        }),
        eot: sp.eot,
        ts_begin: sp.timestamp_begin,
        no_timestamps: sp.no_timestamps,
    };

    let mut rng = Rng::new(options.seed);
    let mut cache = model.decoder.new_cache(audio_features)?;
    let mut tokens = initial.clone();
    let mut sum_logprob = 0f64;
    let mut no_speech_prob = f64::NAN;
    for step in 0..sample_len {
        let input: Vec<i32> = if step == 0 {
            tokens.iter().map(|&t| t as i32).collect()
        } else {
            vec![*tokens.last().expect("non-empty") as i32]
        };
        let input = Array::from_slice(&input, &[1, input.len() as i32]);
        let (hidden, _) = model.decoder.forward(&input, &mut cache, false)?;
        if step == 0 {
            let at_sot = model.decoder.logits(&hidden.index((
                ..,
                sot_index as i32..sot_index as i32 + 1,
                ..,
            )))?;
            no_speech_prob = log_softmax(&logits_row(&at_sot, 0)?)[sp.no_speech as usize].exp();
        }
        let l = hidden.shape()[1];
        let last = model.decoder.logits(&hidden.index((.., l - 1..l, ..)))?;
        let mut logits = logits_row(&last, 0)?;
        filters.apply(&mut logits, &tokens);
        let next = if options.temperature > 0.0 {
            sample(&logits, options.temperature, &mut rng)
        } else {
            argmax(&logits)
        };
        sum_logprob += log_softmax(&logits)[next];
        tokens.push(next as u32);
        if next as u32 == sp.eot || tokens.len() > n_ctx {
            break;
        }
    }
    let sampled: Vec<u32> = tokens[sample_begin..]
        .iter()
        .copied()
        .take_while(|&t| t != sp.eot)
        .collect();
    let text = tok.decode(&sampled).trim().to_string();
    Ok(DecodeResult {
        language,
        language_probs,
        avg_logprob: sum_logprob / (sampled.len() + 1) as f64,
        compression_ratio: compression_ratio(&text),
        tokens: sampled,
        text,
        no_speech_prob,
        temperature: options.temperature,
    })
}

/// Draws from `softmax(logits / temperature)`.
fn sample(logits: &[f32], temperature: f32, rng: &mut Rng) -> usize {
    let scaled: Vec<f32> = logits.iter().map(|&v| v / temperature).collect();
    let lp = log_softmax(&scaled);
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut acc = 0.0;
    for (i, l) in lp.iter().enumerate() {
        acc += l.exp();
        if u < acc {
            return i;
        }
    }
    argmax(logits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_ratio_flags_repetition() {
        let plain = "The quick brown fox jumps over the lazy dog near the river bank.";
        let rep = "la la la la la la la la la la la la la la la la la la la la la la la la";
        assert!(
            compression_ratio(plain) < 1.5,
            "{}",
            compression_ratio(plain)
        );
        assert!(compression_ratio(rep) > 2.4, "{}", compression_ratio(rep));
        assert_eq!(compression_ratio(""), 0.0);
    }

    /// Lengths from Python's `zlib.compress` (1.2.13) on 112 texts, 34 of
    /// them with ratios in (2.0, 2.8); made by
    /// `scripts/fixtures/make_zlib_fixture.py`.
    #[test]
    fn zlib_lengths_equal_pythons() {
        let fixture: serde_json::Value = serde_json::from_str(include_str!(
            "../../../../tests/fixtures/whisper/zlib_lengths.json"
        ))
        .unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() > 100);
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let (n, z) = (c["bytes"].as_u64().unwrap(), c["zlib"].as_u64().unwrap());
            assert_eq!(text.len() as u64, n);
            assert_eq!(zlib_len(text.as_bytes()) as u64, z, "{text:?}");
            if n > 0 {
                assert_eq!(compression_ratio(text), n as f64 / z as f64);
            }
        }
    }

    fn filters(sample_begin: usize) -> Filters {
        // eot 10, timestamps from 20 (ids 20..30), no_timestamps 19.
        Filters {
            sample_begin,
            blank: Some(vec![1, 10]),
            suppress: vec![5],
            timestamps: Some(Some(2)),
            eot: 10,
            ts_begin: 20,
            no_timestamps: 19,
        }
    }

    #[test]
    fn timestamp_rules() {
        let f = filters(2);
        let allowed = |tokens: &[u32]| {
            let mut l = vec![0f32; 30];
            l[25] = 3.0; // make text competitive
            l[3] = 4.0;
            f.apply(&mut l, tokens);
            (0..30).filter(|&i| l[i].is_finite()).collect::<Vec<_>>()
        };
        // First step: only timestamps up to index 2 (max initial).
        assert_eq!(allowed(&[0, 0]), vec![20, 21, 22]);
        // The opening timestamp counts as a pair: text (or EOT) next.
        let a = allowed(&[0, 0, 23]);
        assert!(a.contains(&3) && a.iter().all(|&t| t < 20));
        // After text then a timestamp: EOT or a timestamp not below it; here
        // the timestamps outweigh EOT, so only they remain.
        assert_eq!(allowed(&[0, 0, 21, 3, 24]), vec![24, 25, 26, 27, 28, 29]);
        // After a pair of timestamps: text or EOT only.
        let a = allowed(&[0, 0, 21, 3, 24, 24]);
        assert!(a.iter().all(|&t| t < 20));
        // After text following timestamp 24: timestamps must be > 24.
        let a = allowed(&[0, 0, 24, 3]);
        assert!(!a.contains(&24) && a.contains(&25));
        // Suppressed ids are never allowed.
        assert!(!allowed(&[0, 0, 21, 3]).contains(&5));
    }
}
