//! Loading Whisper from a transformers directory (`config.json`,
//! `generation_config.json`, `model.safetensors` or shards, and
//! `tokenizer.json` or openai-whisper's `multilingual.tiktoken`).
//!
//! The one rename ([`sanitize`]): drop the `model.` prefix, drop the tied
//! `proj_out.weight` (it must equal `decoder.embed_tokens.weight`'s shape),
//! and turn the convs from torch `[out, in, k]` into MLX `[out, k, in]`.
//! Loading is then strict: any missing, unexpected or mis-shaped tensor
//! fails with the full list.

use std::path::{Path, PathBuf};

use mlx_rs::Dtype;

use super::config::WhisperConfig;
use super::error::WhisperError;
use super::model::WhisperModel;
use super::tokenizer::WhisperTokenizer;
use crate::checkpoint::{load_strict, CheckpointError, WeightMap};

/// A loaded model with its tokenizer.
#[derive(Debug, Clone)]
pub struct Whisper {
    /// Weights.
    pub model: WhisperModel,
    /// Tokenizer matching the model's vocabulary.
    pub tokenizer: WhisperTokenizer,
}

impl Whisper {
    /// Loads a transformers Whisper directory.
    ///
    /// # Errors
    /// Missing files, a bad config, a checkpoint that does not match the
    /// config, or a tokenizer whose special tokens do not fit the vocabulary.
    pub fn load(dir: &Path) -> Result<Self, WhisperError> {
        let config = WhisperConfig::from_dir(dir)?;
        let model = WhisperModel::load_dir(dir, &config)?;
        let tokenizer = load_tokenizer(dir, &config)?;
        Ok(Whisper { model, tokenizer })
    }
}

/// The files of a hub repo that [`Whisper::load`] reads, picked from the
/// repo's listing (paths relative to the repo): `config.json`,
/// `generation_config.json` (the alignment heads of word timings) when
/// there, `tokenizer.json` (else `multilingual.tiktoken`), and the weights:
/// `model.safetensors`, or the top-level shards with their
/// `model.safetensors.index.json`. Nothing else of the repo is needed. The
/// app downloads exactly these for a Whisper repo no bundle names.
///
/// # Errors
/// [`WhisperError::Config`] saying what the listing lacks (no config, no
/// tokenizer, no safetensors weights: a repo with only `.bin` files).
pub fn files_to_fetch(listing: &[String]) -> Result<Vec<&str>, WhisperError> {
    let has = |name: &str| listing.iter().any(|f| f == name);
    if !has("config.json") {
        return Err(WhisperError::config(
            "the repo has no config.json, so it is not a transformers Whisper model",
        ));
    }
    let mut wanted = vec!["config.json"];
    if has("generation_config.json") {
        wanted.push("generation_config.json");
    }
    match ["tokenizer.json", "multilingual.tiktoken"]
        .into_iter()
        .find(|f| has(f))
    {
        Some(f) => wanted.push(f),
        None => {
            return Err(WhisperError::config(
                "the repo has no tokenizer.json (nor multilingual.tiktoken)",
            ))
        }
    }
    if has("model.safetensors") {
        wanted.push("model.safetensors");
        return Ok(wanted);
    }
    let shards: Vec<&str> = listing
        .iter()
        .map(String::as_str)
        .filter(|f| !f.contains('/') && f.ends_with(".safetensors"))
        .collect();
    if shards.is_empty() || !has("model.safetensors.index.json") {
        return Err(WhisperError::config(
            "the repo has no safetensors weights (model.safetensors, or shards with \
             model.safetensors.index.json); .bin/.pt checkpoints are not read",
        ));
    }
    wanted.push("model.safetensors.index.json");
    wanted.extend(shards);
    Ok(wanted)
}

/// `tokenizer.json`, else `multilingual.tiktoken` beside the weights.
pub fn load_tokenizer(
    dir: &Path,
    config: &WhisperConfig,
) -> Result<WhisperTokenizer, WhisperError> {
    let vocab = config.vocab_size as usize;
    let json = dir.join("tokenizer.json");
    let tok = if json.is_file() {
        WhisperTokenizer::from_tokenizer_json(&json, vocab)?
    } else {
        let tiktoken = dir.join("multilingual.tiktoken");
        let text = std::fs::read_to_string(&tiktoken).map_err(|source| WhisperError::Io {
            path: tiktoken.clone(),
            source,
        })?;
        WhisperTokenizer::from_tiktoken(&text, config.num_languages())?
    };
    let last = tok.special.timestamp_begin as usize + super::tokenizer::N_TIMESTAMPS as usize;
    if last != vocab {
        return Err(WhisperError::Tokenizer(format!(
            "{}: its timestamp tokens end at id {last}, the model has {vocab} ids",
            dir.display()
        )));
    }
    Ok(tok)
}

impl WhisperModel {
    /// Builds the model from transformers-named tensors.
    pub fn from_weights(config: &WhisperConfig, weights: WeightMap) -> Result<Self, WhisperError> {
        let mut model = WhisperModel::new(config)?;
        load_strict(&mut model, sanitize(weights)?)?;
        Ok(model)
    }

    /// Reads `model.safetensors` (or every `*.safetensors`) in `dir`, in f32.
    pub fn load_dir(dir: &Path, config: &WhisperConfig) -> Result<Self, WhisperError> {
        let files = safetensors_files(dir)?;
        let weights = WeightMap::from_safetensors(&files, Some(Dtype::Float32))?;
        Self::from_weights(config, weights)
    }
}

/// transformers names -> this module's names (see the module docs).
pub fn sanitize(mut weights: WeightMap) -> Result<WeightMap, WhisperError> {
    let mlx = |source| CheckpointError::Mlx {
        context: "transposing a Whisper conv".into(),
        source,
    };
    if let Some(proj) = weights.remove("proj_out.weight") {
        let emb = weights.tensors.get("model.decoder.embed_tokens.weight");
        if emb.map(|e| e.shape()) != Some(proj.shape()) {
            return Err(WhisperError::Checkpoint(CheckpointError::Mismatch {
                source_name: weights.source.clone(),
                missing: vec![],
                unexpected: vec!["proj_out.weight (not tied to decoder.embed_tokens.weight)".into()],
                misshaped: vec![],
            }));
        }
    }
    weights.rename(|k| Some(k.strip_prefix("model.").unwrap_or(k).to_string()));
    for key in ["encoder.conv1.weight", "encoder.conv2.weight"] {
        if let Some(w) = weights.remove(key) {
            if w.ndim() == 3 {
                weights.insert(key, w.transpose_axes(&[0, 2, 1]).map_err(mlx)?);
            } else {
                weights.insert(key, w);
            }
        }
    }
    Ok(weights)
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, WhisperError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let io = |source| WhisperError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no .safetensors file in the Whisper directory",
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_repo_listing_gives_the_files_load_reads() {
        let repo = listing(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "tokenizer.json",
            "vocab.json",
            "flax/model.safetensors",
        ]);
        assert_eq!(
            files_to_fetch(&repo).unwrap(),
            [
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "model.safetensors"
            ]
        );
        let sharded = listing(&[
            "config.json",
            "multilingual.tiktoken",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ]);
        assert_eq!(
            files_to_fetch(&sharded).unwrap(),
            [
                "config.json",
                "multilingual.tiktoken",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        for (names, says) in [
            (
                &["config.json", "tokenizer.json", "pytorch_model.bin"][..],
                "no safetensors",
            ),
            (
                &["config.json", "model.safetensors"][..],
                "no tokenizer.json",
            ),
            (
                &["model.safetensors", "tokenizer.json"][..],
                "no config.json",
            ),
        ] {
            let err = files_to_fetch(&listing(names)).unwrap_err().to_string();
            assert!(err.contains(says), "{names:?}: {err}");
        }
    }
}
