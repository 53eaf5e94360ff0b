//! Health of a generated sample: silence at its ends, its longest pause,
//! clipping and speaking rate.
//!
//! Speech is found per 10 ms frame: a frame is voiced when its RMS level is
//! above `max(loudest frame - 40 dB, -60 dBFS)`. Leading and trailing
//! silence are the time before the first and after the last voiced frame;
//! the longest pause is the longest run of unvoiced frames between them;
//! the speech time is the span from the first to the last voiced frame.
//! Clipping is [`crate::data::audio::clipped_fraction`] (flat runs at full
//! scale). The speaking rate counts the characters (letters and digits of
//! the [`super::text::normalize_english`] text) and the syllables (vowel
//! groups per word, a final silent `e` dropped, at least one a word) per
//! second of speech. [`health_warnings`] turns the measures into sentences
//! where they pass [`HealthLimits`].

use serde::Serialize;

use super::text::normalize_english;
use crate::data::audio::clipped_fraction;

/// Thresholds of [`sample_health`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthOptions {
    /// Frame length, seconds.
    pub frame_s: f64,
    /// A frame this far below the loudest one is silent, dB.
    pub below_peak_db: f64,
    /// A frame below this level is silent, dBFS.
    pub floor_dbfs: f64,
}

impl Default for HealthOptions {
    fn default() -> Self {
        HealthOptions {
            frame_s: 0.01,
            below_peak_db: 40.0,
            floor_dbfs: -60.0,
        }
    }
}

/// Speaking rate of a sample given its text.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpeakingRate {
    /// Letters and digits per second of speech.
    pub chars_per_s: f64,
    /// Syllables per second of speech.
    pub syllables_per_s: f64,
}

/// What [`sample_health`] measures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleHealth {
    /// Sample length, seconds.
    pub duration_s: f64,
    /// Silence before the first voiced frame, seconds (the whole sample
    /// when nothing is voiced).
    pub leading_silence_s: f64,
    /// Silence after the last voiced frame, seconds.
    pub trailing_silence_s: f64,
    /// Longest silent run between voiced frames, seconds.
    pub longest_pause_s: f64,
    /// First to last voiced frame, seconds.
    pub speech_s: f64,
    /// Fraction of samples in flat runs at full scale.
    pub clipped_fraction: f64,
    /// Speaking rate, when a text was given and there is speech.
    pub rate: Option<SpeakingRate>,
}

/// Voiced flag per frame (see the module docs).
pub fn voiced_frames(samples: &[f32], sample_rate: u32, options: &HealthOptions) -> Vec<bool> {
    let frame = ((options.frame_s * f64::from(sample_rate)).round() as usize).max(1);
    let levels: Vec<f64> = samples
        .chunks(frame)
        .map(|c| {
            let ms = c.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / c.len() as f64;
            10.0 * ms.log10()
        })
        .collect();
    let loudest = levels.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let threshold = (loudest - options.below_peak_db).max(options.floor_dbfs);
    levels.iter().map(|&l| l > threshold).collect()
}

/// Syllables of English text by vowel groups (a rough count, good enough
/// to compare rates of the same speaker).
pub fn count_syllables(text: &str) -> usize {
    normalize_english(text)
        .split_whitespace()
        .map(|word| {
            let letters: Vec<char> = word.chars().filter(|c| c.is_alphabetic()).collect();
            if letters.is_empty() {
                // A number: one syllable a digit, roughly.
                return word.chars().filter(char::is_ascii_digit).count();
            }
            let vowel = |c: char| matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y');
            let mut groups = 0;
            let mut previous = false;
            for &c in &letters {
                let v = vowel(c);
                if v && !previous {
                    groups += 1;
                }
                previous = v;
            }
            let n = letters.len();
            // A final "e" after a consonant is silent, except in "-ble"/"-ple".
            let consonant_le = n > 2 && letters[n - 2] == 'l' && !vowel(letters[n - 3]);
            let silent_e =
                n > 2 && letters[n - 1] == 'e' && !vowel(letters[n - 2]) && !consonant_le;
            (groups - usize::from(silent_e && groups > 1)).max(1)
        })
        .sum()
}

/// Letters and digits of the normalised text.
pub fn count_chars(text: &str) -> usize {
    normalize_english(text)
        .chars()
        .filter(|c| c.is_alphanumeric())
        .count()
}

/// The health of mono `samples`, with the speaking rate when `text` is
/// the text they say.
pub fn sample_health(
    samples: &[f32],
    sample_rate: u32,
    text: Option<&str>,
    options: &HealthOptions,
) -> SampleHealth {
    let sr = f64::from(sample_rate);
    let duration_s = samples.len() as f64 / sr;
    let frame = ((options.frame_s * sr).round() as usize).max(1);
    let flags = voiced_frames(samples, sample_rate, options);
    let first = flags.iter().position(|&v| v);
    let last = flags.iter().rposition(|&v| v);
    let (Some(first), Some(last)) = (first, last) else {
        return SampleHealth {
            duration_s,
            leading_silence_s: duration_s,
            trailing_silence_s: 0.0,
            longest_pause_s: 0.0,
            speech_s: 0.0,
            clipped_fraction: clipped_fraction(samples),
            rate: None,
        };
    };
    let start = first * frame;
    let end = ((last + 1) * frame).min(samples.len());
    let mut longest = 0usize;
    let mut run = 0usize;
    for &v in &flags[first..=last] {
        run = if v { 0 } else { run + 1 };
        longest = longest.max(run);
    }
    let speech_s = (end - start) as f64 / sr;
    let rate = text.filter(|_| speech_s > 0.0).map(|t| SpeakingRate {
        chars_per_s: count_chars(t) as f64 / speech_s,
        syllables_per_s: count_syllables(t) as f64 / speech_s,
    });
    SampleHealth {
        duration_s,
        leading_silence_s: start as f64 / sr,
        trailing_silence_s: (samples.len() - end) as f64 / sr,
        longest_pause_s: (longest * frame) as f64 / sr,
        speech_s,
        clipped_fraction: clipped_fraction(samples),
        rate,
    }
}

/// A speaker's own rate over recordings `(samples, sample_rate, text)`:
/// total characters and syllables over total speech time.
pub fn reference_rate<'a>(
    recordings: impl IntoIterator<Item = (&'a [f32], u32, &'a str)>,
    options: &HealthOptions,
) -> Option<SpeakingRate> {
    let (mut chars, mut syllables, mut seconds) = (0usize, 0usize, 0f64);
    for (samples, sample_rate, text) in recordings {
        let health = sample_health(samples, sample_rate, None, options);
        if health.speech_s > 0.0 {
            chars += count_chars(text);
            syllables += count_syllables(text);
            seconds += health.speech_s;
        }
    }
    (seconds > 0.0).then(|| SpeakingRate {
        chars_per_s: chars as f64 / seconds,
        syllables_per_s: syllables as f64 / seconds,
    })
}

/// When [`health_warnings`] speaks up. The defaults flag what a listener
/// would notice: more than 1 s of silence before or after the speech, a
/// pause of more than 1.5 s inside it, any clipping (0.1% of the samples),
/// a pace under 2/3 or over 3/2 of the speaker's own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthLimits {
    /// Longest silence before the speech, seconds.
    pub leading_silence_s: f64,
    /// Longest silence after the speech, seconds.
    pub trailing_silence_s: f64,
    /// Longest pause inside the speech, seconds.
    pub pause_s: f64,
    /// Largest fraction of clipped samples.
    pub clipped_fraction: f64,
    /// Slowest pace, as a fraction of the speaker's.
    pub min_rate_ratio: f64,
    /// Fastest pace, as a multiple of the speaker's.
    pub max_rate_ratio: f64,
}

impl Default for HealthLimits {
    fn default() -> Self {
        HealthLimits {
            leading_silence_s: 1.0,
            trailing_silence_s: 1.0,
            pause_s: 1.5,
            clipped_fraction: 0.001,
            min_rate_ratio: 2.0 / 3.0,
            max_rate_ratio: 1.5,
        }
    }
}

/// What in `health` (and the pace `rate_ratio`, the sample's over the
/// speaker's) goes past `limits`, one sentence each; empty for a healthy
/// sample. A sample with no voiced frame gets that one warning alone.
pub fn health_warnings(
    health: &SampleHealth,
    rate_ratio: Option<f64>,
    limits: &HealthLimits,
) -> Vec<String> {
    if health.speech_s == 0.0 {
        return vec![format!(
            "no speech: nothing voiced in {:.1} s",
            health.duration_s
        )];
    }
    let mut out = Vec::new();
    if health.leading_silence_s > limits.leading_silence_s {
        out.push(format!(
            "{:.1} s of silence before the speech",
            health.leading_silence_s
        ));
    }
    if health.trailing_silence_s > limits.trailing_silence_s {
        out.push(format!(
            "{:.1} s of silence after the speech",
            health.trailing_silence_s
        ));
    }
    if health.longest_pause_s > limits.pause_s {
        out.push(format!(
            "a pause of {:.1} s inside the speech",
            health.longest_pause_s
        ));
    }
    if health.clipped_fraction > limits.clipped_fraction {
        out.push(format!(
            "clipping: {:.2}% of the samples at full scale",
            100.0 * health.clipped_fraction
        ));
    }
    match rate_ratio {
        Some(r) if r < limits.min_rate_ratio => {
            out.push(format!("slow: {:.0}% of the speaker's pace", 100.0 * r))
        }
        Some(r) if r > limits.max_rate_ratio => {
            out.push(format!("fast: {:.0}% of the speaker's pace", 100.0 * r))
        }
        _ => {}
    }
    out
}

impl SpeakingRate {
    /// This rate over `reference` (characters per second; 1 is the same
    /// pace, above 1 faster).
    pub fn ratio_to(&self, reference: &SpeakingRate) -> f64 {
        self.chars_per_s / reference.chars_per_s
    }
}
