//! Sesame CSM fine-tuning engine on MLX: model, codec, data, LoRA, training
//! and generation, shared by the `csm` command-line tool and the desktop app.

pub mod adapter;
pub mod assets;
pub mod checkpoint;
pub mod codec;
pub mod data;
pub mod demo;
pub mod distributed;
pub mod generate;
pub mod lora;
pub mod model;
pub mod runtime;
pub mod tokenizer;
pub mod train;

pub use mlx_rs;
