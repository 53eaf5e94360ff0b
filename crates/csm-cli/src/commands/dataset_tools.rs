//! `csm prepare`, `csm evaluate` and `csm merge`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use csm_core::model::load::{load_csm, LoadOptions};
use csm_core::model::LossWeights;
use csm_core::train::{self, trainer};
use csm_core::{adapter, runtime};

use super::finetune::TerminalObserver;
use super::train_args::TrainArgs;

/// Flags of `csm prepare`: the data and model flags of `finetune-lora`.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    #[command(flatten)]
    train: TrainArgs,
}

/// Encodes the dataset into the codes cache so training starts at once.
pub fn prepare(args: PrepareArgs, log_level: &str) -> Result<()> {
    let config = args.train.to_config(log_level)?;
    let backend = runtime::use_best_device();
    let mut assets = train::load_assets(
        &config.model_path,
        config.mimi_path.as_deref(),
        config.tokenizer_path.as_deref(),
        backend.default_dtype(),
    )?;
    let cache = crate::env::codes_cache();
    let mut terminal = TerminalObserver::default();
    let prepared = train::prepare(&mut assets, &config, &cache, &mut terminal)?;
    for w in &prepared.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{:.1} min of audio: {} codes from the cache, {} encoded now ({}); {} training and {} validation examples",
        prepared.audio_seconds / 60.0,
        prepared.cache.hits,
        prepared.cache.encoded,
        cache.display(),
        prepared.train.len(),
        prepared.val.len()
    );
    Ok(())
}

/// Flags of `csm evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Adapter to apply: a run's output directory or its adapters.safetensors.
    #[arg(long, value_name = "PATH")]
    adapter: Option<PathBuf>,
}

/// Prints the loss components (JSON) of model (+ adapter) on the dataset:
/// every example, every frame through the depth decoder.
pub fn evaluate(args: EvaluateArgs, log_level: &str) -> Result<()> {
    let config = args.train.to_config(log_level)?;
    let backend = runtime::use_best_device();
    let mut assets = train::load_assets(
        &config.model_path,
        config.mimi_path.as_deref(),
        config.tokenizer_path.as_deref(),
        backend.default_dtype(),
    )?;
    if let Some(a) = &args.adapter {
        adapter::load_mlx(&mut assets.loaded.model, a)
            .with_context(|| format!("cannot apply --adapter {}", a.display()))?;
    }
    let mut terminal = TerminalObserver::default();
    let prepared = train::prepare(
        &mut assets,
        &config,
        &crate::env::codes_cache(),
        &mut terminal,
    )?;
    let examples: Vec<_> = prepared.train.into_iter().chain(prepared.val).collect();
    let weights = LossWeights {
        semantic: config.semantic_weight,
        acoustic: config.acoustic_weight,
    };
    let loss = trainer::evaluate(
        &mut assets.loaded.model,
        &examples,
        config.batch_size,
        weights,
    )?;
    println!(
        "{}",
        serde_json::json!({
            "loss": loss.total,
            "semantic_loss": loss.semantic,
            "acoustic_loss": loss.acoustic,
            "examples": examples.len(),
            "semantic_weight": config.semantic_weight,
            "acoustic_weight": config.acoustic_weight,
            "adapter": args.adapter,
        })
    );
    Ok(())
}

/// Flags of `csm merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Base CSM checkpoint (file or directory).
    #[arg(long, value_name = "PATH")]
    model_path: PathBuf,
    /// Adapter: a run's output directory or its adapters.safetensors.
    #[arg(long, value_name = "PATH")]
    adapter: PathBuf,
    /// Directory for the merged model (model.safetensors + config.json, in
    /// the base checkpoint's format).
    #[arg(long, value_name = "DIR")]
    output_dir: PathBuf,
}

/// Fuses an adapter into the base weights and saves them.
pub fn merge(args: MergeArgs) -> Result<()> {
    let mut args = args;
    super::hub_paths::resolve(&mut args.model_path, &mut None, &mut None)?;
    let backend = runtime::use_best_device();
    let mut loaded = load_csm(
        &args.model_path,
        &LoadOptions {
            dtype: backend.default_dtype(),
            config: None,
        },
    )?;
    adapter::load_mlx(&mut loaded.model, &args.adapter)
        .with_context(|| format!("cannot apply --adapter {}", args.adapter.display()))?;
    let file = trainer::save_merged(&loaded, &args.output_dir)?;
    println!(
        "merged model ({}) written to {}",
        loaded.format,
        file.display()
    );
    Ok(())
}
