//! `csm`: fine-tune, run and inspect Sesame CSM voice models with MLX.
//!
//! A thin adapter over `csm-core`: it parses flags, sets up logging and
//! progress output, and turns library errors into messages and exit codes.

mod commands;
mod logging;

use clap::{Parser, Subcommand};

/// Fine-tune Sesame's CSM speech model on your own recordings, with MLX.
///
/// Start with `csm info` to see what MLX runs on here.
#[derive(Debug, Parser)]
#[command(name = "csm", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log verbosity: debug, info, warning, error or critical.
    #[arg(long, global = true, default_value = "info", value_parser = logging::parse_level)]
    log_level: logging::Level,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the MLX version, backend, device, BLAS and a matmul benchmark
    /// (paste this into bug reports).
    Info(commands::info::InfoArgs),
    /// Check that MLX runs on the GPU and agrees with the CPU (matmul,
    /// gradient), then measure bf16 matmul TFLOP/s.
    GpuCheck(commands::gpu_check::GpuCheckArgs),
    /// Start N ranks of a csm command for data-parallel training, locally or
    /// over ssh (`csm launch -n 2 -- finetune-lora ...`).
    Launch(commands::launch::LaunchArgs),
    /// Check a distributed set-up: rank, size, backend, all_sum correctness
    /// and bandwidth (run it under `csm launch`).
    DistCheck(commands::dist_check::DistCheckArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_level);
    let result = match cli.command {
        Command::Info(args) => commands::info::run(args),
        Command::GpuCheck(args) => commands::gpu_check::run(args),
        Command::Launch(args) => commands::launch::run(args),
        Command::DistCheck(args) => commands::dist_check::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
