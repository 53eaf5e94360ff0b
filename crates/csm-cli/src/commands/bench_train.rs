//! `csm bench-train`: seconds per LoRA training step of a CSM-1B-shaped
//! model with random weights (the same work as `bench/peer/train_step.py`).

use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use csm_core::adapter::TargetLayers;
use csm_core::adapter::{self, LoraSpec};
use csm_core::mlx_rs::module::ModuleParameters;
use csm_core::mlx_rs::{nn, random, transforms, Array, Dtype};
use csm_core::model::{AttentionMask, Csm, CsmConfig, LossBatch, LossWeights};
use csm_core::rng::Rng;
use csm_core::runtime;
use csm_core::train::batch::{build_example, collate, Turn};
use csm_core::train::optim::AdamW;

/// Model size.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchSize {
    /// The released CSM-1B shape (1.55 B parameters).
    Csm1b,
    /// The demo model (seconds).
    Demo,
}

/// Compute dtype.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchDtype {
    /// float32 (CPU default).
    F32,
    /// bfloat16 (GPU default).
    Bf16,
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
    /// Text frames of the example.
    #[arg(long, default_value_t = 20)]
    text_frames: usize,
    /// Audio frames of the example (an EOS frame is added).
    #[arg(long, default_value_t = 130)]
    audio_frames: usize,
    /// Fraction of audio frames through the depth decoder.
    #[arg(long, default_value_t = 0.0625)]
    decoder_fraction: f32,
    /// Examples per step.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Timed steps (after warm-up).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Warm-up steps (not timed).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Run the loss-and-gradient function through `mx.compile` (the batch
    /// is fixed here, so one trace serves every step).
    #[arg(long)]
    compile: bool,
}

/// Runs the benchmark.
pub fn run(args: BenchTrainArgs) -> Result<()> {
    let backend = runtime::use_best_device();
    let config = match args.size {
        BenchSize::Csm1b => CsmConfig::csm_1b(),
        BenchSize::Demo => csm_core::demo::demo_config(),
    };
    let dtype = match args.dtype {
        BenchDtype::F32 => Dtype::Float32,
        BenchDtype::Bf16 => Dtype::Bfloat16,
    };
    random::seed(0)?;
    let build = Instant::now();
    let mut model = Csm::new(&config)?;
    model.cast(dtype)?;
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
    let adapted = adapter::attach(&mut model, &spec)?;
    let build_secs = build.elapsed().as_secs_f64();
    let k = config.audio_num_codebooks as usize;
    let (text_vocab, audio_vocab) = (
        config.text_vocab_size as usize,
        config.audio_vocab_size as usize,
    );
    let mut rng = Rng::new(1);
    let examples: Vec<_> = (0..args.batch_size)
        .map(|_| {
            let turn = Turn {
                // In range for the configuration: MLX's gather does not
                // check indices.
                text_tokens: (0..args.text_frames)
                    .map(|_| rng.below(text_vocab.min(128_000)) as u32)
                    .collect(),
                codes: (0..args.audio_frames)
                    .map(|_| {
                        (0..k)
                            .map(|_| 1 + rng.below(audio_vocab - 4) as u32)
                            .collect()
                    })
                    .collect(),
                has_loss: true,
            };
            build_example(&[], &turn, k, 4096)
        })
        .collect::<Result<_, _>>()?;
    let refs: Vec<_> = examples.iter().collect();
    let batch = collate(&refs, args.decoder_fraction, &mut rng)?;
    let weights = LossWeights::default();
    let loss_fn = move |m: &mut Csm,
                        b: &csm_core::train::batch::Batch|
          -> Result<Array, csm_core::mlx_rs::error::Exception> {
        let l = m.loss(
            &LossBatch {
                tokens: &b.frames,
                mask: &b.mask,
                loss_mask: &b.c0_targets,
                decoder_frames: &b.decoder_frames,
                attention: AttentionMask::Causal,
            },
            weights,
        )?;
        Ok(l.total)
    };
    let mut vg = nn::value_and_grad(loss_fn);
    let fixed = batch.clone();
    let traced = move |m: &mut Csm, _: &[Array]| -> Vec<Array> {
        let mut vg_c = nn::value_and_grad(loss_fn);
        let (loss, grads) = vg_c(m, &fixed).expect("loss and gradients trace");
        let mut g: Vec<_> = grads.into_iter().collect();
        g.sort_by(|a, b| a.0.cmp(&b.0));
        std::iter::once(loss)
            .chain(g.into_iter().map(|x| x.1))
            .collect()
    };
    let mut compiled = transforms::compile::compile_with_state(traced, false);
    let mut names: Vec<String> = adapter::adapter_tensors(&model).into_keys().collect();
    names.sort();
    let mut opt = AdamW::new(0.0);
    let mut times = Vec::new();
    let mut last = f32::NAN;
    // As the trainer does on a CPU (see `csm_core::runtime::SingleThreadBlas`).
    let _blas =
        csm_core::kernels::many_row_products_are_ours().then(runtime::SingleThreadBlas::new);
    runtime::reset_peak_memory();
    for i in 0..args.warmup + args.steps {
        let t = Instant::now();
        let (loss, grads) = if args.compile {
            let mut out = compiled(&mut model, &[])?;
            let loss = out.remove(0);
            (loss, names.iter().cloned().zip(out).collect())
        } else {
            let (loss, grads) = vg(&mut model, &batch)?;
            (
                loss,
                grads.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            )
        };
        let params = adapter::adapter_tensors(&model);
        let updated = opt.update(1e-4, &params, &grads)?;
        let mut to_eval: Vec<&Array> = updated.values().collect();
        to_eval.push(&loss);
        to_eval.extend(opt.state_arrays());
        transforms::eval(to_eval)?;
        model.update_flattened(
            updated
                .into_iter()
                .map(|(k, v)| (std::rc::Rc::from(k.as_str()), v))
                .collect(),
        );
        last = loss.item_cast::<f32>();
        if i >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    if !last.is_finite() {
        bail!("the benchmark loss is {last}");
    }
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let median = times[times.len() / 2];
    let frames = batch.real_frames as f64;
    let rss = max_rss_bytes();
    let result = serde_json::json!({
        "tool": "csm (mlx-rs)",
        "backend": backend.name(),
        "device": runtime::default_device(),
        "size": format!("{:?}", args.size),
        "dtype": format!("{dtype:?}"),
        "frames": frames,
        "decoder_frames": batch.decoder_frames.len(),
        "decoder_fraction": args.decoder_fraction,
        "adapted_projections": adapted,
        "trainable_params": adapter::adapter_tensors(&model).values().map(|a| a.size()).sum::<usize>(),
        "median_s_per_step": median,
        "min_s_per_step": times[0],
        "frames_per_s": frames / median,
        "peak_mlx_bytes": runtime::peak_memory(),
        "max_rss_bytes": rss,
        "build_s": build_secs,
        "final_loss": last,
        "openblas_coretype": std::env::var("OPENBLAS_CORETYPE").ok(),
        "compiled": args.compile,
    });
    println!(
        "csm bench-train: {:?} {dtype:?} on {}: {:.3} s/step (min {:.3}), {:.1} frames/s, {} decoder frames, peak MLX {:.2} GB, max RSS {:.2} GB",
        args.size,
        backend.name(),
        median,
        times[0],
        frames / median,
        batch.decoder_frames.len(),
        runtime::peak_memory() as f64 / 1e9,
        rss as f64 / 1e9
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    Ok(())
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
        eprintln!("wrote {}", file.display());
    }
    let rss_before = max_rss_bytes();
    let t = Instant::now();
    let loaded = load_csm(&args.dir, &LoadOptions::default())?;
    transforms::eval(loaded.model.parameters().flatten().values().copied())?;
    let secs = t.elapsed().as_secs_f64();
    println!(
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
