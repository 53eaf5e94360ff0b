//! Strict loading of resemblyzer's `pretrained.pt`.

use std::path::Path;

use mlx_rs::Dtype;

use super::encoder::SpeakerEncoder;
use super::{SpeakerEncoderConfig, SpeakerError};
use crate::checkpoint::{load_strict, WeightMap};

/// The weights' file name inside the resemblyzer package.
pub const RESEMBLYZER_WEIGHTS_FILE: &str = "resemblyzer/pretrained.pt";

/// The PyPI release whose wheel holds [`RESEMBLYZER_WEIGHTS_FILE`].
pub const RESEMBLYZER_WHEEL: &str = "resemblyzer==0.1.4";

/// resemblyzer's names to ours: `model_state.lstm.weight_ih_l0` ->
/// `lstm.0.weight_ih`, `model_state.linear.*` -> `linear.*`. The optimizer
/// state and the GE2E loss's scale and offset are dropped; every other
/// name is kept as it is, so that [`load_strict`] reports it.
fn sanitize(key: &str) -> Option<String> {
    if key.starts_with("optimizer_state.") {
        return None;
    }
    let Some(name) = key.strip_prefix("model_state.") else {
        return Some(key.to_string());
    };
    if name == "similarity_weight" || name == "similarity_bias" {
        return None;
    }
    if let Some(rest) = name.strip_prefix("lstm.") {
        if let Some((param, layer)) = rest.rsplit_once("_l") {
            if layer.bytes().all(|b| b.is_ascii_digit()) && !layer.is_empty() {
                return Some(format!("lstm.{layer}.{param}"));
            }
        }
    }
    Some(name.to_string())
}

impl SpeakerEncoder {
    /// Loads resemblyzer's `pretrained.pt` (a local copy: the model manager
    /// or `--speaker-encoder PATH` says where), strictly and in f32.
    ///
    /// # Errors
    /// [`SpeakerError::Layout`] if the file has no `model_state`,
    /// [`SpeakerError::Checkpoint`] if it cannot be read, asks the pickle
    /// reader for anything but tensors, or misses or adds tensors.
    pub fn load(path: &Path) -> Result<Self, SpeakerError> {
        let mut weights = WeightMap::from_torch_checkpoint(path, Some(Dtype::Float32))?;
        if !weights.has_prefix("model_state.") {
            return Err(SpeakerError::Layout {
                path: path.to_path_buf(),
                message: "it has no `model_state` dict of tensors".into(),
            });
        }
        weights.rename(sanitize);
        let mut encoder = SpeakerEncoder::new(SpeakerEncoderConfig::resemblyzer())?;
        load_strict(&mut encoder, weights)?;
        Ok(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn names_become_ours() {
        let s = |k: &str| sanitize(k);
        assert_eq!(
            s("model_state.lstm.weight_ih_l0").as_deref(),
            Some("lstm.0.weight_ih")
        );
        assert_eq!(
            s("model_state.lstm.bias_hh_l2").as_deref(),
            Some("lstm.2.bias_hh")
        );
        assert_eq!(
            s("model_state.linear.weight").as_deref(),
            Some("linear.weight")
        );
        assert_eq!(s("model_state.similarity_weight"), None);
        assert_eq!(s("optimizer_state.state.1.exp_avg"), None);
        assert_eq!(s("other.weight").as_deref(), Some("other.weight"));
    }
}
