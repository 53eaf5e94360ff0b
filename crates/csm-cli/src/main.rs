//! `csm`: fine-tune, run and inspect Sesame CSM voice models with MLX.
//!
//! A thin adapter over `csm-core`: it parses flags, sets up logging and
//! progress output, and turns library errors into messages and exit codes.

/// `eprintln!` that ignores a failed write. Progress and status lines go to
/// stderr while work is under way; when that is a pipe whose reader has
/// gone (`csm voice ... 2>&1 | tee log`, with `tee` stopped by the same
/// Ctrl-C), `eprintln!` would panic mid-save and leave the run's state
/// unwritten. The line is lost; the work and its records are not.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that ignores a failed write (`csm ... | head`, or the pipe's
/// reader stopped by the same Ctrl-C): what the command did stands; the
/// lines after the reader left are lost.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that ignores a failed write, as [`tell!`] does.
macro_rules! tell_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

mod commands;
mod env;
mod logging;

use clap::{Parser, Subcommand};

/// This build's version and the commit it was built from (`build.rs`).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CSM_GIT_COMMIT"),
    ")"
);

/// Fine-tune Sesame's CSM speech model on your own recordings, with MLX.
///
/// Start with `csm info` to see what MLX runs on here.
#[derive(Debug, Parser)]
#[command(name = "csm", version = VERSION, about, long_about = None, propagate_version = true)]
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
    /// gradient), that csm's own CUDA kernels agree with MLX's ops there,
    /// then measure bf16 matmul TFLOP/s.
    GpuCheck(commands::gpu_check::GpuCheckArgs),
    /// Benchmark LoRA training steps of a CSM-1B-shaped model with random
    /// weights (see bench/README.md).
    BenchTrain(commands::bench_train::BenchTrainArgs),
    /// Write a random CSM-1B checkpoint once, then time a strict load of it
    /// and report resident memory.
    BenchLoad(commands::bench_train::BenchLoadArgs),
    /// Speak a line of text (optionally after context recordings, with a
    /// LoRA adapter) into a 24 kHz WAV file.
    Generate(Box<commands::generate::GenerateArgs>),
    /// Benchmark generation speed with random weights (frames/s, ms/frame,
    /// real-time factor, Mimi decode, peak memory).
    #[command(hide = true)]
    BenchGenerate(commands::bench_generate::BenchGenerateArgs),
    /// Benchmark transcription speed (real-time factor) of a Whisper shape
    /// with random weights (see bench/whisper/README.md).
    #[command(hide = true)]
    BenchTranscribe(commands::bench_transcribe::BenchTranscribeArgs),
    /// Write the random-weight models of the `csm voice` benchmark
    /// (bench/voice/run.sh): CSM-1B shape, Mimi, a Whisper shape.
    #[command(hide = true)]
    BenchVoiceModels(commands::bench_voice::BenchVoiceModelsArgs),
    /// Build a small model and a spoken dataset locally (no download) and
    /// fine-tune it: the whole pipeline in a couple of minutes.
    Demo(commands::demo::DemoArgs),
    /// LoRA-fine-tune CSM on a folder of recordings and transcripts.
    ///
    /// Example: csm finetune-lora --model-path csm-1b/ --audio-dir data/audio
    /// --transcript-dir data/transcripts --output-dir runs/me
    #[command(
        name = "finetune-lora",
        after_long_help = "Environment:\n  CSM_CACHE_DIR   cache root; Mimi codes go to its codes/ (default ~/.cache/csm/codes)\n  CSM_COMPILE     1 / 0: run the training step through mx.compile or not (default: on GPUs, off on the CPU)"
    )]
    FinetuneLora(commands::finetune::FinetuneArgs),
    /// Mimi-encode a dataset into the codes cache (so training starts at
    /// once); takes the same flags as finetune-lora.
    Prepare(commands::dataset_tools::PrepareArgs),
    /// Print the loss components (JSON) of a model, optionally with an
    /// adapter, on a dataset.
    Evaluate(commands::dataset_tools::EvaluateArgs),
    /// Find a learning rate: a range test from the run's starting point
    /// with an exponentially growing LR, printed as a table with the
    /// steepest descent suggested; JSON report in OUTPUT/lr_find.json.
    /// Takes the flags of finetune-lora; writes nothing else.
    LrFind(commands::lr_find::LrFindArgs),
    /// Fuse an adapter into the base weights, saved in the base's format.
    Merge(commands::dataset_tools::MergeArgs),
    /// Download files of a hub repo, or a bundle (csm-1b, whisper-large-v3-turbo,
    /// whisper-tiny, speaker-encoder, ...), into the shared caches
    /// (resumable, verified) and print their paths.
    Download(commands::download::DownloadArgs),
    /// List the bundles and what the caches hold; `csm models rm NAME`
    /// deletes a repo, a bundle or a release from PyPI.
    Models(commands::models::ModelsArgs),
    /// Start N ranks of a csm command for data-parallel training, locally or
    /// over ssh (`csm launch -n 2 -- finetune-lora ...`).
    Launch(commands::launch::LaunchArgs),
    /// Check a distributed set-up: rank, size, backend, all_sum correctness
    /// and bandwidth (run it under `csm launch`).
    DistCheck(commands::dist_check::DistCheckArgs),
    /// Transcribe a folder of recordings with Whisper into a dataset
    /// (24 kHz WAVs, transcripts, word alignments) for finetune-lora.
    Transcribe(commands::transcribe::TranscribeArgs),
    /// Score generated samples (JSON lines): similarity to a speaker's
    /// recordings, WER/CER against their text, health (silences, pauses,
    /// clipping, speaking rate).
    Score(commands::score::ScoreArgs),
    /// From a folder of raw recordings to a scored voice in one command:
    /// download what is missing, transcribe, cut, choose settings, train
    /// with voice scores, summarise. Running it again continues.
    ///
    /// Example: csm voice recordings/ --output-dir voices/me --speaker-name Me
    Voice(Box<commands::voice::VoiceArgs>),
}

fn main() -> std::process::ExitCode {
    // Before anything else: OpenBLAS picks its kernels when it loads, so a
    // CPU it does not know gets generic ones unless we start again with
    // OPENBLAS_CORETYPE set. On failure the run goes on; `csm info` warns.
    let blas_restart = csm_core::runtime::blas::reexec_with_better_kernels(|k| std::env::var_os(k));
    csm_core::runtime::set_process_defaults(|k| std::env::var_os(k));
    let cli = Cli::parse();
    logging::init(cli.log_level);
    if let Err(e) = blas_restart {
        tracing::warn!("could not restart with faster BLAS kernels ({e}); see `csm info`");
    }
    let level_name = cli.log_level.name().to_string();
    let result = match cli.command {
        Command::Info(args) => commands::info::run(args),
        Command::GpuCheck(args) => commands::gpu_check::run(args),
        Command::BenchTrain(args) => commands::bench_train::run(args),
        Command::BenchLoad(args) => commands::bench_train::run_load(args),
        Command::Generate(args) => commands::generate::run(*args),
        Command::BenchGenerate(args) => commands::bench_generate::run(args),
        Command::BenchTranscribe(args) => commands::bench_transcribe::run(args),
        Command::BenchVoiceModels(args) => commands::bench_voice::run(args),
        Command::Demo(args) => commands::demo::run(args, &level_name),
        Command::FinetuneLora(args) => commands::finetune::run(args, &level_name),
        Command::Prepare(args) => commands::dataset_tools::prepare(args, &level_name),
        Command::Evaluate(args) => commands::dataset_tools::evaluate(args, &level_name),
        Command::LrFind(args) => commands::lr_find::run(args, &level_name),
        Command::Merge(args) => commands::dataset_tools::merge(args),
        Command::Download(args) => commands::download::run(args),
        Command::Models(args) => commands::models::run(args),
        Command::Launch(args) => commands::launch::run(args),
        Command::DistCheck(args) => commands::dist_check::run(args),
        Command::Transcribe(args) => commands::transcribe::run(args),
        Command::Score(args) => commands::score::run(args),
        Command::Voice(args) => commands::voice::run(*args, &level_name),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            say!("error: {err:#}");
            if err
                .downcast_ref::<commands::transcribe::SomeFailed>()
                .is_some()
            {
                return std::process::ExitCode::from(commands::transcribe::EXIT_SOME_FAILED);
            }
            std::process::ExitCode::FAILURE
        }
    }
}
