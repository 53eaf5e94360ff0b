//! The embedded default: everything `csm demo` (and the app's one-click
//! demo, and the end-to-end tests) needs, built locally with no download.
//!
//! - a small CSM (random weights, seeded) in csm-mlx layout with a
//!   transformers-style `config.json`;
//! - the released Mimi architecture (`MimiConfig::mimi_v0_1`) with random
//!   weights, so audio becomes real 12.5 Hz codes of the right shape;
//! - a byte-level tokenizer (256 byte tokens + CSM's BOS/EOS);
//! - a spoken dataset synthesised with espeak-ng.
//!
//! Random weights cannot speak: the demo shows the machinery (encoding,
//! caching, training, loss falling, checkpoints, adapters, samples). Real
//! voices need the released CSM-1B, Mimi and Llama 3.2 tokenizer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_rs::{random, Dtype};
use serde_json::json;

use crate::checkpoint::write::{save_safetensors, write_atomic};
use crate::checkpoint::CheckpointError;
use crate::codec::{CodecError, Mimi, MimiConfig};
use crate::data::espeak::{generate_demo_dataset, DemoOptions};
use crate::data::DataError;
use crate::model::load::canonical_weights;
use crate::model::{Csm, CsmConfig, Llama3RopeScaling, LlamaConfig};

/// Where the demo's pieces are.
#[derive(Debug, Clone)]
pub struct DemoPaths {
    /// The demo root.
    pub root: PathBuf,
    /// CSM checkpoint directory (`model.safetensors` + `config.json`).
    pub model: PathBuf,
    /// Mimi weights (released architecture, random values).
    pub mimi: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `audio/` of the dataset.
    pub audio_dir: PathBuf,
    /// `transcripts/` of the dataset.
    pub transcript_dir: PathBuf,
}

impl DemoPaths {
    /// Where [`create_demo`] puts each piece under `root`.
    pub fn under(root: &Path) -> Self {
        let model = root.join("model");
        DemoPaths {
            root: root.to_path_buf(),
            mimi: model.join("mimi.safetensors"),
            tokenizer: model.join("tokenizer.json"),
            audio_dir: root.join("data").join("audio"),
            transcript_dir: root.join("data").join("transcripts"),
            model,
        }
    }
}

/// Demo errors.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Writing weights failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Building the codec failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Building the dataset failed (e.g. espeak-ng missing).
    #[error(transparent)]
    Data(#[from] DataError),
    /// Building the tokenizer failed.
    #[error("building the demo tokenizer: {0}")]
    Tokenizer(String),
    /// An MLX operation failed.
    #[error("MLX error while building the demo model: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

/// Codebooks the demo model uses (of Mimi's 32).
pub const DEMO_CODEBOOKS: i32 = 8;

/// The demo CSM: the released layout at a size that trains in seconds.
pub fn demo_config() -> CsmConfig {
    let stack = |layers, dim, heads, kv, hidden| LlamaConfig {
        num_layers: layers,
        embed_dim: dim,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: dim / heads,
        intermediate_dim: hidden,
        norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: Some(Llama3RopeScaling::csm()),
        max_seq_len: 2048,
    };
    CsmConfig {
        backbone: stack(4, 256, 8, 2, 768),
        decoder: stack(2, 128, 4, 2, 384),
        text_vocab_size: 258,
        audio_vocab_size: 2051,
        audio_num_codebooks: DEMO_CODEBOOKS,
    }
}

/// transformers-style `config.json` for a config (what the loader reads for
/// sizes that have no Sesame flavor name).
pub fn transformers_config_json(c: &CsmConfig) -> serde_json::Value {
    let stack = |s: &LlamaConfig| {
        json!({
            "hidden_size": s.embed_dim,
            "intermediate_size": s.intermediate_dim,
            "num_hidden_layers": s.num_layers,
            "num_attention_heads": s.num_heads,
            "num_key_value_heads": s.num_kv_heads,
            "head_dim": s.head_dim,
            "rms_norm_eps": s.norm_eps,
            "rope_theta": s.rope_theta,
            "rope_scaling": s.rope_scaling.map(|r| json!({
                "rope_type": "llama3",
                "factor": r.factor,
                "low_freq_factor": r.low_freq_factor,
                "high_freq_factor": r.high_freq_factor,
                "original_max_position_embeddings": r.original_max_position_embeddings,
            })),
            "max_position_embeddings": s.max_seq_len,
            "hidden_act": "silu",
        })
    };
    let mut top = stack(&c.backbone);
    top["model_type"] = json!("csm");
    top["num_codebooks"] = json!(c.audio_num_codebooks);
    top["vocab_size"] = json!(c.audio_vocab_size);
    top["text_vocab_size"] = json!(c.text_vocab_size);
    let mut depth = stack(&c.decoder);
    depth["num_codebooks"] = json!(c.audio_num_codebooks);
    depth["vocab_size"] = json!(c.audio_vocab_size);
    depth["backbone_hidden_size"] = json!(c.backbone.embed_dim);
    top["depth_decoder_config"] = depth;
    top
}

/// A byte-level BPE tokenizer without merges: every UTF-8 byte is a token
/// (ids 0-255), plus `<|begin_of_text|>` (256) and `<|end_of_text|>` (257).
pub fn byte_tokenizer_json() -> serde_json::Value {
    // GPT-2's byte-to-unicode table: printable bytes map to themselves, the
    // rest to code points from 256 up.
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = printable.into_iter().zip(chars).collect();
    pairs.sort();
    let vocab: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|&(b, c)| (char::from_u32(c).expect("valid").to_string(), json!(b)))
        .collect();
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(256, "<|begin_of_text|>"), special(257, "<|end_of_text|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []},
    })
}

/// Builds the demo under `root` (model, codec, tokenizer, `sentences`
/// spoken utterances). Existing pieces are rebuilt; the dataset folder must
/// be empty or absent.
pub fn create_demo(root: &Path, sentences: usize, seed: u64) -> Result<DemoPaths, DemoError> {
    let paths = DemoPaths::under(root);
    std::fs::create_dir_all(&paths.model).map_err(|source| CheckpointError::Io {
        path: paths.model.clone(),
        source,
    })?;
    let tok = serde_json::to_string(&byte_tokenizer_json()).expect("serialisable");
    write_atomic(&paths.tokenizer, tok.as_bytes())?;

    random::seed(seed)?;
    let config = demo_config();
    let csm = Csm::new(&config)?;
    let weights = canonical_weights(&csm);
    save_safetensors(
        &paths.model.join("model.safetensors"),
        &weights.tensors,
        &HashMap::new(),
    )?;
    let cfg =
        serde_json::to_string_pretty(&transformers_config_json(&config)).expect("serialisable");
    write_atomic(&paths.model.join("config.json"), cfg.as_bytes())?;

    let mimi = Mimi::new(MimiConfig::mimi_v0_1())?;
    let mimi_weights = crate::codec::load::checkpoint_weights(&mimi)?;
    save_safetensors(&paths.mimi, &mimi_weights, &HashMap::new())?;

    if !paths.audio_dir.exists() {
        generate_demo_dataset(
            &root.join("data"),
            &DemoOptions {
                count: Some(sentences),
                ..Default::default()
            },
        )?;
    }
    Ok(paths)
}

/// Default weights dtype of the demo files.
pub const DEMO_DTYPE: Dtype = Dtype::Float32;
