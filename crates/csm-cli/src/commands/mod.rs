//! One module per subcommand.

pub mod gpu_check;
pub mod info;
