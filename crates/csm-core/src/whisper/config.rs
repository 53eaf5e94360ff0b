//! Whisper hyperparameters, read from a transformers `config.json` (and the
//! alignment heads from `generation_config.json`).

use std::path::Path;

use serde_json::Value;

use super::error::WhisperError;

/// Sample rate the model hears.
pub const SAMPLE_RATE: u32 = 16_000;
/// STFT window length.
pub const N_FFT: usize = 400;
/// STFT hop (10 ms).
pub const HOP_LENGTH: usize = 160;
/// Seconds in one window.
pub const CHUNK_LENGTH: usize = 30;
/// Samples in one window.
pub const N_SAMPLES: usize = CHUNK_LENGTH * SAMPLE_RATE as usize;
/// Mel frames in one window.
pub const N_FRAMES: usize = N_SAMPLES / HOP_LENGTH;
/// Mel frames per second.
pub const FRAMES_PER_SECOND: usize = SAMPLE_RATE as usize / HOP_LENGTH;
/// Encoder positions (and timestamp steps) per second: the second conv has
/// stride 2.
pub const TOKENS_PER_SECOND: usize = FRAMES_PER_SECOND / 2;

/// The shape of one Whisper model.
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperConfig {
    /// Mel bins: 80, or 128 for large-v3 / large-v3-turbo.
    pub num_mel_bins: i32,
    /// Width of both stacks.
    pub d_model: i32,
    /// Encoder blocks.
    pub encoder_layers: i32,
    /// Encoder heads.
    pub encoder_attention_heads: i32,
    /// Encoder MLP width.
    pub encoder_ffn_dim: i32,
    /// Decoder blocks.
    pub decoder_layers: i32,
    /// Decoder heads.
    pub decoder_attention_heads: i32,
    /// Decoder MLP width.
    pub decoder_ffn_dim: i32,
    /// Token ids, special and timestamp tokens included.
    pub vocab_size: i32,
    /// Encoder positions (1500 = 30 s).
    pub max_source_positions: i32,
    /// Decoder context (448).
    pub max_target_positions: i32,
    /// `(decoder layer, head)` pairs whose cross-attention tracks time, for
    /// word timestamps. Default, as openai-whisper: every head of the upper
    /// half of the decoder.
    pub alignment_heads: Vec<(usize, usize)>,
}

impl WhisperConfig {
    /// Parses a transformers `WhisperConfig` JSON object.
    pub fn from_hf_json(json: &Value) -> Result<Self, WhisperError> {
        let int = |key: &str| -> Result<i32, WhisperError> {
            json.get(key)
                .and_then(Value::as_i64)
                .map(|v| v as i32)
                .ok_or_else(|| {
                    WhisperError::config(format!("`{key}` is missing or not an integer"))
                })
        };
        let int_or = |key: &str, default: i32| -> Result<i32, WhisperError> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(_) => int(key),
            }
        };
        if let Some(t) = json.get("model_type").and_then(Value::as_str) {
            if t != "whisper" {
                return Err(WhisperError::config(format!(
                    "model_type is {t:?}, not \"whisper\""
                )));
            }
        }
        let act = json
            .get("activation_function")
            .and_then(Value::as_str)
            .unwrap_or("gelu");
        if act != "gelu" {
            return Err(WhisperError::config(format!(
                "activation_function {act:?} is not supported (only exact \"gelu\")"
            )));
        }
        if json.get("scale_embedding").and_then(Value::as_bool) == Some(true) {
            return Err(WhisperError::config(
                "scale_embedding = true is not supported",
            ));
        }
        let decoder_layers = int("decoder_layers")?;
        let decoder_heads = int("decoder_attention_heads")?;
        let config = WhisperConfig {
            num_mel_bins: int_or("num_mel_bins", 80)?,
            d_model: int("d_model")?,
            encoder_layers: int("encoder_layers")?,
            encoder_attention_heads: int("encoder_attention_heads")?,
            encoder_ffn_dim: int("encoder_ffn_dim")?,
            decoder_layers,
            decoder_attention_heads: decoder_heads,
            decoder_ffn_dim: int("decoder_ffn_dim")?,
            vocab_size: int("vocab_size")?,
            max_source_positions: int_or("max_source_positions", 1500)?,
            max_target_positions: int_or("max_target_positions", 448)?,
            alignment_heads: default_alignment_heads(decoder_layers, decoder_heads),
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads `config.json` and, when present, the `alignment_heads` of
    /// `generation_config.json` in the same directory.
    pub fn from_dir(dir: &Path) -> Result<Self, WhisperError> {
        let path = dir.join("config.json");
        let json = read_json(&path)?;
        let mut config = WhisperConfig::from_hf_json(&json).map_err(|e| in_file(e, &path))?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            let gen = read_json(&gen_path)?;
            if let Some(heads) = gen.get("alignment_heads") {
                config
                    .set_alignment_heads(heads)
                    .map_err(|e| in_file(e, &gen_path))?;
            }
        }
        Ok(config)
    }

    /// Sets the alignment heads from a JSON list of `[layer, head]` pairs.
    pub fn set_alignment_heads(&mut self, heads: &Value) -> Result<(), WhisperError> {
        let list = heads
            .as_array()
            .ok_or_else(|| WhisperError::config("alignment_heads is not a list"))?;
        let mut out = Vec::with_capacity(list.len());
        for pair in list {
            let p = pair.as_array().filter(|p| p.len() == 2);
            let (l, h) = match p.map(|p| (p[0].as_u64(), p[1].as_u64())) {
                Some((Some(l), Some(h))) => (l as usize, h as usize),
                _ => {
                    return Err(WhisperError::config(format!(
                        "alignment head {pair} is not [layer, head]"
                    )))
                }
            };
            if l >= self.decoder_layers as usize || h >= self.decoder_attention_heads as usize {
                return Err(WhisperError::config(format!(
                    "alignment head [{l}, {h}] is outside {} layers x {} heads",
                    self.decoder_layers, self.decoder_attention_heads
                )));
            }
            out.push((l, h));
        }
        if !out.is_empty() {
            self.alignment_heads = out;
        }
        Ok(())
    }

    /// Whether the vocabulary has language tokens (openai-whisper's rule).
    pub fn is_multilingual(&self) -> bool {
        self.vocab_size >= 51865
    }

    /// Number of language tokens (99, or 100 from large-v3 on).
    pub fn num_languages(&self) -> usize {
        (self.vocab_size - 51765 - i32::from(self.is_multilingual())).max(0) as usize
    }

    fn validate(&self) -> Result<(), WhisperError> {
        let heads_divide = |d: i32, h: i32| h > 0 && d % h == 0;
        if !matches!(self.num_mel_bins, 80 | 128) {
            return Err(WhisperError::config(format!(
                "num_mel_bins is {}; only 80 and 128 are supported",
                self.num_mel_bins
            )));
        }
        if !heads_divide(self.d_model, self.encoder_attention_heads)
            || !heads_divide(self.d_model, self.decoder_attention_heads)
        {
            return Err(WhisperError::config(format!(
                "d_model {} is not divisible by the heads ({} / {})",
                self.d_model, self.encoder_attention_heads, self.decoder_attention_heads
            )));
        }
        if self.max_source_positions as usize * 2 != N_FRAMES {
            return Err(WhisperError::config(format!(
                "max_source_positions is {}; the 30 s window needs {}",
                self.max_source_positions,
                N_FRAMES / 2
            )));
        }
        Ok(())
    }
}

fn default_alignment_heads(layers: i32, heads: i32) -> Vec<(usize, usize)> {
    (layers as usize / 2..layers as usize)
        .flat_map(|l| (0..heads as usize).map(move |h| (l, h)))
        .collect()
}

fn in_file(e: WhisperError, path: &Path) -> WhisperError {
    match e {
        WhisperError::Config {
            path: None,
            message,
        } => WhisperError::Config {
            path: Some(path.to_path_buf()),
            message,
        },
        other => other,
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value, WhisperError> {
    let bytes = std::fs::read(path).map_err(|source| WhisperError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| WhisperError::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Value {
        serde_json::json!({
            "model_type": "whisper", "d_model": 8, "encoder_layers": 2,
            "encoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_layers": 4,
            "decoder_attention_heads": 2, "decoder_ffn_dim": 32, "vocab_size": 51866,
            "num_mel_bins": 128
        })
    }

    #[test]
    fn parses_and_defaults_alignment_heads() {
        let c = WhisperConfig::from_hf_json(&tiny()).unwrap();
        assert_eq!(c.alignment_heads, vec![(2, 0), (2, 1), (3, 0), (3, 1)]);
        assert_eq!((c.num_languages(), c.is_multilingual()), (100, true));
        let mut c = c;
        c.set_alignment_heads(&serde_json::json!([[1, 1], [3, 0]]))
            .unwrap();
        assert_eq!(c.alignment_heads, vec![(1, 1), (3, 0)]);
        assert!(c.set_alignment_heads(&serde_json::json!([[4, 0]])).is_err());
    }

    #[test]
    fn rejects_unsupported() {
        let mut j = tiny();
        j["num_mel_bins"] = 64.into();
        assert!(WhisperConfig::from_hf_json(&j)
            .unwrap_err()
            .to_string()
            .contains("num_mel_bins"));
        let mut j = tiny();
        j["activation_function"] = "relu".into();
        assert!(WhisperConfig::from_hf_json(&j).is_err());
        let mut j = tiny();
        j.as_object_mut().unwrap().remove("d_model");
        assert!(WhisperConfig::from_hf_json(&j)
            .unwrap_err()
            .to_string()
            .contains("d_model"));
    }
}
