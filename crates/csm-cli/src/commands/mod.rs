//! One module per subcommand.

pub mod dist_check;
pub mod gpu_check;
pub mod info;
pub mod launch;
