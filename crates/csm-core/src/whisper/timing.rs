//! Word-level timestamps, as openai-whisper `timing.py` computes them: run
//! the decoder once over `SOT sequence, <|notimestamps|>, text, EOT`, take
//! the cross-attention of the alignment heads over the window's frames,
//! softmax, normalise each head over tokens, median-filter (width 7) over
//! time, average the heads, and follow the dynamic-time-warping path of
//! `-attention`; a word starts at the frame where the path first reaches its
//! first token. Then the heuristics of `add_word_timestamps`: punctuation
//! merged into neighbours, overlong words near sentence ends clipped, and
//! segment bounds moved to the words.

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;

use super::config::{HOP_LENGTH, SAMPLE_RATE, TOKENS_PER_SECOND};
use super::decode::log_softmax;
use super::error::WhisperError;
use super::model::WhisperModel;
use super::tokenizer::WhisperTokenizer;

/// openai-whisper's default punctuation merged into the following word.
pub const PREPEND_PUNCTUATIONS: &str = "\"'“¿([{-";
/// openai-whisper's default punctuation merged into the preceding word.
pub const APPEND_PUNCTUATIONS: &str = "\"'.。,，!！?？:：”)]}、";

/// One timed word (seconds from the start of the recording).
#[derive(Debug, Clone, PartialEq)]
pub struct WordTiming {
    /// The word with its leading space, as decoded.
    pub word: String,
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Mean probability of its tokens.
    pub probability: f64,
}

/// A word of one window, window-relative, before the segment heuristics.
#[derive(Debug, Clone, PartialEq)]
pub struct AlignedWord {
    /// Text.
    pub word: String,
    /// Its tokens.
    pub tokens: Vec<u32>,
    /// Start, seconds from the window start.
    pub start: f64,
    /// End, seconds from the window start.
    pub end: f64,
    /// Mean token probability.
    pub probability: f64,
}

/// Median over a sliding window of `width` (odd) along each row, reflect
/// padded; rows no longer than `width / 2` are returned unchanged.
pub fn median_filter(row: &[f32], width: usize) -> Vec<f32> {
    let pad = width / 2;
    let n = row.len();
    if n <= pad {
        return row.to_vec();
    }
    let at = |i: isize| -> f32 {
        let j = if i < 0 {
            -i
        } else if i >= n as isize {
            2 * (n as isize - 1) - i
        } else {
            i
        };
        row[j as usize]
    };
    let mut buf = vec![0f32; width];
    (0..n)
        .map(|i| {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = at(i as isize + k as isize - pad as isize);
            }
            buf.sort_by(|a, b| a.total_cmp(b));
            buf[pad]
        })
        .collect()
}

/// Dynamic time warping of a cost matrix `[n, m]` (row-major): the path
/// `(text_indices, time_indices)` from `(0, 0)` to `(n-1, m-1)`. The
/// cumulative cost is kept in f32, as openai-whisper's `dtw_cpu`. As there,
/// a NaN cost (a window of one frame has zero variance) makes the path run
/// along the edges, where an index can be -1.
pub fn dtw(x: &[f64], n: usize, m: usize) -> (Vec<isize>, Vec<isize>) {
    let w = m + 1;
    let mut cost = vec![f32::INFINITY; (n + 1) * w];
    let mut trace = vec![-1i8; (n + 1) * w];
    cost[0] = 0.0;
    for j in 1..=m {
        for i in 1..=n {
            let c0 = cost[(i - 1) * w + j - 1];
            let c1 = cost[(i - 1) * w + j];
            let c2 = cost[i * w + j - 1];
            let (c, t) = if c0 < c1 && c0 < c2 {
                (c0, 0)
            } else if c1 < c0 && c1 < c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            cost[i * w + j] = (x[(i - 1) * m + j - 1] + c as f64) as f32;
            trace[i * w + j] = t;
        }
    }
    for t in trace.iter_mut().take(w) {
        *t = 2;
    }
    for i in 0..=n {
        trace[i * w] = 1;
    }
    let (mut i, mut j) = (n, m);
    let mut path = Vec::new();
    while i > 0 || j > 0 {
        path.push((i as isize - 1, j as isize - 1));
        match trace[i * w + j] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    path.reverse();
    path.into_iter().unzip()
}

/// Aligns `text_tokens` (no timestamps, no EOT) to the window whose encoder
/// output is `audio_features`; `num_frames` is the number of real (not
/// padded) mel frames in it.
///
/// # Shapes
/// `audio_features: [1, 1500, D]`
pub fn find_alignment(
    model: &WhisperModel,
    tok: &WhisperTokenizer,
    sot_sequence: &[u32],
    text_tokens: &[u32],
    audio_features: &Array,
    num_frames: usize,
    language: Option<&str>,
) -> Result<Vec<AlignedWord>, WhisperError> {
    const MEDFILT_WIDTH: usize = 7;
    if text_tokens.is_empty() {
        return Ok(Vec::new());
    }
    let sp = &tok.special;
    let mut tokens: Vec<u32> = sot_sequence.to_vec();
    tokens.push(sp.no_timestamps);
    tokens.extend_from_slice(text_tokens);
    tokens.push(sp.eot);
    let input: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let input = Array::from_slice(&input, &[1, input.len() as i32]);
    let mut cache = model.decoder.new_cache(audio_features)?;
    let (hidden, scores) = model.decoder.forward(&input, &mut cache, true)?;

    // Probability of each text token where it was predicted.
    let n_sot = sot_sequence.len();
    let logits = model.decoder.logits(&hidden)?; // [1, L, V]
    let mut text_probs = Vec::with_capacity(text_tokens.len());
    for (i, &t) in text_tokens.iter().enumerate() {
        let row = logits
            .index((0, (n_sot + i) as i32, ..sp.eot as i32))
            .contiguous()?;
        let lp = log_softmax(row.as_slice::<f32>());
        text_probs.push(lp[t as usize].exp());
    }

    // Attention of the alignment heads, over the real frames only.
    let l = tokens.len();
    let t = (num_frames / 2).min(audio_features.shape()[1] as usize);
    if t == 0 {
        return Ok(Vec::new());
    }
    let mut matrix = vec![0f64; l * t];
    let heads = &model.config.alignment_heads;
    for &(layer, head) in heads {
        let s = scores[layer].index((0, head as i32, .., ..t as i32)); // [L, T]
        let s = s.as_dtype(mlx_rs::Dtype::Float32)?.contiguous()?;
        let s = s.as_slice::<f32>();
        // Softmax over time.
        let mut w = vec![0f32; l * t];
        for r in 0..l {
            let lp = log_softmax(&s[r * t..(r + 1) * t]);
            for c in 0..t {
                w[r * t + c] = lp[c].exp() as f32;
            }
        }
        // Standardise each time column over tokens (population std).
        for c in 0..t {
            let mean = (0..l).map(|r| w[r * t + c] as f64).sum::<f64>() / l as f64;
            let var = (0..l)
                .map(|r| (w[r * t + c] as f64 - mean).powi(2))
                .sum::<f64>()
                / l as f64;
            let std = var.sqrt();
            for r in 0..l {
                w[r * t + c] = ((w[r * t + c] as f64 - mean) / std) as f32;
            }
        }
        for r in 0..l {
            let f = median_filter(&w[r * t..(r + 1) * t], MEDFILT_WIDTH);
            for c in 0..t {
                matrix[r * t + c] += f[c] as f64;
            }
        }
    }
    // Mean over heads (rounded to f32 as torch keeps it), rows of
    // <|notimestamps|> and the text tokens, negated for the DTW.
    let rows = text_tokens.len() + 1;
    let cost: Vec<f64> = matrix[n_sot * t..(n_sot + rows) * t]
        .iter()
        .map(|v| -((v / heads.len() as f64) as f32 as f64))
        .collect();
    let (text_idx, time_idx) = dtw(&cost, rows, t);

    let mut with_eot = text_tokens.to_vec();
    with_eot.push(sp.eot);
    let (words, word_tokens) = tok.split_to_word_tokens(&with_eot, language);
    if word_tokens.len() <= 1 {
        return Ok(Vec::new());
    }
    let mut boundaries = vec![0usize];
    for wt in &word_tokens[..word_tokens.len() - 1] {
        boundaries.push(boundaries.last().expect("non-empty") + wt.len());
    }
    let jump_times: Vec<f64> = (0..text_idx.len())
        .filter(|&k| k == 0 || text_idx[k] != text_idx[k - 1])
        .map(|k| time_idx[k] as f64 / TOKENS_PER_SECOND as f64)
        .collect();
    let mut out = Vec::new();
    for (k, (word, toks)) in words.into_iter().zip(word_tokens).enumerate() {
        if k + 1 >= boundaries.len() {
            break;
        }
        let (a, b) = (boundaries[k], boundaries[k + 1]);
        let probs = &text_probs[a.min(text_probs.len())..b.min(text_probs.len())];
        let probability = if probs.is_empty() {
            f64::NAN
        } else {
            probs.iter().sum::<f64>() / probs.len() as f64
        };
        out.push(AlignedWord {
            word,
            tokens: toks,
            start: jump_times.get(a).copied().unwrap_or(0.0),
            end: jump_times.get(b).copied().unwrap_or(0.0),
            probability,
        });
    }
    Ok(out)
}

/// Merges leading punctuation into the next word and trailing punctuation
/// into the previous one (openai-whisper `merge_punctuations`).
pub fn merge_punctuations(alignment: &mut [AlignedWord], prepended: &str, appended: &str) {
    if alignment.len() >= 2 {
        let mut i = alignment.len() as isize - 2;
        let mut j = alignment.len() - 1;
        while i >= 0 {
            let iu = i as usize;
            let prev = &alignment[iu];
            if prev.word.starts_with(' ') && prepended.contains(prev.word.trim()) {
                let (pw, pt) = (prev.word.clone(), prev.tokens.clone());
                let next = &mut alignment[j];
                next.word = pw + &next.word;
                next.tokens = [pt, next.tokens.clone()].concat();
                alignment[iu].word.clear();
                alignment[iu].tokens.clear();
            } else {
                j = iu;
            }
            i -= 1;
        }
    }
    let (mut i, mut j) = (0usize, 1usize);
    while j < alignment.len() {
        let (prev, next) = (&alignment[i], &alignment[j]);
        if !prev.word.ends_with(' ') && appended.contains(next.word.as_str()) {
            let (nw, nt) = (next.word.clone(), next.tokens.clone());
            alignment[i].word.push_str(&nw);
            alignment[i].tokens.extend(nt);
            alignment[j].word.clear();
            alignment[j].tokens.clear();
        } else {
            i = j;
        }
        j += 1;
    }
}

/// A segment as [`add_word_timestamps`] sees it.
pub trait TimedSegment {
    /// Its tokens (timestamps included).
    fn tokens(&self) -> &[u32];
    /// Start and end, seconds.
    fn bounds(&mut self) -> (&mut f64, &mut f64);
    /// Where its words go.
    fn words_mut(&mut self) -> &mut Vec<WordTiming>;
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Times the words of one window's `segments` (openai-whisper
/// `add_word_timestamps`). `seek` is the window's first frame;
/// `last_speech_timestamp` is the end of the last word before this window.
#[allow(clippy::too_many_arguments)]
pub fn add_word_timestamps<S: TimedSegment>(
    segments: &mut [S],
    model: &WhisperModel,
    tok: &WhisperTokenizer,
    sot_sequence: &[u32],
    audio_features: &Array,
    num_frames: usize,
    seek: usize,
    language: Option<&str>,
    mut last_speech_timestamp: f64,
) -> Result<(), WhisperError> {
    if segments.is_empty() {
        return Ok(());
    }
    let eot = tok.special.eot;
    let per_segment: Vec<Vec<u32>> = segments
        .iter()
        .map(|s| s.tokens().iter().copied().filter(|&t| t < eot).collect())
        .collect();
    let text_tokens: Vec<u32> = per_segment.iter().flatten().copied().collect();
    let mut alignment = find_alignment(
        model,
        tok,
        sot_sequence,
        &text_tokens,
        audio_features,
        num_frames,
        language,
    )?;

    let mut durations: Vec<f64> = alignment
        .iter()
        .map(|w| w.end - w.start)
        .filter(|&d| d != 0.0)
        .collect();
    let median_duration = if durations.is_empty() {
        0.0
    } else {
        median(&mut durations)
    }
    .min(0.7);
    let max_duration = median_duration * 2.0;
    if !durations.is_empty() {
        const SENTENCE_END: &str = ".。!！?？";
        for i in 1..alignment.len() {
            if alignment[i].end - alignment[i].start > max_duration {
                if SENTENCE_END.contains(alignment[i].word.as_str()) {
                    alignment[i].end = alignment[i].start + max_duration;
                } else if SENTENCE_END.contains(alignment[i - 1].word.as_str()) {
                    alignment[i].start = alignment[i].end - max_duration;
                }
            }
        }
    }
    merge_punctuations(&mut alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS);

    let time_offset = seek as f64 * HOP_LENGTH as f64 / SAMPLE_RATE as f64;
    let mut word_index = 0;
    for (segment, text_tokens) in segments.iter_mut().zip(&per_segment) {
        let mut saved = 0;
        let mut words: Vec<WordTiming> = Vec::new();
        while word_index < alignment.len() && saved < text_tokens.len() {
            let timing = &alignment[word_index];
            if !timing.word.is_empty() {
                words.push(WordTiming {
                    word: timing.word.clone(),
                    start: round2(time_offset + timing.start),
                    end: round2(time_offset + timing.end),
                    probability: timing.probability,
                });
            }
            saved += timing.tokens.len();
            word_index += 1;
        }
        if !words.is_empty() {
            // Long pauses before the first word are usually misaligned.
            if words[0].end - last_speech_timestamp > median_duration * 4.0
                && (words[0].end - words[0].start > max_duration
                    || (words.len() > 1 && words[1].end - words[0].start > max_duration * 2.0))
            {
                if words.len() > 1 && words[1].end - words[1].start > max_duration {
                    let boundary = (words[1].end / 2.0).max(words[1].end - max_duration);
                    words[0].end = boundary;
                    words[1].start = boundary;
                }
                words[0].start = (words[0].end - max_duration).max(0.0);
            }
            let n = words.len();
            let (start, end) = segment.bounds();
            if *start < words[0].end && *start - 0.5 > words[0].start {
                words[0].start = (words[0].end - median_duration).min(*start).max(0.0);
            } else {
                *start = words[0].start;
            }
            if *end > words[n - 1].start && *end + 0.5 < words[n - 1].end {
                words[n - 1].end = (words[n - 1].start + median_duration).max(*end);
            } else {
                *end = words[n - 1].end;
            }
            last_speech_timestamp = *end;
        }
        *segment.words_mut() = words;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_filter_reflects_at_edges() {
        let x = [5.0, 1.0, 4.0, 2.0, 3.0];
        // Reflect padded: [4, 1, | 5, 1, 4, 2, 3 | 2, 4], width 5.
        assert_eq!(median_filter(&x, 5), vec![4.0, 2.0, 3.0, 2.0, 3.0]);
        assert_eq!(median_filter(&[1.0, 2.0], 7), vec![1.0, 2.0]);
    }

    #[test]
    fn dtw_follows_the_cheap_diagonal() {
        // 2 tokens x 4 frames: token 0 cheap at frames 0-1, token 1 at 2-3.
        let x = [-1.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0];
        let (ti, tj) = dtw(&x, 2, 4);
        // Ties go to the horizontal move, so token 1 starts at frame 1.
        assert_eq!(ti, vec![0, 0, 1, 1, 1]);
        assert_eq!(tj, vec![0, 1, 1, 2, 3]);
        // NaN costs (one frame): the path runs down column -1, as
        // openai-whisper's does.
        let (ti, tj) = dtw(&[f64::NAN; 3], 3, 1);
        assert_eq!((ti, tj), (vec![0, 1, 2, 2], vec![-1, -1, -1, 0]));
    }

    fn w(word: &str) -> AlignedWord {
        AlignedWord {
            word: word.into(),
            tokens: vec![1],
            start: 0.0,
            end: 0.0,
            probability: 1.0,
        }
    }

    #[test]
    fn punctuation_merges_both_ways() {
        let mut a = vec![w(" \""), w(" Hello"), w(","), w(" world"), w(".")];
        merge_punctuations(&mut a, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS);
        let words: Vec<&str> = a.iter().map(|x| x.word.as_str()).collect();
        assert_eq!(words, vec!["", " \" Hello,", "", " world.", ""]);
        assert_eq!(a[1].tokens.len(), 3);
    }
}
