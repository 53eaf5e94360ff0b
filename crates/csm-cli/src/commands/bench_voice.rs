//! `csm bench-voice-models` (hidden): writes the random-weight models the
//! `csm voice` benchmark runs on (bench/voice/run.sh), so that it needs no
//! download: a CSM-1B-shape checkpoint (Sesame's layout), the released Mimi
//! architecture, and a Whisper folder of a released shape (transformers
//! layout), all with random values, in bf16.
//!
//! ```text
//! DIR/csm-1b/model.safetensors + config.json
//! DIR/mimi.safetensors
//! DIR/whisper/config.json + model.safetensors (+ the tokenizer given)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use csm_core::checkpoint::write::save_safetensors;
use csm_core::codec::{Mimi, MimiConfig};
use csm_core::demo::{byte_tokenizer_json, demo_config, transformers_config_json};
use csm_core::mlx_rs::module::ModuleParameters;
use csm_core::mlx_rs::{random, Array, Dtype};
use csm_core::model::load::{canonical_weights, to_format, ModelFormat};
use csm_core::model::{Csm, CsmConfig};
use csm_core::whisper::WhisperModel;

use super::bench_transcribe::WhisperSize;

/// Flags of `csm bench-voice-models`.
#[derive(Debug, Args)]
pub struct BenchVoiceModelsArgs {
    /// Folder to write the models into (files already there are kept).
    #[arg(long)]
    dir: PathBuf,
    /// Whisper shape.
    #[arg(long, value_enum, default_value = "large-v3-turbo")]
    whisper_size: WhisperSize,
    /// openai-whisper's `multilingual.tiktoken`, copied into the Whisper
    /// folder as its tokenizer.
    #[arg(long)]
    tiktoken: PathBuf,
    /// The demo's small CSM (with its byte tokenizer in DIR/csm-1b)
    /// instead of CSM-1B, to try the benchmark on a CPU.
    #[arg(long)]
    tiny: bool,
}

fn bf16(tensors: impl IntoIterator<Item = (String, Array)>) -> Result<BTreeMap<String, Array>> {
    tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.as_dtype(Dtype::Bfloat16)?)))
        .collect()
}

/// Runs `csm bench-voice-models`.
pub fn run(args: BenchVoiceModelsArgs) -> Result<()> {
    random::seed(11)?;
    let csm_dir = args.dir.join("csm-1b");
    let model_file = csm_dir.join("model.safetensors");
    if !model_file.exists() {
        std::fs::create_dir_all(&csm_dir)?;
        let model_cfg = if args.tiny {
            demo_config()
        } else {
            CsmConfig::csm_1b()
        };
        let model = Csm::new(&model_cfg)?;
        let weights = canonical_weights(&model);
        if args.tiny {
            // The demo's shape has no Sesame names: csm-mlx names, a
            // transformers config and the demo's byte tokenizer.
            save_safetensors(&model_file, &bf16(weights.tensors)?, &HashMap::new())?;
            let json = transformers_config_json(&model_cfg);
            std::fs::write(
                csm_dir.join("config.json"),
                serde_json::to_string_pretty(&json)?,
            )?;
            std::fs::write(
                csm_dir.join("tokenizer.json"),
                serde_json::to_string(&byte_tokenizer_json())?,
            )?;
        } else {
            let original = to_format(&weights, ModelFormat::Original, &model_cfg)?;
            save_safetensors(&model_file, &bf16(original.tensors)?, &HashMap::new())?;
            let json = model_cfg
                .to_sesame_json()
                .context("CSM-1B has Sesame flavor names")?;
            std::fs::write(
                csm_dir.join("config.json"),
                serde_json::to_string_pretty(&json)?,
            )?;
        }
        say!("wrote {}", model_file.display());
    }
    let mimi_file = args.dir.join("mimi.safetensors");
    if !mimi_file.exists() {
        let mimi = Mimi::new(MimiConfig::mimi_v0_1())?;
        let weights = csm_core::codec::load::checkpoint_weights(&mimi)?;
        save_safetensors(&mimi_file, &weights, &HashMap::new())?;
        say!("wrote {}", mimi_file.display());
    }
    let whisper_dir = args.dir.join("whisper");
    let whisper_file = whisper_dir.join("model.safetensors");
    if !whisper_file.exists() {
        std::fs::create_dir_all(&whisper_dir)?;
        let c = args.whisper_size.config();
        let model = WhisperModel::new(&c)?;
        // transformers names: the `model.` prefix, convs as [out, in, k].
        let mut weights = BTreeMap::new();
        for (k, v) in model.parameters().flatten() {
            let v = if k.ends_with("conv1.weight") || k.ends_with("conv2.weight") {
                v.swap_axes(1, 2)?
            } else {
                v.clone()
            };
            weights.insert(format!("model.{k}"), v);
        }
        save_safetensors(&whisper_file, &bf16(weights)?, &HashMap::new())?;
        let config = serde_json::json!({
            "model_type": "whisper",
            "activation_function": "gelu",
            "num_mel_bins": c.num_mel_bins,
            "d_model": c.d_model,
            "encoder_layers": c.encoder_layers,
            "encoder_attention_heads": c.encoder_attention_heads,
            "encoder_ffn_dim": c.encoder_ffn_dim,
            "decoder_layers": c.decoder_layers,
            "decoder_attention_heads": c.decoder_attention_heads,
            "decoder_ffn_dim": c.decoder_ffn_dim,
            "vocab_size": c.vocab_size,
            "max_source_positions": c.max_source_positions,
            "max_target_positions": c.max_target_positions,
        });
        std::fs::write(
            whisper_dir.join("config.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
        std::fs::copy(&args.tiktoken, whisper_dir.join("multilingual.tiktoken"))
            .with_context(|| format!("copying {}", args.tiktoken.display()))?;
        say!("wrote {}", whisper_file.display());
    }
    tell!("{}", args.dir.display());
    Ok(())
}
