//! Sesame CSM fine-tuning engine on MLX.
pub use mlx_rs;

pub mod checkpoint;
