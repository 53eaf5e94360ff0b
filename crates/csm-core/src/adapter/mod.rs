//! LoRA adapters on a [`Csm`]: what is adapted ([`spec`]), how adapters
//! are attached, merged, saved and loaded in mlx_lm layout ([`mlx`]) and
//! exported in PEFT layout ([`peft`]). Training and generation build on
//! this module; it knows nothing of either.
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
//!
//! An [`Adapter`] is the in-memory form: a spec and its tensors. A training
//! checkpoint hands one out (`train::state::read_adapter`), so a checkpoint
//! can be applied or saved as an adapter without a file in between.

pub mod mlx;
pub mod peft;
pub mod spec;

use std::collections::BTreeMap;
use std::path::PathBuf;

use mlx_rs::error::Exception;
use mlx_rs::Array;

use crate::checkpoint::CheckpointError;

pub use mlx::{
    adapter_files, load_mlx, save_mlx, AdapterConfig, AdapterInfo, MlxAdapterConfig,
    MlxLoraParameters, ADAPTER_CONFIG_FILE, ADAPTER_FILE,
};
pub use peft::save_peft;
pub use spec::{
    adapter_tensors, attach, for_each_proj, merge, proj_mut, unfreeze_adapters, LayerSet, LoraSpec,
    TargetLayers, ALL_MODULES,
};

/// Adapter errors; each names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// Reading or writing failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// An adapter file is missing or malformed.
    #[error("adapter {path}: {message}")]
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
    /// The adapter's tensors do not fit the model.
    #[error("adapter {path} does not fit the model:\n  {}", problems.join("\n  "))]
    Mismatch {
        /// The weights file.
        path: PathBuf,
        /// Every mismatch found.
        problems: Vec<String>,
    },
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

pub(crate) fn mlx_err(context: &str) -> impl FnOnce(Exception) -> AdapterError + '_ {
    move |source| AdapterError::Mlx {
        context: context.to_string(),
        source,
    }
}

/// A trained adapter in memory: what it adapts and its tensors by canonical
/// name (`...q_proj.lora_a`, `.lora_b`, `.bias`).
#[derive(Debug, Clone)]
pub struct Adapter {
    /// What is adapted, with rank and scale.
    pub spec: LoraSpec,
    /// The tensors by canonical name.
    pub tensors: BTreeMap<String, Array>,
    /// The base checkpoint it was trained on, where known.
    pub base_model: Option<PathBuf>,
    /// The file it was read from (named in errors).
    pub source: PathBuf,
}
