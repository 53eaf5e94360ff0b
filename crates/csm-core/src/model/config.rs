//! Hyperparameters of the CSM backbone, depth decoder and top-level model.
//!
//! Named constructors give the released flavors (SesameAILabs/csm
//! `models.py` `FLAVORS`: `llama-1B`, `llama-100M`); [`CsmConfig::from_json`]
//! reads either Sesame's `config.json` (`backbone_flavor`, `decoder_flavor`,
//! vocab sizes) or a transformers `CsmConfig` (`depth_decoder_config`, and
//! possibly `codec_config`, which is ignored here).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Llama-3 RoPE frequency scaling (`rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    /// Divisor applied to the low frequencies.
    pub factor: f32,
    /// Wavelengths above `original_max_position_embeddings / low_freq_factor`
    /// are fully scaled.
    pub low_freq_factor: f32,
    /// Wavelengths below `original_max_position_embeddings / high_freq_factor`
    /// are kept.
    pub high_freq_factor: f32,
    /// Context length of the unscaled model.
    pub original_max_position_embeddings: f32,
}

impl Llama3RopeScaling {
    /// The values torchtune's `Llama3ScaledRoPE` uses for both CSM stacks.
    pub fn csm() -> Self {
        Llama3RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        }
    }
}

/// One Llama-3.2 style transformer stack (the backbone or the depth decoder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Number of transformer blocks.
    pub num_layers: i32,
    /// Model width.
    pub embed_dim: i32,
    /// Query heads.
    pub num_heads: i32,
    /// Key/value heads (GQA).
    pub num_kv_heads: i32,
    /// Width of one head.
    pub head_dim: i32,
    /// SwiGLU hidden width.
    pub intermediate_dim: i32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Llama-3 frequency scaling; `None` means plain RoPE.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Longest sequence (RoPE table and KV cache size in the reference).
    pub max_seq_len: i32,
}

impl LlamaConfig {
    /// The CSM backbone (`llama-1B`): 16 layers, width 2048, 32/8 heads.
    pub fn llama_1b() -> Self {
        LlamaConfig {
            num_layers: 16,
            embed_dim: 2048,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 64,
            intermediate_dim: 8192,
            norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(Llama3RopeScaling::csm()),
            max_seq_len: 2048,
        }
    }

    /// The CSM depth decoder (`llama-100M`): 4 layers, width 1024, 8/2 heads.
    pub fn llama_100m() -> Self {
        LlamaConfig {
            num_layers: 4,
            embed_dim: 1024,
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 128,
            intermediate_dim: 8192,
            norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(Llama3RopeScaling::csm()),
            max_seq_len: 2048,
        }
    }

    /// A flavor by its name in Sesame's `config.json`.
    pub fn from_flavor(name: &str) -> Option<Self> {
        match name {
            "llama-1B" => Some(Self::llama_1b()),
            "llama-100M" => Some(Self::llama_100m()),
            _ => None,
        }
    }

    /// Per-dimension RoPE periods (`1 / inv_freq`, length `head_dim / 2`),
    /// the `freqs` argument of `mlx_rs::fast::rope`, computed in f64 and
    /// rounded to f32.
    ///
    /// With Llama-3 scaling, `inv_freq_i = theta^(-2i/hd)` is kept when its
    /// wavelength `2π/inv_freq` is below `orig / high`, divided by `factor`
    /// above `orig / low`, and blended with `s = (orig/wavelen - low) /
    /// (high - low)` in between.
    pub fn rope_periods(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let inv = (self.rope_theta as f64).powf(-2.0 * i as f64 / self.head_dim as f64);
                let inv = match &self.rope_scaling {
                    None => inv,
                    Some(s) => {
                        let (factor, low, high, orig) = (
                            s.factor as f64,
                            s.low_freq_factor as f64,
                            s.high_freq_factor as f64,
                            s.original_max_position_embeddings as f64,
                        );
                        let wavelen = 2.0 * std::f64::consts::PI / inv;
                        if wavelen < orig / high {
                            inv
                        } else if wavelen > orig / low {
                            inv / factor
                        } else {
                            let smooth = (orig / wavelen - low) / (high - low);
                            (1.0 - smooth) * inv / factor + smooth * inv
                        }
                    }
                };
                (1.0 / inv) as f32
            })
            .collect()
    }

    /// Checks the internal consistency of the numbers.
    pub fn validate(&self, what: &str) -> Result<(), String> {
        let positive = [
            ("num_layers", self.num_layers),
            ("embed_dim", self.embed_dim),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate_dim", self.intermediate_dim),
            ("max_seq_len", self.max_seq_len),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(format!("{what}: {name} must be positive, got {v}"));
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(format!(
                "{what}: num_heads ({}) must be a multiple of num_kv_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(format!("{what}: head_dim ({}) must be even", self.head_dim));
        }
        Ok(())
    }
}

/// Where a [`CsmConfig`] was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigKind {
    /// Sesame's `config.json` (`backbone_flavor`, `decoder_flavor`, ...).
    Sesame,
    /// transformers `CsmConfig` (`model_type = "csm"`, `depth_decoder_config`).
    Transformers,
}

/// The whole CSM model: backbone, depth decoder and vocabularies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsmConfig {
    /// Backbone transformer.
    pub backbone: LlamaConfig,
    /// Depth decoder transformer.
    pub decoder: LlamaConfig,
    /// Text vocabulary (Llama-3: 128256).
    pub text_vocab_size: i32,
    /// Codes per codebook including unused ids (2051).
    pub audio_vocab_size: i32,
    /// Mimi codebooks per frame (32).
    pub audio_num_codebooks: i32,
}

impl CsmConfig {
    /// Sesame CSM-1B.
    pub fn csm_1b() -> Self {
        CsmConfig {
            backbone: LlamaConfig::llama_1b(),
            decoder: LlamaConfig::llama_100m(),
            text_vocab_size: 128_256,
            audio_vocab_size: 2051,
            audio_num_codebooks: 32,
        }
    }

    /// Checks both stacks and the vocabularies.
    pub fn validate(&self) -> Result<(), String> {
        self.backbone.validate("backbone")?;
        self.decoder.validate("decoder")?;
        for (name, v) in [
            ("text_vocab_size", self.text_vocab_size),
            ("audio_vocab_size", self.audio_vocab_size),
        ] {
            if v <= 0 {
                return Err(format!("{name} must be positive, got {v}"));
            }
        }
        if self.audio_num_codebooks < 2 {
            return Err(format!(
                "audio_num_codebooks must be at least 2, got {}",
                self.audio_num_codebooks
            ));
        }
        Ok(())
    }

    /// Parses a `config.json` in either Sesame's or transformers' layout.
    ///
    /// # Errors
    /// A message naming the missing or invalid field, or saying that the
    /// layout is neither.
    pub fn from_json(json: &Value) -> Result<(Self, ConfigKind), String> {
        let config = if json.get("depth_decoder_config").is_some()
            || json.get("model_type").and_then(Value::as_str) == Some("csm")
        {
            (
                Self::from_transformers_json(json)?,
                ConfigKind::Transformers,
            )
        } else if json.get("backbone_flavor").is_some() {
            (Self::from_sesame_json(json)?, ConfigKind::Sesame)
        } else {
            let keys: Vec<&str> = json
                .as_object()
                .map(|o| o.keys().map(String::as_str).take(12).collect())
                .unwrap_or_default();
            return Err(format!(
                "neither a Sesame CSM config (backbone_flavor, decoder_flavor, ...) nor a \
                 transformers CsmConfig (depth_decoder_config); top-level keys: {keys:?}"
            ));
        };
        config.0.validate()?;
        Ok(config)
    }

    /// Sesame's `config.json`: flavors by name plus vocab sizes.
    fn from_sesame_json(json: &Value) -> Result<Self, String> {
        let flavor = |key: &str| -> Result<LlamaConfig, String> {
            let name = str_field(json, key)?;
            LlamaConfig::from_flavor(name).ok_or_else(|| {
                format!("{key} = {name:?} is not a known flavor (llama-1B, llama-100M)")
            })
        };
        Ok(CsmConfig {
            backbone: flavor("backbone_flavor")?,
            decoder: flavor("decoder_flavor")?,
            text_vocab_size: int_field(json, "text_vocab_size")?,
            audio_vocab_size: int_field(json, "audio_vocab_size")?,
            audio_num_codebooks: int_field(json, "audio_num_codebooks")?,
        })
    }

    /// transformers `CsmConfig` with its nested `depth_decoder_config`.
    fn from_transformers_json(json: &Value) -> Result<Self, String> {
        let depth = json
            .get("depth_decoder_config")
            .ok_or("transformers CsmConfig without depth_decoder_config")?;
        let backbone = llama_from_transformers(json).map_err(|e| format!("backbone: {e}"))?;
        let decoder =
            llama_from_transformers(depth).map_err(|e| format!("depth_decoder_config: {e}"))?;
        let num_codebooks = int_field(json, "num_codebooks")?;
        let audio_vocab_size = int_field(json, "vocab_size")?;
        for (key, v) in [
            ("num_codebooks", num_codebooks),
            ("vocab_size", audio_vocab_size),
        ] {
            if let Some(d) = opt_int_field(depth, key)? {
                if d != v {
                    return Err(format!(
                        "depth_decoder_config.{key} = {d} differs from the backbone's {v}"
                    ));
                }
            }
        }
        if let Some(d) = opt_int_field(depth, "backbone_hidden_size")? {
            if d != backbone.embed_dim {
                return Err(format!(
                    "depth_decoder_config.backbone_hidden_size = {d} differs from hidden_size = {}",
                    backbone.embed_dim
                ));
            }
        }
        Ok(CsmConfig {
            backbone,
            decoder,
            text_vocab_size: int_field(json, "text_vocab_size")?,
            audio_vocab_size,
            audio_num_codebooks: num_codebooks,
        })
    }

    /// Sesame's `config.json` for this model, or `None` when a stack is not
    /// one of the released flavors (Sesame's layout can only name flavors).
    pub fn to_sesame_json(&self) -> Option<Value> {
        let name = |c: &LlamaConfig| {
            if *c == LlamaConfig::llama_1b() {
                Some("llama-1B")
            } else if *c == LlamaConfig::llama_100m() {
                Some("llama-100M")
            } else {
                None
            }
        };
        Some(serde_json::json!({
            "backbone_flavor": name(&self.backbone)?,
            "decoder_flavor": name(&self.decoder)?,
            "text_vocab_size": self.text_vocab_size,
            "audio_vocab_size": self.audio_vocab_size,
            "audio_num_codebooks": self.audio_num_codebooks,
        }))
    }
}

/// One Llama stack from a transformers (sub-)config.
fn llama_from_transformers(json: &Value) -> Result<LlamaConfig, String> {
    let embed_dim = int_field(json, "hidden_size")?;
    let num_heads = int_field(json, "num_attention_heads")?;
    let num_kv_heads = opt_int_field(json, "num_key_value_heads")?.unwrap_or(num_heads);
    let head_dim = match opt_int_field(json, "head_dim")? {
        Some(h) => h,
        None if num_heads > 0 && embed_dim % num_heads == 0 => embed_dim / num_heads,
        None => return Err("head_dim missing and hidden_size not divisible by heads".into()),
    };
    if let Some(act) = json.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            return Err(format!("hidden_act = {act:?}; only silu is supported"));
        }
    }
    for flag in ["attention_bias", "mlp_bias"] {
        if json.get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(format!(
                "{flag} = true is not supported (CSM has no biases)"
            ));
        }
    }
    // transformers < 5 keeps `rope_theta` + `rope_scaling`; 5.x nests both in
    // `rope_parameters`.
    let rope = json
        .get("rope_parameters")
        .filter(|v| !v.is_null())
        .or_else(|| json.get("rope_scaling").filter(|v| !v.is_null()));
    let rope_theta = match json.get("rope_theta").and_then(Value::as_f64) {
        Some(t) => t as f32,
        None => rope
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
            .ok_or("rope_theta missing")? as f32,
    };
    let rope_scaling = match rope {
        None => None,
        Some(r) => {
            let kind = r
                .get("rope_type")
                .or_else(|| r.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            match kind {
                "default" => None,
                "llama3" => Some(Llama3RopeScaling {
                    factor: f32_field(r, "factor")?,
                    low_freq_factor: f32_field(r, "low_freq_factor")?,
                    high_freq_factor: f32_field(r, "high_freq_factor")?,
                    original_max_position_embeddings: f32_field(
                        r,
                        "original_max_position_embeddings",
                    )?,
                }),
                other => return Err(format!("rope type {other:?} is not supported")),
            }
        }
    };
    Ok(LlamaConfig {
        num_layers: int_field(json, "num_hidden_layers")?,
        embed_dim,
        num_heads,
        num_kv_heads,
        head_dim,
        intermediate_dim: int_field(json, "intermediate_size")?,
        norm_eps: opt_f32_field(json, "rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta,
        rope_scaling,
        max_seq_len: opt_int_field(json, "max_position_embeddings")?.unwrap_or(2048),
    })
}

fn str_field<'a>(json: &'a Value, key: &str) -> Result<&'a str, String> {
    json.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{key}` missing or not a string"))
}

fn opt_int_field(json: &Value, key: &str) -> Result<Option<i32>, String> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .map(Some)
            .ok_or_else(|| format!("`{key}` is not an integer: {v}")),
    }
}

fn int_field(json: &Value, key: &str) -> Result<i32, String> {
    opt_int_field(json, key)?.ok_or_else(|| format!("`{key}` missing"))
}

fn opt_f32_field(json: &Value, key: &str) -> Result<Option<f32>, String> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|f| Some(f as f32))
            .ok_or_else(|| format!("`{key}` is not a number: {v}")),
    }
}

fn f32_field(json: &Value, key: &str) -> Result<f32, String> {
    opt_f32_field(json, key)?.ok_or_else(|| format!("`{key}` missing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_periods_at_known_dims() {
        let c = LlamaConfig::llama_1b();
        let p = c.rope_periods();
        assert_eq!(p.len(), 32);
        // i = 0: wavelength 2π < 2048, unscaled period 1.
        assert_eq!(p[0], 1.0);
        // i = 8: 500000^(16/64) = 26.59, wavelength 167 < 2048: unscaled.
        let unscaled = |i: i32| 500_000f64.powf(2.0 * i as f64 / 64.0);
        assert!((p[8] as f64 - unscaled(8)).abs() / unscaled(8) < 1e-6);
        // i = 31: wavelength far above 8192: period multiplied by 32.
        assert!((p[31] as f64 - 32.0 * unscaled(31)).abs() / (32.0 * unscaled(31)) < 1e-6);
        // i = 12: period 500000^(24/64) = 137.0, wavelength 861 < 2048: kept.
        assert!((p[12] as f64 - unscaled(12)).abs() / unscaled(12) < 1e-6);
        // i = 15: period 468.9, wavelength 2946 in the blended band.
        let inv = 1.0 / unscaled(15);
        let s = (8192.0 / (2.0 * std::f64::consts::PI / inv) - 1.0) / 3.0;
        assert!(s > 0.0 && s < 1.0);
        let want = 1.0 / ((1.0 - s) * inv / 32.0 + s * inv);
        assert!((p[15] as f64 - want).abs() / want < 1e-6);
        assert!(p[15] as f64 > unscaled(15) && (p[15] as f64) < 32.0 * unscaled(15));
    }

    #[test]
    fn hf_equivalent_scaling_gives_same_periods() {
        let mut hf = LlamaConfig::llama_1b();
        hf.rope_scaling = Some(Llama3RopeScaling {
            factor: 32.0,
            low_freq_factor: 0.125,
            high_freq_factor: 0.5,
            original_max_position_embeddings: 1024.0,
        });
        let a = LlamaConfig::llama_1b().rope_periods();
        let b = hf.rope_periods();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() / x < 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn parses_sesame_config() {
        let json = serde_json::json!({"backbone_flavor":"llama-1B","decoder_flavor":"llama-100M",
            "text_vocab_size":128256,"audio_vocab_size":2051,"audio_num_codebooks":32});
        let (c, kind) = CsmConfig::from_json(&json).unwrap();
        assert_eq!(kind, ConfigKind::Sesame);
        assert_eq!(c, CsmConfig::csm_1b());
        assert_eq!(c.to_sesame_json().unwrap(), json);
        let bad = serde_json::json!({"backbone_flavor":"llama-3B","decoder_flavor":"llama-100M",
            "text_vocab_size":1,"audio_vocab_size":1,"audio_num_codebooks":32});
        let err = CsmConfig::from_json(&bad).unwrap_err();
        assert!(err.contains("llama-3B"), "{err}");
    }

    #[test]
    fn parses_transformers_config() {
        let json = serde_json::json!({
            "model_type": "csm", "num_codebooks": 32, "vocab_size": 2051,
            "text_vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 500000,
            "max_position_embeddings": 2048, "hidden_act": "silu",
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 0.5, "low_freq_factor": 0.125,
                "original_max_position_embeddings": 1024, "rope_type": "llama3"},
            "depth_decoder_config": {
                "num_codebooks": 32, "vocab_size": 2051, "backbone_hidden_size": 2048,
                "hidden_size": 1024, "intermediate_size": 8192, "num_hidden_layers": 4,
                "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128,
                "rms_norm_eps": 1e-5, "max_position_embeddings": 33,
                "rope_parameters": {"rope_theta": 500000, "factor": 32.0,
                    "high_freq_factor": 0.0078125, "low_freq_factor": 0.001953125,
                    "original_max_position_embeddings": 16, "rope_type": "llama3"}},
            "codec_config": {"model_type": "mimi"}
        });
        let (c, kind) = CsmConfig::from_json(&json).unwrap();
        assert_eq!(kind, ConfigKind::Transformers);
        assert_eq!(c.backbone.num_layers, 16);
        assert_eq!(c.decoder.head_dim, 128);
        assert_eq!(c.decoder.max_seq_len, 33);
        let csm = CsmConfig::csm_1b();
        for (a, b) in c
            .decoder
            .rope_periods()
            .iter()
            .zip(csm.decoder.rope_periods())
        {
            assert!((a - b).abs() / b < 1e-6);
        }
    }
}
