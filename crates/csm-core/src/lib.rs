//! Sesame CSM fine-tuning engine on MLX: model, codec, data, LoRA, training
//! and generation, shared by the `csm` command-line tool and the desktop app.
//!
//! The pieces, in the order a fine-tune uses them:
//!
//! ```no_run
//! use csm_core::model::load::{load_csm, LoadOptions};
//! use csm_core::cancel::CancelToken;
//! use csm_core::train::{self, trainer, NullObserver, RunSettings, TrainConfig};
//! use csm_core::adapter;
//! use csm_core::data::audio::{write_wav, WavEncoding, TARGET_SAMPLE_RATE};
//! use csm_core::generate::{Generator, SamplingConfig};
//! use csm_core::mlx_rs::Dtype;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Load a model (any supported checkpoint format, strict).
//! let mut loaded = load_csm("csm-1b".as_ref(), &LoadOptions::default())?;
//!
//! // Apply LoRA by hand...
//! let config = TrainConfig {
//!     model_path: "csm-1b".into(),
//!     audio_dir: "me/audio".into(),
//!     transcript_dir: "me/transcripts".into(),
//!     output_dir: "runs/me".into(),
//!     ..TrainConfig::default()
//! };
//! adapter::attach(&mut loaded.model, &config.lora_spec())?;
//!
//! // ...or run the whole trainer (data, caching, steps, checkpoints), with
//! // the machine's settings read from the environment as `csm` reads them.
//! let settings = RunSettings::from_env(|k| std::env::var_os(k))?;
//! let summary = train::train(&config, &settings, &mut NullObserver, &CancelToken::new())?;
//!
//! // Load the trained adapter onto a fresh base model.
//! let mut base = load_csm("csm-1b".as_ref(), &LoadOptions::default())?;
//! adapter::load_mlx(&mut base.model, &summary.output_dir)?;
//!
//! // Speak a sample with the fine-tuned voice (Mimi and the tokenizer are
//! // found next to the model, as training finds them).
//! let mut generator = Generator::load("csm-1b".as_ref(), None, None, Dtype::Float32)?;
//! generator.apply_adapter(&summary.output_dir)?;
//! let sample = generator.generate(&[], "Hello from my voice.", 0, &SamplingConfig::default())?;
//! write_wav("sample.wav".as_ref(), &sample.audio, TARGET_SAMPLE_RATE, WavEncoding::Int16)?;
//! # Ok(()) }
//! ```

pub mod adapter;
pub mod assets;
pub mod cancel;
pub mod checkpoint;
pub mod codec;
pub mod data;
pub mod demo;
pub mod distributed;
mod ffi;
pub mod generate;
pub mod kernels;
pub mod model;
pub mod rng;
pub mod runtime;
pub mod score;
pub mod speaker;
pub mod tokenizer;
pub mod train;
pub mod whisper;

// The unit tests share the integration tests' helpers.
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod test_util;

pub use mlx_rs;
