//! resemblyzer's `preprocess_wav`: resample to 16 kHz, raise the level to
//! -30 dBFS, shorten long pauses (energy VAD: see the module docs of
//! [`crate::speaker`] for how it differs from webrtcvad).

use super::{SpeakerEncoderConfig, SpeakerError};
use crate::data::audio::resample;

/// The waveform the encoder expects, from mono audio at any rate.
///
/// # Errors
/// [`SpeakerError::Audio`] if resampling fails.
pub fn preprocess(
    samples: &[f32],
    sample_rate: u32,
    config: &SpeakerEncoderConfig,
) -> Result<Vec<f32>, SpeakerError> {
    let wav = resample(samples, sample_rate, config.sample_rate)?;
    let wav = normalize_volume(&wav, config.norm_target_dbfs, true);
    Ok(trim_long_silences(&wav, config))
}

/// Scales `wav` to `target_dbfs` RMS; with `increase_only`, louder audio is
/// left as it is. Silence is returned unchanged (resemblyzer would divide by
/// zero).
pub fn normalize_volume(wav: &[f32], target_dbfs: f32, increase_only: bool) -> Vec<f32> {
    let mean_square = wav
        .iter()
        .map(|&s| f64::from(s) * f64::from(s))
        .sum::<f64>()
        / wav.len().max(1) as f64;
    if mean_square <= 0.0 {
        return wav.to_vec();
    }
    let change_db = f64::from(target_dbfs) - 10.0 * mean_square.log10();
    if change_db < 0.0 && increase_only {
        return wav.to_vec();
    }
    let gain = 10f64.powf(change_db / 20.0);
    wav.iter().map(|&s| (f64::from(s) * gain) as f32).collect()
}

/// One flag per VAD window (`vad_window_ms`): whether it holds speech, by
/// level (see the module docs).
pub fn voice_flags(wav: &[f32], config: &SpeakerEncoderConfig) -> Vec<bool> {
    let window = window_samples(config);
    let levels: Vec<f64> = wav
        .chunks_exact(window)
        .map(|w| {
            let ms = w.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / window as f64;
            10.0 * ms.log10()
        })
        .collect();
    if levels.is_empty() {
        return Vec::new();
    }
    let loudest = levels.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sorted = levels.clone();
    sorted.sort_by(f64::total_cmp);
    let floor = sorted[sorted.len() / 10];
    let threshold = (loudest - 40.0).max((floor + 12.0).min(loudest - 20.0));
    levels
        .iter()
        .map(|&l| l.is_finite() && l > threshold)
        .collect()
}

fn window_samples(config: &SpeakerEncoderConfig) -> usize {
    config.vad_window_ms * config.sample_rate as usize / 1000
}

/// Keeps the voiced windows after resemblyzer's smoothing of `flags`: a
/// moving average over `vad_moving_average_width` windows rounded half to
/// even, then a dilation by `vad_max_silence_windows` on each side.
pub fn smooth_voice_flags(flags: &[bool], config: &SpeakerEncoderConfig) -> Vec<bool> {
    let width = config.vad_moving_average_width;
    let before = (width - 1) / 2;
    let n = flags.len();
    let averaged: Vec<bool> = (0..n)
        .map(|i| {
            let lo = i.saturating_sub(before);
            let hi = (i + width - before).min(n);
            let voiced = flags[lo..hi].iter().filter(|&&f| f).count();
            // np.round(voiced / width): exactly half rounds to 0.
            2 * voiced > width
        })
        .collect();
    let reach = config.vad_max_silence_windows / 2;
    (0..n)
        .map(|i| averaged[i.saturating_sub(reach)..(i + reach + 1).min(n)].contains(&true))
        .collect()
}

/// resemblyzer's `trim_long_silences` with the energy detector: the
/// waveform is cut to whole VAD windows and only the (smoothed) voiced
/// windows are kept.
pub fn trim_long_silences(wav: &[f32], config: &SpeakerEncoderConfig) -> Vec<f32> {
    let window = window_samples(config);
    let flags = smooth_voice_flags(&voice_flags(wav, config), config);
    wav.chunks_exact(window)
        .zip(flags)
        .filter(|(_, keep)| *keep)
        .flat_map(|(w, _)| w.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_matches_resemblyzer() {
        // Expected values from resemblyzer's moving_average + round +
        // binary_dilation(np.ones(7)) on the same flags.
        let cfg = SpeakerEncoderConfig::resemblyzer();
        let mut flags = vec![false; 30];
        for f in &mut flags[10..14] {
            *f = true; // 4 voiced: the average reaches 0.5 at most, rounds to 0
        }
        assert!(smooth_voice_flags(&flags, &cfg).iter().all(|&f| !f));
        flags[14] = true; // 5 voiced: the averages of windows 10..=13 see all five
        let got = smooth_voice_flags(&flags, &cfg);
        let want: Vec<bool> = (0..30).map(|i| (7..=16).contains(&i)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn volume_is_only_raised() {
        let quiet = vec![0.001f32; 100];
        let raised = normalize_volume(&quiet, -30.0, true);
        let db = 20.0 * f64::from(raised[0]).log10();
        assert!((db + 30.0).abs() < 1e-4, "{db}");
        let loud = vec![0.5f32; 100];
        assert_eq!(normalize_volume(&loud, -30.0, true), loud);
        assert_eq!(normalize_volume(&[0.0; 10], -30.0, true), [0.0; 10]);
    }

    #[test]
    fn long_pauses_are_shortened() {
        let cfg = SpeakerEncoderConfig::resemblyzer();
        let sr = 16_000usize;
        let tone = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| 0.3 * (i as f32 * 0.07).sin())
                .collect::<Vec<_>>()
        };
        // 1 s tone, 2 s of silence, 1 s tone.
        let mut wav = tone(sr);
        wav.extend(vec![0.0; 2 * sr]);
        wav.extend(tone(sr));
        let out = trim_long_silences(&wav, &cfg);
        // The pause keeps at most 2 * 3 dilated + 3 averaged windows per side.
        let kept_silence = out.iter().filter(|&&s| s == 0.0).count();
        assert!(kept_silence <= 12 * 480, "{kept_silence}");
        assert!(out.len() >= 2 * sr - 2 * 480, "{}", out.len());
    }
}
