//! The Mimi codec: waveform <-> codes (batch, non-streaming).

use mlx_rs::macros::ModuleParameters;
use mlx_rs::{Array, Dtype};

use super::config::MimiConfig;
use super::conv::{CausalConv1d, CausalConvTranspose1d, ConvPadMode};
use super::error::CodecError;
use super::quantizer::SplitResidualVq;
use super::seanet::{SeanetDecoder, SeanetEncoder};
use super::transformer::MimiTransformer;

/// Mimi: SEANet encoder -> transformer -> downsample -> split RVQ, and back.
///
/// All weights and computation are fp32. Parameter names (what
/// `parameters().flatten()` lists) are this crate's own; the loaders in
/// [`super::load`] map kyutai and transformers checkpoints onto them.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Mimi {
    /// SEANet encoder.
    #[param]
    pub encoder: SeanetEncoder,
    /// Transformer at the SEANet frame rate, encoder side.
    #[param]
    pub encoder_transformer: MimiTransformer,
    /// SEANet rate -> frame rate (dense strided conv, replicate padding).
    #[param]
    pub downsample: Option<CausalConv1d>,
    /// Split RVQ.
    #[param]
    pub quantizer: SplitResidualVq,
    /// Frame rate -> SEANet rate (grouped conv-transpose).
    #[param]
    pub upsample: Option<CausalConvTranspose1d>,
    /// Transformer at the SEANet frame rate, decoder side.
    #[param]
    pub decoder_transformer: MimiTransformer,
    /// SEANet decoder.
    #[param]
    pub decoder: SeanetDecoder,
    /// The configuration this model was built from.
    pub config: MimiConfig,
    num_codebooks: i32,
}

impl Mimi {
    /// Builds a Mimi with random weights (load a checkpoint with
    /// [`Mimi::load`] and friends for real use).
    pub fn new(config: MimiConfig) -> Result<Self, CodecError> {
        config.validate()?;
        let d = config.dimension;
        let (downsample, upsample) = match &config.resample {
            Some(r) => (
                Some(CausalConv1d::new(
                    d,
                    d,
                    r.kernel_size,
                    r.stride,
                    1,
                    1,
                    false,
                    ConvPadMode::Replicate,
                )?),
                Some(CausalConvTranspose1d::new(
                    d,
                    d,
                    r.kernel_size,
                    r.stride,
                    r.upsample_groups,
                    false,
                )?),
            ),
            None => (None, None),
        };
        Ok(Mimi {
            encoder: SeanetEncoder::new(&config)?,
            encoder_transformer: MimiTransformer::new(&config.transformer)?,
            downsample,
            quantizer: SplitResidualVq::new(&config)?,
            upsample,
            decoder_transformer: MimiTransformer::new(&config.transformer)?,
            decoder: SeanetDecoder::new(&config)?,
            num_codebooks: config.num_codebooks,
            config,
        })
    }

    /// Samples per codec frame (1920 for Mimi).
    pub fn hop_length(&self) -> usize {
        self.config.hop_length() as usize
    }

    /// Sample rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    /// Number of codebooks `encode` produces.
    pub fn num_codebooks(&self) -> usize {
        self.num_codebooks as usize
    }

    /// Sets the number of codebooks `encode` produces (1 semantic + `n - 1`
    /// acoustic); CSM uses 32.
    pub fn set_num_codebooks(&mut self, n: usize) -> Result<(), CodecError> {
        let max = self.quantizer.max_codebooks() as usize;
        let min = self.quantizer.rvq_first.num_codebooks() as usize;
        if n < min || n > max {
            return Err(CodecError::Input {
                message: format!("num_codebooks must be between {min} and {max}, got {n}"),
            });
        }
        self.num_codebooks = n as i32;
        Ok(())
    }

    /// Unquantized latent at the frame rate.
    ///
    /// # Shapes
    /// `wav: [B, 1, N]` -> `[B, ceil(N / hop), dimension]`
    pub fn encode_to_latent(&self, wav: &Array) -> Result<Array, CodecError> {
        let shape = wav.shape();
        if shape.len() != 3 || shape[1] != self.config.channels || shape[2] < 1 {
            return Err(CodecError::Input {
                message: format!(
                    "encode expects a waveform [batch, {}, samples > 0], got {shape:?}",
                    self.config.channels
                ),
            });
        }
        // [B, 1, N] -> [B, N, 1]
        let x = wav.as_dtype(Dtype::Float32)?.transpose_axes(&[0, 2, 1])?;
        let x = self.encoder.forward(&x)?; // [B, T25, D]
        let x = self.encoder_transformer.forward(&x)?;
        Ok(match &self.downsample {
            Some(down) => down.forward(&x)?, // [B, T, D]
            None => x,
        })
    }

    /// Encodes a waveform into codes with [`Mimi::num_codebooks`] codebooks.
    ///
    /// # Shapes
    /// `wav: [B, 1, N]` (float) -> codes `[B, K, ceil(N / hop)]` (int32)
    pub fn encode(&mut self, wav: &Array) -> Result<Array, CodecError> {
        let latent = self.encode_to_latent(wav)?;
        Ok(self
            .quantizer
            .encode(&latent, self.num_codebooks)?
            .contiguous()?)
    }

    /// Decodes codes into a waveform of exactly `hop * T` samples. Any number
    /// of codebooks from 1 to the model's total may be given.
    ///
    /// # Shapes
    /// `codes: [B, K, T]` (integer) -> `[B, 1, hop * T]` (float32)
    pub fn decode(&mut self, codes: &Array) -> Result<Array, CodecError> {
        let shape = codes.shape();
        let max = self.quantizer.max_codebooks();
        if shape.len() != 3 || shape[1] < 1 || shape[1] > max || shape[2] < 1 {
            return Err(CodecError::Input {
                message: format!(
                    "decode expects codes [batch, 1..={max} codebooks, frames > 0], got {shape:?}"
                ),
            });
        }
        if codes.dtype().is_float() {
            return Err(CodecError::Input {
                message: format!("decode expects integer codes, got {:?}", codes.dtype()),
            });
        }
        let codes = codes.as_dtype(Dtype::Int32)?;
        let bins = self.config.quantizer.bins;
        let out_of_range = codes
            .lt(mlx_rs::Array::from_int(0))?
            .logical_or(&codes.ge(mlx_rs::Array::from_int(bins))?)?
            .any(None)?
            .item_exact::<bool>();
        if out_of_range {
            return Err(CodecError::Input {
                message: format!("codes must lie in 0..{bins}"),
            });
        }
        let x = self.quantizer.decode(&codes)?; // [B, T, D]
        let x = match &self.upsample {
            Some(up) => up.forward(&x)?, // [B, T25, D]
            None => x,
        };
        let x = self.decoder_transformer.forward(&x)?;
        let y = self.decoder.forward(&x)?; // [B, hop * T, 1]
                                           // [B, hop * T, 1] -> [B, 1, hop * T]
        Ok(y.transpose_axes(&[0, 2, 1])?.contiguous()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{MimiQuantizerConfig, MimiResampleConfig, MimiTransformerConfig};
    use mlx_rs::random;

    /// A tiny random Mimi with the real structure (hop 16).
    pub(crate) fn tiny_config() -> MimiConfig {
        MimiConfig {
            sample_rate: 24_000,
            frame_rate: 1500.0,
            channels: 1,
            n_filters: 4,
            ratios: vec![4, 2],
            kernel_size: 7,
            residual_kernel_size: 3,
            last_kernel_size: 3,
            n_residual_layers: 1,
            dilation_base: 2,
            compress: 2,
            dimension: 16,
            transformer: MimiTransformerConfig {
                d_model: 16,
                num_heads: 2,
                num_kv_heads: 2,
                num_layers: 2,
                dim_feedforward: 32,
                context: 5,
                max_period: 10_000.0,
                layer_scale: true,
                norm_eps: 1e-5,
            },
            quantizer: MimiQuantizerConfig {
                dimension: 8,
                bins: 32,
                n_q: 4,
                n_q_semantic: 1,
                projections: true,
            },
            resample: Some(MimiResampleConfig {
                stride: 2,
                kernel_size: 4,
                upsample_groups: 16,
            }),
            num_codebooks: 4,
        }
    }

    #[test]
    fn tiny_model_lengths() {
        let cfg = tiny_config();
        let hop = cfg.hop_length() as usize;
        assert_eq!(hop, 16);
        let mut mimi = Mimi::new(cfg.clone()).unwrap();
        for n in [1usize, 15, 16, 17, 100, 160, 161, 333] {
            let wav = random::normal::<f32>(&[2, 1, n as i32], None, None, None).unwrap();
            let codes = mimi.encode(&wav).unwrap();
            let t = n.div_ceil(hop);
            assert_eq!(cfg.num_frames(n), t);
            assert_eq!(codes.shape(), &[2, 4, t as i32], "N = {n}");
            assert_eq!(codes.dtype(), Dtype::Int32);
            let audio = mimi.decode(&codes).unwrap();
            assert_eq!(audio.shape(), &[2, 1, (hop * t) as i32], "N = {n}");
        }
    }

    #[test]
    fn num_codebooks_is_configurable() {
        let mut mimi = Mimi::new(tiny_config()).unwrap();
        let wav = random::normal::<f32>(&[1, 1, 64], None, None, None).unwrap();
        let all = mimi.encode(&wav).unwrap();
        mimi.set_num_codebooks(2).unwrap();
        let two = mimi.encode(&wav).unwrap();
        assert_eq!(two.shape(), &[1, 2, 4]);
        let prefix = mlx_rs::ops::indexing::IndexOp::index(&all, (.., ..2, ..));
        assert!(two.eq_values(&prefix).unwrap());
        assert!(mimi.set_num_codebooks(0).is_err());
        assert!(mimi.set_num_codebooks(5).is_err());
        assert_eq!(mimi.decode(&two).unwrap().shape(), &[1, 1, 64]);
    }

    #[test]
    fn bad_inputs_are_rejected() {
        let mut mimi = Mimi::new(tiny_config()).unwrap();
        let wav2d = random::normal::<f32>(&[1, 64], None, None, None).unwrap();
        assert!(matches!(mimi.encode(&wav2d), Err(CodecError::Input { .. })));
        let codes = Array::from_slice(&[0i32, 40], &[1, 1, 2]);
        assert!(matches!(mimi.decode(&codes), Err(CodecError::Input { .. })));
    }

    #[test]
    fn released_config_builds_and_counts() {
        // Structure only: the released model's parameter count.
        let mimi = Mimi::new(MimiConfig::mimi_v0_1()).unwrap();
        use mlx_rs::module::ModuleParameters;
        let n: usize = mimi.parameters().flatten().values().map(|a| a.size()).sum();
        // 96,151,393 elements in the kyutai file, minus the 32 x 2048
        // cluster_usage and 32 _initialized entries folded into centroids.
        assert_eq!(n, 96_151_393 - 32 * 2048 - 32);
    }

    #[test]
    fn batch_items_are_independent() {
        let mut mimi = Mimi::new(tiny_config()).unwrap();
        let wav = random::normal::<f32>(&[3, 1, 200], None, None, None).unwrap();
        let batch = mimi.encode(&wav).unwrap();
        let audio = mimi.decode(&batch).unwrap();
        for i in 0..3 {
            let one = mlx_rs::ops::indexing::IndexOp::index(&wav, i..i + 1);
            let codes = mimi.encode(&one).unwrap();
            let row = mlx_rs::ops::indexing::IndexOp::index(&batch, i..i + 1);
            assert!(codes.eq_values(&row).unwrap(), "item {i}");
            let a = mimi.decode(&codes).unwrap();
            let b = mlx_rs::ops::indexing::IndexOp::index(&audio, i..i + 1);
            let err = a
                .subtract(&b)
                .unwrap()
                .abs()
                .unwrap()
                .max(None)
                .unwrap()
                .item_exact::<f32>();
            assert!(err < 1e-5, "item {i}: {err}");
        }
    }

    #[test]
    fn released_structure_runs_end_to_end() {
        // Random weights with the real config: 4000 samples -> 3 frames of
        // 32 codes -> 5760 samples.
        let mut mimi = Mimi::new(MimiConfig::mimi_v0_1()).unwrap();
        let wav = random::normal::<f32>(&[1, 1, 4000], None, None, None)
            .unwrap()
            .multiply(Array::from_f32(0.1))
            .unwrap();
        let codes = mimi.encode(&wav).unwrap();
        assert_eq!(codes.shape(), &[1, 32, 3]);
        let audio = mimi.decode(&codes).unwrap();
        assert_eq!(audio.shape(), &[1, 1, 5760]);
    }
}
