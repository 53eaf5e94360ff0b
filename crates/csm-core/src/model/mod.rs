//! The Sesame CSM model: configuration, the Llama stacks, the top-level
//! model with its generation pieces, the training loss, and checkpoint
//! loading in every supported format.
//!
//! How the rest of the crate uses it:
//!
//! - **Load**: [`load_csm`]`(path, &LoadOptions { dtype, config })` accepts a
//!   file or directory in the original, transformers, csm-mlx or mlx-audio
//!   layout and returns [`LoadedCsm`] (model, [`ModelFormat`], config
//!   origin, and the Mimi weights of a transformers checkpoint). Attach LoRA
//!   only after loading: strict loading expects exactly the base parameters.
//! - **Train**: build frames `[B, S, n_cb + 1]` + column mask, a per-frame
//!   `loss_mask` (audio and EOS frames of the target turns), pick the depth
//!   decoder frames with [`loss_frame_indices`] + [`choose_decoder_frames`],
//!   and call [`Csm::loss`] (returns [`CsmLoss`]; differentiate `total`).
//!   Right-padded batches need only [`AttentionMask::Causal`].
//! - **Generate**: [`Csm::new_backbone_cache`], [`Csm::backbone_step`] on the
//!   prompt, then per frame [`Csm::generate_frame`] with a sampling closure,
//!   [`Csm::eos_frames`], and [`Csm::audio_frame`] to feed it back.
//! - **Save**: [`load::canonical_weights`] then [`to_format`] in the source's
//!   [`ModelFormat`] (plus [`load::add_codec`] for a complete transformers
//!   checkpoint).

pub mod checkpointing;
pub mod config;
pub mod cross_entropy;
pub mod csm;
pub mod error;
pub mod flops;
pub mod llama;
pub mod load;
pub mod loss;
pub mod proj;
pub mod quant;

pub use config::{ConfigKind, CsmConfig, Llama3RopeScaling, LlamaConfig};
pub use csm::{Csm, FrameInput, TrainKernels};
pub use error::ModelError;
pub use llama::{packed_causal_mask, padded_causal_mask, rope_at, AttentionMask, KvCache};
pub use load::{
    detect, load_csm, to_canonical, to_format, Detected, LoadOptions, LoadedCsm, ModelFormat,
};
pub use loss::{
    choose_decoder_frames, cross_entropy, loss_frame_indices, ArrayLossBatch, CsmLoss, LossBatch,
    LossWeights,
};
pub use proj::Proj;
pub use quant::{quantize_stacks, QuantReport, QuantSpec};
