//! Training modes on the demo model (tiny CSM, random Mimi, espeak-ng
//! dataset): QLoRA (`--quantize`), full fine-tuning (`--method full`) and
//! the learning-rate range test, through the real loaders and trainer.

use std::path::{Path, PathBuf};

mod common;

use csm_core::adapter;
use csm_core::cancel::CancelToken;
use csm_core::demo::{create_demo, demo_config, transformers_config_json, DemoPaths};
use csm_core::model::load::{canonical_weights, load_csm, to_format, LoadOptions};
use csm_core::model::{LossWeights, ModelFormat};
use csm_core::train::lr_find::{lr_find, LrFindOptions};
use csm_core::train::{
    self, trainer, CheckSplit, Method, ModelPart, RecordingObserver, RunSettings, SaveMode,
    TrainConfig, TrainEvent, TrainingObserver,
};
use mlx_rs::Dtype;

/// The folder of this process's demo and codes cache (one per process:
/// nextest runs each test in its own process).
fn root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("train-modes-{}", std::process::id()))
}

fn shared_demo() -> DemoPaths {
    static ONCE: std::sync::OnceLock<DemoPaths> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let root = root();
        let _ = std::fs::remove_dir_all(&root);
        common::remove_at_exit(&root);
        create_demo(&root, 6, 7).expect("demo builds (needs espeak-ng)")
    })
    .clone()
}

fn settings() -> RunSettings {
    RunSettings::new(root().join("cache").join("codes"))
}

/// The e2e test's run: 5 training recordings, batches of 2, 3 steps an
/// epoch.
fn config(paths: &DemoPaths, out: &Path) -> TrainConfig {
    TrainConfig {
        model_path: paths.model.clone(),
        mimi_path: Some(paths.mimi.clone()),
        tokenizer_path: Some(paths.tokenizer.clone()),
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
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(s) => Some(s.loss),
            _ => None,
        })
        .collect()
}

fn last_validation(events: &[TrainEvent]) -> f32 {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Validation(v) => Some(v.loss),
            _ => None,
        })
        .next_back()
        .expect("a validation ran")
}

/// The mean of the last three steps is below `factor` times that of the
/// first three.
fn assert_falls(losses: &[f32], factor: f32) {
    let first = losses[..3].iter().sum::<f32>() / 3.0;
    let last = losses[losses.len() - 3..].iter().sum::<f32>() / 3.0;
    assert!(last < factor * first, "loss did not fall: {losses:?}");
}

fn close(a: f32, b: f32, rel: f32) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-6)
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

fn run(cfg: &TrainConfig) -> (train::RunSummary, Vec<TrainEvent>) {
    let mut obs = RecordingObserver::default();
    let summary = train::train(cfg, &settings(), &mut obs, &CancelToken::new()).unwrap();
    (summary, obs.events)
}

/// QLoRA: training on a 4-bit base lowers the loss, and the adapter it
/// saves, applied to the full-precision model and loaded independently
/// here, gives the loss the run reported for it (and so does the merged
/// model it wrote).
#[test]
fn qlora_trains_and_its_adapter_gives_the_reported_full_precision_loss() {
    let paths = shared_demo();
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(&paths, out.path());
    cfg.quantize = Some(4);
    cfg.epochs = 8;
    cfg.val_split = 0.2;
    cfg.save_mode = SaveMode::Both;
    let (summary, events) = run(&cfg);
    assert_falls(&step_losses(&events), 0.8);
    let check = summary
        .full_precision
        .expect("a QLoRA run checks its adapter");
    eprintln!(
        "validation: {:?} full precision, {:?} on the 4-bit base",
        check.full_precision, check.quantized
    );
    assert_eq!((check.bits, check.split), (4, CheckSplit::Validation));
    // What `csm evaluate --adapter OUT` does: full-precision base + adapter.
    let mut assets = train::load_assets(
        &paths.model,
        Some(&paths.mimi),
        Some(&paths.tokenizer),
        Dtype::Float32,
    )
    .unwrap();
    let prepared = train::prepare(
        &mut assets,
        &cfg,
        &settings().codes_cache,
        &mut RecordingObserver::default(),
    )
    .unwrap();
    assert_eq!(prepared.val.len(), check.examples);
    let w = LossWeights::default();
    adapter::load_mlx(&mut assets.loaded.model, out.path()).unwrap();
    let full = trainer::evaluate(&mut assets.loaded.model, &prepared.val, 2, w).unwrap();
    assert!(
        close(full.total, check.full_precision.total, 1e-5),
        "reported {:?}, measured {full:?}",
        check.full_precision
    );
    let mut merged = load_csm(&out.path().join("merged"), &LoadOptions::default()).unwrap();
    let merged_loss = trainer::evaluate(&mut merged.model, &prepared.val, 2, w).unwrap();
    assert!(
        close(merged_loss.total, full.total, 1e-4),
        "{merged_loss:?} vs {full:?}"
    );
    // The quantized base is a different model: its loss is not the same.
    assert_ne!(check.quantized.total, check.full_precision.total);
}

/// Full fine-tuning starts where LoRA starts (a fresh adapter adds zero),
/// and training the decoder alone leaves every other weight bit for bit as
/// it was, in the model written in the input's format.
#[test]
fn full_starts_at_the_lora_loss_and_decoder_only_keeps_the_rest_bit_identical() {
    let paths = shared_demo();
    let lora_dir = tempfile::tempdir().unwrap();
    let token = CancelToken::new();
    let mut stop = StopAt {
        step: 1,
        token: token.clone(),
        inner: RecordingObserver::default(),
    };
    train::train(
        &config(&paths, lora_dir.path()),
        &settings(),
        &mut stop,
        &token,
    )
    .unwrap();
    let lora_first = step_losses(&stop.inner.events)[0];

    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(&paths, out.path());
    cfg.method = Method::Full;
    cfg.train = vec![ModelPart::Decoder];
    cfg.learning_rate = 1e-3;
    cfg.epochs = 2;
    let (summary, events) = run(&cfg);
    let losses = step_losses(&events);
    assert!(
        close(losses[0], lora_first, 1e-6),
        "step 1: full {} vs LoRA {lora_first}",
        losses[0]
    );
    assert!(losses[5] < losses[0], "{losses:?}");
    assert!(!out.path().join("adapters.safetensors").exists());

    let before = load_csm(&paths.model, &LoadOptions::default()).unwrap();
    let after = load_csm(&summary.output_dir.join("model"), &LoadOptions::default()).unwrap();
    assert_eq!(after.format, before.format);
    let (a, b) = (
        canonical_weights(&before.model),
        canonical_weights(&after.model),
    );
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    let mut changed = 0;
    for (k, x) in &a.tensors {
        let y = &b.tensors[k];
        let same = x.as_slice::<f32>() == y.as_slice::<f32>();
        if train::full::part_of(k) == ModelPart::Decoder {
            changed += usize::from(!same);
        } else {
            assert!(same, "{k} changed although only the decoder trained");
        }
    }
    assert!(changed > 10, "only {changed} decoder tensors changed");
}

/// A full fine-tune stopped after step 5 and resumed from its checkpoint
/// gives the loss sequence of an uninterrupted run.
#[test]
fn full_resume_after_a_stop_continues_the_same_loss_sequence() {
    let paths = shared_demo();
    let full = |out: &Path| TrainConfig {
        method: Method::Full,
        learning_rate: 5e-4,
        ..config(&paths, out)
    };
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = step_losses(&run(&full(straight_dir.path())).1);

    let split_dir = tempfile::tempdir().unwrap();
    let cfg = full(split_dir.path());
    let token = CancelToken::new();
    let mut stop = StopAt {
        step: 5,
        token: token.clone(),
        inner: RecordingObserver::default(),
    };
    let first = train::train(&cfg, &settings(), &mut stop, &token).unwrap();
    assert!(first.cancelled);
    let mut losses = step_losses(&stop.inner.events);
    assert_eq!(losses.len(), 5);
    let resumed = TrainConfig {
        resume_from: Some(split_dir.path().join("checkpoint_latest.safetensors")),
        ..cfg.clone()
    };
    losses.extend(step_losses(&run(&resumed).1));
    assert_eq!(losses.len(), straight.len());
    for (i, (a, b)) in losses.iter().zip(&straight).enumerate() {
        assert!(close(*a, *b, 1e-5), "step {}: {a} vs {b}", i + 1);
    }
    // A LoRA run cannot continue a full fine-tune's checkpoint.
    let other = TrainConfig {
        method: Method::Lora,
        output_dir: tempfile::tempdir().unwrap().keep(),
        ..resumed
    };
    let err = train::train(
        &other,
        &settings(),
        &mut RecordingObserver::default(),
        &CancelToken::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--method full"), "{err}");
}

/// Written in each layout a full fine-tune can read, the trained model is
/// saved in that layout and reloads to the validation loss the run
/// reported at its last step.
#[test]
fn full_model_reloads_in_the_format_it_was_read_from_with_the_same_loss() {
    let paths = shared_demo();
    let base = load_csm(&paths.model, &LoadOptions::default()).unwrap();
    let canonical = canonical_weights(&base.model);
    let config_json = serde_json::to_string(&transformers_config_json(&demo_config())).unwrap();
    for format in [
        ModelFormat::Original,
        ModelFormat::Transformers,
        ModelFormat::CsmMlx,
        ModelFormat::MlxAudio,
    ] {
        let model_dir = tempfile::tempdir().unwrap();
        let weights = to_format(&canonical, format, &base.model.config).unwrap();
        csm_core::checkpoint::write::save_safetensors(
            &model_dir.path().join("model.safetensors"),
            &weights.tensors,
            &Default::default(),
        )
        .unwrap();
        std::fs::write(model_dir.path().join("config.json"), &config_json).unwrap();
        let out = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            model_path: model_dir.path().to_path_buf(),
            method: Method::Full,
            learning_rate: 5e-4,
            epochs: 1,
            val_split: 0.2,
            ..config(&paths, out.path())
        };
        let (summary, events) = run(&cfg);
        let reported = last_validation(&events);

        let saved = summary.output_dir.join("model");
        let mut assets = train::load_assets(
            &saved,
            Some(&paths.mimi),
            Some(&paths.tokenizer),
            Dtype::Float32,
        )
        .unwrap();
        assert_eq!(assets.loaded.format, format);
        let prepared = train::prepare(
            &mut assets,
            &cfg,
            &settings().codes_cache,
            &mut RecordingObserver::default(),
        )
        .unwrap();
        let w = LossWeights::default();
        let loss = trainer::evaluate(&mut assets.loaded.model, &prepared.val, 2, w).unwrap();
        assert!(
            close(loss.total, reported, 1e-5),
            "{format}: reloaded {} vs reported {reported}",
            loss.total
        );
    }
}

/// The range test on the demo suggests a learning rate at which the demo
/// trains: inside the range where 4 epochs of `csm demo` halve its
/// validation loss (1e-3 to 1e-1, measured by training it at fixed rates
/// from 1e-5 to 1e-1: README, "Learning-rate finder"), and a run at the
/// suggestion lowers the loss here.
#[test]
fn lr_find_suggests_a_rate_the_demo_trains_at() {
    let paths = shared_demo();
    let out = tempfile::tempdir().unwrap();
    let cfg = config(&paths, out.path());
    let report = lr_find(
        &cfg,
        &LrFindOptions::default(),
        &settings(),
        &mut RecordingObserver::default(),
        &mut |_| {},
        &CancelToken::new(),
    )
    .unwrap();
    let lr = report.suggested_lr.expect("a suggestion");
    eprintln!("suggested {lr:e}, lowest loss at {:?}", report.min_loss_lr);
    assert!((1e-3..=1e-1).contains(&lr), "suggested {lr:e}");
    assert_eq!(report.points.len(), 100);
    // lr_find itself writes nothing.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    let at = TrainConfig {
        learning_rate: lr,
        output_dir: out.path().join("run"),
        ..cfg
    };
    assert_falls(&step_losses(&run(&at).1), 0.8);
}
