//! Mimi hyper-parameters: the released model, transformers `config.json`
//! files and the small kyutai-format JSON configs used by tests.

use std::path::Path;

use serde_json::Value;

use super::error::CodecError;

/// Settings of the encoder and decoder transformers (identical for both).
#[derive(Debug, Clone, PartialEq)]
pub struct MimiTransformerConfig {
    /// Model width (equal to the SEANet latent dimension in Mimi).
    pub d_model: i32,
    /// Number of query heads.
    pub num_heads: i32,
    /// Number of key/value heads (equal to `num_heads` in Mimi).
    pub num_kv_heads: i32,
    /// Number of layers.
    pub num_layers: i32,
    /// Hidden width of the feed-forward block.
    pub dim_feedforward: i32,
    /// Attention window: query `q` sees key `k` iff `0 <= q - k < context`.
    pub context: i32,
    /// RoPE maximum period (`theta`).
    pub max_period: f32,
    /// Whether the layers carry `LayerScale` parameters.
    pub layer_scale: bool,
    /// LayerNorm epsilon.
    pub norm_eps: f32,
}

impl MimiTransformerConfig {
    /// Dimension of one attention head.
    pub fn head_dim(&self) -> i32 {
        self.d_model / self.num_heads
    }
}

/// Settings of the split residual vector quantizer.
#[derive(Debug, Clone, PartialEq)]
pub struct MimiQuantizerConfig {
    /// Codebook vector dimension (after `input_proj`).
    pub dimension: i32,
    /// Entries per codebook.
    pub bins: i32,
    /// Total number of codebooks (semantic + acoustic).
    pub n_q: i32,
    /// Number of semantic codebooks (the first RVQ).
    pub n_q_semantic: i32,
    /// Whether each RVQ has `input_proj`/`output_proj` (1x1 convs without
    /// bias). kyutai always has them; transformers only when the codebook
    /// dimension differs from the latent dimension.
    pub projections: bool,
}

/// Frame-rate conversion between the SEANet rate and the codec frame rate.
#[derive(Debug, Clone, PartialEq)]
pub struct MimiResampleConfig {
    /// Stride of the downsample conv (and of the upsample conv-transpose).
    pub stride: i32,
    /// Kernel size of both convs.
    pub kernel_size: i32,
    /// Groups of the upsample conv-transpose (`d_model` = depthwise).
    pub upsample_groups: i32,
}

/// Every dimension of a Mimi codec.
#[derive(Debug, Clone, PartialEq)]
pub struct MimiConfig {
    /// Audio sample rate in Hz.
    pub sample_rate: u32,
    /// Codec frame rate in Hz (12.5 for Mimi).
    pub frame_rate: f64,
    /// Audio channels (1).
    pub channels: i32,
    /// Filters of the first SEANet conv.
    pub n_filters: i32,
    /// SEANet ratios in decoder order (`[8, 6, 5, 4]`; the encoder uses them
    /// reversed).
    pub ratios: Vec<i32>,
    /// Kernel of the first SEANet conv.
    pub kernel_size: i32,
    /// Kernel of the first conv in each residual block.
    pub residual_kernel_size: i32,
    /// Kernel of the last SEANet conv.
    pub last_kernel_size: i32,
    /// Residual blocks per SEANet stage.
    pub n_residual_layers: i32,
    /// Dilation growth inside a stage (`base^j` for residual block `j`).
    pub dilation_base: i32,
    /// Channel reduction inside residual blocks.
    pub compress: i32,
    /// SEANet latent dimension (512).
    pub dimension: i32,
    /// Encoder/decoder transformer settings.
    pub transformer: MimiTransformerConfig,
    /// Quantizer settings.
    pub quantizer: MimiQuantizerConfig,
    /// Frame-rate conversion; `None` when the SEANet rate is the frame rate.
    pub resample: Option<MimiResampleConfig>,
    /// Number of codebooks `encode` produces by default (CSM uses 32).
    pub num_codebooks: i32,
}

impl MimiConfig {
    /// The released Mimi (`tokenizer-e351c8d8-checkpoint125.safetensors`,
    /// `kyutai/mimi`) as CSM uses it, with all 32 codebooks.
    pub fn mimi_v0_1() -> Self {
        MimiConfig {
            sample_rate: 24_000,
            frame_rate: 12.5,
            channels: 1,
            n_filters: 64,
            ratios: vec![8, 6, 5, 4],
            kernel_size: 7,
            residual_kernel_size: 3,
            last_kernel_size: 3,
            n_residual_layers: 1,
            dilation_base: 2,
            compress: 2,
            dimension: 512,
            transformer: MimiTransformerConfig {
                d_model: 512,
                num_heads: 8,
                num_kv_heads: 8,
                num_layers: 8,
                dim_feedforward: 2048,
                context: 250,
                max_period: 10_000.0,
                layer_scale: true,
                norm_eps: 1e-5,
            },
            quantizer: MimiQuantizerConfig {
                dimension: 256,
                bins: 2048,
                n_q: 32,
                n_q_semantic: 1,
                projections: true,
            },
            resample: Some(MimiResampleConfig {
                stride: 2,
                kernel_size: 4,
                upsample_groups: 512,
            }),
            num_codebooks: 32,
        }
    }

    /// Product of the SEANet ratios: samples per SEANet frame.
    pub fn seanet_hop(&self) -> i32 {
        self.ratios.iter().product()
    }

    /// Samples per codec frame (1920 for Mimi).
    pub fn hop_length(&self) -> i32 {
        self.seanet_hop() * self.resample.as_ref().map_or(1, |r| r.stride)
    }

    /// Number of codec frames `encode` produces for `num_samples` samples:
    /// every strided causal conv maps `L -> ceil(L / stride)`.
    pub fn num_frames(&self, num_samples: usize) -> usize {
        let mut len = num_samples;
        let mut strides: Vec<usize> = self.ratios.iter().rev().map(|&r| r as usize).collect();
        if let Some(r) = &self.resample {
            strides.push(r.stride as usize);
        }
        for s in strides {
            len = len.div_ceil(s);
        }
        len
    }

    /// Number of samples `decode` produces for `num_frames` frames.
    pub fn num_samples(&self, num_frames: usize) -> usize {
        num_frames * self.hop_length() as usize
    }

    /// Checks internal consistency; called by every constructor.
    pub fn validate(&self) -> Result<(), CodecError> {
        let bad = |message: String| Err(CodecError::Config { message });
        let t = &self.transformer;
        let q = &self.quantizer;
        if self.channels != 1 {
            return bad(format!(
                "only mono Mimi is supported (channels = {})",
                self.channels
            ));
        }
        if self.ratios.is_empty() || self.ratios.iter().any(|&r| r < 1) {
            return bad(format!("invalid SEANet ratios {:?}", self.ratios));
        }
        if t.d_model != self.dimension {
            return bad(format!(
                "transformer d_model {} differs from the latent dimension {} (projected transformers are not supported)",
                t.d_model, self.dimension
            ));
        }
        if t.num_heads < 1 || t.d_model % t.num_heads != 0 || t.head_dim() % 2 != 0 {
            return bad(format!(
                "d_model {} must split into {} heads of even size",
                t.d_model, t.num_heads
            ));
        }
        if t.num_kv_heads < 1 || t.num_heads % t.num_kv_heads != 0 {
            return bad(format!(
                "{} query heads cannot share {} key/value heads",
                t.num_heads, t.num_kv_heads
            ));
        }
        if t.context < 1 {
            return bad(format!(
                "attention context must be positive, got {}",
                t.context
            ));
        }
        if q.n_q_semantic < 1 || q.n_q_semantic >= q.n_q {
            return bad(format!(
                "need 1 <= n_q_semantic < n_q, got {} and {}",
                q.n_q_semantic, q.n_q
            ));
        }
        if !q.projections && q.dimension != self.dimension {
            return bad(format!(
                "codebook dimension {} differs from the latent dimension {} but the quantizer has no projections",
                q.dimension, self.dimension
            ));
        }
        if let Some(r) = &self.resample {
            if r.stride < 1 || r.kernel_size < r.stride {
                return bad(format!(
                    "resample kernel {} must be at least its stride {}",
                    r.kernel_size, r.stride
                ));
            }
            if r.upsample_groups < 1 || self.dimension % r.upsample_groups != 0 {
                return bad(format!(
                    "upsample groups {} must divide the latent dimension {}",
                    r.upsample_groups, self.dimension
                ));
            }
        }
        if self.num_codebooks < q.n_q_semantic || self.num_codebooks > q.n_q {
            return bad(format!(
                "num_codebooks {} must be between {} and {}",
                self.num_codebooks, q.n_q_semantic, q.n_q
            ));
        }
        Ok(())
    }

    /// Parses a transformers `MimiConfig` (`config.json` of a `MimiModel`,
    /// or the `codec_config` object inside a transformers CSM config).
    /// `num_codebooks` defaults to all of `num_quantizers`.
    pub fn from_hf_json(json: &Value) -> Result<Self, CodecError> {
        let r = JsonReader::new(json, "transformers MimiConfig");
        let use_causal = r.bool_or("use_causal_conv", true)?;
        if !use_causal {
            return Err(CodecError::Config {
                message: "non-causal Mimi (use_causal_conv = false) is not supported".into(),
            });
        }
        let pad_mode = r.str_or("pad_mode", "constant")?;
        if pad_mode != "constant" {
            return Err(CodecError::Config {
                message: format!(
                    "SEANet pad_mode {pad_mode:?} is not supported (only \"constant\")"
                ),
            });
        }
        if r.bool_or("use_conv_shortcut", false)? {
            return Err(CodecError::Config {
                message: "use_conv_shortcut = true is not supported".into(),
            });
        }
        if r.bool_or("attention_bias", false)? {
            return Err(CodecError::Config {
                message: "attention_bias = true is not supported".into(),
            });
        }
        let trim = r.f64_or("trim_right_ratio", 1.0)?;
        if trim != 1.0 {
            return Err(CodecError::Config {
                message: format!("trim_right_ratio {trim} is not supported (only 1.0)"),
            });
        }
        let act = r.str_or("hidden_act", "gelu")?;
        if act != "gelu" {
            return Err(CodecError::Config {
                message: format!("hidden_act {act:?} is not supported (only exact \"gelu\")"),
            });
        }
        let sample_rate = r.i64_or("sampling_rate", 24_000)? as u32;
        let hidden = r.i32_or("hidden_size", 512)?;
        let heads = r.i32_or("num_attention_heads", 8)?;
        let head_dim = r.i32_or("head_dim", hidden / heads.max(1))?;
        if head_dim * heads != hidden {
            return Err(CodecError::Config {
                message: format!("head_dim {head_dim} x {heads} heads != hidden_size {hidden}"),
            });
        }
        let ratios = r.i32_list_or("upsampling_ratios", &[8, 6, 5, 4])?;
        let seanet_hop: i32 = ratios.iter().product();
        let theta = match json
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
        {
            Some(v) => v.as_f64().ok_or_else(|| CodecError::Config {
                message: "rope_parameters.rope_theta is not a number".into(),
            })?,
            None => r.f64_or("rope_theta", 10_000.0)?,
        };
        // transformers: the frame size always includes the stride-2 downsample;
        // an explicit `frame_rate` (older configs) wins.
        let frame_rate = match json.get("frame_rate").or_else(|| json.get("_frame_rate")) {
            Some(Value::Number(n)) => n.as_f64().unwrap_or_default(),
            _ => sample_rate as f64 / (seanet_hop as f64 * 2.0),
        };
        let encodec_frame_rate = (sample_rate as f64 / seanet_hop as f64).ceil();
        let resample = if frame_rate != encodec_frame_rate {
            Some(MimiResampleConfig {
                stride: 2,
                kernel_size: 2 * (encodec_frame_rate / frame_rate) as i32,
                upsample_groups: r.i32_or("upsample_groups", 512)?,
            })
        } else {
            None
        };
        let vq_dim = r.i32_or("vector_quantization_hidden_dimension", 256)?;
        let codebook_dim = r.i32_or("codebook_dim", vq_dim)?;
        if codebook_dim != vq_dim {
            return Err(CodecError::Config {
                message: format!(
                    "codebook_dim {codebook_dim} differs from vector_quantization_hidden_dimension {vq_dim}"
                ),
            });
        }
        let n_q = r.i32_or("num_quantizers", 32)?;
        let cfg = MimiConfig {
            sample_rate,
            frame_rate,
            channels: r.i32_or("audio_channels", 1)?,
            n_filters: r.i32_or("num_filters", 64)?,
            ratios,
            kernel_size: r.i32_or("kernel_size", 7)?,
            residual_kernel_size: r.i32_or("residual_kernel_size", 3)?,
            last_kernel_size: r.i32_or("last_kernel_size", 3)?,
            n_residual_layers: r.i32_or("num_residual_layers", 1)?,
            dilation_base: r.i32_or("dilation_growth_rate", 2)?,
            compress: r.i32_or("compress", 2)?,
            dimension: hidden,
            transformer: MimiTransformerConfig {
                d_model: hidden,
                num_heads: heads,
                num_kv_heads: r.i32_or("num_key_value_heads", heads)?,
                num_layers: r.i32_or("num_hidden_layers", 8)?,
                dim_feedforward: r.i32_or("intermediate_size", 2048)?,
                context: r.i32_or("sliding_window", 250)?,
                max_period: theta as f32,
                layer_scale: true,
                norm_eps: r.f64_or("norm_eps", 1e-5)? as f32,
            },
            quantizer: MimiQuantizerConfig {
                dimension: vq_dim,
                bins: r.i32_or("codebook_size", 2048)?,
                n_q,
                n_q_semantic: r.i32_or("num_semantic_quantizers", 1)?,
                projections: vq_dim != hidden,
            },
            resample,
            num_codebooks: n_q,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a transformers `config.json` file (see [`MimiConfig::from_hf_json`]).
    pub fn from_hf_config_file(path: &Path) -> Result<Self, CodecError> {
        let json = read_json(path)?;
        Self::from_hf_json(&json).map_err(|e| e.in_file(path))
    }

    /// Parses a kyutai-format config: moshi's `SEANet`, transformer and
    /// quantizer keyword arguments, either nested under `"seanet"`,
    /// `"transformer"` and `"quantizer"` or flat, plus `sample_rate`,
    /// `frame_rate` and optionally `num_codebooks`. Missing keys take the
    /// released Mimi's values.
    pub fn from_kyutai_json(json: &Value) -> Result<Self, CodecError> {
        let base = MimiConfig::mimi_v0_1();
        let top = JsonReader::new(json, "kyutai Mimi config");
        let sub = |name: &'static str| match json.get(name) {
            Some(v @ Value::Object(_)) => JsonReader::new(v, name),
            _ => JsonReader::new(json, "kyutai Mimi config"),
        };
        let seanet = sub("seanet");
        let tr = sub("transformer");
        let qz = sub("quantizer");
        // Exact values (moshi's kwargs) or prefixes (descriptive strings such
        // as "ELU(alpha=1.0)" or "gelu(erf)").
        for (reader, key, want, prefix) in [
            (&seanet, "pad_mode", "constant", false),
            (&seanet, "norm", "none", false),
            (&seanet, "activation", "ELU", true),
            (&tr, "gating", "none", false),
            (&tr, "norm", "layer_norm", false),
            (&tr, "positional_embedding", "rope", false),
            (&tr, "rope", "interleaved", false),
            (&tr, "activation", "gelu", true),
        ] {
            let got = reader.str_or(key, want)?;
            let ok = if prefix {
                got.starts_with(want)
            } else {
                got == want
            };
            if !ok || (key == "activation" && want == "gelu" && got.contains("tanh")) {
                return Err(CodecError::Config {
                    message: format!(
                        "kyutai config: {key} = {got:?} is not supported (only {want:?})"
                    ),
                });
            }
        }
        if tr.bool_or("bias", false)? {
            return Err(CodecError::Config {
                message: "kyutai config: transformer linear biases are not supported".into(),
            });
        }
        if !seanet.bool_or("causal", true)? || !tr.bool_or("causal", true)? {
            return Err(CodecError::Config {
                message: "kyutai config: non-causal Mimi is not supported".into(),
            });
        }
        if !seanet.bool_or("true_skip", true)? {
            return Err(CodecError::Config {
                message: "kyutai config: true_skip = false (conv shortcut) is not supported".into(),
            });
        }
        let dimension = seanet.i32_or("dimension", base.dimension)?;
        let ratios = seanet.i32_list_or("ratios", &base.ratios)?;
        let sample_rate = top.i64_or("sample_rate", base.sample_rate as i64)? as u32;
        let frame_rate = top.f64_or("frame_rate", base.frame_rate)?;
        let seanet_hop: i32 = ratios.iter().product();
        let encoder_rate = sample_rate as f64 / seanet_hop as f64;
        let resample = if (encoder_rate - frame_rate).abs() > 1e-9 {
            let ratio = encoder_rate / frame_rate;
            let stride = ratio.round() as i32;
            if (ratio - stride as f64).abs() > 1e-9 || stride < 2 {
                return Err(CodecError::Config {
                    message: format!(
                        "kyutai config: encoder rate {encoder_rate} Hz is not an integer multiple of the frame rate {frame_rate} Hz"
                    ),
                });
            }
            // moshi: kernel 2 stride, replicate-padded dense downsample,
            // depthwise upsample; explicit sections may restate them.
            let down = sub_or_empty(json, "downsample");
            let up = sub_or_empty(json, "upsample");
            let kernel_size = down.i32_or("kernel_size", 2 * stride)?;
            for (reader, what) in [(&down, "downsample"), (&up, "upsample")] {
                if reader.i32_or("stride", stride)? != stride
                    || reader.i32_or("kernel_size", kernel_size)? != kernel_size
                    || reader.bool_or("bias", false)?
                {
                    return Err(CodecError::Config {
                        message: format!(
                            "kyutai config: {what} must be a bias-free conv with stride {stride} and kernel {kernel_size}"
                        ),
                    });
                }
            }
            if down.str_or("pad_mode", "replicate")? != "replicate"
                || down.i32_or("groups", 1)? != 1
            {
                return Err(CodecError::Config {
                    message: "kyutai config: the downsample must be a dense replicate-padded conv"
                        .into(),
                });
            }
            Some(MimiResampleConfig {
                stride,
                kernel_size,
                upsample_groups: up.i32_or("groups", dimension)?,
            })
        } else {
            None
        };
        let d_model = tr.i32_or("d_model", dimension)?;
        let heads = tr.i32_or("num_heads", base.transformer.num_heads)?;
        let kv_repeat = tr.i32_or("kv_repeat", 1)?;
        if heads < 1 || tr.i32_or("head_dim", d_model / heads.max(1))? * heads != d_model {
            return Err(CodecError::Config {
                message: format!("kyutai config: head_dim x {heads} heads != d_model {d_model}"),
            });
        }
        let layer_scale = match json.get("transformer").unwrap_or(json).get("layer_scale") {
            None => true,
            Some(Value::Null) => false,
            Some(Value::Number(_)) => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(CodecError::Config {
                    message: format!(
                        "kyutai config: layer_scale = {other} is not a number, boolean or null"
                    ),
                })
            }
        };
        let n_q = qz.i32_or("n_q", base.quantizer.n_q)?;
        let cfg = MimiConfig {
            sample_rate,
            frame_rate,
            channels: seanet.i32_or("channels", 1)?,
            n_filters: seanet.i32_or("n_filters", base.n_filters)?,
            ratios,
            kernel_size: seanet.i32_or("kernel_size", base.kernel_size)?,
            residual_kernel_size: seanet
                .i32_or("residual_kernel_size", base.residual_kernel_size)?,
            last_kernel_size: seanet.i32_or("last_kernel_size", base.last_kernel_size)?,
            n_residual_layers: seanet.i32_or("n_residual_layers", base.n_residual_layers)?,
            dilation_base: seanet.i32_or("dilation_base", base.dilation_base)?,
            compress: seanet.i32_or("compress", base.compress)?,
            dimension,
            transformer: MimiTransformerConfig {
                d_model,
                num_heads: heads,
                num_kv_heads: heads / kv_repeat.max(1),
                num_layers: tr.i32_or("num_layers", base.transformer.num_layers)?,
                dim_feedforward: tr.i32_or("dim_feedforward", base.transformer.dim_feedforward)?,
                context: tr.i32_or("context", base.transformer.context)?,
                max_period: tr.f64_or("max_period", 10_000.0)? as f32,
                layer_scale,
                norm_eps: tr.f64_or("norm_eps", 1e-5)? as f32,
            },
            quantizer: MimiQuantizerConfig {
                dimension: qz.i32_or("dimension", base.quantizer.dimension)?,
                bins: qz.i32_or("bins", base.quantizer.bins)?,
                n_q,
                n_q_semantic: qz.i32_or("n_q_semantic", 1)?,
                projections: true,
            },
            resample,
            num_codebooks: top.i32_or("num_codebooks", n_q)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a kyutai-format JSON config file (see
    /// [`MimiConfig::from_kyutai_json`]).
    pub fn from_kyutai_config_file(path: &Path) -> Result<Self, CodecError> {
        let json = read_json(path)?;
        Self::from_kyutai_json(&json).map_err(|e| e.in_file(path))
    }
}

/// A reader over the object `json[name]`, or over an empty object.
fn sub_or_empty<'a>(json: &'a Value, name: &'a str) -> JsonReader<'a> {
    static EMPTY: Value = Value::Null;
    match json.get(name) {
        Some(v @ Value::Object(_)) => JsonReader::new(v, name),
        _ => JsonReader::new(&EMPTY, name),
    }
}

/// Reads and parses a JSON file.
pub(crate) fn read_json(path: &Path) -> Result<Value, CodecError> {
    let text = std::fs::read_to_string(path).map_err(|source| CodecError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| CodecError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Typed access to optional JSON keys with defaults and clear errors.
struct JsonReader<'a> {
    json: &'a Value,
    what: &'a str,
}

impl<'a> JsonReader<'a> {
    fn new(json: &'a Value, what: &'a str) -> Self {
        JsonReader { json, what }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn err(&self, key: &str, want: &str, got: &Value) -> CodecError {
        CodecError::Config {
            message: format!("{}: `{key}` should be {want}, found {got}", self.what),
        }
    }

    fn i64_or(&self, key: &str, default: i64) -> Result<i64, CodecError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .ok_or_else(|| self.err(key, "an integer", v)),
        }
    }

    fn i32_or(&self, key: &str, default: i32) -> Result<i32, CodecError> {
        let v = self.i64_or(key, default as i64)?;
        i32::try_from(v).map_err(|_| self.err(key, "a 32-bit integer", &Value::from(v)))
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64, CodecError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.err(key, "a number", v)),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, CodecError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, "a boolean", v)),
        }
    }

    fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str, CodecError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.err(key, "a string", v)),
        }
    }

    fn i32_list_or(&self, key: &str, default: &[i32]) -> Result<Vec<i32>, CodecError> {
        match self.get(key) {
            None => Ok(default.to_vec()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_i64()
                        .and_then(|i| i32::try_from(i).ok())
                        .ok_or_else(|| self.err(key, "a list of integers", v))
                })
                .collect(),
            Some(v) => Err(self.err(key, "a list of integers", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_mimi_lengths() {
        let c = MimiConfig::mimi_v0_1();
        c.validate().unwrap();
        assert_eq!(c.hop_length(), 1920);
        assert_eq!(c.num_frames(24_000), 13);
        assert_eq!(c.num_frames(1920), 1);
        assert_eq!(c.num_frames(1921), 2);
        assert_eq!(c.num_frames(1), 1);
        assert_eq!(c.num_frames(0), 0);
        assert_eq!(c.num_frames(19_200), 10);
        assert_eq!(c.num_samples(13), 24_960);
        for n in [
            1usize, 959, 960, 961, 1919, 1920, 3839, 3840, 3841, 24_000, 48_123,
        ] {
            assert_eq!(c.num_frames(n), n.div_ceil(1920), "N = {n}");
        }
    }

    #[test]
    fn hf_default_config_is_released_mimi() {
        let json = serde_json::json!({
            "model_type": "mimi",
            "sampling_rate": 24000,
            "frame_rate": 12.5,
            "upsampling_ratios": [8, 6, 5, 4],
            "rope_theta": 10000.0,
        });
        let c = MimiConfig::from_hf_json(&json).unwrap();
        assert_eq!(c, MimiConfig::mimi_v0_1());
        // Newer transformers: no frame_rate, rope_parameters.
        let json = serde_json::json!({
            "model_type": "mimi",
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        });
        assert_eq!(
            MimiConfig::from_hf_json(&json).unwrap(),
            MimiConfig::mimi_v0_1()
        );
    }

    #[test]
    fn hf_tiny_config() {
        let json = serde_json::json!({
            "sampling_rate": 24000,
            "hidden_size": 32,
            "num_filters": 8,
            "upsampling_ratios": [4, 2],
            "codebook_size": 64,
            "codebook_dim": 64,
            "vector_quantization_hidden_dimension": 64,
            "num_quantizers": 4,
            "upsample_groups": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "sliding_window": 4,
            "intermediate_size": 64,
        });
        let c = MimiConfig::from_hf_json(&json).unwrap();
        assert_eq!(c.frame_rate, 1500.0);
        assert_eq!(
            c.resample,
            Some(MimiResampleConfig {
                stride: 2,
                kernel_size: 4,
                upsample_groups: 32
            })
        );
        assert!(c.quantizer.projections);
        assert_eq!(c.hop_length(), 16);
        assert_eq!(c.transformer.context, 4);
    }

    #[test]
    fn kyutai_nested_config() {
        let json = serde_json::json!({
            "sample_rate": 24000,
            "frame_rate": 1500.0,
            "seanet": {"dimension": 32, "n_filters": 8, "ratios": [4, 2], "channels": 1},
            "transformer": {"d_model": 32, "num_heads": 2, "num_layers": 2,
                            "dim_feedforward": 64, "context": 5, "layer_scale": 0.01,
                            "max_period": 10000},
            "quantizer": {"dimension": 16, "n_q": 4, "bins": 64},
        });
        let c = MimiConfig::from_kyutai_json(&json).unwrap();
        assert_eq!(c.hop_length(), 16);
        assert_eq!(c.resample.as_ref().unwrap().kernel_size, 4);
        assert_eq!(c.num_codebooks, 4);
        assert!(c.transformer.layer_scale);
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/mimi_tiny_kyutai_config.json");
        if path.is_file() {
            let c = MimiConfig::from_kyutai_config_file(&path).unwrap();
            assert_eq!(c.hop_length(), 16);
            assert_eq!(c.quantizer.n_q, 8);
            assert_eq!(c.transformer.num_heads, 4);
            assert_eq!(c.resample.as_ref().unwrap().upsample_groups, 32);
        }
        let bad = serde_json::json!({"seanet": {"pad_mode": "reflect"}});
        assert!(MimiConfig::from_kyutai_json(&bad).is_err());
    }
}
