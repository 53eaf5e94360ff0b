//! Errors of model construction and checkpoint loading.

use std::path::PathBuf;

use crate::checkpoint::CheckpointError;

/// Everything that can go wrong finding, reading and loading a CSM model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// Path at fault.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, shard index, safetensors header) is malformed.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// File at fault.
        path: PathBuf,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A config file is not a usable CSM config.
    #[error("{path}: {message}")]
    Config {
        /// File at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No weights where the model path points.
    #[error("no CSM checkpoint at {path}: {message}")]
    NotFound {
        /// The model path.
        path: PathBuf,
        /// What was looked for.
        message: String,
    },
    /// The tensor names match none of the known layouts.
    #[error(
        "{path}: unrecognised checkpoint layout. Supported: original Sesame names \
         (backbone.layers.N.attn.q_proj.weight, sa_norm.scale, ...), transformers \
         CsmForConditionalGeneration (backbone_model.*, depth_decoder.*, lm_head), csm-mlx \
         (backbone.layers.N.self_attn.q_proj.weight, ...) and mlx-audio (model.backbone.*). \
         First keys found: {}", sample_keys.join(", ")
    )]
    UnknownFormat {
        /// The checkpoint.
        path: PathBuf,
        /// A few of its tensor names.
        sample_keys: Vec<String>,
    },
    /// A container this build cannot read yet.
    #[error("{path}: {message}")]
    UnsupportedContainer {
        /// The checkpoint.
        path: PathBuf,
        /// What is missing and what to do instead.
        message: String,
    },
    /// No config could be determined.
    #[error("{path}: {message}")]
    NoConfig {
        /// The model path.
        path: PathBuf,
        /// Why, and how to provide one.
        message: String,
    },
    /// A tensor has a shape the conversion cannot handle.
    #[error("{source_name}: tensor `{key}` has shape {found:?}, expected {expected}")]
    Shape {
        /// Checkpoint.
        source_name: String,
        /// Tensor name.
        key: String,
        /// Expected shape, in words.
        expected: String,
        /// Shape found.
        found: Vec<i32>,
    },
    /// transformers' two copies of the audio embeddings differ.
    #[error(
        "{source_name}: `backbone_model.embed_tokens.embed_audio_tokens.weight` and \
         `depth_decoder.model.embed_tokens.weight` differ; CSM has one shared audio \
         embedding table, so this checkpoint cannot be represented"
    )]
    UntiedEmbeddings {
        /// Checkpoint.
        source_name: String,
    },
    /// Reading or strictly loading the tensors failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// An MLX operation failed.
    #[error("MLX error while {context}: {source}")]
    Mlx {
        /// What was being done.
        context: String,
        /// MLX's message.
        #[source]
        source: mlx_rs::error::Exception,
    },
}

impl ModelError {
    /// Wraps an MLX exception with context.
    pub fn mlx(context: impl Into<String>) -> impl FnOnce(mlx_rs::error::Exception) -> Self {
        let context = context.into();
        move |source| ModelError::Mlx { context, source }
    }
}
