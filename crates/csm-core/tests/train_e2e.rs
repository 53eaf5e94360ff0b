//! End-to-end training on the demo model (tiny CSM, random Mimi, espeak-ng
//! dataset): real files through the real loaders.

use std::path::{Path, PathBuf};

mod common;
use common::{max_abs, max_abs_diff, remove_at_exit};

use csm_core::codec::Mimi;
use csm_core::demo::{create_demo, DemoPaths};

fn demo(root: &Path, n: usize) -> DemoPaths {
    create_demo(root, n, 7).expect("demo builds (needs espeak-ng)")
}

#[test]
fn demo_codec_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let paths = demo(dir.path(), 2);
    let t = std::time::Instant::now();
    let mimi = Mimi::load(&paths.mimi, None).unwrap();
    eprintln!("mimi loaded in {:?}", t.elapsed());
    assert_eq!(mimi.hop_length(), 1920);
}

use csm_core::adapter;
use csm_core::cancel::CancelToken;
use csm_core::model::load::{load_csm, LoadOptions};
use csm_core::model::LossWeights;
use csm_core::train::metrics::JsonlObserver;
use csm_core::train::{
    self, trainer, RecordingObserver, RunSettings, SaveMode, StepReport, TrainConfig, TrainEvent,
    TrainingObserver,
};

/// The folder of this process's demo and codes cache (one per process:
/// nextest runs each test in its own process).
fn root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("train-e2e-demo-{}", std::process::id()))
}

/// One demo and one codes cache shared by the tests of this binary.
fn shared_demo() -> DemoPaths {
    static ONCE: std::sync::OnceLock<DemoPaths> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let root = root();
        let _ = std::fs::remove_dir_all(&root);
        remove_at_exit(&root);
        demo(&root, 6)
    })
    .clone()
}

/// The settings of every run here: the shared codes cache, not compiled,
/// one process, the best device. No environment variable is involved.
fn settings() -> RunSettings {
    RunSettings::new(root().join("cache").join("codes"))
}

fn config(paths: &DemoPaths, out: &Path) -> TrainConfig {
    TrainConfig {
        model_path: paths.model.clone(),
        audio_dir: paths.audio_dir.clone(),
        transcript_dir: paths.transcript_dir.clone(),
        output_dir: out.to_path_buf(),
        context_turns: 0,
        batch_size: 2,
        epochs: 4,
        learning_rate: 3e-3,
        warmup_steps: 2,
        val_split: 0.0,
        val_every: 0,
        save_every: 4,
        decoder_fraction: 0.5,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "o_proj".into()],
        seed: 11,
        ..TrainConfig::default()
    }
}

fn step_losses(events: &[TrainEvent]) -> Vec<f32> {
    step_values(events, |s| s.loss)
}

/// One value of each step report, in order.
fn step_values(events: &[TrainEvent], f: impl Fn(&StepReport) -> f32) -> Vec<f32> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(s) => Some(f(s)),
            _ => None,
        })
        .collect()
}

/// Cancels the run after a given step.
struct StopAt {
    step: usize,
    token: CancelToken,
    inner: RecordingObserver,
}

impl TrainingObserver for StopAt {
    fn on_event(&mut self, event: &TrainEvent) {
        if let TrainEvent::Step(s) = event {
            if s.step == self.step {
                self.token.cancel();
            }
        }
        self.inner.on_event(event);
    }
}

/// JSON equality with numbers compared as the `f32`s they were.
fn same_as_f32(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().map(|v| v as f32) == y.as_f64().map(|v| v as f32)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_as_f32(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_as_f32(v, w)))
        }
        _ => a == b,
    }
}

/// `metrics.jsonl` holds one JSON record per event the observer saw, in
/// order, with the same numbers, and a wall-clock time on each.
fn check_metrics_jsonl(path: &Path, events: &[TrainEvent]) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}: {l}", i + 1))
        })
        .collect();
    assert_eq!(lines.len(), events.len(), "one line per event");
    let mut last_time = 0.0;
    for (i, (line, event)) in lines.iter().zip(events).enumerate() {
        let time = line["time"]
            .as_f64()
            .unwrap_or_else(|| panic!("line {i}: no time"));
        assert!(time >= last_time, "line {i}: time goes back");
        last_time = time;
        let want = serde_json::to_value(event).unwrap();
        assert_eq!(line["event"], want["event"], "line {i}");
        assert!(
            same_as_f32(&line["data"], &want["data"]),
            "line {i}: {} vs {}",
            line["data"],
            want["data"]
        );
    }
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["event"] == kind)
            .map(|l| &l["data"])
            .collect()
    };
    let steps = of("step");
    let losses = step_losses(events);
    assert_eq!(steps.len(), losses.len());
    for (i, (s, loss)) in steps.iter().zip(&losses).enumerate() {
        assert_eq!(s["step"], i + 1);
        assert_eq!(s["loss"].as_f64().unwrap() as f32, *loss, "step {}", i + 1);
        for key in ["semanticLoss", "acousticLoss", "lr", "gradNorm"] {
            assert!(
                s[key].as_f64().is_some_and(f64::is_finite),
                "step {}: {key}",
                i + 1
            );
        }
    }
    let validations = of("validation");
    let val_steps: Vec<u64> = validations
        .iter()
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert!(
        val_steps.len() >= 2 && val_steps[..2] == [8, 16],
        "validations at {val_steps:?}"
    );
    for v in &validations {
        assert!(v["loss"].as_f64().is_some_and(|l| l.is_finite() && l > 0.0));
        assert!(v["examples"].as_u64().is_some_and(|n| n >= 1), "{v}");
    }
    assert_eq!(of("started").len(), 1);
    assert!(!of("checkpoint").is_empty());
    let finished = of("finished");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["step"], losses.len());
    assert_eq!(lines.last().unwrap()["event"], "finished");
}

#[test]
fn loss_falls_and_outputs_reload_with_the_same_results() {
    let paths = shared_demo();
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(&paths, out.path());
    cfg.epochs = 8;
    cfg.save_mode = SaveMode::Both;
    // One recording of six held out, validated every 8 steps.
    cfg.val_split = 0.2;
    cfg.val_every = 8;
    let mut obs = RecordingObserver::default();
    // metrics.jsonl as the CLI and the app write it.
    let mut jsonl = JsonlObserver::new(out.path(), &mut obs).unwrap();
    let summary = train::train(&cfg, &settings(), &mut jsonl, &CancelToken::new()).unwrap();
    drop(jsonl);
    let losses = step_losses(&obs.events);
    assert_eq!(summary.steps, losses.len());
    check_metrics_jsonl(&out.path().join("metrics.jsonl"), &obs.events);
    let first = losses[..3].iter().sum::<f32>() / 3.0;
    let last = losses[losses.len() - 3..].iter().sum::<f32>() / 3.0;
    assert!(last < 0.8 * first, "loss did not fall: {losses:?}");
    for f in [
        "adapters.safetensors",
        "adapter_config.json",
        "config.json",
        "metrics.jsonl",
        "peft/adapter_model.safetensors",
        "peft/adapter_config.json",
        "merged/model.safetensors",
        "merged/config.json",
        "checkpoint_latest.safetensors",
    ] {
        assert!(out.path().join(f).exists(), "{f} missing");
    }

    // Base + adapter and the merged model give the same loss, different
    // from the base model's.
    let mut assets = train::load_assets(&paths.model, None, None, mlx_rs::Dtype::Float32).unwrap();
    let prepared = train::prepare(
        &mut assets,
        &cfg,
        &settings().codes_cache,
        &mut RecordingObserver::default(),
    )
    .unwrap();
    let w = LossWeights::default();
    let base = trainer::evaluate(&mut assets.loaded.model, &prepared.train, 2, w).unwrap();
    adapter::load_mlx(&mut assets.loaded.model, out.path()).unwrap();
    let adapted = trainer::evaluate(&mut assets.loaded.model, &prepared.train, 2, w).unwrap();
    let mut merged = load_csm(&out.path().join("merged"), &LoadOptions::default()).unwrap();
    let merged_loss = trainer::evaluate(&mut merged.model, &prepared.train, 2, w).unwrap();
    assert!(
        adapted.total < base.total - 0.05,
        "adapter changed nothing: {base:?} vs {adapted:?}"
    );
    assert!(
        (merged_loss.total - adapted.total).abs() < 1e-3 * adapted.total,
        "{merged_loss:?} vs {adapted:?}"
    );
}

#[test]
fn fresh_adapter_equals_base_model() {
    let paths = shared_demo();
    let out = tempfile::tempdir().unwrap();
    let cfg = config(&paths, out.path());
    let mut assets = train::load_assets(&paths.model, None, None, mlx_rs::Dtype::Float32).unwrap();
    let prepared = train::prepare(
        &mut assets,
        &cfg,
        &settings().codes_cache,
        &mut RecordingObserver::default(),
    )
    .unwrap();
    let w = LossWeights::default();
    let base = trainer::evaluate(&mut assets.loaded.model, &prepared.train, 2, w).unwrap();
    adapter::attach(&mut assets.loaded.model, &cfg.lora_spec()).unwrap();
    let fresh = trainer::evaluate(&mut assets.loaded.model, &prepared.train, 2, w).unwrap();
    assert_eq!(base.total, fresh.total);
    assert_eq!(base.acoustic, fresh.acoustic);
}

#[test]
fn resume_after_a_stop_continues_the_same_run() {
    let paths = shared_demo();
    let straight_dir = tempfile::tempdir().unwrap();
    let cfg = config(&paths, straight_dir.path());
    let mut obs = RecordingObserver::default();
    train::train(&cfg, &settings(), &mut obs, &CancelToken::new()).unwrap();
    let straight = step_losses(&obs.events);

    // Stopped and resumed with --packing (the padded run's loss, the same
    // data order), so both halves also check packing through the trainer.
    let split_dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        packing: true,
        ..config(&paths, split_dir.path())
    };
    let token = CancelToken::new();
    let mut stop = StopAt {
        step: 5,
        token: token.clone(),
        inner: RecordingObserver::default(),
    };
    let first = train::train(&cfg, &settings(), &mut stop, &token).unwrap();
    assert!(first.cancelled);
    let mut before = step_losses(&stop.inner.events);
    assert_eq!(before.len(), 5);
    let mut resumed_cfg = cfg.clone();
    resumed_cfg.resume_from = Some(split_dir.path().join("checkpoint_latest.safetensors"));
    let mut obs = RecordingObserver::default();
    train::train(&resumed_cfg, &settings(), &mut obs, &CancelToken::new()).unwrap();
    before.extend(step_losses(&obs.events));
    assert_eq!(before.len(), straight.len());
    for (i, (a, b)) in before.iter().zip(&straight).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "step {}: {a} vs {b}",
            i + 1
        );
    }

    // A checkpoint of another LoRA setup is refused, naming the flags.
    let mut other = cfg.clone();
    other.lora_r = 4;
    other.output_dir = tempfile::tempdir().unwrap().keep();
    other.resume_from = resumed_cfg.resume_from.clone();
    let err = train::train(
        &other,
        &settings(),
        &mut RecordingObserver::default(),
        &CancelToken::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--lora-r"), "{err}");
}

#[test]
fn unwritable_output_dir_is_a_clear_error() {
    let paths = shared_demo();
    let file = tempfile::NamedTempFile::new().unwrap();
    let cfg = config(&paths, &file.path().join("sub"));
    let err = train::train(
        &cfg,
        &settings(),
        &mut RecordingObserver::default(),
        &CancelToken::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("output directory"), "{err}");
}

#[test]
fn a_codec_with_more_codes_than_the_model_is_refused() {
    use csm_core::checkpoint::write::{save_safetensors, write_atomic};
    use csm_core::demo::{demo_config, transformers_config_json};
    use csm_core::model::Csm;

    let paths = shared_demo();
    // The demo's Mimi has 2048 codes per codebook; this model embeds 1024.
    let dir = tempfile::tempdir().unwrap();
    let mut small = demo_config();
    small.audio_vocab_size = 1024;
    let csm = Csm::new(&small).unwrap();
    let weights = csm_core::model::load::canonical_weights(&csm);
    let model = dir.path().join("model.safetensors");
    save_safetensors(&model, &weights.tensors, &Default::default()).unwrap();
    let json = serde_json::to_string(&transformers_config_json(&small)).unwrap();
    write_atomic(&dir.path().join("config.json"), json.as_bytes()).unwrap();

    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(&paths, out.path());
    cfg.model_path = model;
    cfg.mimi_path = Some(paths.mimi.clone());
    cfg.tokenizer_path = Some(paths.tokenizer.clone());
    let err = train::train(
        &cfg,
        &settings(),
        &mut RecordingObserver::default(),
        &CancelToken::new(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("2048 codes per codebook") && msg.contains("audio vocabulary of 1024"),
        "{msg}"
    );
    assert!(msg.contains(paths.mimi.to_str().unwrap()), "{msg}");
}

/// Trains the shared demo with [`config`] as `edit` changes it, into a
/// fresh folder: the events and the folder.
fn train_demo(
    settings: &RunSettings,
    edit: impl FnOnce(&mut TrainConfig),
) -> (Vec<TrainEvent>, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(&shared_demo(), out.path());
    edit(&mut cfg);
    let mut obs = RecordingObserver::default();
    train::train(&cfg, settings, &mut obs, &CancelToken::new()).unwrap();
    (obs.events, out)
}

/// The compiled step (`RunSettings::compile`, `CSM_COMPILE=1` in the CLI:
/// `mx.compile`, padded batch shapes) follows the plain step's loss
/// sequence and ends at the same adapter.
#[test]
fn compiled_step_follows_the_plain_step() {
    let mut runs = Vec::new();
    for compile in [false, true] {
        let mut settings = settings();
        settings.compile = Some(compile);
        // Two lengths per batch and a fraction that leaves odd decoder
        // counts: both paddings of the compiled path are exercised.
        let (events, out) = train_demo(&settings, |cfg| cfg.decoder_fraction = 0.3);
        let adapters = csm_core::checkpoint::WeightMap::from_safetensors(
            &[out.path().join("adapters.safetensors")],
            None,
        )
        .unwrap();
        runs.push((step_losses(&events), adapters));
    }
    let ((plain, a), (compiled, b)) = (&runs[0], &runs[1]);
    assert_eq!(plain.len(), compiled.len());
    for (i, (x, y)) in plain.iter().zip(compiled).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs().max(1.0),
            "step {}: plain {x} vs compiled {y}",
            i + 1
        );
    }
    for (k, x) in &a.tensors {
        let d = max_abs_diff(x, &b.tensors[k]);
        let scale = max_abs(x);
        assert!(
            d <= 1e-3 * scale.max(1e-3),
            "{k}: max diff {d} (scale {scale})"
        );
    }
}

#[test]
fn pipelined_steps_equal_steps_one_after_the_other() {
    // Building a step while the one before runs changes when the host
    // waits, not what is computed: the same losses, gradient norms and
    // adapter bytes, with checkpoints (read at once) between pipelined
    // steps and a clip limit that some steps cross and some do not.
    let mut runs = Vec::new();
    for pipeline in [false, true] {
        let mut settings = settings();
        settings.pipeline = pipeline;
        let (events, out) = train_demo(&settings, |cfg| {
            cfg.max_grad_norm = 5.0;
            cfg.save_every = 5;
        });
        let bytes = std::fs::read(out.path().join("adapters.safetensors")).unwrap();
        runs.push((
            step_losses(&events),
            step_values(&events, |s| s.grad_norm),
            bytes,
        ));
    }
    let ((loss_a, norm_a, bytes_a), (loss_b, norm_b, bytes_b)) = (&runs[0], &runs[1]);
    assert_eq!(loss_a, loss_b);
    assert_eq!(norm_a, norm_b);
    assert!(bytes_a == bytes_b, "the adapters differ");
    let clipped = norm_a.iter().filter(|&&n| n > 5.0).count();
    assert!(
        clipped > 0 && clipped < norm_a.len(),
        "{clipped} of {} steps clipped: the limit should split them",
        norm_a.len()
    );
}
