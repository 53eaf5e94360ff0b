//! The Mimi audio codec (encoder + decoder) in MLX, fp32 throughout.
//!
//! * [`Mimi::encode`]: waveform `[B, 1, N]` at 24 kHz -> codes
//!   `[B, K, ceil(N / 1920)]`.
//! * [`Mimi::decode`]: codes `[B, K, T]` -> waveform `[B, 1, 1920 T]`.
//! * Loading: [`Mimi::load`], [`Mimi::from_kyutai_file`],
//!   [`Mimi::from_hf_dir`], [`Mimi::from_hf_weights`] (transformers CSM's
//!   `codec_model.*`), all strict (see [`load`]).
//!
//! ```ignore
//! use csm_core::codec::{Mimi, MimiConfig};
//! // kyutai file (CSM's default), or a transformers dir, or a CSM-HF dir:
//! let mut mimi = Mimi::load(path, None)?;          // detects the layout
//! mimi.set_num_codebooks(32)?;                       // as CSM does
//! let codes = mimi.encode(&wav)?;                    // [1, 1, N] f32 -> [1, 32, T] i32
//! let audio = mimi.decode(&codes)?;                  // -> [1, 1, 1920 T] f32
//! // Inside the transformers CSM loader (prefix already stripped):
//! let mimi = Mimi::from_hf_weights(&config["codec_config"], codec_weights)?;
//! ```
//!
//! Batch (non-streaming) semantics of moshi 0.2.2 / transformers: causal
//! convs pad `k - stride` on the left and `extra` on the right, the
//! transformers attend within a causal window of `context` frames.

pub mod config;
pub mod conv;
pub mod error;
pub mod load;
pub mod mimi;
pub mod quantizer;
pub mod seanet;
pub mod transformer;

pub use config::{MimiConfig, MimiQuantizerConfig, MimiResampleConfig, MimiTransformerConfig};
pub use error::CodecError;
pub use load::{detect_format, MimiCheckpointFormat, KYUTAI_MIMI_FILE};
pub use mimi::Mimi;
