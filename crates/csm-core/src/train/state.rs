//! Training checkpoints: the trained tensors (`adapter.*` for LoRA,
//! `weights.*` for `--method full`), optimizer state, position in the data
//! and config, in one safetensors file written atomically, with
//! `checkpoint_latest.safetensors` always pointing at the newest.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mlx_rs::Array;
use serde::{Deserialize, Serialize};

use super::config::{Method, TrainConfig};
use super::optim::AdamW;
use super::run_dir::{RunDir, LATEST_CHECKPOINT};
use crate::adapter::Adapter;
use crate::checkpoint::write::{read_safetensors_metadata, save_safetensors};
use crate::checkpoint::{CheckpointError, WeightMap};

/// Format tag stored in every checkpoint.
pub const FORMAT: &str = "csm-train-checkpoint-v1";
/// Checkpoints kept besides the newest (older ones are deleted).
pub const KEEP: usize = 3;

/// Where the run is, besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: usize,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Micro-batches of that epoch already consumed.
    pub cursor: usize,
    /// Best validation loss so far.
    pub best_val: Option<f32>,
    /// Fingerprint of the base model's weight files.
    pub model_fingerprint: String,
    /// Number of training examples (data must match on resume).
    pub train_examples: usize,
    /// Ranks of the run (the data order depends on it).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Loaded {
    /// Position.
    pub progress: Progress,
    /// The run's config when it was written.
    pub config: TrainConfig,
    /// The trained tensors by canonical name: adapter tensors, or the
    /// weights of a full fine-tune.
    pub adapters: BTreeMap<String, Array>,
    /// Optimizer state.
    pub optimizer: AdamW,
}

/// The adapter of the checkpoint at `path`, in memory: its tensors and the
/// spec of the run that wrote it (apply it with
/// [`Adapter::apply`](crate::adapter::Adapter::apply), or save it in mlx_lm
/// layout with [`Adapter::save_mlx`](crate::adapter::Adapter::save_mlx)).
///
/// # Errors
/// As [`load`].
pub fn read_adapter(path: &Path) -> Result<Adapter, CheckpointError> {
    let loaded = load(path)?;
    if loaded.config.method == Method::Full {
        return Err(CheckpointError::Safetensors {
            path: path.to_path_buf(),
            message: "a checkpoint of a full fine-tune (--method full) holds model weights, not \
                      an adapter; use the run's model/ folder"
                .into(),
        });
    }
    Ok(Adapter {
        spec: loaded.config.lora_spec(),
        tensors: loaded.adapters,
        base_model: Some(loaded.config.model_path.clone()),
        source: path.to_path_buf(),
    })
}

/// Writes `checkpoint_step_NNNNNNN.safetensors` in `dir`, then points
/// `checkpoint_latest.safetensors` at it and prunes old checkpoints (the
/// names are [`RunDir`]'s). Returns the file.
pub fn save(
    dir: &Path,
    progress: &Progress,
    config: &TrainConfig,
    adapters: &BTreeMap<String, Array>,
    optimizer: &AdamW,
) -> Result<PathBuf, CheckpointError> {
    let mut tensors = BTreeMap::new();
    let prefix = match config.method {
        Method::Lora => "adapter",
        Method::Full => "weights",
    };
    for (k, v) in adapters {
        tensors.insert(format!("{prefix}.{k}"), v.clone());
    }
    for (k, v) in &optimizer.master {
        tensors.insert(format!("optim.w.{k}"), v.clone());
    }
    for (k, v) in &optimizer.m {
        tensors.insert(format!("optim.m.{k}"), v.clone());
    }
    for (k, v) in &optimizer.v {
        tensors.insert(format!("optim.v.{k}"), v.clone());
    }
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        (
            "progress".to_string(),
            serde_json::to_string(progress).expect("serialisable"),
        ),
        (
            "config".to_string(),
            serde_json::to_string(config).expect("serialisable"),
        ),
        (
            "optimizer".to_string(),
            serde_json::json!({
                "step": optimizer.step,
                "betas": [optimizer.betas.0, optimizer.betas.1],
                "eps": optimizer.eps,
                "weight_decay": optimizer.weight_decay,
            })
            .to_string(),
        ),
    ]);
    let run = RunDir::new(dir);
    let path = run.checkpoint_path(progress.step);
    save_safetensors(&path, &tensors, &meta)?;
    run.point_latest(&path)?;
    run.prune_checkpoints(KEEP, &path);
    Ok(path)
}

/// Reads a checkpoint written by [`save`] (or the link to one).
pub fn load(path: &Path) -> Result<Loaded, CheckpointError> {
    let bad = |message: String| CheckpointError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let meta = read_safetensors_metadata(path)?;
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(format!(
            "not a csm training checkpoint (format {:?}); --resume-from takes OUTPUT/{LATEST_CHECKPOINT} or a checkpoint_step_*.safetensors of a run",
            meta.get("format")
        )));
    }
    let progress: Progress =
        serde_json::from_str(meta.get("progress").map(String::as_str).unwrap_or(""))
            .map_err(|e| bad(format!("bad progress record: {e}")))?;
    let config: TrainConfig =
        serde_json::from_str(meta.get("config").map(String::as_str).unwrap_or(""))
            .map_err(|e| bad(format!("bad config record: {e}")))?;
    let opt: serde_json::Value =
        serde_json::from_str(meta.get("optimizer").map(String::as_str).unwrap_or(""))
            .map_err(|e| bad(format!("bad optimizer record: {e}")))?;
    let mut optimizer = AdamW::new(opt["weight_decay"].as_f64().unwrap_or(0.0) as f32);
    optimizer.step = opt["step"].as_u64().unwrap_or(0);
    optimizer.eps = opt["eps"].as_f64().unwrap_or(1e-8) as f32;
    if let Some(b) = opt["betas"].as_array() {
        optimizer.betas = (
            b.first().and_then(|x| x.as_f64()).unwrap_or(0.9) as f32,
            b.get(1).and_then(|x| x.as_f64()).unwrap_or(0.999) as f32,
        );
    }
    let weights = WeightMap::from_safetensors(&[path.to_path_buf()], None)?;
    let mut adapters = BTreeMap::new();
    for (k, v) in weights.tensors {
        if let Some(name) = k
            .strip_prefix("adapter.")
            .or_else(|| k.strip_prefix("weights."))
        {
            adapters.insert(name.to_string(), v);
        } else if let Some(name) = k.strip_prefix("optim.w.") {
            optimizer.master.insert(name.to_string(), v);
        } else if let Some(name) = k.strip_prefix("optim.m.") {
            optimizer.m.insert(name.to_string(), v);
        } else if let Some(name) = k.strip_prefix("optim.v.") {
            optimizer.v.insert(name.to_string(), v);
        } else {
            return Err(bad(format!("unexpected tensor `{k}`")));
        }
    }
    Ok(Loaded {
        progress,
        config,
        adapters,
        optimizer,
    })
}
