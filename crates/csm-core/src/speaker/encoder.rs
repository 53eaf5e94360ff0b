//! The network (`VoiceEncoder` of resemblyzer's `voice_encoder.py`), the
//! partial windows and the utterance and speaker embeddings.

use std::ops::Range;
use std::path::Path;

use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::Param;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, random, Array};

use super::mel::MelSpectrogram;
use super::preprocess::preprocess;
use super::{SpeakerEncoderConfig, SpeakerError};
use crate::data::audio::read_wav;

fn uniform(bound: f32, shape: &[i32]) -> Result<Param<Array>, Exception> {
    Ok(Param::new(random::uniform::<_, f32>(
        -bound, bound, shape, None,
    )?))
}

/// One LSTM layer in PyTorch's layout: gates `i, f, g, o` stacked in rows.
#[derive(Debug, Clone, ModuleParameters)]
pub struct LstmLayer {
    /// `[4 H, in]`.
    #[param]
    pub weight_ih: Param<Array>,
    /// `[4 H, H]`.
    #[param]
    pub weight_hh: Param<Array>,
    /// `[4 H]`.
    #[param]
    pub bias_ih: Param<Array>,
    /// `[4 H]`.
    #[param]
    pub bias_hh: Param<Array>,
}

impl LstmLayer {
    fn new(input: i32, hidden: i32) -> Result<Self, Exception> {
        let bound = 1.0 / (hidden as f32).sqrt();
        Ok(LstmLayer {
            weight_ih: uniform(bound, &[4 * hidden, input])?,
            weight_hh: uniform(bound, &[4 * hidden, hidden])?,
            bias_ih: uniform(bound, &[4 * hidden])?,
            bias_hh: uniform(bound, &[4 * hidden])?,
        })
    }

    /// Runs the sequence from a zero state.
    ///
    /// # Shapes
    /// `x: [B, T, in]` -> every hidden state `[B, T, H]`
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let steps = x.shape()[1];
        let bias = self.bias_ih.add(&*self.bias_hh)?;
        let input_gates = ops::matmul(x, self.weight_ih.t())?.add(&bias)?;
        let recurrent = self.weight_hh.t();
        let mut state: Option<(Array, Array)> = None;
        let mut outputs = Vec::with_capacity(steps as usize);
        for t in 0..steps {
            let mut gates = input_gates.index((.., t, ..));
            if let Some((h, _)) = &state {
                gates = gates.add(&ops::matmul(h, &recurrent)?)?;
            }
            let parts = gates.split_equal(4, -1)?;
            let input = ops::sigmoid(&parts[0])?;
            let forget = ops::sigmoid(&parts[1])?;
            let cell_in = ops::tanh(&parts[2])?;
            let output = ops::sigmoid(&parts[3])?;
            let c = match &state {
                Some((_, c)) => forget.multiply(c)?.add(&input.multiply(&cell_in)?)?,
                None => input.multiply(&cell_in)?,
            };
            let h = output.multiply(&ops::tanh(&c)?)?;
            outputs.push(h.clone());
            state = Some((h, c));
        }
        ops::stack(&outputs, 1)
    }
}

/// `Linear(in, out)` with PyTorch's names.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Linear {
    /// `[out, in]`.
    #[param]
    pub weight: Param<Array>,
    /// `[out]`.
    #[param]
    pub bias: Param<Array>,
}

/// Where resemblyzer cuts partial windows: `rate` windows a second, and the
/// last window kept only if the audio covers `min_coverage` of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartialOptions {
    /// Partial windows per second (resemblyzer: 1.3).
    pub rate: f64,
    /// Fraction of the last window the audio must cover (resemblyzer: 0.75).
    pub min_coverage: f64,
}

impl Default for PartialOptions {
    fn default() -> Self {
        PartialOptions {
            rate: 1.3,
            min_coverage: 0.75,
        }
    }
}

/// Mel-frame ranges of the partial windows of `n_samples` samples, as
/// resemblyzer's `compute_partial_slices` (waveform ranges are these times
/// the hop). Always at least one; ranges may run past the audio, which is
/// then padded with zeros.
pub fn partial_slices(
    n_samples: usize,
    config: &SpeakerEncoderConfig,
    options: PartialOptions,
) -> Vec<Range<usize>> {
    let hop = config.hop_samples;
    let window = config.partial_frames;
    let n_frames = (n_samples + 1).div_ceil(hop);
    let frame_step =
        ((f64::from(config.sample_rate) / options.rate) / hop as f64).round_ties_even() as usize;
    let frame_step = frame_step.clamp(1, window);
    let steps = (n_frames + frame_step + 1).saturating_sub(window).max(1);
    let mut slices: Vec<Range<usize>> = (0..steps)
        .step_by(frame_step)
        .map(|i| i..i + window)
        .collect();
    let last = &slices[slices.len() - 1];
    let coverage = (n_samples as f64 - (last.start * hop) as f64) / (window * hop) as f64;
    if coverage < options.min_coverage && slices.len() > 1 {
        slices.pop();
    }
    slices
}

/// An utterance's embedding and those of its partial windows.
#[derive(Debug, Clone, PartialEq)]
pub struct UtteranceEmbedding {
    /// Unit vector, `embedding_size` long.
    pub embedding: Vec<f32>,
    /// One unit vector per partial window.
    pub partials: Vec<Vec<f32>>,
    /// Mel-frame range of each partial window.
    pub slices: Vec<Range<usize>>,
}

/// resemblyzer's `VoiceEncoder`: 3-layer LSTM, linear, ReLU, L2 norm.
#[derive(Debug, Clone, ModuleParameters)]
pub struct SpeakerEncoder {
    /// LSTM layers, bottom first.
    #[param]
    pub lstm: Vec<LstmLayer>,
    /// `hidden -> embedding`.
    #[param]
    pub linear: Linear,
    /// The constants.
    pub config: SpeakerEncoderConfig,
    mel: MelSpectrogram,
}

impl SpeakerEncoder {
    /// The network with random weights.
    pub fn new(config: SpeakerEncoderConfig) -> Result<Self, Exception> {
        let hidden = config.hidden_size;
        let lstm = (0..config.num_layers)
            .map(|l| LstmLayer::new(if l == 0 { config.n_mels as i32 } else { hidden }, hidden))
            .collect::<Result<_, _>>()?;
        let bound = 1.0 / (hidden as f32).sqrt();
        let linear = Linear {
            weight: uniform(bound, &[config.embedding_size, hidden])?,
            bias: uniform(bound, &[config.embedding_size])?,
        };
        let mel = MelSpectrogram::new(&config)?;
        Ok(SpeakerEncoder {
            lstm,
            linear,
            config,
            mel,
        })
    }

    /// The mel spectrogram this encoder hears.
    ///
    /// # Shapes
    /// `wav: [L]` (16 kHz) -> `[1 + L / hop, n_mels]`
    pub fn mel(&self, wav: &[f32]) -> Result<Array, Exception> {
        self.mel.forward(wav)
    }

    /// Embeddings of a batch of partial windows (`forward` in resemblyzer).
    ///
    /// # Shapes
    /// `mels: [B, T, n_mels]` -> `[B, embedding_size]`, rows of unit norm
    pub fn forward(&self, mels: &Array) -> Result<Array, Exception> {
        let mut x = mels.clone();
        for layer in &self.lstm {
            x = layer.forward(&x)?;
            x.eval()?;
        }
        let last = x.index((.., -1, ..));
        let raw = ops::matmul(&last, self.linear.weight.t())?.add(&*self.linear.bias)?;
        let raw = ops::maximum(&raw, Array::from_f32(0.0))?;
        let norm = raw.square()?.sum_axis(-1, true)?.sqrt()?;
        raw.divide(&norm)
    }

    /// The embedding of one preprocessed 16 kHz waveform
    /// (`embed_utterance` in resemblyzer).
    ///
    /// # Errors
    /// [`SpeakerError::Input`] for an empty waveform or one whose every
    /// window embeds to zero.
    pub fn embed_utterance(
        &self,
        wav: &[f32],
        options: PartialOptions,
    ) -> Result<UtteranceEmbedding, SpeakerError> {
        if wav.is_empty() {
            return Err(SpeakerError::Input {
                what: "audio".into(),
                message: "no samples to embed (empty, or nothing voiced)".into(),
            });
        }
        let slices = partial_slices(wav.len(), &self.config, options);
        let hop = self.config.hop_samples;
        let needed = slices.last().map_or(0, |s| s.end * hop);
        let mut padded = wav.to_vec();
        if needed >= padded.len() {
            padded.resize(needed, 0.0);
        }
        let mel = self.mel(&padded)?;
        let windows: Vec<Array> = slices
            .iter()
            .map(|s| mel.index((s.start as i32..s.end as i32, ..)))
            .collect();
        let batch = ops::stack(&windows, 0)?;
        let partials = self.forward(&batch)?;
        partials.eval()?;
        let dim = self.config.embedding_size as usize;
        let flat = partials.as_slice::<f32>();
        let partials: Vec<Vec<f32>> = flat.chunks_exact(dim).map(<[f32]>::to_vec).collect();
        if partials.iter().flatten().any(|v| !v.is_finite()) {
            return Err(SpeakerError::Input {
                what: "audio".into(),
                message: "every partial window embeds to zero (silence?)".into(),
            });
        }
        let embedding = mean_embedding(&partials).ok_or_else(|| SpeakerError::Input {
            what: "audio".into(),
            message: "the partial windows cancel out".into(),
        })?;
        Ok(UtteranceEmbedding {
            embedding,
            partials,
            slices,
        })
    }

    /// Embedding of mono audio at any rate: [`preprocess`], then
    /// [`Self::embed_utterance`] with resemblyzer's partial windows.
    pub fn embed_audio(&self, samples: &[f32], sample_rate: u32) -> Result<Vec<f32>, SpeakerError> {
        let wav = preprocess(samples, sample_rate, &self.config)?;
        Ok(self
            .embed_utterance(&wav, PartialOptions::default())?
            .embedding)
    }

    /// Embedding of a WAV file (mixed to mono).
    pub fn embed_wav_file(&self, path: &Path) -> Result<Vec<f32>, SpeakerError> {
        let audio = read_wav(path)?;
        self.embed_audio(&audio.to_mono(), audio.sample_rate)
            .map_err(|e| match e {
                SpeakerError::Input { message, .. } => SpeakerError::Input {
                    what: path.display().to_string(),
                    message,
                },
                other => other,
            })
    }

    /// A speaker's embedding from several recordings: the normalised mean
    /// of their embeddings (`embed_speaker` in resemblyzer).
    pub fn embed_speaker(&self, paths: &[&Path]) -> Result<Vec<f32>, SpeakerError> {
        let embeddings = paths
            .iter()
            .map(|p| self.embed_wav_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        mean_embedding(&embeddings).ok_or_else(|| SpeakerError::Input {
            what: "speaker".into(),
            message: "no recordings to embed".into(),
        })
    }
}

/// The mean of unit vectors, L2-normalised; `None` when empty or zero.
pub fn mean_embedding(vectors: &[Vec<f32>]) -> Option<Vec<f32>> {
    let dim = vectors.first()?.len();
    let mut mean = vec![0f64; dim];
    for v in vectors {
        for (m, &x) in mean.iter_mut().zip(v) {
            *m += f64::from(x);
        }
    }
    let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
    (norm > 0.0).then(|| mean.iter().map(|m| (m / norm) as f32).collect())
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += f64::from(x) * f64::from(y);
        na += f64::from(x) * f64::from(x);
        nb += f64::from(y) * f64::from(y);
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_slices_match_resemblyzer() {
        // Values from resemblyzer's compute_partial_slices(n, 1.3, 0.75).
        let cfg = SpeakerEncoderConfig::resemblyzer();
        let starts = |n| {
            partial_slices(n, &cfg, PartialOptions::default())
                .iter()
                .map(|s| s.start)
                .collect::<Vec<_>>()
        };
        assert_eq!(starts(0), [0]);
        assert_eq!(starts(16_000), [0]);
        assert_eq!(starts(32_000), [0, 77]);
        assert_eq!(starts(48_000), [0, 77, 154]);
        assert!(partial_slices(48_000, &cfg, PartialOptions::default())
            .iter()
            .all(|s| s.len() == 160));
    }

    #[test]
    fn embeddings_are_unit_vectors() {
        let cfg = SpeakerEncoderConfig::resemblyzer();
        let encoder = SpeakerEncoder::new(cfg).unwrap();
        let wav: Vec<f32> = (0..40_000).map(|i| 0.1 * (i as f32 * 0.05).sin()).collect();
        let out = encoder
            .embed_utterance(&wav, PartialOptions::default())
            .unwrap();
        assert_eq!(out.partials.len(), out.slices.len());
        for v in out.partials.iter().chain([&out.embedding]) {
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        }
        assert!((cosine_similarity(&out.embedding, &out.embedding) - 1.0).abs() < 1e-6);
    }
}
