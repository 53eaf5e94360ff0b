//! `csm bench-generate`: generation speed with random weights, no files
//! needed. Builds a CSM of a named size and a Mimi (the released config,
//! random weights), prefills a fixed 20-text-frame prompt, generates exactly
//! `--frames` frames (EOS is ignored so every run does the same work), then
//! times the Mimi decode separately.
//!
//! ```text
//! csm bench-generate --size csm-1b --frames 100 --dtype bf16 [--json]
//! ```

use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use csm_core::codec::{Mimi, MimiConfig};
use csm_core::generate::{
    decode_codes, generate_frames, FrameOptions, GenerateHooks, PromptFrames, SamplingConfig,
};
use csm_core::mlx_rs::module::ModuleParameters;
use csm_core::mlx_rs::transforms::eval_params;
use csm_core::model::{Csm, CsmConfig, LlamaConfig};
use csm_core::runtime;

use super::generate::DtypeArg;

/// `--size` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SizeArg {
    /// Sesame CSM-1B (16-layer 2048-wide backbone, 4-layer decoder).
    #[value(name = "csm-1b")]
    Csm1b,
    /// A small model with CSM-1B's vocabularies (quick smoke runs).
    Tiny,
}

/// Flags of `csm bench-generate`.
#[derive(Debug, Args)]
pub struct BenchGenerateArgs {
    /// Model size (random weights).
    #[arg(long, value_enum, default_value = "csm-1b")]
    size: SizeArg,
    /// Frames to generate (12.5 frames = 1 s of audio); EOS is ignored.
    #[arg(long, default_value_t = 50)]
    frames: usize,
    /// Compute dtype of the CSM (Mimi always runs in f32).
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: DtypeArg,
    /// Untimed frames generated first (kernel compilation, allocator).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the results as one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn tiny_config() -> CsmConfig {
    let stack = |layers, dim, heads, kv, hidden| LlamaConfig {
        num_layers: layers,
        embed_dim: dim,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: dim / heads,
        intermediate_dim: hidden,
        ..LlamaConfig::llama_1b()
    };
    CsmConfig {
        backbone: stack(2, 256, 4, 2, 512),
        decoder: stack(2, 128, 4, 2, 256),
        text_vocab_size: 1024,
        ..CsmConfig::csm_1b()
    }
}

/// Runs `csm bench-generate`.
pub fn run(args: BenchGenerateArgs) -> Result<()> {
    anyhow::ensure!(args.frames >= 2, "--frames must be at least 2");
    let backend = runtime::use_best_device();
    let dtype = args.dtype.dtype();
    let config = match args.size {
        SizeArg::Csm1b => CsmConfig::csm_1b(),
        SizeArg::Tiny => tiny_config(),
    };
    let mut csm = Csm::new(&config).context("building the model")?;
    csm.cast(dtype)?;
    eval_params(csm.parameters())?;
    let mut mimi = Mimi::new(MimiConfig::mimi_v0_1())?;
    eval_params(mimi.parameters())?;
    let bins = mimi.config.quantizer.bins;

    let n_cb = config.audio_num_codebooks as usize;
    let mut prompt = PromptFrames::new(n_cb);
    let ids: Vec<u32> = (0..20u32)
        .map(|i| (1 + i * 37) % config.text_vocab_size as u32)
        .collect();
    prompt.push_text(&ids);
    let (tokens, mask) = prompt.to_arrays();
    let cfg = SamplingConfig {
        seed: args.seed,
        ..SamplingConfig::default()
    };
    let options = |frames| FrameOptions {
        max_frames: frames,
        stop_on_eos: false,
        code_limit: Some(bins),
    };
    if args.warmup > 0 {
        let warm = generate_frames(
            &mut csm,
            &tokens,
            &mask,
            &cfg,
            &options(args.warmup),
            GenerateHooks::default(),
        )?;
        decode_codes(&mut mimi, &warm.codes)?;
    }

    runtime::reset_peak_memory();
    let out = generate_frames(
        &mut csm,
        &tokens,
        &mask,
        &cfg,
        &options(args.frames),
        GenerateHooks::default(),
    )?;
    let gen_peak = runtime::peak_memory();
    let decode_start = Instant::now();
    let audio = decode_codes(&mut mimi, &out.codes)?;
    let decode_s = decode_start.elapsed().as_secs_f64();
    let peak = runtime::peak_memory();

    let n = out.codes.len();
    let audio_s = n as f64 * 0.08;
    let loop_s = out.frames_total.as_secs_f64();
    let first_ms = out.first_frame.as_secs_f64() * 1e3;
    let steady_ms = (loop_s * 1e3 - first_ms) / (n - 1) as f64;
    let gen_s = out.prefill.as_secs_f64() + loop_s;
    let result = serde_json::json!({
        "size": format!("{:?}", args.size).to_lowercase(),
        "dtype": format!("{dtype:?}"),
        "backend": backend.name(),
        "device": runtime::default_device(),
        "prompt_frames": prompt.len(),
        "frames": n,
        "eos_ignored": true,
        "prefill_ms": out.prefill.as_secs_f64() * 1e3,
        "first_frame_ms": first_ms,
        "ms_per_frame": steady_ms,
        "frames_per_s": n as f64 / loop_s,
        "audio_s": audio_s,
        "rtf_generate": gen_s / audio_s,
        "mimi_decode_ms": decode_s * 1e3,
        "mimi_decode_rtf": decode_s / audio_s,
        "rtf_total": (gen_s + decode_s) / audio_s,
        "decoded_samples": audio.len(),
        "peak_memory_generate_bytes": gen_peak,
        "peak_memory_bytes": peak,
    });
    if args.json {
        tell!("{result}");
        return Ok(());
    }
    let gib = |b: usize| b as f64 / f64::from(1u32 << 30);
    tell!(
        "bench-generate: {:?} ({}), random weights, {} on {} ({})",
        args.size,
        format!("{dtype:?}").to_lowercase(),
        backend.name(),
        runtime::default_device(),
        csm_core::runtime::mlx_version()
    );
    tell!(
        "prompt {} text frames; exactly {n} frames generated (EOS ignored); {} warm-up frames",
        prompt.len(),
        args.warmup
    );
    tell!("{:<28} {:>12}", "metric", "value");
    for (name, value) in [
        (
            "prefill",
            format!("{:.1} ms", out.prefill.as_secs_f64() * 1e3),
        ),
        ("first frame", format!("{first_ms:.1} ms")),
        ("later frames", format!("{steady_ms:.1} ms/frame")),
        ("throughput", format!("{:.2} frames/s", n as f64 / loop_s)),
        ("audio generated", format!("{audio_s:.2} s")),
        ("RTF generation", format!("{:.3}", gen_s / audio_s)),
        ("Mimi decode", format!("{:.1} ms", decode_s * 1e3)),
        ("RTF Mimi decode", format!("{:.3}", decode_s / audio_s)),
        ("RTF total", format!("{:.3}", (gen_s + decode_s) / audio_s)),
        (
            "peak memory (generation)",
            format!("{:.2} GiB", gib(gen_peak)),
        ),
        ("peak memory (with decode)", format!("{:.2} GiB", gib(peak))),
    ] {
        tell!("{name:<28} {value:>12}");
    }
    tell!("RTF = compute time / audio time (below 1 is faster than real time)");
    Ok(())
}
