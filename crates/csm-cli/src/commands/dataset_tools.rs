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
        say!("warning: {w}");
    }
    let u = &prepared.usage;
    tell!(
        "audio read: {} in {} recording(s); used: {} in {} utterance(s) from {} recording(s), {}",
        duration(u.seconds_in),
        u.recordings.len(),
        duration(u.seconds_used),
        u.utterances,
        u.recordings_used,
        segmenting(&config)
    );
    tell!(
        "split: {} utterance(s) ({}) for training, {} ({}) for validation",
        u.train_utterances,
        duration(u.train_seconds),
        u.validation_utterances,
        duration(u.validation_seconds)
    );
    for sp in &u.speakers {
        let conversations = match sp.conversations {
            0 => String::new(),
            n => format!(", {n} of them conversation(s)"),
        };
        tell!(
            "speaker {} (id {}): {} in {} utterance(s) from {} recording(s){conversations}; \
             {} training, {} validation",
            sp.speaker.name,
            sp.speaker.id,
            duration(sp.seconds),
            sp.utterances,
            sp.recordings,
            sp.train_utterances,
            sp.validation_utterances
        );
    }
    if let Some(voice) = &prepared.voice {
        tell!(
            "voice scores: utterance {} of {} ({}) held out of training as the context of the \
             voice samples",
            voice.clip.index,
            voice.clip.recording_id,
            duration(voice.clip.duration_s())
        );
    }
    tell!(
        "{} codes from the cache, {} encoded now ({}); {} training and {} validation examples",
        prepared.cache.hits,
        prepared.cache.encoded,
        cache.display(),
        prepared.train.len(),
        prepared.val.len()
    );
    Ok(())
}

/// `41.3 s` or `12.5 min`.
fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else {
        format!("{:.1} min", seconds / 60.0)
    }
}

/// How the audio was cut, in the flags' words.
fn segmenting(c: &csm_core::train::TrainConfig) -> String {
    let trim = if c.trim_silence {
        format!(
            "edge silence trimmed to {:.2} s (--no-trim-silence keeps it)",
            c.edge_pad_secs
        )
    } else {
        "edge silence kept (--no-trim-silence)".to_string()
    };
    format!(
        "{trim}; aligned recordings cut into {}-{} s utterances",
        c.min_utterance_secs, c.max_utterance_secs
    )
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
    if let Some(bits) = config.quantize {
        // The base a QLoRA run trained on, to compare with full precision.
        let spec = csm_core::model::QuantSpec::new(bits).map_err(anyhow::Error::msg)?;
        csm_core::model::quantize_stacks(&mut assets.loaded.model, spec)?;
    }
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
    let speakers: Vec<u32> = (prepared.train_speakers.iter())
        .chain(&prepared.val_speakers)
        .copied()
        .collect();
    let examples: Vec<_> = prepared.train.into_iter().chain(prepared.val).collect();
    let weights = LossWeights {
        semantic: config.semantic_weight,
        acoustic: config.acoustic_weight,
    };
    // With several speakers, each one's loss too (its examples batched
    // together); the total pools them.
    let (loss, per_speaker) = if prepared.speakers.is_empty() {
        let loss = trainer::evaluate(
            &mut assets.loaded.model,
            &examples,
            config.batch_size,
            weights,
        )?;
        (loss, Vec::new())
    } else {
        trainer::evaluate_by_speaker(
            &mut assets.loaded.model,
            &examples,
            &speakers,
            config.batch_size,
            weights,
        )?
    };
    let per_speaker: Vec<serde_json::Value> = per_speaker
        .iter()
        .map(|l| {
            let name = prepared.speakers.iter().find(|s| s.id == l.speaker);
            serde_json::json!({
                "speaker": name.map(|s| s.name.clone()),
                "id": l.speaker,
                "loss": l.loss.total,
                "semantic_loss": l.loss.semantic,
                "acoustic_loss": l.loss.acoustic,
                "examples": l.examples,
            })
        })
        .collect();
    tell!(
        "{}",
        serde_json::json!({
            "loss": loss.total,
            "semantic_loss": loss.semantic,
            "acoustic_loss": loss.acoustic,
            "examples": examples.len(),
            "seconds_in": prepared.usage.seconds_in,
            "seconds_used": prepared.usage.seconds_used,
            "trim_silence": config.trim_silence,
            "semantic_weight": config.semantic_weight,
            "acoustic_weight": config.acoustic_weight,
            "adapter": args.adapter,
            "quantize": config.quantize,
            "speakers": per_speaker,
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
    tell!(
        "merged model ({}) written to {}",
        loaded.format,
        file.display()
    );
    Ok(())
}
