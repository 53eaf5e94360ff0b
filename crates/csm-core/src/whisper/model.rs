//! Whisper's encoder-decoder transformer (openai-whisper `model.py`;
//! transformers `modeling_whisper.py` for the names).
//!
//! * Encoder: two convs (k3, the second with stride 2) with exact GELU,
//!   fixed sinusoidal positions, pre-LN blocks, a final LayerNorm.
//! * Decoder: learned token and position embeddings, pre-LN blocks of
//!   causal self-attention (KV cache) and cross-attention (encoder K/V
//!   computed once per window), a final LayerNorm, logits through the
//!   token embedding (tied).
//!
//! Field names are the transformers keys without the `model.` prefix
//! (`encoder.layers.N.self_attn.q_proj.weight`, ...), so loading
//! ([`super::load`]) is a plain key match after one rename. `k_proj` has no
//! bias, as in the checkpoints. Convs are stored in MLX layout
//! `[out, k, in]`.

use mlx_rs::error::Exception;
use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::Param;
use mlx_rs::{ops, random, Array, Dtype};

use super::config::WhisperConfig;
use crate::kernels;

const LN_EPS: f32 = 1e-5;

fn rand(shape: &[i32], fan_in: i32) -> Result<Array, Exception> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    random::uniform::<_, f32>(-bound, bound, shape, None)
}

/// Affine map `x W^T + b`.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Linear {
    /// `[out, in]`.
    #[param]
    pub weight: Param<Array>,
    /// `[out]`, absent for `k_proj`.
    #[param]
    pub bias: Param<Option<Array>>,
}

impl Linear {
    fn new(d_in: i32, d_out: i32, bias: bool) -> Result<Self, Exception> {
        Ok(Linear {
            weight: Param::new(rand(&[d_out, d_in], d_in)?),
            bias: Param::new(if bias {
                Some(rand(&[d_out], d_in)?)
            } else {
                None
            }),
        })
    }

    /// # Shapes
    /// `x: [..., in]` -> `[..., out]`
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        // The crate's CPU kernels: a decoder step is one row, which the
        // BLAS would pack the whole weight for.
        let y = kernels::linear(x, &self.weight.value)?;
        match &self.bias.value {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
}

/// LayerNorm with weight and bias.
#[derive(Debug, Clone, ModuleParameters)]
pub struct LayerNorm {
    /// `[dim]`.
    #[param]
    pub weight: Param<Array>,
    /// `[dim]`.
    #[param]
    pub bias: Param<Array>,
}

impl LayerNorm {
    fn new(dim: i32) -> Result<Self, Exception> {
        Ok(LayerNorm {
            weight: Param::new(ops::ones::<f32>(&[dim])?),
            bias: Param::new(ops::zeros::<f32>(&[dim])?),
        })
    }

    /// # Shapes
    /// `x: [..., dim]` -> same
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        fast::layer_norm(x, &self.weight.value, &self.bias.value, LN_EPS)
    }
}

/// A lookup table.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Embedding {
    /// `[rows, dim]`.
    #[param]
    pub weight: Param<Array>,
}

/// Conv1d, MLX layout.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Conv1d {
    /// `[out, k, in]`.
    #[param]
    pub weight: Param<Array>,
    /// `[out]`.
    #[param]
    pub bias: Param<Array>,
    /// Stride (the padding is always 1).
    pub stride: i32,
}

impl Conv1d {
    fn new(d_in: i32, d_out: i32, stride: i32) -> Result<Self, Exception> {
        Ok(Conv1d {
            weight: Param::new(rand(&[d_out, 3, d_in], 3 * d_in)?),
            bias: Param::new(rand(&[d_out], 3 * d_in)?),
            stride,
        })
    }

    /// # Shapes
    /// `x: [B, L, in]` -> `[B, L / stride, out]`
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        ops::conv1d(x, &self.weight.value, self.stride, 1, 1, 1)?.add(&self.bias.value)
    }
}

/// Key/value history of one self-attention layer.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
}

impl KvCache {
    /// Cached positions.
    pub fn offset(&self) -> i32 {
        self.keys.as_ref().map_or(0, |k| k.shape()[2])
    }

    /// # Shapes
    /// `k, v: [B, H, L, hd]` -> `([B, H, offset + L, hd], same)`
    fn update(&mut self, k: Array, v: Array) -> Result<(Array, Array), Exception> {
        let (k, v) = match (&self.keys, &self.values) {
            (Some(pk), Some(pv)) => (
                ops::concatenate(&[pk, &k], 2)?,
                ops::concatenate(&[pv, &v], 2)?,
            ),
            _ => (k, v),
        };
        self.keys = Some(k.clone());
        self.values = Some(v.clone());
        Ok((k, v))
    }
}

/// Multi-head attention (`q`, `v`, `out` with bias, `k` without).
#[derive(Debug, Clone, ModuleParameters)]
pub struct Attention {
    /// `[D, D]`.
    #[param]
    pub q_proj: Linear,
    /// `[D, D]`, no bias.
    #[param]
    pub k_proj: Linear,
    /// `[D, D]`.
    #[param]
    pub v_proj: Linear,
    /// `[D, D]`.
    #[param]
    pub out_proj: Linear,
    /// Heads.
    pub num_heads: i32,
}

impl Attention {
    fn new(d: i32, heads: i32) -> Result<Self, Exception> {
        Ok(Attention {
            q_proj: Linear::new(d, d, true)?,
            k_proj: Linear::new(d, d, false)?,
            v_proj: Linear::new(d, d, true)?,
            out_proj: Linear::new(d, d, true)?,
            num_heads: heads,
        })
    }

    /// # Shapes
    /// `x: [B, L, D]` -> `[B, H, L, hd]`
    fn heads(&self, x: Array) -> Result<Array, Exception> {
        let (b, l, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        x.reshape(&[b, l, self.num_heads, d / self.num_heads])?
            .transpose_axes(&[0, 2, 1, 3])
    }

    /// Projects the keys and values of `x` (the encoder output for
    /// cross-attention).
    ///
    /// # Shapes
    /// `x: [B, S, D]` -> `([B, H, S, hd], [B, H, S, hd])`
    pub fn key_values(&self, x: &Array) -> Result<(Array, Array), Exception> {
        Ok((
            self.heads(self.k_proj.forward(x)?)?,
            self.heads(self.v_proj.forward(x)?)?,
        ))
    }

    /// Attention of the queries of `x` over `k`, `v`. With `want_scores`,
    /// also returns the scaled pre-softmax scores (for word timings).
    ///
    /// # Shapes
    /// `x: [B, L, D]`, `k, v: [B, H, S, hd]` -> (`[B, L, D]`, `[B, H, L, S]`)
    fn attend(
        &self,
        x: &Array,
        k: &Array,
        v: &Array,
        causal: bool,
        want_scores: bool,
    ) -> Result<(Array, Option<Array>), Exception> {
        let (b, l, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let q = self.heads(self.q_proj.forward(x)?)?; // [B, H, L, hd]
        let scale = 1.0 / ((d / self.num_heads) as f32).sqrt();
        let (o, scores) = if want_scores {
            let s = ops::matmul(&q, k.swap_axes(-1, -2)?)?.multiply(Array::from_f32(scale))?; // [B, H, L, S]
            let s = if causal && l > 1 {
                let total = k.shape()[2];
                let qpos = ops::arange::<_, i32>(total - l, total, 1)?.reshape(&[l, 1])?;
                let kpos = ops::arange::<_, i32>(0, total, 1)?.reshape(&[1, total])?;
                let mask = qpos.ge(&kpos)?;
                ops::select(&mask, &s, Array::from_f32(f32::NEG_INFINITY))?
            } else {
                s
            };
            let p =
                ops::softmax_axis(&s.as_dtype(Dtype::Float32)?, -1, None)?.as_dtype(q.dtype())?;
            (ops::matmul(&p, v)?, Some(s))
        } else if causal && l > 1 {
            let o = fast::scaled_dot_product_attention(
                &q,
                k,
                v,
                scale,
                ScaledDotProductAttentionMask::Causal,
                None::<&Array>,
            )?;
            (o, None)
        } else {
            (
                fast::scaled_dot_product_attention(&q, k, v, scale, None, None::<&Array>)?,
                None,
            )
        }; // [B, H, L, hd]
        let o = o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, l, d])?;
        Ok((self.out_proj.forward(&o)?, scores))
    }
}

/// Two-layer GELU MLP.
fn mlp(fc1: &Linear, fc2: &Linear, x: &Array) -> Result<Array, Exception> {
    fc2.forward(&mlx_rs::nn::gelu(fc1.forward(x)?)?)
}

/// One encoder block.
#[derive(Debug, Clone, ModuleParameters)]
pub struct EncoderLayer {
    /// Self-attention.
    #[param]
    pub self_attn: Attention,
    /// Norm before attention.
    #[param]
    pub self_attn_layer_norm: LayerNorm,
    /// MLP in.
    #[param]
    pub fc1: Linear,
    /// MLP out.
    #[param]
    pub fc2: Linear,
    /// Norm before the MLP.
    #[param]
    pub final_layer_norm: LayerNorm,
}

impl EncoderLayer {
    /// # Shapes
    /// `x: [B, S, D]` -> same
    fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let h = self.self_attn_layer_norm.forward(x)?;
        let (k, v) = self.self_attn.key_values(&h)?;
        let x = x.add(&self.self_attn.attend(&h, &k, &v, false, false)?.0)?;
        x.add(&mlp(
            &self.fc1,
            &self.fc2,
            &self.final_layer_norm.forward(&x)?,
        )?)
    }
}

/// The audio encoder.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Encoder {
    /// `n_mels -> D`, stride 1.
    #[param]
    pub conv1: Conv1d,
    /// `D -> D`, stride 2.
    #[param]
    pub conv2: Conv1d,
    /// Sinusoidal positions `[1500, D]` (stored in the checkpoints).
    #[param]
    pub embed_positions: Embedding,
    /// Blocks.
    #[param]
    pub layers: Vec<EncoderLayer>,
    /// Final norm.
    #[param]
    pub layer_norm: LayerNorm,
}

impl Encoder {
    /// Encodes 30 s windows of log-mel features.
    ///
    /// # Shapes
    /// `mel: [B, 3000, n_mels]` -> `[B, 1500, D]`
    pub fn forward(&self, mel: &Array) -> Result<Array, Exception> {
        let positions = &self.embed_positions.weight.value;
        let x = mlx_rs::nn::gelu(self.conv1.forward(mel)?)?; // [B, 3000, D]
        let x = mlx_rs::nn::gelu(self.conv2.forward(&x)?)?; // [B, 1500, D]
        if x.shape()[1] != positions.shape()[0] {
            return Err(Exception::custom(format!(
                "the encoder needs {} mel frames, got {}",
                2 * positions.shape()[0],
                mel.shape()[1]
            )));
        }
        let mut x = x.add(positions.as_dtype(x.dtype())?)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        self.layer_norm.forward(&x)
    }
}

/// One decoder block.
#[derive(Debug, Clone, ModuleParameters)]
pub struct DecoderLayer {
    /// Causal self-attention.
    #[param]
    pub self_attn: Attention,
    /// Norm before self-attention.
    #[param]
    pub self_attn_layer_norm: LayerNorm,
    /// Cross-attention over the encoder output.
    #[param]
    pub encoder_attn: Attention,
    /// Norm before cross-attention.
    #[param]
    pub encoder_attn_layer_norm: LayerNorm,
    /// MLP in.
    #[param]
    pub fc1: Linear,
    /// MLP out.
    #[param]
    pub fc2: Linear,
    /// Norm before the MLP.
    #[param]
    pub final_layer_norm: LayerNorm,
}

/// What the decoder keeps between steps of one window: the self-attention
/// history of every layer and the cross-attention keys/values of the
/// window's encoder output.
#[derive(Debug, Clone)]
pub struct DecoderCache {
    self_kv: Vec<KvCache>,
    cross_kv: Vec<(Array, Array)>,
}

impl DecoderCache {
    /// Tokens already decoded (the position of the next one).
    pub fn offset(&self) -> i32 {
        self.self_kv.first().map_or(0, KvCache::offset)
    }
}

/// The text decoder.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Decoder {
    /// Token embeddings `[V, D]`, also the output projection.
    #[param]
    pub embed_tokens: Embedding,
    /// Learned positions `[448, D]`.
    #[param]
    pub embed_positions: Embedding,
    /// Blocks.
    #[param]
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    #[param]
    pub layer_norm: LayerNorm,
}

impl Decoder {
    /// A cache holding the cross-attention keys/values of `audio_features`.
    ///
    /// # Shapes
    /// `audio_features: [B, 1500, D]`
    pub fn new_cache(&self, audio_features: &Array) -> Result<DecoderCache, Exception> {
        // Made contiguous once: every step reads them, and a transposed
        // view would be copied again each time (18 MB a token for tiny).
        let cross_kv = self
            .layers
            .iter()
            .map(|l| {
                let (k, v) = l.encoder_attn.key_values(audio_features)?;
                Ok((k.contiguous()?, v.contiguous()?))
            })
            .collect::<Result<Vec<_>, Exception>>()?;
        Ok(DecoderCache {
            self_kv: vec![KvCache::default(); self.layers.len()],
            cross_kv,
        })
    }

    /// Runs `tokens` (at positions `cache.offset()..`) and returns the
    /// post-norm hidden states; with `want_cross_scores`, also every
    /// layer's pre-softmax cross-attention scores.
    ///
    /// # Shapes
    /// `tokens: [B, L]` i32 -> `[B, L, D]`, scores `n_layers x [B, H, L, 1500]`
    pub fn forward(
        &self,
        tokens: &Array,
        cache: &mut DecoderCache,
        want_cross_scores: bool,
    ) -> Result<(Array, Vec<Array>), Exception> {
        let l = tokens.shape()[1];
        let offset = cache.offset();
        let max_pos = self.embed_positions.weight.value.shape()[0];
        if offset + l > max_pos {
            return Err(Exception::custom(format!(
                "decoder context is {max_pos} tokens; asked for {}",
                offset + l
            )));
        }
        let emb = self.embed_tokens.weight.value.take_axis(tokens, 0)?; // [B, L, D]
        let pos = self
            .embed_positions
            .weight
            .value
            .take_axis(ops::arange::<_, i32>(offset, offset + l, 1)?, 0)?; // [L, D]
        let mut x = emb.add(pos)?;
        let mut scores = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.self_attn_layer_norm.forward(&x)?;
            let (k, v) = layer.self_attn.key_values(&h)?;
            let (k, v) = cache.self_kv[i].update(k, v)?;
            x = x.add(&layer.self_attn.attend(&h, &k, &v, true, false)?.0)?;
            let h = layer.encoder_attn_layer_norm.forward(&x)?;
            let (ck, cv) = &cache.cross_kv[i];
            let (o, s) = layer
                .encoder_attn
                .attend(&h, ck, cv, false, want_cross_scores)?;
            scores.extend(s);
            x = x.add(&o)?;
            x = x.add(&mlp(
                &layer.fc1,
                &layer.fc2,
                &layer.final_layer_norm.forward(&x)?,
            )?)?;
        }
        Ok((self.layer_norm.forward(&x)?, scores))
    }

    /// Logits through the tied token embedding, in f32.
    ///
    /// # Shapes
    /// `hidden: [B, L, D]` -> `[B, L, V]`
    pub fn logits(&self, hidden: &Array) -> Result<Array, Exception> {
        // `[V, D]` is the layout `kernels::linear` reads in place (one
        // row a step: the BLAS would repack all 51k rows every token).
        kernels::linear(hidden, &self.embed_tokens.weight.value)?.as_dtype(Dtype::Float32)
    }
}

/// Whisper: encoder and decoder.
#[derive(Debug, Clone, ModuleParameters)]
pub struct WhisperModel {
    /// Audio encoder.
    #[param]
    pub encoder: Encoder,
    /// Text decoder.
    #[param]
    pub decoder: Decoder,
    /// Shape.
    pub config: WhisperConfig,
}

impl WhisperModel {
    /// Random weights of the right shapes (replaced by [`super::load`]).
    pub fn new(config: &WhisperConfig) -> Result<Self, Exception> {
        let d = config.d_model;
        let enc_layer = || -> Result<EncoderLayer, Exception> {
            Ok(EncoderLayer {
                self_attn: Attention::new(d, config.encoder_attention_heads)?,
                self_attn_layer_norm: LayerNorm::new(d)?,
                fc1: Linear::new(d, config.encoder_ffn_dim, true)?,
                fc2: Linear::new(config.encoder_ffn_dim, d, true)?,
                final_layer_norm: LayerNorm::new(d)?,
            })
        };
        let dec_layer = || -> Result<DecoderLayer, Exception> {
            Ok(DecoderLayer {
                self_attn: Attention::new(d, config.decoder_attention_heads)?,
                self_attn_layer_norm: LayerNorm::new(d)?,
                encoder_attn: Attention::new(d, config.decoder_attention_heads)?,
                encoder_attn_layer_norm: LayerNorm::new(d)?,
                fc1: Linear::new(d, config.decoder_ffn_dim, true)?,
                fc2: Linear::new(config.decoder_ffn_dim, d, true)?,
                final_layer_norm: LayerNorm::new(d)?,
            })
        };
        let embedding = |rows: i32| -> Result<Embedding, Exception> {
            Ok(Embedding {
                weight: Param::new(random::normal::<f32>(&[rows, d], None, None, None)?),
            })
        };
        Ok(WhisperModel {
            encoder: Encoder {
                conv1: Conv1d::new(config.num_mel_bins, d, 1)?,
                conv2: Conv1d::new(d, d, 2)?,
                embed_positions: Embedding {
                    weight: Param::new(sinusoids(config.max_source_positions, d)),
                },
                layers: (0..config.encoder_layers)
                    .map(|_| enc_layer())
                    .collect::<Result<_, _>>()?,
                layer_norm: LayerNorm::new(d)?,
            },
            decoder: Decoder {
                embed_tokens: embedding(config.vocab_size)?,
                embed_positions: embedding(config.max_target_positions)?,
                layers: (0..config.decoder_layers)
                    .map(|_| dec_layer())
                    .collect::<Result<_, _>>()?,
                layer_norm: LayerNorm::new(d)?,
            },
            config: config.clone(),
        })
    }
}

/// openai-whisper's `sinusoids(length, channels)`: `[sin | cos]` halves.
///
/// # Shapes
/// -> `[length, channels]`
pub fn sinusoids(length: i32, channels: i32) -> Array {
    let half = (channels / 2) as usize;
    let inc = 10_000f64.ln() / (half as f64 - 1.0).max(1.0);
    let mut out = Vec::with_capacity((length * channels) as usize);
    for t in 0..length {
        let row: Vec<f64> = (0..half)
            .map(|i| t as f64 * (-inc * i as f64).exp())
            .collect();
        out.extend(row.iter().map(|a| a.sin() as f32));
        out.extend(row.iter().map(|a| a.cos() as f32));
    }
    Array::from_slice(&out, &[length, channels])
}
