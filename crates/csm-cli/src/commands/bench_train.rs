//! `csm bench-train`: seconds per training step of a CSM-1B-shaped model
//! with random weights (the same work as `bench/peer/train_step.py`), the
//! memory it takes, its model FLOPs and, given the device's matmul rate,
//! the model FLOPs utilisation. LoRA by default; with a quantized base
//! (`--quantize`, QLoRA), gradient checkpointing (`--grad-checkpoint`) or
//! full fine-tuning (`--full`). One process can run several cases
//! (`--cases`, `--decoder-fraction`, `--modes`) on one model, each from the
//! same adapters, with the training step's levers switchable
//! (`--cross-entropy`, `--attention-tile`, `--lean-swiglu`, `--lean-lora`,
//! `--no-buckets`). With `--lengths`, the rows have mixed lengths and
//! `--layouts padded,packed` times them padded and packed
//! (`train::batch::Layout`), printing frames/s and the padded share.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use csm_core::adapter::TargetLayers;
use csm_core::adapter::{self, LoraSpec};
use csm_core::mlx_rs::module::ModuleParameters;
use csm_core::mlx_rs::{random, transforms, Array, Dtype};
use csm_core::model::flops::train_step_flops;
use csm_core::model::{quantize_stacks, Csm, CsmConfig, LossWeights, QuantSpec, TrainKernels};
use csm_core::rng::Rng;
use csm_core::runtime;
use csm_core::train::batch::{build_example, collate, collate_as, Batch, Example, Layout, Turn};
use csm_core::train::optim::AdamW;
use csm_core::train::step::{bucket_len, pack_row_len, ForwardBackward, StepOptions};

/// The tiny fixture model's config (transformers layout), for quick checks.
const TINY_CONFIG: &str = include_str!("../../../../tests/fixtures/csm_tiny_hf/config.json");

/// Model size.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchSize {
    /// The released CSM-1B shape (1.55 B parameters).
    Csm1b,
    /// The demo model (seconds).
    Demo,
    /// The tiny test fixture (tests/fixtures/csm_tiny_hf; 8 codebooks):
    /// plumbing checks only.
    Tiny,
}

/// Compute dtype.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchDtype {
    /// float32 (CPU default).
    F32,
    /// bfloat16 (GPU default).
    Bf16,
}

/// How the depth-decoder frames of a case are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecoderRule {
    /// The trainer's: `max(1, round(fraction x target frames))` over the
    /// batch.
    Csm,
    /// transformers' `-101` rule, per row: `A - floor(A (1 - fraction))`
    /// audio frames plus the EOS frame (what `bench/peer/train_step.py`
    /// trains, so both do the same work).
    Hf,
}

/// How the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StepMode {
    /// Plain MLX.
    Plain,
    /// Through `mx.compile` (with shape buckets unless `--no-buckets`).
    Compiled,
}

/// How the rows of a case are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// One utterance a row, padded to the longest.
    Padded,
    /// Several utterances a row (`finetune-lora --packing`), rows of up to
    /// the longest utterance rounded to its shape bucket.
    Packed,
}

/// Which cross-entropy the loss uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CrossEntropyArg {
    /// Autodiff of `logsumexp - picked` over an f32 copy of the logits.
    Plain,
    /// With its own gradient: no f32 copy of the logits kept.
    Fused,
    /// CUDA kernels: one read of the logits forward, one pass backward
    /// (NVIDIA GPUs).
    Cuda,
}

/// Flags of `csm bench-train`.
#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Model size.
    #[arg(long, value_enum, default_value = "csm1b")]
    size: BenchSize,
    /// Compute dtype.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: BenchDtype,
    /// Text frames of each row.
    #[arg(long, default_value_t = 20)]
    text_frames: usize,
    /// Audio frames of each row (an EOS frame is added).
    #[arg(long, default_value_t = 130)]
    audio_frames: usize,
    /// Rows per step (identical rows).
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Cases to run, as ROWSxAUDIO_FRAMES, comma-separated (e.g.
    /// `1x130,8x130,4x500,16x250`); default: --batch-size x --audio-frames.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Mixed lengths: audio frames of the rows, comma-separated, cycled
    /// over the rows of each case (e.g. `--cases 12x0 --lengths
    /// 60,130,250`: 12 rows, four of each length; a case's own audio
    /// frames are then ignored). Needs `--decoder-rule csm`.
    #[arg(long, value_delimiter = ',')]
    lengths: Vec<usize>,
    /// Layouts to time, comma-separated: padded (one utterance a row),
    /// packed (several a row, as `finetune-lora --packing`; needs
    /// `--lengths`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "padded")]
    layouts: Vec<LayoutArg>,
    /// Fraction(s) of the audio frames through the depth decoder,
    /// comma-separated; every case runs at each.
    #[arg(long, value_delimiter = ',', default_value = "0.0625")]
    decoder_fraction: Vec<f32>,
    /// How the depth-decoder frames are counted: csm (the trainer's rule)
    /// or hf (transformers' -101 rule, per row: the peer's work).
    #[arg(long, value_enum, default_value = "csm")]
    decoder_rule: DecoderRule,
    /// Step modes to run, comma-separated (plain, compiled).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "plain")]
    modes: Vec<StepMode>,
    /// Shorthand for `--modes compiled`.
    #[arg(long, conflicts_with = "modes")]
    compile: bool,
    /// Compiled mode without shape buckets: the exact batch shape is
    /// traced (the benchmark's batch never changes).
    #[arg(long)]
    no_buckets: bool,
    /// Build each step's graph while the device runs the step before, as
    /// the trainer does (false: build, then run, one step after the
    /// other).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pipeline: bool,
    /// Cross-entropy of the loss [default: cuda on an NVIDIA GPU, else
    /// plain].
    #[arg(long, value_enum)]
    cross_entropy: Option<CrossEntropyArg>,
    /// SwiGLU keeps only its inputs for the backward, recomputing the
    /// sigmoid [default: true on a GPU].
    #[arg(long, value_name = "BOOL")]
    lean_swiglu: Option<bool>,
    /// LoRA keeps its input in the activation dtype for the backward, not
    /// an f32 copy [default: true on a GPU].
    #[arg(long, value_name = "BOOL")]
    lean_lora: Option<bool>,
    /// With --lean-lora: LoRA's products in the activation dtype (bf16)
    /// rather than f32 [default: false].
    #[arg(long, value_name = "BOOL")]
    lora_activation_dtype: Option<bool>,
    /// q, k and v (and gate and up) with one gradient for their shared
    /// input, summed in the GEMMs [default: true on a GPU].
    #[arg(long, value_name = "BOOL")]
    grouped_proj: Option<bool>,
    /// The codebook heads' vocabulary padded to a multiple of 8 for their
    /// products (aligned GEMM rows) [default: true on an NVIDIA GPU].
    #[arg(long, value_name = "BOOL")]
    aligned_heads: Option<bool>,
    /// With --lean-swiglu: both SwiGLU gradients in one CUDA kernel
    /// [default: true on an NVIDIA GPU].
    #[arg(long, value_name = "BOOL")]
    cuda_swiglu_grad: Option<bool>,
    /// RoPE and the head transpose of q and k in one CUDA kernel
    /// [default: true on an NVIDIA GPU].
    #[arg(long, value_name = "BOOL")]
    cuda_rope: Option<bool>,
    /// With --grouped-proj: each f32 adapter's rank-r product added to its
    /// frozen projection's output (and its share of the input gradient)
    /// by one CUDA kernel, in f32, rounded once [default: true on an
    /// NVIDIA GPU].
    #[arg(long, value_name = "BOOL")]
    cuda_lora: Option<bool>,
    /// Run the depth decoder's MLPs on this many pieces of its frames (at
    /// most 8, each of at least 1024 tokens): their backward's transient
    /// arrays for one piece at a time; 1 = whole [default: 2 on an NVIDIA
    /// GPU, else 1].
    #[arg(long, value_name = "N")]
    mlp_pieces: Option<i32>,
    /// Pad the backbone's causal attention to a multiple of this many
    /// positions inside the attention; 0 = never [default: 128 on a GPU
    /// outside macOS, else 0].
    #[arg(long)]
    attention_tile: Option<i32>,
    /// Quantize the frozen projections of both stacks to 4 or 8 bits
    /// before attaching the adapters (QLoRA, as `finetune-lora
    /// --quantize`).
    #[arg(long, value_name = "BITS")]
    quantize: Option<u8>,
    /// Recompute each block's activations in the backward pass.
    #[arg(long)]
    grad_checkpoint: bool,
    /// Train every weight of the backbone and decoder instead of LoRA
    /// adapters (`finetune-lora --method full`; CSM-1B in f32 needs about
    /// 25 GB for weights, gradients and optimizer state).
    #[arg(long)]
    full: bool,
    /// Timed steps (after warm-up).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Warm-up steps (not timed; the first one holds any tracing).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Measure MLX's own N x N matmul rate in the compute dtype first and
    /// give the model FLOPs utilisation against it (e.g. 8192 on a GPU).
    #[arg(long, value_name = "N")]
    matmul_probe: Option<i32>,
    /// The device's matmul rate in TFLOP/s (e.g. PyTorch's, measured
    /// beside): the model FLOPs utilisation is given against it.
    #[arg(long, value_name = "TFLOPS")]
    peak_tflops: Option<f64>,
    /// Write the results as JSON to this file (one case, one mode).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write one JSON per case and mode into this folder
    /// (`csm_<mode>_<rows>x<audio>_<fraction>[_<tag>].json`).
    #[arg(long)]
    json_dir: Option<PathBuf>,
    /// A label for this run's variant, in the JSON and its file name.
    #[arg(long, default_value = "")]
    tag: String,
}

/// One case: rows, audio frames a row, decoder fraction.
#[derive(Debug, Clone)]
struct Case {
    rows: usize,
    audio_frames: usize,
    fraction: f32,
    /// `--lengths`: the rows' audio frames, cycled (empty: all
    /// `audio_frames`).
    lengths: Vec<usize>,
    layout: LayoutArg,
}

impl Case {
    fn name(&self) -> String {
        let mut name = if self.lengths.is_empty() {
            format!("{}x{}", self.rows, self.audio_frames)
        } else {
            let l: Vec<String> = self.lengths.iter().map(usize::to_string).collect();
            format!("{}xmix{}", self.rows, l.join("-"))
        };
        if self.layout == LayoutArg::Packed {
            name.push_str("-packed");
        }
        name
    }

    /// Audio frames of each row.
    fn row_audio(&self) -> Vec<usize> {
        (0..self.rows)
            .map(|i| match self.lengths.as_slice() {
                [] => self.audio_frames,
                l => l[i % l.len()],
            })
            .collect()
    }

    fn fraction_name(&self) -> String {
        if self.fraction == 1.0 {
            "1".into()
        } else {
            format!("{}", self.fraction)
        }
    }
}

/// Parses `ROWSxAUDIO` (`AUDIO` may be 0 with `--lengths`).
fn parse_case(text: &str, mixed: bool) -> Result<(usize, usize)> {
    let (b, a) = text
        .trim()
        .to_lowercase()
        .split_once('x')
        .map(|(b, a)| (b.to_string(), a.to_string()))
        .with_context(|| format!("--cases: {text:?} is not ROWSxAUDIO_FRAMES (e.g. 8x130)"))?;
    let parse = |v: &str, zero: bool| -> Result<usize> {
        v.parse::<usize>()
            .ok()
            .filter(|&n| n > 0 || zero)
            .with_context(|| format!("--cases: {text:?}: {v:?} is not a positive number"))
    };
    Ok((parse(&b, false)?, parse(&a, mixed)?))
}

/// Runs the benchmark.
pub fn run(args: BenchTrainArgs) -> Result<()> {
    let backend = runtime::use_best_device();
    let gpu = !runtime::default_device_is_cpu();
    let config = match args.size {
        BenchSize::Csm1b => CsmConfig::csm_1b(),
        BenchSize::Demo => csm_core::demo::demo_config(),
        BenchSize::Tiny => {
            let json: serde_json::Value = serde_json::from_str(TINY_CONFIG)?;
            CsmConfig::from_json(&json).map_err(anyhow::Error::msg)?.0
        }
    };
    let dtype = match args.dtype {
        BenchDtype::F32 => Dtype::Float32,
        BenchDtype::Bf16 => Dtype::Bfloat16,
    };
    if args.full && args.quantize.is_some() {
        bail!("--quantize is for LoRA (QLoRA); --full trains the weights, which stay in full precision");
    }
    if let Some(&f) = args
        .decoder_fraction
        .iter()
        .find(|&&f| !(f > 0.0 && f <= 1.0))
    {
        bail!("--decoder-fraction {f}: each fraction must be in (0, 1]");
    }
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let shapes: Vec<(usize, usize)> = if args.cases.is_empty() {
        vec![(args.batch_size.max(1), args.audio_frames.max(1))]
    } else {
        args.cases
            .iter()
            .map(|c| parse_case(c, !args.lengths.is_empty()))
            .collect::<Result<_>>()?
    };
    if !args.lengths.is_empty() && args.decoder_rule == DecoderRule::Hf {
        bail!("--lengths takes --decoder-rule csm (the hf rule is counted per row of one length)");
    }
    if args.lengths.contains(&0) {
        bail!("--lengths: every row needs at least one audio frame");
    }
    if args.lengths.is_empty() && args.layouts.contains(&LayoutArg::Packed) {
        bail!("--layouts packed takes --lengths (identical rows leave nothing to pack)");
    }
    let mut cases = Vec::new();
    for &(rows, audio_frames) in &shapes {
        for &fraction in &args.decoder_fraction {
            for &layout in &args.layouts {
                cases.push(Case {
                    rows,
                    audio_frames,
                    fraction,
                    lengths: args.lengths.clone(),
                    layout,
                });
            }
        }
    }
    let modes = if args.compile {
        vec![StepMode::Compiled]
    } else {
        args.modes.clone()
    };
    if args.json.is_some() && cases.len() * modes.len() > 1 {
        bail!("--json takes one case in one mode; use --json-dir for several");
    }
    let quant = args
        .quantize
        .map(QuantSpec::new)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let mut kernels = TrainKernels::for_device(gpu);
    if let Some(ce) = args.cross_entropy {
        kernels.fused_cross_entropy = ce == CrossEntropyArg::Fused;
        kernels.cuda_cross_entropy = ce == CrossEntropyArg::Cuda;
    }
    if let Some(on) = args.lean_swiglu {
        kernels.lean_swiglu = on;
    }
    if let Some(on) = args.lean_lora {
        kernels.lean_lora = on;
    }
    if let Some(on) = args.lora_activation_dtype {
        kernels.lora_in_activation_dtype = on;
    }
    if let Some(on) = args.grouped_proj {
        kernels.grouped_projections = on;
    }
    if let Some(on) = args.aligned_heads {
        kernels.aligned_heads = on;
    }
    if let Some(on) = args.cuda_swiglu_grad {
        kernels.cuda_swiglu_grad = on;
    }
    if let Some(on) = args.cuda_rope {
        kernels.cuda_rope = on;
    }
    if let Some(on) = args.cuda_lora {
        kernels.cuda_lora = on;
    }
    if let Some(n) = args.mlp_pieces {
        if n < 1 {
            bail!("--mlp-pieces {n}: give a number of pieces, or 1 for whole MLPs");
        }
        kernels.decoder_mlp_pieces = n;
    }
    let cuda = kernels.cuda_swiglu_grad
        || kernels.cuda_rope
        || kernels.cuda_cross_entropy
        || kernels.cuda_lora;
    if cuda && (!gpu || cfg!(target_os = "macos")) {
        bail!(
            "--cuda-swiglu-grad, --cuda-rope, --cuda-lora and --cross-entropy cuda run CUDA kernels: they need an NVIDIA GPU"
        );
    }
    if let Some(tile) = args.attention_tile {
        if tile < 0 {
            bail!("--attention-tile {tile}: give 0 (never) or a positive tile");
        }
        kernels.attention_tile = tile;
    }

    // The device's rate first, on an idle device.
    let probe = match args.matmul_probe {
        Some(n) => Some(
            runtime::matmul_gflops(n, dtype, std::time::Duration::from_secs(3))
                .context("the matmul probe failed")?,
        ),
        None => None,
    };
    if let Some(p) = &probe {
        tell!(
            "csm bench-train: MLX matmul {}^3 {:?} on {}: {:.1} GFLOP/s",
            p.n,
            dtype,
            backend.name(),
            p.gflops
        );
    }
    let rate_tflops = args.peak_tflops.or(probe.as_ref().map(|p| p.gflops / 1e3));

    random::seed(0)?;
    let build = Instant::now();
    let mut model = Csm::new(&config)?;
    model.cast(dtype)?;
    if let Some(q) = quant {
        // Layer by layer, before anything is materialised: the
        // full-precision weights never all exist at once.
        quantize_stacks(&mut model, q)?;
    }
    // Materialise the random weights before timing.
    transforms::eval(model.parameters().flatten().values().copied())?;
    let spec = LoraSpec {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        modules: vec!["q_proj".into(), "v_proj".into()],
        layers: TargetLayers::all(),
        bias: false,
    };
    let adapted = if args.full {
        csm_core::train::full::set_trainable(
            &mut model,
            &[
                csm_core::train::ModelPart::Backbone,
                csm_core::train::ModelPart::Decoder,
            ],
        );
        0
    } else {
        adapter::attach(&mut model, &spec)?
    };
    model.backbone.grad_checkpoint = args.grad_checkpoint;
    model.decoder.grad_checkpoint = args.grad_checkpoint;
    model.set_train_kernels(kernels);
    let initial = adapter::adapter_tensors(&model);
    transforms::eval(initial.values())?;
    let weights_bytes = runtime::active_memory();
    let build_secs = build.elapsed().as_secs_f64();
    let method = format!(
        "{}{}{}",
        if args.full { "full" } else { "LoRA" },
        args.quantize
            .map(|b| format!(", {b}-bit base"))
            .unwrap_or_default(),
        if args.grad_checkpoint {
            ", grad checkpoint"
        } else {
            ""
        }
    );
    // As the trainer does on a CPU (see `csm_core::runtime::SingleThreadBlas`).
    let _blas =
        csm_core::kernels::many_row_products_are_ours().then(runtime::SingleThreadBlas::new);

    let mut failed = Vec::new();
    for case in &cases {
        let batch = case_batch(&config, case, args.text_frames, args.decoder_rule)?;
        // Frames the step computes: rows x the row length (a shape bucket
        // when compiled with buckets), against the utterances' own.
        let (rows_n, s) = (
            batch.frames.shape()[0] as usize,
            batch.frames.shape()[1] as usize,
        );
        let max_len = config.backbone.max_seq_len as usize;
        for &mode in &modes {
            // Every case and mode starts from the same adapters, so their
            // step-0 losses must agree.
            model.update_flattened(
                initial
                    .iter()
                    .map(|(k, v)| (std::rc::Rc::from(k.as_str()), v.clone()))
                    .collect(),
            );
            let options = StepOptions {
                compile: mode == StepMode::Compiled,
                buckets: !args.no_buckets,
            };
            let r = match time_case(
                &mut model,
                &batch,
                options,
                args.pipeline,
                args.warmup,
                args.steps,
            ) {
                Ok(r) => r,
                Err(e) => {
                    // The other cases still run (one long GPU session should
                    // not lose them all); the command fails at the end.
                    say!(
                        "csm bench-train: {} (fraction {}), {mode:?}: failed: {e:#}",
                        case.name(),
                        case.fraction
                    );
                    failed.push(format!("{} {} {mode:?}", case.name(), case.fraction));
                    continue;
                }
            };
            // Model FLOPs count each utterance's own frames and attention,
            // whatever the layout.
            let rows: Vec<usize> = case
                .row_audio()
                .iter()
                .map(|a| args.text_frames + a + 1)
                .collect();
            let flops = train_step_flops(&model, &rows, batch.decoder_frames.len());
            let step_len = if options.compile && options.buckets {
                bucket_len(s).min(max_len.max(s))
            } else {
                s
            };
            let step_frames = rows_n * step_len;
            let padded_share = 1.0 - batch.real_frames as f64 / step_frames as f64;
            let tflops = flops.total / r.median / 1e12;
            let mfu = rate_tflops.map(|rate| tflops / rate);
            let frames = batch.real_frames as f64;
            let rss = max_rss_bytes();
            let result = serde_json::json!({
                "tool": "csm (mlx-rs)",
                "csm_version": crate::VERSION,
                "backend": backend.name(),
                "device": runtime::default_device(),
                "size": format!("{:?}", args.size),
                "dtype": format!("{dtype:?}"),
                "case": case.name(),
                "rows": case.rows,
                "text_frames": args.text_frames,
                "audio_frames": case.audio_frames,
                "frames": frames,
                "decoder_frames": batch.decoder_frames.len(),
                "decoder_fraction": case.fraction,
                "decoder_rule": format!("{:?}", args.decoder_rule).to_lowercase(),
                "lengths": case.lengths,
                "layout": format!("{:?}", case.layout).to_lowercase(),
                "layout_rows": rows_n,
                "step_frames": step_frames,
                "padded_share": padded_share,
                "mode": format!("{mode:?}").to_lowercase(),
                "compiled": options.compile,
                "buckets": options.compile && options.buckets,
                "pipeline": args.pipeline,
                "kernels": {
                    "fused_cross_entropy": kernels.fused_cross_entropy,
                    "attention_tile": kernels.attention_tile,
                    "lean_swiglu": kernels.lean_swiglu,
                    "lean_lora": kernels.lean_lora,
                    "lora_in_activation_dtype": kernels.lora_in_activation_dtype,
                    "grouped_projections": kernels.grouped_projections,
                    "aligned_heads": kernels.aligned_heads,
                    "cuda_swiglu_grad": kernels.cuda_swiglu_grad,
                    "cuda_rope": kernels.cuda_rope,
                    "cuda_cross_entropy": kernels.cuda_cross_entropy,
                    "cuda_lora": kernels.cuda_lora,
                    "decoder_mlp_pieces": kernels.decoder_mlp_pieces,
                },
                "tag": args.tag,
                "adapted_projections": adapted,
                "trainable_params": adapter::adapter_tensors(&model).values().map(|a| a.size()).sum::<usize>(),
            });
            // In two parts: one `json!` of all keys exceeds its macro
            // recursion limit.
            let timing = serde_json::json!({
                "median_s_per_step": r.median,
                "min_s_per_step": r.min,
                "first_step_s": r.first,
                "step_times_s": r.times,
                "host_s_per_step": r.host_median,
                "launch_s_per_step": r.launch_median,
                "frames_per_s": frames / r.median,
                "model_flops": flops,
                "model_tflops_per_s": tflops,
                "matmul_rate_tflops": rate_tflops,
                "matmul_rate_source": if args.peak_tflops.is_some() { "--peak-tflops" } else if probe.is_some() { "MLX matmul probe" } else { "none" },
                "mlx_matmul_probe": probe,
                "mfu": mfu,
                "peak_mlx_bytes": r.peak,
                "max_rss_bytes": rss,
                "weights_mlx_bytes": weights_bytes,
                "build_s": build_secs,
                "first_loss": r.first_loss,
                "final_loss": r.last_loss,
                "openblas_coretype": std::env::var("OPENBLAS_CORETYPE").ok(),
                "batch_size": case.rows,
                "quantize_bits": args.quantize,
                "grad_checkpoint": args.grad_checkpoint,
                "method": if args.full { "full" } else { "lora" },
            });
            let mut result = result;
            if let (Some(a), serde_json::Value::Object(b)) = (result.as_object_mut(), timing) {
                a.extend(b);
            }
            tell!(
                "csm bench-train: {:?} {dtype:?} {method}, {} (fraction {}, {} decoder frames), {mode:?} on {}: \
                 {:.3} s/step (min {:.3}, first {:.2}, host {:.4}{}), {:.1} frames/s ({} rows, {:.1}% padded frames), \
                 {:.1} model GFLOP, {:.1} GFLOP/s{}, \
                 step-0 loss {:.4}, weights {:.2} GB, peak MLX {:.2} GB, max RSS {:.2} GB",
                args.size,
                case.name(),
                case.fraction,
                batch.decoder_frames.len(),
                backend.name(),
                r.median,
                r.min,
                r.first,
                r.host_median,
                r.launch_median
                    .map(|l| format!(", launch {l:.4}"))
                    .unwrap_or_default(),
                frames / r.median,
                rows_n,
                100.0 * padded_share,
                flops.total / 1e9,
                tflops * 1e3,
                mfu.map(|m| format!(" ({:.1}% MFU)", 100.0 * m))
                    .unwrap_or_default(),
                r.first_loss,
                weights_bytes as f64 / 1e9,
                r.peak as f64 / 1e9,
                rss as f64 / 1e9
            );
            let text = serde_json::to_string_pretty(&result)?;
            if let Some(path) = &args.json {
                std::fs::write(path, &text)
                    .with_context(|| format!("--json {}", path.display()))?;
            }
            if let Some(dir) = &args.json_dir {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("--json-dir {}", dir.display()))?;
                let tag = if args.tag.is_empty() {
                    String::new()
                } else {
                    format!("_{}", args.tag)
                };
                let name = format!(
                    "csm_{}_{}_{}{tag}.json",
                    format!("{mode:?}").to_lowercase(),
                    case.name(),
                    case.fraction_name()
                );
                let path = dir.join(name);
                std::fs::write(&path, &text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    if !failed.is_empty() {
        bail!("{} run(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// The batch of a case: `rows` rows of `text` text frames, their audio
/// frames ([`Case::row_audio`]; identical rows without `--lengths`) and
/// EOS, laid out as the case says, with the depth-decoder frames chosen
/// by `rule`.
fn case_batch(config: &CsmConfig, case: &Case, text: usize, rule: DecoderRule) -> Result<Batch> {
    let k = config.audio_num_codebooks as usize;
    let (text_vocab, audio_vocab) = (
        config.text_vocab_size as usize,
        config.audio_vocab_size as usize,
    );
    let mut rng = Rng::new(1);
    let turn = Turn {
        // In range for the configuration: MLX's gather does not check
        // indices.
        text_tokens: (0..text)
            .map(|_| rng.below(text_vocab.min(128_000)) as u32)
            .collect(),
        codes: (0..case.audio_frames)
            .map(|_| {
                (0..k)
                    .map(|_| 1 + rng.below(audio_vocab - 4) as u32)
                    .collect()
            })
            .collect(),
        has_loss: true,
    };
    if !case.lengths.is_empty() {
        // Each row its own random codes.
        let examples: Vec<Example> = case
            .row_audio()
            .into_iter()
            .map(|a| {
                let codes = (0..a)
                    .map(|_| {
                        (0..k)
                            .map(|_| 1 + rng.below(audio_vocab - 4) as u32)
                            .collect()
                    })
                    .collect();
                let t = Turn {
                    codes,
                    ..turn.clone()
                };
                build_example(&[], &t, k, 1 << 20)
            })
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Example> = examples.iter().collect();
        let layout = match case.layout {
            LayoutArg::Padded => Layout::Padded,
            LayoutArg::Packed => Layout::Packed {
                row_len: pack_row_len(
                    examples.iter().map(Example::len).max().unwrap_or(0),
                    config.backbone.max_seq_len as usize,
                ),
            },
        };
        return Ok(collate_as(&refs, case.fraction, &mut rng, layout)?);
    }
    let example = build_example(&[], &turn, k, 1 << 20)?;
    let refs = vec![&example; case.rows];
    Ok(match rule {
        DecoderRule::Csm => collate(&refs, case.fraction, &mut rng)?,
        DecoderRule::Hf => {
            let mut batch = collate(&refs, 1.0, &mut rng)?;
            // Per row: the EOS frame (the row's last target) and
            // `A - floor(A (1 - f))` of its audio frames.
            let per_row = case.audio_frames + 1;
            let skip = (case.audio_frames as f64 * (1.0 - case.fraction as f64)).floor() as usize;
            let audio_kept = case.audio_frames - skip;
            let mut chosen = Vec::new();
            for row in batch.decoder_frames.chunks(per_row) {
                let (audio, eos) = row.split_at(per_row - 1);
                chosen.extend(
                    rng.choose(audio.len(), audio_kept)
                        .into_iter()
                        .map(|j| audio[j]),
                );
                chosen.extend_from_slice(eos);
            }
            chosen.sort_unstable();
            batch.decoder_frames = chosen;
            batch
        }
    })
}

/// What [`time_case`] measured.
struct CaseTimes {
    median: f64,
    min: f64,
    /// The first warm-up step (tracing and kernel compilation included).
    first: f64,
    times: Vec<f64>,
    /// Median seconds of a timed step spent on the host before the
    /// evaluation starts (building the step's graph, replaying a compiled
    /// trace, the optimizer's update): the device has nothing to run then.
    host_median: f64,
    /// Pipelined: median seconds the host spends handing a built step to
    /// the device (`async_eval`: encoding and launching its kernels). When
    /// it nears the step's time, the host, not the device, sets the pace.
    launch_median: Option<f64>,
    first_loss: f32,
    last_loss: f32,
    peak: usize,
}

/// Warm-up and timed optimizer steps of `batch` (AdamW on the trainable
/// tensors), with a fresh optimizer and the peak memory of these steps.
///
/// `pipeline`: as the trainer does, each step's graph is built while the
/// device still runs the step before, and handed to the device once that
/// one is done (so no more memory is live than without it). A step's time
/// runs from the end of the step before to its own end.
fn time_case(
    model: &mut Csm,
    batch: &Batch,
    options: StepOptions,
    pipeline: bool,
    warmup: usize,
    steps: usize,
) -> Result<CaseTimes> {
    let names: Vec<String> = adapter::adapter_tensors(model).into_keys().collect();
    let mut step = ForwardBackward::new(names, LossWeights::default(), options);
    let mut opt = AdamW::new(0.0);
    // As the trainer does: the update compiled with the step.
    opt.compiled = options.compile;
    transforms::compile::clear_cache();
    runtime::clear_mlx_cache();
    runtime::reset_peak_memory();
    let (mut done, mut host, mut launch) = (Vec::new(), Vec::new(), Vec::new());
    let mut losses = Vec::new();
    // The loss of the step the device is running (pipelined).
    let mut running: Option<Array> = None;
    let start = Instant::now();
    // Waits for a step's loss: the step is done.
    let mut finish = |loss: &Array| -> Result<()> {
        transforms::eval([loss])?;
        done.push(start.elapsed().as_secs_f64());
        losses.push(loss.item_cast::<f32>());
        Ok(())
    };
    for _ in 0..warmup + steps {
        let t = Instant::now();
        let out = step.run(model, batch, (1.0, 1.0))?;
        let grads = out.grads.into_iter().collect();
        let params = adapter::adapter_tensors(model);
        let updated = opt.update(1e-4, &params, &grads)?;
        let loss = out.losses[0].clone();
        let mut to_eval: Vec<Array> = updated.values().cloned().collect();
        to_eval.push(loss.clone());
        to_eval.extend(opt.state_arrays().cloned());
        model.update_flattened(
            updated
                .into_iter()
                .map(|(k, v)| (std::rc::Rc::from(k.as_str()), v))
                .collect(),
        );
        host.push(t.elapsed().as_secs_f64());
        if let Some(prev) = running.take() {
            finish(&prev)?;
        }
        if pipeline {
            let t = Instant::now();
            transforms::async_eval(&to_eval)?;
            launch.push(t.elapsed().as_secs_f64());
            running = Some(loss);
        } else {
            transforms::eval(&to_eval)?;
            finish(&loss)?;
        }
    }
    if let Some(prev) = running.take() {
        finish(&prev)?;
    }
    let last_loss = *losses.last().expect("at least one step");
    if !last_loss.is_finite() {
        bail!("the benchmark loss is {last_loss}");
    }
    let peak = runtime::peak_memory();
    let times: Vec<f64> = (warmup..warmup + steps)
        .map(|i| done[i] - if i == 0 { 0.0 } else { done[i - 1] })
        .collect();
    let median = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        v[v.len() / 2]
    };
    let launch_median = pipeline.then(|| median(launch.split_off(warmup)));
    Ok(CaseTimes {
        median: median(times.clone()),
        min: times.iter().copied().fold(f64::INFINITY, f64::min),
        first: done[0],
        times,
        host_median: median(host.split_off(warmup)),
        launch_median,
        first_loss: losses[0],
        last_loss,
        peak,
    })
}

/// Peak resident set size of this process.
fn max_rss_bytes() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        // Linux reports kilobytes, macOS bytes.
        if cfg!(target_os = "macos") {
            usage.ru_maxrss as u64
        } else {
            usage.ru_maxrss as u64 * 1024
        }
    }
}

/// Flags of `csm bench-load`.
#[derive(Debug, Args)]
pub struct BenchLoadArgs {
    /// Folder for the random CSM-1B checkpoint (written once, ~6.2 GB f32).
    #[arg(long, default_value = "target/bench/csm-1b-random")]
    dir: std::path::PathBuf,
}

/// Writes a random CSM-1B checkpoint in Sesame's layout (original names +
/// `config.json`), then times a strict load of it in f32 and reports the
/// resident memory.
pub fn run_load(args: BenchLoadArgs) -> Result<()> {
    use csm_core::checkpoint::write::save_safetensors;
    use csm_core::model::load::{canonical_weights, load_csm, to_format, LoadOptions};
    use csm_core::model::ModelFormat;
    let file = args.dir.join("model.safetensors");
    if !file.exists() {
        std::fs::create_dir_all(&args.dir)?;
        random::seed(3)?;
        let config = CsmConfig::csm_1b();
        let model = Csm::new(&config)?;
        let original = to_format(&canonical_weights(&model), ModelFormat::Original, &config)?;
        save_safetensors(&file, &original.tensors, &Default::default())?;
        let json = config.to_sesame_json().expect("CSM-1B has flavor names");
        std::fs::write(
            args.dir.join("config.json"),
            serde_json::to_string_pretty(&json)?,
        )?;
        say!("wrote {}", file.display());
    }
    let rss_before = max_rss_bytes();
    let t = Instant::now();
    let loaded = load_csm(&args.dir, &LoadOptions::default())?;
    transforms::eval(loaded.model.parameters().flatten().values().copied())?;
    let secs = t.elapsed().as_secs_f64();
    tell!(
        "csm bench-load: {} ({}) loaded strictly in {secs:.1} s; {} parameters; max RSS {:.2} GB (before load {:.2} GB); MLX active {:.2} GB",
        args.dir.display(),
        loaded.format,
        loaded.model.parameters().flatten().values().map(|a| a.size()).sum::<usize>(),
        max_rss_bytes() as f64 / 1e9,
        rss_before as f64 / 1e9,
        runtime::active_memory() as f64 / 1e9,
    );
    Ok(())
}
