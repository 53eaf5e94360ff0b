//! `csm bench-transcribe`: transcription speed (real-time factor) of a
//! Whisper of a released shape with random weights, no model download.
//!
//! Equal work with the peer (`bench/whisper/peer.py`, transformers): the
//! recording is cut into consecutive 30 s windows (no seek: with random
//! weights the timestamps, and so the seeks, would differ between any two
//! implementations), and every window decodes exactly `--tokens` tokens
//! greedily after `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`
//! (end of text suppressed, so a random model cannot stop early). Timed:
//! log-mel features of the recording, then per window the encoder and the
//! decoder with its KV cache, through the same `whisper` functions
//! `csm transcribe` runs. Not timed: reading the file, building the model.
//!
//! ```text
//! csm bench-transcribe --size tiny --audio speech16k.wav \
//!     --tiktoken multilingual.tiktoken --tokens 100 [--json]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::{Args, ValueEnum};
use csm_core::mlx_rs::module::ModuleParameters;
use csm_core::mlx_rs::transforms::{eval, eval_params};
use csm_core::runtime;
use csm_core::whisper::audio::{load_16k, log_mel_spectrogram};
use csm_core::whisper::config::{N_FRAMES, N_SAMPLES, SAMPLE_RATE};
use csm_core::whisper::decode::{decode, DecodeOptions, SuppressTokens};
use csm_core::whisper::{WhisperConfig, WhisperModel, WhisperTokenizer};

/// `--size` values: the shapes of released checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WhisperSize {
    /// openai/whisper-tiny: 384 wide, 4 + 4 layers, 80 mel bins (39 M).
    Tiny,
    /// openai/whisper-large-v3-turbo: 1280 wide, 32 encoder and 4 decoder
    /// layers, 128 mel bins (809 M).
    #[value(name = "large-v3-turbo")]
    LargeV3Turbo,
}

impl WhisperSize {
    /// The shape, as the checkpoint's `config.json` gives it.
    pub fn config(self) -> WhisperConfig {
        let (mels, d, enc, dec, heads, vocab) = match self {
            WhisperSize::Tiny => (80, 384, 4, 4, 6, 51_865),
            WhisperSize::LargeV3Turbo => (128, 1280, 32, 4, 20, 51_866),
        };
        WhisperConfig {
            num_mel_bins: mels,
            d_model: d,
            encoder_layers: enc,
            encoder_attention_heads: heads,
            encoder_ffn_dim: 4 * d,
            decoder_layers: dec,
            decoder_attention_heads: heads,
            decoder_ffn_dim: 4 * d,
            vocab_size: vocab,
            max_source_positions: 1500,
            max_target_positions: 448,
            alignment_heads: Vec::new(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            WhisperSize::Tiny => "tiny",
            WhisperSize::LargeV3Turbo => "large-v3-turbo",
        }
    }
}

/// Flags of `csm bench-transcribe`.
#[derive(Debug, Args)]
pub struct BenchTranscribeArgs {
    /// Model shape (random weights).
    #[arg(long, value_enum, default_value = "tiny")]
    size: WhisperSize,
    /// The recording (any format `csm transcribe` reads; resampled to
    /// 16 kHz mono before the clock starts).
    #[arg(long)]
    audio: PathBuf,
    /// openai-whisper's `multilingual.tiktoken` (the vocabulary; the test
    /// fixtures have it zipped in tests/fixtures/whisper).
    #[arg(long)]
    tiktoken: PathBuf,
    /// Tokens decoded per 30 s window (end of text suppressed).
    #[arg(long, default_value_t = 100)]
    tokens: usize,
    /// Untimed windows decoded first (kernel set-up, allocator).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Print the results as one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs `csm bench-transcribe`.
pub fn run(args: BenchTranscribeArgs) -> Result<()> {
    ensure!(
        (1..=440).contains(&args.tokens),
        "--tokens must be 1..=440 (448 decoder positions, 4 taken by the prompt)"
    );
    let backend = runtime::use_best_device();
    let config = args.size.config();
    let text = std::fs::read_to_string(&args.tiktoken)
        .with_context(|| format!("reading {}", args.tiktoken.display()))?;
    let tok = WhisperTokenizer::from_tiktoken(&text, config.num_languages())?;
    let audio =
        load_16k(&args.audio).with_context(|| format!("reading {}", args.audio.display()))?;
    let audio_s = audio.len() as f64 / f64::from(SAMPLE_RATE);
    let model = WhisperModel::new(&config).context("building the model")?;
    eval_params(model.parameters())?;
    let n_mels = config.num_mel_bins as usize;

    let mut suppress = tok.non_speech_tokens()?;
    suppress.push(tok.special.eot);
    let options = DecodeOptions {
        language: Some("en".into()),
        without_timestamps: true,
        sample_len: Some(args.tokens),
        suppress_tokens: SuppressTokens::List(suppress),
        ..DecodeOptions::default()
    };
    let content_frames = audio.len() / 160;
    let windows = content_frames.div_ceil(N_FRAMES);
    ensure!(windows > 0, "{} holds no audio", args.audio.display());

    let warm = log_mel_spectrogram(&audio[..audio.len().min(N_SAMPLES)], n_mels, N_SAMPLES)?;
    for _ in 0..args.warmup {
        let f = model.encoder.forward(&warm.window(0, N_FRAMES))?;
        decode(&model, &tok, &f, &options)?;
    }

    runtime::reset_peak_memory();
    let start = Instant::now();
    let mel = log_mel_spectrogram(&audio, n_mels, N_SAMPLES)?;
    let mel_s = start.elapsed().as_secs_f64();
    let (mut encoder_s, mut decoder_s, mut tokens) = (0.0, 0.0, 0usize);
    for w in 0..windows {
        let seek = w * N_FRAMES;
        let t = Instant::now();
        let features = model
            .encoder
            .forward(&mel.window(seek, N_FRAMES.min(content_frames - seek)))?;
        eval([&features])?;
        encoder_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let result = decode(&model, &tok, &features, &options)?;
        decoder_s += t.elapsed().as_secs_f64();
        ensure!(
            result.tokens.len() == args.tokens,
            "window {w} decoded {} tokens, not {}",
            result.tokens.len(),
            args.tokens
        );
        tokens += result.tokens.len();
    }
    let total_s = start.elapsed().as_secs_f64();
    let peak = runtime::peak_memory();

    let result = serde_json::json!({
        "side": "csm",
        "size": args.size.name(),
        "dtype": "float32",
        "backend": backend.name(),
        "device": runtime::default_device(),
        "mlx": runtime::mlx_version(),
        "audio_s": audio_s,
        "windows": windows,
        "tokens_per_window": args.tokens,
        "tokens": tokens,
        "mel_s": mel_s,
        "encoder_s": encoder_s,
        "decoder_s": decoder_s,
        "total_s": total_s,
        "rtf": total_s / audio_s,
        "decoder_tokens_per_s": tokens as f64 / decoder_s,
        "peak_memory_bytes": peak,
    });
    if args.json {
        tell!("{result}");
        return Ok(());
    }
    tell!(
        "bench-transcribe: whisper {} shape, random weights, f32, {} on {} ({})",
        args.size.name(),
        backend.name(),
        runtime::default_device(),
        runtime::mlx_version()
    );
    tell!(
        "{audio_s:.1} s of audio: {windows} windows of 30 s, exactly {} tokens each (end of text suppressed)",
        args.tokens
    );
    tell!("{:<24} {:>12}", "metric", "value");
    for (name, value) in [
        ("log-mel", format!("{:.3} s", mel_s)),
        ("encoder", format!("{:.3} s", encoder_s)),
        ("decoder", format!("{:.3} s", decoder_s)),
        (
            "decoder tokens/s",
            format!("{:.1}", tokens as f64 / decoder_s),
        ),
        ("total", format!("{:.3} s", total_s)),
        ("RTF", format!("{:.4}", total_s / audio_s)),
        (
            "peak memory",
            format!("{:.2} GiB", peak as f64 / f64::from(1u32 << 30)),
        ),
    ] {
        tell!("{name:<24} {value:>12}");
    }
    tell!("RTF = compute time / audio time (below 1 is faster than real time)");
    Ok(())
}
