//! `csm generate`: speak a line of text, optionally in the voice of context
//! recordings and with a LoRA adapter, into a 24 kHz WAV file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use csm_core::data::audio::{load_mono_24k, write_wav, WavEncoding};
use csm_core::generate::{
    FrameProgress, GenerateHooks, Generator, Guards, SamplingConfig, Segment, StopReason,
};
use csm_core::mlx_rs::Dtype;
use csm_core::runtime;
use indicatif::{ProgressBar, ProgressStyle};

/// `--dtype` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    /// float32 (default on CPU).
    F32,
    /// bfloat16 (default on GPUs).
    Bf16,
}

impl DtypeArg {
    /// The MLX dtype.
    pub fn dtype(self) -> Dtype {
        match self {
            DtypeArg::F32 => Dtype::Float32,
            DtypeArg::Bf16 => Dtype::Bfloat16,
        }
    }
}

/// Flags of `csm generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// CSM checkpoint: a file or a directory (Sesame safetensors or .pt,
    /// transformers, csm-mlx, mlx-audio).
    #[arg(long, value_name = "PATH")]
    model_path: PathBuf,
    /// Text to speak.
    #[arg(long)]
    text: String,
    /// Speaker id of the generated turn (`[N]text`).
    #[arg(long, default_value_t = 0)]
    speaker_id: u32,
    /// A context recording (any rate/channels; resampled to 24 kHz mono).
    /// Repeatable; paired in order with --context-text and --context-speaker.
    #[arg(long, value_name = "WAV", help_heading = "Context")]
    context_audio: Vec<PathBuf>,
    /// Transcript of the context recording at the same position.
    #[arg(long, value_name = "TEXT", help_heading = "Context")]
    context_text: Vec<String>,
    /// Speaker of the context recording at the same position.
    #[arg(long, value_name = "N", help_heading = "Context")]
    context_speaker: Vec<u32>,
    /// LoRA adapter: a directory with adapters.safetensors and
    /// adapter_config.json, or the weights file.
    #[arg(long, value_name = "PATH")]
    adapter: Option<PathBuf>,
    /// Mimi codec weights [default: inside a transformers checkpoint, or
    /// tokenizer-e351c8d8-checkpoint125.safetensors / mimi/ next to the model].
    #[arg(long, value_name = "PATH")]
    mimi_path: Option<PathBuf>,
    /// Llama-3 tokenizer.json [default: next to the model or in tokenizer/].
    #[arg(long, value_name = "FILE")]
    tokenizer_path: Option<PathBuf>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.9, help_heading = "Sampling")]
    temperature: f32,
    /// Sample among the k most likely codes (ties kept).
    #[arg(long, default_value_t = 50, help_heading = "Sampling")]
    topk: usize,
    /// Random seed (same seed, same output).
    #[arg(long, default_value_t = 42, help_heading = "Sampling")]
    seed: u64,
    /// Longest audio to generate, in milliseconds (80 ms per frame).
    #[arg(long, default_value_t = 10_000, help_heading = "Sampling")]
    max_audio_ms: u32,
    /// Cap the audio at 2 s + 0.2 s per character of the text (a third of
    /// ordinary speaking rate) unless this flag is given. A sample that
    /// reaches the cap never said "I'm done": you are told.
    #[arg(long, help_heading = "Guards")]
    no_length_limit: bool,
    /// End the sample after this many seconds of silence (0: never). Runaway
    /// samples often end in a long silent tail.
    #[arg(
        long,
        default_value_t = 2.0,
        value_name = "SECS",
        help_heading = "Guards"
    )]
    stop_after_silence: f32,
    /// Keep trailing silence (by default it is trimmed to 0.25 s after the
    /// last sound).
    #[arg(long, help_heading = "Guards")]
    keep_trailing_silence: bool,
    /// Compute dtype [default: f32 on CPU, bf16 on GPU]. On a CPU, bf16
    /// generates faster with about half the memory (products still sum in
    /// f32); f32 is the precision the parity tests check.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Output WAV file (24 kHz mono, 16-bit).
    #[arg(long, value_name = "WAV")]
    output: PathBuf,
}

/// The generation guards the flags ask for.
fn guards(args: &GenerateArgs) -> Guards {
    let default = Guards::default();
    Guards {
        length_from_text: if args.no_length_limit {
            None
        } else {
            default.length_from_text
        },
        stop_after_silence_s: (args.stop_after_silence > 0.0).then_some(args.stop_after_silence),
        trim_trailing_silence_s: if args.keep_trailing_silence {
            None
        } else {
            default.trim_trailing_silence_s
        },
    }
}

/// Runs `csm generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    let n = args.context_audio.len();
    if args.context_text.len() != n || args.context_speaker.len() != n {
        bail!(
            "context flags must come in triples: got {} --context-audio, {} --context-text and \
             {} --context-speaker",
            n,
            args.context_text.len(),
            args.context_speaker.len()
        );
    }
    let cfg = SamplingConfig {
        temperature: args.temperature,
        top_k: args.topk,
        seed: args.seed,
        max_audio_ms: args.max_audio_ms,
        guards: guards(&args),
    };
    cfg.validate()?;
    let mut context = Vec::with_capacity(n);
    for ((audio, text), speaker) in args
        .context_audio
        .iter()
        .zip(&args.context_text)
        .zip(&args.context_speaker)
    {
        let samples = load_mono_24k(audio)
            .with_context(|| format!("reading context audio {}", audio.display()))?;
        context.push(Segment {
            speaker: *speaker,
            text: text.clone(),
            audio: Some(samples),
        });
    }

    let backend = runtime::use_best_device();
    let dtype = args
        .dtype
        .map_or_else(|| backend.default_dtype(), DtypeArg::dtype);
    let mut args = args;
    super::hub_paths::resolve(
        &mut args.model_path,
        &mut args.mimi_path,
        &mut args.tokenizer_path,
    )?;
    let load_start = Instant::now();
    let mut generator = Generator::load(
        &args.model_path,
        args.mimi_path.as_deref(),
        args.tokenizer_path.as_deref(),
        dtype,
    )
    .with_context(|| format!("loading {}", args.model_path.display()))?;
    if let Some(adapter) = &args.adapter {
        let info = generator.apply_adapter(adapter)?;
        say!(
            "adapter {}: rank {}, scale {}, {} projections",
            info.weights.display(),
            info.rank,
            info.scale,
            info.projections.len()
        );
    }
    say!(
        "loaded in {:.1} s ({}, {dtype:?})",
        load_start.elapsed().as_secs_f64(),
        backend.name()
    );
    if args.dtype.is_none() && !backend.has_gpu() {
        say!(
            "tip: on a CPU, --dtype bf16 is faster and needs about half the memory (products still sum in f32)"
        );
    }

    let max_frames = cfg.max_frames() as u64;
    let bar = ProgressBar::new(max_frames);
    bar.set_style(
        ProgressStyle::with_template("{spinner} frames {pos}/{len} {bar:30} {elapsed} {msg}")
            .expect("valid template"),
    );
    let mut on_frame = |p: &FrameProgress| {
        bar.set_position(p.frames as u64);
        let fps = p.frames as f64 / p.elapsed.as_secs_f64().max(1e-9);
        bar.set_message(format!("{fps:.1} frames/s"));
    };
    let out = generator.generate_with(
        &context,
        &args.text,
        args.speaker_id,
        &cfg,
        GenerateHooks {
            progress: Some(&mut on_frame),
            cancel: None,
            stop: None,
        },
    );
    bar.finish_and_clear();
    let out = out?;

    let sample_rate = generator.mimi.sample_rate();
    write_wav(&args.output, &out.audio, sample_rate, WavEncoding::Int16)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let seconds = out.audio.len() as f64 / f64::from(sample_rate);
    let t = &out.timings;
    let gen_s = (t.prefill + t.frames).as_secs_f64();
    tell!(
        "{} frames ({}), {seconds:.2} s of audio -> {}",
        out.frames,
        match out.stop_reason {
            StopReason::Eos => "stopped on end-of-speech",
            StopReason::Silence => "ended by --stop-after-silence",
            StopReason::LengthLimit => "hit the length limit from the text",
            StopReason::MaxAudio => "hit --max-audio-ms",
        },
        args.output.display()
    );
    if out.trimmed_s > 0.0 {
        tell!("trimmed {:.2} s of trailing silence", out.trimmed_s);
    }
    if !out.stop_reason.is_healthy() {
        tracing::warn!(
            "the model never emitted its end-of-speech frame (a runaway sample); \
             listen before using it, or try another --seed"
        );
    }
    let rtf = if seconds > 0.0 {
        gen_s / seconds
    } else {
        f64::NAN
    };
    tell!(
        "generation {gen_s:.2} s (prefill {:.0} ms, first frame {:.0} ms), decode {:.0} ms; \
         real-time factor {rtf:.2} (below 1 is faster than real time)",
        t.prefill.as_secs_f64() * 1e3,
        t.first_frame.as_secs_f64() * 1e3,
        t.decode.as_secs_f64() * 1e3,
    );
    Ok(())
}
