//! The Sesame CSM model: configuration, the Llama stacks, the top-level
//! model with its generation pieces, the training loss, and checkpoint
//! loading in every supported format.

pub mod config;
pub mod csm;
pub mod error;
pub mod llama;
pub mod load;
pub mod loss;

pub use config::{ConfigKind, CsmConfig, Llama3RopeScaling, LlamaConfig};
pub use csm::{Csm, FrameInput};
pub use error::ModelError;
pub use llama::{padded_causal_mask, AttentionMask, KvCache};
pub use load::{
    detect, load_csm, to_canonical, to_format, Detected, LoadOptions, LoadedCsm, ModelFormat,
};
pub use loss::{
    choose_decoder_frames, cross_entropy, loss_frame_indices, CsmLoss, LossBatch, LossWeights,
};
