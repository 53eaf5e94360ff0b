//! One module per subcommand.

pub mod dataset_tools;
pub mod finetune;
pub mod gpu_check;
pub mod info;
pub mod train_args;
