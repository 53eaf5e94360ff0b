//! The PEFT adapter layout (`adapter_model.safetensors` +
//! `adapter_config.json` with transformers names), for `peft`'s
//! `PeftModel.from_pretrained` on a transformers CSM checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use mlx_rs::Array;

use super::mlx::{create_dir, write_json};
use super::spec::{adapter_tensors, LayerSet, LoraSpec, TargetLayers, ALL_MODULES};
use super::{mlx_err as mlx, AdapterError};
use crate::checkpoint::write::save_safetensors;
use crate::model::load::{format_name, permute_for_rope, rope_permuted_heads};
use crate::model::{Csm, CsmConfig, ModelFormat};

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
