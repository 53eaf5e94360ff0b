//! One module per subcommand.

pub mod bench_generate;
pub mod bench_train;
pub mod bench_transcribe;
pub mod bench_voice;
pub mod dataset_tools;
pub mod demo;
pub mod dist_check;
pub mod download;
pub mod finetune;
pub mod generate;
pub mod gpu_check;
pub mod hub_paths;
pub mod info;
pub mod launch;
pub mod lr_find;
pub mod models;
pub mod score;
pub mod train_args;
pub mod transcribe;
pub mod voice;
