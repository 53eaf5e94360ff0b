//! The mlx_lm adapter layout: `adapters.safetensors` (our canonical names,
//! e.g. `backbone.layers.0.self_attn.q_proj.lora_a` `[in, r]` and `.lora_b`
//! `[r, out]`) + `adapter_config.json`. Loading is strict: every key must
//! name a projection of the model, both halves must be present with the
//! configured rank, and any problem is an error listing all of them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mlx_rs::module::Param;
use mlx_rs::Array;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::spec::{adapter_tensors, proj_mut, LoraSpec};
use super::{Adapter, AdapterError};
use crate::checkpoint::write::{save_safetensors, write_atomic};
use crate::checkpoint::{CheckpointError, WeightMap};
use crate::model::Csm;

/// File name of the adapter weights (mlx_lm layout).
pub const ADAPTER_FILE: &str = "adapters.safetensors";
/// File name of the adapter config (mlx_lm layout).
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

/// What [`load_mlx`] attached.
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
    /// [`AdapterError::Config`] naming the missing or invalid field.
    pub fn from_file(path: &Path) -> Result<Self, AdapterError> {
        let bad = |message: String| AdapterError::Config {
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
        // (what [`save_mlx`] writes).
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

/// Writes the adapters of `model` as `adapters.safetensors` +
/// `adapter_config.json` into `dir`.
pub fn save_mlx(
    dir: &Path,
    model: &Csm,
    spec: &LoraSpec,
    base_model: Option<&Path>,
) -> Result<(), AdapterError> {
    write_mlx(
        dir,
        ADAPTER_FILE,
        &adapter_tensors(model),
        spec,
        base_model,
        &HashMap::new(),
    )
}

/// Writes `tensors` (canonical names) as `dir/weights_file` with
/// `metadata`, and the config of `spec` as `dir/adapter_config.json`, in
/// mlx_lm layout, each file atomically.
fn write_mlx(
    dir: &Path,
    weights_file: &str,
    tensors: &BTreeMap<String, Array>,
    spec: &LoraSpec,
    base_model: Option<&Path>,
    metadata: &HashMap<String, String>,
) -> Result<(), AdapterError> {
    create_dir(dir)?;
    save_safetensors(&dir.join(weights_file), tensors, metadata)?;
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
    write_json(&dir.join(ADAPTER_CONFIG_FILE), &config)
}

impl Adapter {
    /// Writes this adapter in mlx_lm layout into `dir` (the same bytes
    /// [`save_mlx`] writes for a model carrying these tensors).
    ///
    /// # Errors
    /// The directory or a file cannot be written.
    pub fn save_mlx(&self, dir: &Path) -> Result<(), AdapterError> {
        self.save_mlx_as(dir, ADAPTER_FILE, &HashMap::new())
    }

    /// [`Adapter::save_mlx`] with the weights under another file name
    /// (e.g. a run's `adapters_best.safetensors`) and `metadata` in its
    /// safetensors header; `adapter_config.json` is the same. Load it with
    /// [`load_mlx`] on the weights file.
    ///
    /// # Errors
    /// The directory or a file cannot be written.
    pub fn save_mlx_as(
        &self,
        dir: &Path,
        weights_file: &str,
        metadata: &HashMap<String, String>,
    ) -> Result<(), AdapterError> {
        write_mlx(
            dir,
            weights_file,
            &self.tensors,
            &self.spec,
            self.base_model.as_deref(),
            metadata,
        )
    }

    /// Attaches this adapter to `csm`, strictly, as [`load_mlx`] does with
    /// the files [`Adapter::save_mlx`] would write (tensors cast to the
    /// model's dtype). Errors name [`Adapter::source`].
    ///
    /// # Errors
    /// As [`load_mlx`]; on error the model is unchanged.
    pub fn apply(&self, csm: &mut Csm) -> Result<AdapterInfo, AdapterError> {
        let dtype = csm.dtype();
        let mut tensors = BTreeMap::new();
        for (k, v) in &self.tensors {
            let v = v
                .as_dtype(dtype)
                .map_err(super::mlx_err("casting the adapter to the model's dtype"))?;
            tensors.insert(k.clone(), v);
        }
        let config = AdapterConfig {
            rank: self.spec.r as i32,
            scale: self.spec.scale(),
            dropout: self.spec.dropout,
            target_modules: Some(self.spec.modules.clone()),
        };
        attach_tensors(csm, &self.source, tensors, &config)
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
/// Missing or malformed files ([`AdapterError::Config`]), or any key
/// that names no projection, a missing `lora_a`/`lora_b` half, a wrong
/// shape or rank, a projection outside `target_modules`, or a projection
/// that already carries an adapter ([`AdapterError::Mismatch`], listing every
/// problem). On error the model is unchanged.
pub fn load_mlx(csm: &mut Csm, path: &Path) -> Result<AdapterInfo, AdapterError> {
    let (weights_path, config_path) = adapter_files(path);
    for (file, what) in [(&weights_path, "weights"), (&config_path, "config")] {
        if !file.is_file() {
            return Err(AdapterError::Config {
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
        .map_err(|e| AdapterError::Config {
            path: weights_path.clone(),
            message: e.to_string(),
        })?;
    attach_tensors(csm, &weights_path, weights.tensors, &config)
}

/// Checks `tensors` against `csm` and `config`, listing every problem, then
/// attaches them. `source` names them in errors and in the returned info.
fn attach_tensors(
    csm: &mut Csm,
    source: &Path,
    tensors: impl IntoIterator<Item = (String, Array)>,
    config: &AdapterConfig,
) -> Result<AdapterInfo, AdapterError> {
    let weights_path = source.to_path_buf();
    let mut problems = Vec::new();
    let mut by_proj: BTreeMap<String, ProjTensors> = BTreeMap::new();
    for (key, value) in tensors {
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
        return Err(AdapterError::Mismatch {
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

pub(super) fn create_dir(dir: &Path) -> Result<(), AdapterError> {
    std::fs::create_dir_all(dir).map_err(|source| {
        AdapterError::Checkpoint(CheckpointError::Io {
            path: dir.to_path_buf(),
            source,
        })
    })
}

pub(super) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), AdapterError> {
    let text = serde_json::to_string_pretty(value).expect("adapter configs serialise");
    Ok(write_atomic(path, text.as_bytes())?)
}
