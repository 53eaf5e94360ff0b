//! The log-mel frontend: 16 kHz mono -> `[frames, n_mels]` log-mel features,
//! as openai-whisper's `log_mel_spectrogram` and transformers'
//! `WhisperFeatureExtractor` compute them.
//!
//! STFT with `n_fft = 400`, hop 160, a periodic Hann window, reflect padding
//! of 200 samples on both sides (`torch.stft(center=True)`), the last frame
//! dropped; power spectrum; slaney-scale, slaney-normalised triangular mel
//! filters from 0 to 8 kHz (librosa's `filters.mel`, the same numbers as
//! openai-whisper's `mel_filters.npz`); `log10(max(x, 1e-10))`, floored at
//! `max - 8` over the whole input, then `(x + 4) / 4`.

use std::path::Path;

use mlx_rs::{ops, Array};

use super::config::{HOP_LENGTH, N_FFT, N_FRAMES, SAMPLE_RATE};
use super::error::WhisperError;

/// Frames sent through the FFT at once (bounds memory on long recordings).
const CHUNK_FRAMES: usize = 6000;

/// Log-mel features of a whole recording, frame-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMel {
    /// Mel bins per frame.
    pub n_mels: usize,
    /// `[frames, n_mels]`, row-major.
    pub data: Vec<f32>,
}

impl LogMel {
    /// Number of 10 ms frames.
    pub fn frames(&self) -> usize {
        self.data.len() / self.n_mels.max(1)
    }

    /// Frames `start..start + len` (clipped to the end), zero-padded to
    /// [`N_FRAMES`] as openai-whisper's `pad_or_trim` does (zeros, not the
    /// log floor), ready for the encoder.
    ///
    /// # Shapes
    /// -> `[1, 3000, n_mels]` f32
    pub fn window(&self, start: usize, len: usize) -> Array {
        let end = (start + len.min(N_FRAMES)).min(self.frames());
        let start = start.min(end);
        let mut out = vec![0f32; N_FRAMES * self.n_mels];
        let src = &self.data[start * self.n_mels..end * self.n_mels];
        out[..src.len()].copy_from_slice(src);
        Array::from_slice(&out, &[1, N_FRAMES as i32, self.n_mels as i32])
    }

    /// All frames as an array.
    ///
    /// # Shapes
    /// -> `[frames, n_mels]` f32
    pub fn to_array(&self) -> Array {
        Array::from_slice(&self.data, &[self.frames() as i32, self.n_mels as i32])
    }
}

/// Slaney mel scale (librosa `hz_to_mel(htk=False)`).
fn hz_to_mel(f: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// Triangular slaney-normalised mel filters from 0 Hz to 8 kHz.
///
/// # Shapes
/// -> `[n_mels, N_FFT / 2 + 1]`, row-major
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let n_freqs = N_FFT / 2 + 1;
    let nyquist = f64::from(SAMPLE_RATE) / 2.0;
    let fft_freqs: Vec<f64> = (0..n_freqs)
        .map(|i| nyquist * i as f64 / (n_freqs - 1) as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(nyquist));
    let edges: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = vec![0f32; n_mels * n_freqs];
    for m in 0..n_mels {
        let (left, center, right) = (edges[m], edges[m + 1], edges[m + 2]);
        let norm = 2.0 / (right - left);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let up = (f - left) / (center - left);
            let down = (right - f) / (right - center);
            out[m * n_freqs + k] = (up.min(down).max(0.0) * norm) as f32;
        }
    }
    out
}

/// Log-mel features of `audio` (16 kHz mono) followed by `padding` zero
/// samples: `(audio.len() + padding) / 160` frames.
///
/// transformers' short-form features are `padding = 480000 - len`;
/// openai-whisper's long-form loop uses `padding = 480000` and never reads
/// the padded frames.
pub fn log_mel_spectrogram(
    audio: &[f32],
    n_mels: usize,
    padding: usize,
) -> Result<LogMel, WhisperError> {
    let n = audio.len() + padding;
    if n <= N_FFT / 2 {
        return Err(WhisperError::Input(format!(
            "{n} samples are too few for a {N_FFT}-point STFT"
        )));
    }
    let frames = n / HOP_LENGTH;
    // Reflect padding of n_fft / 2 on both sides of the zero-padded signal.
    let half = N_FFT / 2;
    let sample = |i: usize| if i < audio.len() { audio[i] } else { 0.0 };
    let mut signal = Vec::with_capacity(n + 2 * half);
    signal.extend((1..=half).rev().map(sample));
    signal.extend((0..n).map(sample));
    signal.extend((n - 1 - half..n - 1).rev().map(sample));
    let window: Vec<f32> = (0..N_FFT)
        .map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos()) as f32)
        .collect();
    let n_freqs = (N_FFT / 2 + 1) as i32;
    let filters = Array::from_slice(&mel_filters(n_mels), &[n_mels as i32, n_freqs]).transpose()?; // [201, n_mels]

    let mut data = Vec::with_capacity(frames * n_mels);
    let mut max = f32::NEG_INFINITY;
    let mut start = 0;
    while start < frames {
        let count = CHUNK_FRAMES.min(frames - start);
        let mut buf = Vec::with_capacity(count * N_FFT);
        for t in start..start + count {
            let s = &signal[t * HOP_LENGTH..t * HOP_LENGTH + N_FFT];
            buf.extend(s.iter().zip(&window).map(|(x, w)| x * w));
        }
        let x = Array::from_slice(&buf, &[count as i32, N_FFT as i32]);
        let spec = mlx_rs::fft::rfft(&x, N_FFT as i32, -1)?; // [count, 201] complex
        let power = spec.abs()?.square()?; // [count, 201]
        let mel = ops::matmul(&power, &filters)?; // [count, n_mels]
        let log = ops::maximum(&mel, Array::from_f32(1e-10))?.log10()?;
        let chunk_max = log.max(None)?.item_cast::<f32>();
        max = max.max(chunk_max);
        data.extend_from_slice(log.as_slice::<f32>());
        start += count;
    }
    let floor = max - 8.0;
    for v in &mut data {
        *v = (v.max(floor) + 4.0) / 4.0;
    }
    Ok(LogMel { n_mels, data })
}

/// Reads an audio file and returns it mono at 16 kHz.
pub fn load_16k(path: &Path) -> Result<Vec<f32>, WhisperError> {
    let audio = crate::data::audio::read_wav(path)?;
    Ok(crate::data::audio::resample(
        &audio.to_mono(),
        audio.sample_rate,
        SAMPLE_RATE,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_scale_round_trips_and_filters_cover_the_band() {
        for f in [0.0, 300.0, 999.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(f)) - f).abs() < 1e-9);
        }
        let f = mel_filters(80);
        assert_eq!(f.len(), 80 * 201);
        // Every filter has some weight; the area of each is ~2/width * width/2 = 1 per Hz step.
        for m in 0..80 {
            assert!(
                f[m * 201..(m + 1) * 201].iter().any(|&v| v > 0.0),
                "filter {m} empty"
            );
        }
    }

    #[test]
    fn frame_count_and_window_padding() {
        let audio: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let mel = log_mel_spectrogram(&audio, 80, 0).unwrap();
        assert_eq!(mel.frames(), 100);
        let w = mel.window(90, 3000);
        assert_eq!(w.shape(), &[1, 3000, 80]);
        let v = w.as_slice::<f32>();
        assert_eq!(&v[..800], &mel.data[90 * 80..]);
        assert!(v[800..].iter().all(|&x| x == 0.0));
        // Floor at max - 8 (after the (x + 4) / 4 scaling: 2 below the max).
        let (lo, hi) = mel
            .data
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(hi - lo <= 2.0 + 1e-6);
    }
}
