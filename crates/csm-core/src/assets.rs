//! Finding the Mimi codec and the tokenizer that go with a CSM checkpoint
//! when the user does not name them (`--mimi-path`, `--tokenizer-path`).

use std::path::{Path, PathBuf};

use crate::codec::{CodecError, Mimi, KYUTAI_MIMI_FILE};

/// A missing companion file, with every place that was tried.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// Nothing found.
    #[error("no {what} found for {model}; looked at:\n  {}\nPass {flag} PATH.", .tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n  "))]
    NotFound {
        /// `Mimi codec` or `tokenizer.json`.
        what: &'static str,
        /// The model path the search started from.
        model: PathBuf,
        /// Paths tried.
        tried: Vec<PathBuf>,
        /// The flag that names it explicitly.
        flag: &'static str,
    },
    /// The codec was found but could not be loaded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The codec emits codes the model has no embedding for.
    #[error("the Mimi codec {origin} has {bins} codes per codebook, more than the model's audio vocabulary of {vocab}: codec and model do not belong together (check --mimi-path)")]
    CodecTooLarge {
        /// Where the codec came from.
        origin: String,
        /// Codes per codebook.
        bins: i32,
        /// Model's audio vocabulary.
        vocab: i32,
    },
}

/// Checks that every code `mimi` can emit has an embedding in a model with
/// `audio_vocab` audio ids: MLX's gather does not check indices, so a code
/// past the table would read other memory instead of failing.
///
/// # Errors
/// [`AssetError::CodecTooLarge`], naming `origin`.
pub fn check_codec_fits(mimi: &Mimi, origin: &str, audio_vocab: i32) -> Result<(), AssetError> {
    let bins = mimi.config.quantizer.bins;
    if bins > audio_vocab {
        return Err(AssetError::CodecTooLarge {
            origin: origin.to_string(),
            bins,
            vocab: audio_vocab,
        });
    }
    Ok(())
}

/// The folder a model path lives in (the path itself for a directory).
pub fn model_dir(model_path: &Path) -> PathBuf {
    if model_path.is_dir() {
        model_path.to_path_buf()
    } else {
        model_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    }
}

/// A loaded codec and the files its weights came from (for the codes
/// cache's fingerprint).
#[derive(Debug)]
pub struct LoadedMimi {
    /// The codec, set to `num_codebooks`.
    pub mimi: Mimi,
    /// Weight files read.
    pub files: Vec<PathBuf>,
    /// Where it was found, for the log.
    pub origin: String,
}

/// Loads the Mimi codec: `explicit` if given; else the codec inside a
/// transformers CSM directory; else the kyutai file or a `mimi/` folder
/// next to the model.
pub fn load_mimi(
    model_path: &Path,
    explicit: Option<&Path>,
    num_codebooks: usize,
) -> Result<LoadedMimi, AssetError> {
    let dir = model_dir(model_path);
    let (mimi, path) = if let Some(p) = explicit {
        (Mimi::load(p, None)?, p.to_path_buf())
    } else if has_codec_config(&dir) && has_codec_weights(&dir) {
        (Mimi::from_hf_dir(&dir)?, dir.clone())
    } else {
        let tried = [
            dir.join(KYUTAI_MIMI_FILE),
            dir.join("mimi.safetensors"),
            dir.join("mimi"),
        ];
        match tried.iter().find(|p| p.exists()) {
            Some(p) => (Mimi::load(p, None)?, p.clone()),
            None => {
                return Err(AssetError::NotFound {
                    what: "Mimi codec",
                    model: model_path.to_path_buf(),
                    tried: std::iter::once(dir.join("config.json (codec_config)"))
                        .chain(tried)
                        .collect(),
                    flag: "--mimi-path",
                })
            }
        }
    };
    let mut mimi = mimi;
    mimi.set_num_codebooks(num_codebooks)?;
    Ok(LoadedMimi {
        mimi,
        files: weight_files(&path),
        origin: path.display().to_string(),
    })
}

fn has_codec_config(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("codec_config").is_some())
}

/// Whether the checkpoint files in `dir` hold `codec_model.*` tensors
/// (headers only).
fn has_codec_weights(dir: &Path) -> bool {
    weight_files(dir).iter().any(|f| {
        crate::model::load::safetensors_shapes(f)
            .map(|t| t.keys().any(|k| k.starts_with("codec_model.")))
            .unwrap_or(false)
    })
}

/// The safetensors files of a path (itself if a file).
fn weight_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

/// Finds `tokenizer.json`: `explicit`, else next to the model, in a
/// `tokenizer/` folder beside it, or one level up.
pub fn find_tokenizer(model_path: &Path, explicit: Option<&Path>) -> Result<PathBuf, AssetError> {
    if let Some(p) = explicit {
        return Ok(if p.is_dir() {
            p.join("tokenizer.json")
        } else {
            p.to_path_buf()
        });
    }
    let dir = model_dir(model_path);
    let tried = vec![
        dir.join("tokenizer.json"),
        dir.join("tokenizer").join("tokenizer.json"),
        dir.join("..").join("tokenizer.json"),
    ];
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(AssetError::NotFound {
            what: "tokenizer.json",
            model: model_path.to_path_buf(),
            tried,
            flag: "--tokenizer-path",
        })
}
