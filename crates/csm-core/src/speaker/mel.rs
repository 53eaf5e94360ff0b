//! Mel power spectrogram as resemblyzer computes it with librosa 0.10+
//! (`librosa.feature.melspectrogram` with its defaults): centred frames
//! padded with zeros, a periodic Hann window, `|STFT|^2`, and Slaney-style
//! mel filters with Slaney (area) normalisation from 0 Hz to Nyquist.

use mlx_rs::error::Exception;
use mlx_rs::fft::rfft;
use mlx_rs::{ops, Array};

use super::SpeakerEncoderConfig;

/// Slaney mel scale: linear below 1 kHz, logarithmic above.
fn hz_to_mel(hz: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= MIN_LOG_HZ {
        min_log_mel + (hz / MIN_LOG_HZ).ln() / logstep
    } else {
        hz / F_SP
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        MIN_LOG_HZ * (logstep * (mel - min_log_mel)).exp()
    } else {
        F_SP * mel
    }
}

/// Triangular mel filters, `[n_mels][n_fft / 2 + 1]` row-major, as
/// `librosa.filters.mel(sr, n_fft, n_mels)` (computed in f64, stored f32).
pub fn mel_filters(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_freq = n_fft / 2 + 1;
    let nyquist = f64::from(sample_rate) / 2.0;
    let fft_freqs: Vec<f64> = (0..n_freq)
        .map(|k| nyquist * k as f64 / (n_freq - 1) as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(nyquist));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = vec![0f32; n_mels * n_freq];
    for m in 0..n_mels {
        let (left, centre, right) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
        let norm = 2.0 / (right - left);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - left) / (centre - left);
            let upper = (right - f) / (right - centre);
            out[m * n_freq + k] = (lower.min(upper).max(0.0) * norm) as f32;
        }
    }
    out
}

/// The STFT window and mel filters, built once.
#[derive(Debug, Clone)]
pub struct MelSpectrogram {
    window: Vec<f64>,
    /// `[n_fft / 2 + 1, n_mels]`.
    filters: Array,
    n_fft: usize,
    hop: usize,
}

impl MelSpectrogram {
    /// The spectrogram of `config` (resemblyzer's: 400-sample window, hop
    /// 160, 40 bands at 16 kHz).
    pub fn new(config: &SpeakerEncoderConfig) -> Result<Self, Exception> {
        let n_fft = config.window_samples;
        let n_freq = n_fft / 2 + 1;
        let rows = mel_filters(config.sample_rate, n_fft, config.n_mels);
        let filters = Array::from_slice(&rows, &[config.n_mels as i32, n_freq as i32]).t();
        let window = (0..n_fft)
            .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / n_fft as f64).cos())
            .collect();
        Ok(MelSpectrogram {
            window,
            filters,
            n_fft,
            hop: config.hop_samples,
        })
    }

    /// Frames `wav` gives: `1 + len / hop`.
    pub fn frames(&self, samples: usize) -> usize {
        1 + samples / self.hop
    }

    /// Mel power spectrogram of a 16 kHz waveform.
    ///
    /// # Shapes
    /// `wav: [L]` -> `[1 + L / hop, n_mels]`
    pub fn forward(&self, wav: &[f32]) -> Result<Array, Exception> {
        let frames = self.frames(wav.len());
        let half = (self.n_fft / 2) as isize;
        let mut buf = vec![0f32; frames * self.n_fft];
        for (t, row) in buf.chunks_exact_mut(self.n_fft).enumerate() {
            let start = (t * self.hop) as isize - half;
            for (n, out) in row.iter_mut().enumerate() {
                let i = start + n as isize;
                if i >= 0 && (i as usize) < wav.len() {
                    *out = (f64::from(wav[i as usize]) * self.window[n]) as f32;
                }
            }
        }
        let frames = Array::from_slice(&buf, &[frames as i32, self.n_fft as i32]);
        let spectrum = rfft(&frames, self.n_fft as i32, -1)?;
        let magnitude = ops::abs(&spectrum)?.as_dtype(mlx_rs::Dtype::Float32)?;
        ops::matmul(&magnitude.square()?, &self.filters)
    }
}
