//! Whisper speech recognition in MLX: log-mel frontend, encoder-decoder,
//! tokenizer, greedy/temperature decoding with openai-whisper's logit rules,
//! the long-form `transcribe` loop and word timestamps from cross-attention.
//!
//! Ported from openai/whisper (`audio.py`, `model.py`, `decoding.py`,
//! `transcribe.py`, `timing.py`, release 20250625) with the weights in the
//! transformers layout (`openai/whisper-tiny` ... `large-v3`,
//! `large-v3-turbo`), read by [`load`]. Parity with transformers 5.24 and
//! openai-whisper is checked by `tests/whisper_*.rs` on the tiny random
//! models of `tests/fixtures/whisper` (`scripts/fixtures/make_whisper_fixtures.py`).
//!
//! ```ignore
//! use csm_core::whisper::{Whisper, TranscribeOptions};
//! let mut w = Whisper::load(dir)?;                       // config + weights + tokenizer
//! let audio = csm_core::whisper::audio::load_16k(path)?;  // mono f32 at 16 kHz
//! let result = w.transcribe(&audio, &TranscribeOptions::default(), &mut |_| {}, &cancel)?;
//! for s in &result.segments { println!("[{:.2} -> {:.2}] {}", s.start, s.end, s.text); }
//! ```
//!
//! Times are seconds; the model sees 30 s windows of 3000 mel frames
//! (10 ms each) and its timestamp tokens step by 20 ms.

pub mod audio;
pub mod config;
pub mod dataset;
pub mod decode;
pub mod error;
pub mod load;
pub mod model;
pub mod timing;
pub mod tokenizer;
pub mod transcribe;

pub use config::WhisperConfig;

pub use decode::{DecodeOptions, DecodeResult};
pub use error::WhisperError;
pub use load::Whisper;
pub use model::WhisperModel;
pub use tokenizer::WhisperTokenizer;
pub use transcribe::{Segment, TranscribeEvent, TranscribeOptions, Transcript, WordTiming};
