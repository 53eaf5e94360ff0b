//! How a run trains: LoRA (the default), LoRA on a quantized base (QLoRA,
//! `--quantize 4|8`) or the weights themselves (`--method full`, see
//! [`super::full`]), each with or without gradient checkpointing
//! (`--grad-checkpoint`). [`prepare_model`] sets the model up for the run;
//! everything after it (step, optimizer, checkpoints) trains whatever is
//! unfrozen.
//!
//! A QLoRA run ends by checking its adapter where it will be used: on the
//! full-precision model ([`full_precision_check`]), whose loss is reported
//! beside the quantized run's, and which a merged output is made from.

use super::config::{Method, TrainConfig};
use super::full;
use super::trainer::{
    evaluate, mlx, save_merged, Assets, CheckSplit, FullPrecisionCheck, TrainError,
};
use crate::adapter::{self, Adapter, LoraSpec};
use crate::model::load::{load_csm, LoadOptions};
use crate::model::{quantize_stacks, Csm, LossWeights, QuantSpec};

/// What [`prepare_model`] set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// Values the run trains.
    pub trainable_params: usize,
    /// Projections quantized (QLoRA), 0 otherwise.
    pub quantized_projections: usize,
}

/// Sets `model` up for `cfg`'s method: quantizes the stacks (`--quantize`),
/// then attaches fresh adapters (LoRA, MLX seeded by the caller) or
/// unfreezes the parts to train (full), and turns gradient checkpointing
/// on or off.
///
/// # Errors
/// A LoRA selection that adapts nothing, a model that cannot be quantized,
/// or layers the model does not have.
pub fn prepare_model(model: &mut Csm, cfg: &TrainConfig) -> Result<Prepared, TrainError> {
    let mut quantized_projections = 0;
    if let Some(bits) = cfg.quantize {
        let spec = QuantSpec::new(bits).map_err(|e| TrainError::Config(vec![e]))?;
        let report = quantize_stacks(model, spec)?;
        tracing::info!(
            "quantized {} projections ({} values) to {bits} bits in groups of {}",
            report.projections,
            report.values,
            spec.group_size
        );
        quantized_projections = report.projections;
    }
    let trainable_params = match cfg.method {
        Method::Lora => {
            let adapted = adapter::attach(model, &cfg.lora_spec())?;
            if adapted == 0 {
                return Err(TrainError::Config(vec![format!(
                    "--target-modules {} with --target-layers {} selects no projection of this model",
                    cfg.target_modules.join(","),
                    cfg.target_layers.to_arg()
                )]));
            }
            adapter::adapter_tensors(model)
                .values()
                .map(|a| a.size())
                .sum()
        }
        Method::Full => full::set_trainable(model, &cfg.train),
    };
    if trainable_params == 0 {
        return Err(TrainError::Config(vec![format!(
            "--train {} leaves nothing to train",
            full::parts_arg(&cfg.train)
        )]));
    }
    model.backbone.grad_checkpoint = cfg.grad_checkpoint;
    model.decoder.grad_checkpoint = cfg.grad_checkpoint;
    Ok(Prepared {
        trainable_params,
        quantized_projections,
    })
}

/// Why a checkpoint written under `then` cannot continue under `now`
/// (another method, other trained parts or adapters, another
/// quantization), in the flags' words; `None` when it can. Gradient
/// checkpointing may differ: it changes memory, not results.
pub fn resume_mismatch(then: &TrainConfig, now: &TrainConfig) -> Option<String> {
    let method = |m: Method| match m {
        Method::Lora => "lora",
        Method::Full => "full",
    };
    if then.method != now.method {
        return Some(format!(
            "it was trained with --method {}, this run uses --method {}",
            method(then.method),
            method(now.method)
        ));
    }
    if then.quantize != now.quantize {
        let q = |b: Option<u8>| b.map_or("off".to_string(), |b| b.to_string());
        return Some(format!(
            "it was trained on a base quantized to {} bits, this run's --quantize is {}; \
             resume with the same --quantize",
            q(then.quantize),
            q(now.quantize)
        ));
    }
    match now.method {
        Method::Full if then.train != now.train => Some(format!(
            "it trained --train {}, this run --train {}",
            full::parts_arg(&then.train),
            full::parts_arg(&now.train)
        )),
        Method::Lora if then.lora_spec() != now.lora_spec() => Some(
            "its LoRA settings (--lora-r/--lora-alpha/--target-modules/--target-layers/--lora-bias) differ from this run's".into(),
        ),
        _ => None,
    }
}

/// The end of a QLoRA run: evaluates its adapter on the quantized model,
/// then replaces that model in `assets` by the full-precision one from
/// `cfg.model_path` (the quantized weights are freed first), applies the
/// adapter to it and evaluates again (every frame through the depth
/// decoder, as validation does); with `merged_dir`, writes base + adapter
/// there in the input's format.
///
/// # Errors
/// The model cannot be reloaded, the adapter does not apply, or
/// evaluation fails.
pub fn full_precision_check(
    assets: &mut Assets,
    cfg: &TrainConfig,
    spec: &LoraSpec,
    examples: (&[super::batch::Example], CheckSplit),
    merged_dir: Option<&std::path::Path>,
) -> Result<Option<FullPrecisionCheck>, TrainError> {
    let Some(bits) = cfg.quantize else {
        return Ok(None);
    };
    let (examples, split) = examples;
    let weights = LossWeights {
        semantic: cfg.semantic_weight,
        acoustic: cfg.acoustic_weight,
    };
    let model = &mut assets.loaded.model;
    let quantized = evaluate(model, examples, cfg.batch_size, weights)?;
    let adapter = Adapter {
        spec: spec.clone(),
        tensors: adapter::adapter_tensors(model),
        base_model: Some(cfg.model_path.clone()),
        source: cfg.output_dir.join(adapter::ADAPTER_FILE),
    };
    let dtype = model.dtype();
    // A lazy placeholder: MLX computes none of its random weights, and the
    // quantized ones are released before the full-precision model loads.
    *model = Csm::new(&model.config).map_err(mlx("freeing the quantized model"))?;
    assets.loaded = load_csm(
        &cfg.model_path,
        &LoadOptions {
            dtype,
            config: None,
        },
    )?;
    adapter.apply(&mut assets.loaded.model)?;
    let full_precision = evaluate(&mut assets.loaded.model, examples, cfg.batch_size, weights)?;
    if let Some(dir) = merged_dir {
        save_merged(&assets.loaded, dir)?;
    }
    Ok(Some(FullPrecisionCheck {
        bits,
        full_precision,
        quantized,
        split,
        examples: examples.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::ModelPart;

    #[test]
    fn resume_refuses_another_mode_in_the_flags_words() {
        let lora = TrainConfig::default();
        assert_eq!(resume_mismatch(&lora, &lora), None);
        let mut checkpointed = lora.clone();
        checkpointed.grad_checkpoint = true;
        assert_eq!(resume_mismatch(&lora, &checkpointed), None);
        let full = TrainConfig {
            method: Method::Full,
            ..TrainConfig::default()
        };
        assert!(resume_mismatch(&lora, &full)
            .unwrap()
            .contains("--method lora"));
        let decoder = TrainConfig {
            train: vec![ModelPart::Decoder],
            ..full.clone()
        };
        assert!(resume_mismatch(&full, &decoder)
            .unwrap()
            .contains("--train backbone,decoder"));
        let q4 = TrainConfig {
            quantize: Some(4),
            ..lora.clone()
        };
        assert!(resume_mismatch(&lora, &q4).unwrap().contains("--quantize"));
        let r4 = TrainConfig {
            lora_r: 4,
            ..lora.clone()
        };
        assert!(resume_mismatch(&lora, &r4).unwrap().contains("--lora-r"));
    }
}
