//! Checkpoint files: reading tensors and strict loading into modules.
//!
//! Every model format goes through the same three steps: read the file(s)
//! into a [`WeightMap`], rename keys in the model's own `sanitize` step, then
//! [`load_strict`], which fails listing missing, unexpected and mis-shaped
//! keys before touching the module.

pub mod pickle;
mod weights;
pub mod write;

pub use weights::{load_strict, CheckpointError, WeightMap};
