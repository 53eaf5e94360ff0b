//! Thin command adapters: parse arguments, call real code, map errors.
//! Only commands backed by working code are here; the rest of the contract
//! (docs/ipc.md) lands as the engine does.

pub mod app;
pub mod config;
pub mod files;
