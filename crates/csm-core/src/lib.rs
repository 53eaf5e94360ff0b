//! Sesame CSM fine-tuning engine on MLX: model, codec, data, LoRA, training
//! and generation, shared by the `csm` command-line tool and the desktop app.

pub mod checkpoint;
pub mod data;
pub mod distributed;
pub mod lora;
pub mod runtime;
pub mod train;

pub use mlx_rs;
