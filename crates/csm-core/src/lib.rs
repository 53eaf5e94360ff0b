//! Sesame CSM fine-tuning engine on MLX: model, codec, data, LoRA, training
//! and generation, shared by the `csm` command-line tool and the desktop app.

pub mod checkpoint;
pub mod codec;
pub mod lora;

pub use mlx_rs;
