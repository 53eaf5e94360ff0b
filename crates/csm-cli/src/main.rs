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
    /// Speak a line of text (optionally after context recordings, with a
    /// LoRA adapter) into a 24 kHz WAV file.
    Generate(Box<commands::generate::GenerateArgs>),
    /// Benchmark generation speed with random weights (frames/s, ms/frame,
    /// real-time factor, Mimi decode, peak memory).
    #[command(hide = true)]
    BenchGenerate(commands::bench_generate::BenchGenerateArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_level);
    let result = match cli.command {
        Command::Info(args) => commands::info::run(args),
        Command::GpuCheck(args) => commands::gpu_check::run(args),
        Command::Generate(args) => commands::generate::run(*args),
        Command::BenchGenerate(args) => commands::bench_generate::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
