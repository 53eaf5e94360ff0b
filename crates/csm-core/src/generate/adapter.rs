//! Loading a trained LoRA adapter for generation: the mlx_lm layout
//! (`adapters.safetensors` + `adapter_config.json`) with our canonical names,
//! e.g. `backbone.layers.0.self_attn.q_proj.lora_a` `[in, r]` and `.lora_b`
//! `[r, out]`. Strict: every key must name a projection of the model, both
//! halves must be present with the configured rank, and any problem is an
//! error listing all of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlx_rs::module::Param;
use mlx_rs::Array;
use serde_json::Value;

use super::GenerateError;
use crate::checkpoint::WeightMap;
use crate::lora::Proj;
use crate::model::Csm;

/// File name of the adapter weights (mlx_lm layout).
pub const ADAPTER_FILE: &str = "adapters.safetensors";
/// File name of the adapter config (mlx_lm layout).
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

/// What [`apply_adapter`] attached.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    /// The weights file read.
    pub weights: PathBuf,
    /// LoRA rank.
    pub rank: i32,
    /// `alpha / r`.
    pub scale: f32,
    /// The projections that got an adapter, in name order.
    pub projections: Vec<String>,
}

/// The `lora_parameters` (and `target_modules`) of `adapter_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// LoRA rank `r`.
    pub rank: i32,
    /// `alpha / r`.
    pub scale: f32,
    /// Dropout used in training (inactive at inference).
    pub dropout: f32,
    /// Projection names (`q_proj`, or mlx_lm's `self_attn.q_proj`) the
    /// adapter may touch, from `target_modules` or `lora_parameters.keys`.
    pub target_modules: Option<Vec<String>>,
}

impl AdapterConfig {
    /// Parses `adapter_config.json`.
    ///
    /// # Errors
    /// [`GenerateError::AdapterConfig`] naming the missing or invalid field.
    pub fn from_file(path: &Path) -> Result<Self, GenerateError> {
        let bad = |message: String| GenerateError::AdapterConfig {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let params = json
            .get("lora_parameters")
            .ok_or_else(|| bad("no `lora_parameters` object".into()))?;
        let rank = params
            .get("rank")
            .and_then(Value::as_i64)
            .filter(|&r| r >= 1 && r <= i64::from(i32::MAX))
            .ok_or_else(|| bad("`lora_parameters.rank` must be a positive integer".into()))?
            as i32;
        let scale =
            params.get("scale").and_then(Value::as_f64).ok_or_else(|| {
                bad("`lora_parameters.scale` (alpha / rank) must be a number".into())
            })? as f32;
        let dropout = match params.get("dropout") {
            None | Some(Value::Null) => 0.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad("`lora_parameters.dropout` must be a number".into()))?
                as f32,
        };
        // `target_modules` (PEFT-style) or mlx_lm's `lora_parameters.keys`
        // (what `crate::adapter::save_mlx` writes).
        let modules = json
            .get("target_modules")
            .filter(|v| !v.is_null())
            .or_else(|| params.get("keys"));
        let target_modules = match modules {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        bad(
                            "`target_modules` / `lora_parameters.keys` must be a list of strings"
                                .into(),
                        )
                    })?,
            ),
            Some(_) => {
                return Err(bad(
                    "`target_modules` / `lora_parameters.keys` must be a list of strings".into(),
                ))
            }
        };
        Ok(AdapterConfig {
            rank,
            scale,
            dropout,
            target_modules,
        })
    }
}

/// The adapter's weights and config files for `path`: a directory holding
/// both, or the weights file with the config beside it.
pub fn adapter_files(path: &Path) -> (PathBuf, PathBuf) {
    if path.is_dir() {
        (path.join(ADAPTER_FILE), path.join(ADAPTER_CONFIG_FILE))
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        (path.to_path_buf(), dir.join(ADAPTER_CONFIG_FILE))
    }
}

/// The projection of `csm` called `name` (canonical name without the
/// parameter suffix), e.g. `decoder.layers.1.mlp.down_proj`.
pub fn proj_mut<'a>(csm: &'a mut Csm, name: &str) -> Option<&'a mut Proj> {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["projection"] => Some(&mut csm.projection),
        ["codebook0_head"] => Some(&mut csm.codebook0_head),
        [stack, "layers", index, group, proj] => {
            let llama = match *stack {
                "backbone" => &mut csm.backbone,
                "decoder" => &mut csm.decoder,
                _ => return None,
            };
            let layer = llama.layers.get_mut(index.parse::<usize>().ok()?)?;
            match (*group, *proj) {
                ("self_attn", "q_proj") => Some(&mut layer.self_attn.q_proj),
                ("self_attn", "k_proj") => Some(&mut layer.self_attn.k_proj),
                ("self_attn", "v_proj") => Some(&mut layer.self_attn.v_proj),
                ("self_attn", "o_proj") => Some(&mut layer.self_attn.o_proj),
                ("mlp", "gate_proj") => Some(&mut layer.mlp.gate_proj),
                ("mlp", "up_proj") => Some(&mut layer.mlp.up_proj),
                ("mlp", "down_proj") => Some(&mut layer.mlp.down_proj),
                _ => None,
            }
        }
        _ => None,
    }
}

#[derive(Default)]
struct ProjTensors {
    a: Option<Array>,
    b: Option<Array>,
    bias: Option<Array>,
}

/// Loads the adapter at `path` (see [`adapter_files`]) into `csm`: LoRA is
/// attached to exactly the projections that have keys, with the file's
/// values, `scale` and rank from the config.
///
/// # Errors
/// Missing or malformed files ([`GenerateError::AdapterConfig`]), or any key
/// that names no projection, a missing `lora_a`/`lora_b` half, a wrong
/// shape or rank, a projection outside `target_modules`, or a projection
/// that already carries an adapter ([`GenerateError::Adapter`], listing every
/// problem). On error the model is unchanged.
pub fn apply_adapter(csm: &mut Csm, path: &Path) -> Result<AdapterInfo, GenerateError> {
    let (weights_path, config_path) = adapter_files(path);
    for (file, what) in [(&weights_path, "weights"), (&config_path, "config")] {
        if !file.is_file() {
            return Err(GenerateError::AdapterConfig {
                path: file.clone(),
                message: format!(
                    "adapter {what} file not found (an adapter is a directory with \
                     {ADAPTER_FILE} and {ADAPTER_CONFIG_FILE}, or the weights file with the \
                     config beside it)"
                ),
            });
        }
    }
    let config = AdapterConfig::from_file(&config_path)?;
    let dtype = csm.dtype();
    let weights = WeightMap::from_safetensors(std::slice::from_ref(&weights_path), Some(dtype))
        .map_err(|e| GenerateError::AdapterConfig {
            path: weights_path.clone(),
            message: e.to_string(),
        })?;

    let mut problems = Vec::new();
    let mut by_proj: BTreeMap<String, ProjTensors> = BTreeMap::new();
    for (key, value) in weights.tensors {
        let Some((proj, param)) = key.rsplit_once('.') else {
            problems.push(format!("`{key}`: not a projection parameter"));
            continue;
        };
        let entry = by_proj.entry(proj.to_owned()).or_default();
        match param {
            "lora_a" => entry.a = Some(value),
            "lora_b" => entry.b = Some(value),
            "bias" => entry.bias = Some(value),
            _ => problems.push(format!(
                "`{key}`: unexpected parameter (expected lora_a, lora_b or bias)"
            )),
        }
    }
    if by_proj.is_empty() && problems.is_empty() {
        problems.push("the file holds no tensors".into());
    }
    let r = config.rank;
    for (name, t) in &by_proj {
        let Some(proj) = proj_mut(csm, name) else {
            problems.push(format!("`{name}`: no such projection in this model"));
            continue;
        };
        if let Some(targets) = &config.target_modules {
            let short = name.rsplit('.').next().unwrap_or(name);
            // `q_proj` or mlx_lm's `self_attn.q_proj`.
            if !targets
                .iter()
                .any(|t| name.ends_with(&format!(".{t}")) || t == name)
            {
                problems.push(format!(
                    "`{name}`: `{short}` is not in target_modules {targets:?}"
                ));
            }
        }
        if proj.has_lora() {
            problems.push(format!("`{name}`: already carries an adapter"));
        }
        let (out, input) = proj.dims();
        match (&t.a, &t.b) {
            (Some(a), Some(b)) => {
                if a.shape() != [input, r] {
                    problems.push(format!(
                        "`{name}.lora_a`: shape {:?}, expected [{input}, {r}] ([in, rank])",
                        a.shape()
                    ));
                }
                if b.shape() != [r, out] {
                    problems.push(format!(
                        "`{name}.lora_b`: shape {:?}, expected [{r}, {out}] ([rank, out])",
                        b.shape()
                    ));
                }
            }
            (None, _) => problems.push(format!("`{name}.lora_a`: missing")),
            (_, None) => problems.push(format!("`{name}.lora_b`: missing")),
        }
        if let Some(bias) = &t.bias {
            if bias.shape() != [out] {
                problems.push(format!(
                    "`{name}.bias`: shape {:?}, expected [{out}]",
                    bias.shape()
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(GenerateError::Adapter {
            path: weights_path,
            problems,
        });
    }

    let mut names = Vec::with_capacity(by_proj.len());
    for (name, t) in by_proj {
        let proj = proj_mut(csm, &name).expect("checked above");
        proj.lora_a = Param::new(t.a);
        proj.lora_b = Param::new(t.b);
        if t.bias.is_some() {
            proj.bias = Param::new(t.bias);
        }
        proj.scale = config.scale;
        proj.dropout = config.dropout;
        proj.training = false;
        names.push(name);
    }
    Ok(AdapterInfo {
        weights: weights_path,
        rank: r,
        scale: config.scale,
        projections: names,
    })
}
