//! One module per subcommand.

pub mod bench_generate;
pub mod generate;
pub mod gpu_check;
pub mod info;
