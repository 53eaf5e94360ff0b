//! Thin command adapters: parse arguments, check paths against
//! [`crate::state::AllowedPaths`], run the work on a blocking task or the
//! training thread, map errors to `{kind, message}`. The contract is docs/ipc.md.

pub mod app;
pub mod audio;
pub mod config;
pub mod dataset;
pub mod files;
pub mod generate;
pub mod history;
pub mod hub;
pub mod lr_find;
pub mod models;
pub mod proofread;
pub mod speakers;
pub mod training;
pub mod transcribe;
pub mod voices;
