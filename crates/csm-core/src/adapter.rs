//! LoRA adapters on a [`Csm`]: which projections get one, and how adapters
//! are saved, loaded and merged.
//!
//! Names: an adapter tensor is the canonical projection name plus
//! `lora_a` (`[in, r]`), `lora_b` (`[r, out]`) or `bias` (`[out]`), e.g.
//! `backbone.layers.3.self_attn.q_proj.lora_a`: backbone and decoder layers
//! never share a name. Formats written:
//! - mlx_lm layout: `adapters.safetensors` + `adapter_config.json`;
//! - PEFT layout (`peft/`): `adapter_model.safetensors` + `adapter_config.json`
//!   with transformers names (`base_model.model.backbone_model.layers.N...
//!   .lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]`, q/k rows in
//!   transformers' rotate-half order), loadable by `peft`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mlx_rs::error::Exception;
use mlx_rs::module::{ModuleParameters, Parameter};
use mlx_rs::Array;
use serde::{Deserialize, Serialize};

use crate::checkpoint::write::{save_safetensors, write_atomic};
use crate::checkpoint::CheckpointError;
use crate::lora::Proj;
use crate::model::load::{format_name, permute_for_rope, rope_permuted_heads};
use crate::model::{Csm, CsmConfig, ModelFormat};
use crate::train::config::{LayerSet, TargetLayers, ALL_MODULES};

/// What to adapt and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// Rank.
    pub r: usize,
    /// Scale numerator (`scale = alpha / r`).
    pub alpha: f32,
    /// Dropout on the adapter input (training only).
    pub dropout: f32,
    /// Projection names (`q_proj`, ...).
    pub modules: Vec<String>,
    /// Layers per stack.
    pub layers: TargetLayers,
    /// Whether adapted projections carry a trained bias.
    pub bias: bool,
}

impl LoraSpec {
    /// `alpha / r`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.r as f32
    }
}

/// Adapter errors; each names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// Reading or writing failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// `adapter_config.json` is missing or malformed.
    #[error("{path}: {message}")]
    Config {
        /// File at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The spec names layers the model does not have.
    #[error("--target-layers names {stack} layer {index}, but the model's {stack} has {count} layers (0-{})", .count - 1)]
    LayerOutOfRange {
        /// `backbone` or `decoder`.
        stack: &'static str,
        /// Index asked for.
        index: usize,
        /// Layers in the stack.
        count: usize,
    },
    /// An adapter file could not be applied.
    #[error(transparent)]
    Load(Box<crate::generate::GenerateError>),
    /// An MLX operation failed.
    #[error("MLX error while {context}: {source}")]
    Mlx {
        /// What was being done.
        context: String,
        /// MLX's message.
        #[source]
        source: Exception,
    },
}

fn mlx(context: &str) -> impl FnOnce(Exception) -> AdapterError + '_ {
    move |source| AdapterError::Mlx {
        context: context.to_string(),
        source,
    }
}

/// Calls `f(canonical_prefix, module_name, proj)` for every projection of
/// both stacks (`backbone.layers.3.self_attn.q_proj`, `"q_proj"`, ...).
pub fn for_each_proj(
    model: &mut Csm,
    mut f: impl FnMut(&str, &str, &mut Proj) -> Result<(), AdapterError>,
) -> Result<(), AdapterError> {
    for (stack_name, stack) in [
        ("backbone", &mut model.backbone),
        ("decoder", &mut model.decoder),
    ] {
        for (i, layer) in stack.layers.iter_mut().enumerate() {
            let attn = &mut layer.self_attn;
            let mlp = &mut layer.mlp;
            let projs: [(&str, &str, &mut Proj); 7] = [
                ("self_attn", "q_proj", &mut attn.q_proj),
                ("self_attn", "k_proj", &mut attn.k_proj),
                ("self_attn", "v_proj", &mut attn.v_proj),
                ("self_attn", "o_proj", &mut attn.o_proj),
                ("mlp", "gate_proj", &mut mlp.gate_proj),
                ("mlp", "up_proj", &mut mlp.up_proj),
                ("mlp", "down_proj", &mut mlp.down_proj),
            ];
            for (block, name, proj) in projs {
                f(
                    &format!("{stack_name}.layers.{i}.{block}.{name}"),
                    name,
                    proj,
                )?;
            }
        }
    }
    Ok(())
}

fn check_layers(set: &LayerSet, stack: &'static str, count: usize) -> Result<(), AdapterError> {
    match set.max_index() {
        Some(index) if index >= count => Err(AdapterError::LayerOutOfRange {
            stack,
            index,
            count,
        }),
        _ => Ok(()),
    }
}

/// Freezes the whole model, then attaches fresh adapters (`B = 0`) to the
/// projections `spec` selects. Returns the number of adapted projections.
/// Seed MLX's random state first for a reproducible `A`.
pub fn attach(model: &mut Csm, spec: &LoraSpec) -> Result<usize, AdapterError> {
    check_layers(
        &spec.layers.backbone,
        "backbone",
        model.backbone.layers.len(),
    )?;
    check_layers(&spec.layers.decoder, "decoder", model.decoder.layers.len())?;
    model.freeze_parameters(true);
    let mut count = 0;
    for_each_proj(model, |prefix, name, proj| {
        let (stack, layer) = stack_and_layer(prefix);
        let set = if stack == "backbone" {
            &spec.layers.backbone
        } else {
            &spec.layers.decoder
        };
        if set.contains(layer) && spec.modules.iter().any(|m| m == name) {
            proj.attach_lora(spec.r as i32, spec.alpha, spec.dropout, spec.bias)
                .map_err(mlx(prefix))?;
            count += 1;
        }
        Ok(())
    })?;
    Ok(count)
}

fn stack_and_layer(prefix: &str) -> (&str, usize) {
    let mut parts = prefix.split('.');
    let stack = parts.next().unwrap_or_default();
    let layer = parts
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    (stack, layer)
}

/// The adapter's tensors by canonical name (`...q_proj.lora_a`, `.lora_b`,
/// and `.bias` where trained).
pub fn adapter_tensors(model: &Csm) -> BTreeMap<String, Array> {
    model
        .trainable_parameters()
        .flatten()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Folds every adapter into its base weight (see [`Proj::merge_lora`]).
pub fn merge(model: &mut Csm) -> Result<(), AdapterError> {
    for_each_proj(model, |prefix, _, proj| {
        proj.merge_lora().map_err(mlx(prefix))
    })
}

/// `adapter_config.json` of the mlx_lm layout (plus what we need to rebuild
/// the spec exactly).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MlxAdapterConfig {
    /// Always `lora`.
    pub fine_tune_type: String,
    /// mlx_lm's LoRA parameters.
    pub lora_parameters: MlxLoraParameters,
    /// Our full spec.
    pub spec: LoraSpec,
    /// The base checkpoint the adapter was trained on.
    pub base_model: Option<PathBuf>,
}

/// mlx_lm's `lora_parameters` block.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MlxLoraParameters {
    /// Rank.
    pub rank: usize,
    /// `alpha / r`.
    pub scale: f32,
    /// Dropout.
    pub dropout: f32,
    /// Adapted projection names.
    pub keys: Vec<String>,
}

/// Writes `adapters.safetensors` + `adapter_config.json` into `dir`.
pub fn save_mlx(
    dir: &Path,
    model: &Csm,
    spec: &LoraSpec,
    base_model: Option<&Path>,
) -> Result<(), AdapterError> {
    create_dir(dir)?;
    save_safetensors(
        &dir.join("adapters.safetensors"),
        &adapter_tensors(model),
        &HashMap::new(),
    )?;
    let config = MlxAdapterConfig {
        fine_tune_type: "lora".into(),
        lora_parameters: MlxLoraParameters {
            rank: spec.r,
            scale: spec.scale(),
            dropout: spec.dropout,
            keys: spec.modules.clone(),
        },
        spec: spec.clone(),
        base_model: base_model.map(Path::to_path_buf),
    };
    write_json(&dir.join("adapter_config.json"), &config)
}

/// Loads an mlx_lm-layout adapter (a directory, or the `.safetensors` with
/// `adapter_config.json` beside it) onto `model`: attaches adapters exactly
/// where the file has tensors and loads them strictly (one implementation,
/// shared with generation: [`crate::generate::apply_adapter`]).
pub fn load_mlx(
    model: &mut Csm,
    path: &Path,
) -> Result<crate::generate::AdapterInfo, AdapterError> {
    crate::generate::apply_adapter(model, path).map_err(|e| AdapterError::Load(Box::new(e)))
}

/// Writes the adapter in PEFT layout into `dir` (transformers names, q/k
/// `lora_B` rows permuted to transformers' order), for `peft`'s
/// `PeftModel.from_pretrained` on a transformers CSM checkpoint.
pub fn save_peft(
    dir: &Path,
    model: &Csm,
    spec: &LoraSpec,
    config: &CsmConfig,
    base_model: Option<&Path>,
) -> Result<(), AdapterError> {
    create_dir(dir)?;
    let mut out = BTreeMap::new();
    for (key, value) in adapter_tensors(model) {
        let (prefix, part) = key.rsplit_once('.').expect("adapter keys have a suffix");
        let hf_prefix = format_name(&format!("{prefix}.weight"), ModelFormat::Transformers);
        let hf_prefix = hf_prefix
            .strip_suffix(".weight")
            .unwrap_or(&hf_prefix)
            .to_string();
        let heads = rope_permuted_heads(&format!("{prefix}.weight"), config);
        let ctx = format!("exporting {key}");
        let (name, tensor) = match part {
            "lora_a" => ("lora_A.weight", value.t()), // [r, in]
            "lora_b" => {
                let b = value.t(); // [out, r]
                let b = match heads {
                    Some((h, hd)) => permute_for_rope(&b, h, hd).map_err(mlx(&ctx))?,
                    None => b,
                };
                ("lora_B.weight", b)
            }
            "bias" => {
                // PEFT's lora_bias lives on lora_B and is scaled with it.
                let b = value
                    .divide(Array::from_f32(spec.scale()))
                    .map_err(mlx(&ctx))?;
                let b = match heads {
                    Some((h, hd)) => {
                        permute_for_rope(&b.expand_dims(-1).map_err(mlx(&ctx))?, h, hd)
                            .and_then(|x| x.squeeze_axes(&[-1]))
                            .map_err(mlx(&ctx))?
                    }
                    None => b,
                };
                ("lora_B.bias", b)
            }
            _ => continue,
        };
        out.insert(format!("base_model.model.{hf_prefix}.{name}"), tensor);
    }
    save_safetensors(
        &dir.join("adapter_model.safetensors"),
        &out,
        &HashMap::new(),
    )?;
    let modules_regex = format!(
        r"^(backbone_model|depth_decoder\.model)\.layers\.\d+\.(self_attn|mlp)\.({})$",
        spec.modules.join("|")
    );
    let layers: Vec<String> = {
        let mut v = Vec::new();
        let mut push = |stack: &str, set: &LayerSet, n: usize| {
            for i in (0..n).filter(|&i| set.contains(i)) {
                for m in &spec.modules {
                    let block = if ALL_MODULES[..4].contains(&m.as_str()) {
                        "self_attn"
                    } else {
                        "mlp"
                    };
                    v.push(format!("{stack}.layers.{i}.{block}.{m}"));
                }
            }
        };
        push(
            "backbone_model",
            &spec.layers.backbone,
            config.backbone.num_layers as usize,
        );
        push(
            "depth_decoder.model",
            &spec.layers.decoder,
            config.decoder.num_layers as usize,
        );
        v
    };
    let all_layers = spec.layers == TargetLayers::all();
    let json = serde_json::json!({
        "peft_type": "LORA",
        "task_type": null,
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        // A regex keeps peft away from the codec's attention layers, which
        // share the projection names.
        "target_modules": if all_layers { serde_json::json!(modules_regex) } else { serde_json::json!(layers) },
        "bias": "none",
        "lora_bias": spec.bias,
        "use_rslora": false,
        "use_dora": false,
        "fan_in_fan_out": false,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": null,
        "inference_mode": true,
        "base_model_name_or_path": base_model.map(|p| p.display().to_string()),
        "auto_mapping": {"base_model_class": "CsmForConditionalGeneration", "parent_library": "transformers.models.csm.modeling_csm"},
    });
    write_json(&dir.join("adapter_config.json"), &json)
}

fn create_dir(dir: &Path) -> Result<(), AdapterError> {
    std::fs::create_dir_all(dir).map_err(|source| {
        AdapterError::Checkpoint(CheckpointError::Io {
            path: dir.to_path_buf(),
            source,
        })
    })
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), AdapterError> {
    let text = serde_json::to_string_pretty(value).expect("adapter configs serialise");
    Ok(write_atomic(path, text.as_bytes())?)
}

/// Marks every adapter parameter trainable again (after `freeze_parameters`
/// on a loaded model, e.g. when resuming).
pub fn unfreeze_adapters(model: &mut Csm, bias: bool) -> Result<(), AdapterError> {
    for_each_proj(model, |_, _, proj| {
        if proj.has_lora() {
            proj.lora_a.unfreeze(false);
            proj.lora_b.unfreeze(false);
            if bias {
                proj.bias.unfreeze(false);
            }
        }
        Ok(())
    })
}
