//! Full fine-tuning (`--method full`): the weights of the chosen parts
//! themselves are trained, no adapter. The run's machinery is LoRA's (the
//! trainable tensors are whatever is unfrozen, so the step, the optimizer,
//! checkpoints and resume serve both); what differs is here: which tensors
//! each part owns, and the output, a whole model written in the format the
//! input checkpoint was read in.
//!
//! Parts (`--train`, default `backbone,decoder`):
//! - `backbone`: `backbone.*` and `codebook0_head`;
//! - `decoder`: `decoder.*`, `projection` and `audio_head`;
//! - `embeddings`: `text_embeddings` and `audio_embeddings` (shared by both
//!   stacks, so neither part takes them on its own).

use std::path::{Path, PathBuf};

use mlx_rs::module::{ModuleParameters, Parameter};

use super::config::ModelPart;
use super::trainer::{save_merged, TrainError};
use crate::model::load::LoadedCsm;
use crate::model::Csm;

/// Folder of a full fine-tune's model in the output directory.
pub const MODEL_DIR: &str = "model";

/// The part a canonical parameter name belongs to.
pub fn part_of(name: &str) -> ModelPart {
    let top = name.split('.').next().unwrap_or_default();
    match top {
        "backbone" | "codebook0_head" => ModelPart::Backbone,
        "text_embeddings" | "audio_embeddings" => ModelPart::Embeddings,
        _ => ModelPart::Decoder,
    }
}

/// Freezes `model`, then unfreezes every parameter of `parts`. Returns the
/// number of trainable values.
pub fn set_trainable(model: &mut Csm, parts: &[ModelPart]) -> usize {
    model.freeze_parameters(true);
    for part in parts {
        match part {
            ModelPart::Backbone => {
                model.backbone.unfreeze_parameters(true);
                model.codebook0_head.unfreeze_parameters(true);
            }
            ModelPart::Decoder => {
                model.decoder.unfreeze_parameters(true);
                model.projection.unfreeze_parameters(true);
                model.audio_head.unfreeze(true);
            }
            ModelPart::Embeddings => {
                model.text_embeddings.unfreeze_parameters(true);
                model.audio_embeddings.unfreeze_parameters(true);
            }
        }
    }
    model
        .trainable_parameters()
        .flatten()
        .values()
        .map(|a| a.size())
        .sum()
}

/// `--train` as written: `backbone,decoder`.
pub fn parts_arg(parts: &[ModelPart]) -> String {
    parts.iter().map(|p| p.name()).collect::<Vec<_>>().join(",")
}

/// Writes the trained model into `OUTPUT/model/` in the format it was read
/// in (`model.safetensors` + the input's `config.json`). Returns the
/// weights file.
///
/// # Errors
/// The model cannot be converted or written.
pub fn save_model(loaded: &LoadedCsm, output_dir: &Path) -> Result<PathBuf, TrainError> {
    // Without adapters, "merged" is the model as it stands.
    save_merged(loaded, &output_dir.join(MODEL_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::csm::tiny_config;

    #[test]
    fn every_parameter_has_one_part_and_parts_unfreeze_only_their_own() {
        let mut model = Csm::new(&tiny_config()).unwrap();
        let all = model.parameters().flatten();
        let total: usize = all.values().map(|a| a.size()).sum();
        let mut sum = 0;
        for part in ModelPart::ALL {
            let n = set_trainable(&mut model, &[part]);
            let names: Vec<String> = model
                .trainable_parameters()
                .flatten()
                .keys()
                .map(|k| k.to_string())
                .collect();
            assert!(!names.is_empty(), "{part:?}");
            for k in &names {
                assert_eq!(part_of(k), part, "{k}");
            }
            sum += n;
        }
        assert_eq!(sum, total);
        assert_eq!(set_trainable(&mut model, &ModelPart::ALL), total);
        assert_eq!(set_trainable(&mut model, &[]), 0);
        assert_eq!(part_of("audio_head"), ModelPart::Decoder);
        assert_eq!(part_of("projection.weight"), ModelPart::Decoder);
        assert_eq!(part_of("codebook0_head.weight"), ModelPart::Backbone);
        assert_eq!(
            parts_arg(&[ModelPart::Backbone, ModelPart::Decoder]),
            "backbone,decoder"
        );
    }
}
