//! Voice scores during training on the demo (tiny CSM, random Mimi,
//! espeak-ng dataset) with resemblyzer's real speaker encoder: the scores
//! at step 0 and at every checkpoint, the samples, the held-out clip and
//! the best checkpoint's adapter, across a stop and a resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;
use common::remove_at_exit;

use csm_core::adapter;
use csm_core::cancel::CancelToken;
use csm_core::demo::{create_demo, DemoPaths};
use csm_core::train::metrics::JsonlObserver;
use csm_core::train::run_dir::RunDir;
use csm_core::train::{
    self, RecordingObserver, RunSettings, TrainConfig, TrainEvent, TrainingObserver, VoiceConfig,
    VoiceReport,
};

/// The demo and codes cache of this process (nextest runs each test in
/// its own process).
fn root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("train-voice-demo-{}", std::process::id()))
}

fn demo() -> DemoPaths {
    let root = root();
    let _ = std::fs::remove_dir_all(&root);
    remove_at_exit(&root);
    create_demo(&root, 6, 7).expect("demo builds (needs espeak-ng)")
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

/// resemblyzer's weights, where `scripts/fetch-test-speaker-encoder.sh`
/// puts them (as `tests/speaker_parity.rs` reads them).
fn speaker_encoder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-data/resemblyzer-pretrained.pt")
}

/// The voice scores of `metrics.jsonl`, by step (the later record of a
/// step wins).
fn voice_records(out: &Path) -> BTreeMap<usize, VoiceReport> {
    RunDir::new(out)
        .voice_reports()
        .unwrap()
        .into_iter()
        .map(|r| (r.step, r))
        .collect()
}

/// The adapter tensors of a file, as f32 values by name.
fn adapter_values(path: &Path) -> BTreeMap<String, Vec<f32>> {
    csm_core::checkpoint::WeightMap::from_safetensors(&[path.to_path_buf()], None)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(k, v)| {
            let v = v.as_dtype(mlx_rs::Dtype::Float32).unwrap();
            (k, v.as_slice::<f32>().to_vec())
        })
        .collect()
}

/// The checkpoint of `step` with the most similar voice, earliest of equals:
/// the rule without Whisper, computed here from the records.
fn most_similar(records: &BTreeMap<usize, VoiceReport>, upto: usize) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for (&step, r) in records.range(1..=upto) {
        let s = r.summary.similarity.unwrap();
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((step, s));
        }
    }
    best.unwrap().0
}

/// Voice scores on the demo with the real speaker encoder: scores of the
/// base model and of every checkpoint in metrics.jsonl, their WAVs, one
/// recording held out of training, `adapters_best.safetensors` equal to
/// the adapter of the most similar checkpoint, and the same best after a
/// stop and a resume (the scores before the stop are read back from
/// metrics.jsonl).
#[test]
#[cfg_attr(
    not(csm_test_speaker_encoder),
    ignore = "needs target/test-data/resemblyzer-pretrained.pt: run scripts/fetch-test-speaker-encoder.sh"
)]
fn voice_scores_keep_the_best_checkpoint_across_a_resume() {
    let paths = demo();
    let out = tempfile::tempdir().unwrap();
    // Six recordings, one held out: 5 examples, 3 steps an epoch, 12 steps,
    // checkpoints at 4, 8 and 12 (the last). Two short prompts.
    let cfg = TrainConfig {
        model_path: paths.model.clone(),
        audio_dir: paths.audio_dir.clone(),
        transcript_dir: paths.transcript_dir.clone(),
        output_dir: out.path().to_path_buf(),
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
        voice: Some(VoiceConfig {
            prompts: vec!["Hi.".into(), "Go on.".into()],
            ..VoiceConfig::new(speaker_encoder())
        }),
        ..TrainConfig::default()
    };
    let settings = RunSettings::new(root().join("cache").join("codes"));
    let run = RunDir::new(out.path());

    // Stopped after step 6: the base model and checkpoint 4 were scored.
    let token = CancelToken::new();
    let mut stop = StopAt {
        step: 6,
        token: token.clone(),
        inner: RecordingObserver::default(),
    };
    let mut jsonl = JsonlObserver::new(out.path(), &mut stop).unwrap();
    let first = train::train(&cfg, &settings, &mut jsonl, &token).unwrap();
    drop(jsonl);
    assert!(first.cancelled);
    let setup = stop
        .inner
        .events
        .iter()
        .find_map(|e| match e {
            TrainEvent::VoiceSetup(s) => Some(s.clone()),
            _ => None,
        })
        .expect("a voiceSetup event");
    assert_eq!(setup.prompts, ["Hi.", "Go on."]);
    assert_eq!(setup.reference_recordings, 5);
    // A whole recording of the dataset, with its transcript.
    let id = &setup.held_out_recording;
    assert!(
        paths.audio_dir.join(format!("{id}.wav")).is_file(),
        "{setup:?}"
    );
    let transcript =
        std::fs::read_to_string(paths.transcript_dir.join(format!("{id}.txt"))).unwrap();
    assert_eq!(setup.context_text, transcript.trim());
    assert_eq!(setup.held_out_utterance, 0);
    assert!(stop.inner.events.iter().any(|e| matches!(
        e,
        TrainEvent::Started {
            train_examples: 5,
            ..
        }
    )));
    let records = voice_records(out.path());
    assert_eq!(records.keys().copied().collect::<Vec<_>>(), [0, 4]);
    assert_eq!(run.best_adapter_step(), Some(4));
    assert_eq!(
        adapter_values(&run.best_adapter_path()),
        adapter_values(&run.checkpoint_path(4))
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("adapter.")?.to_string(), v)))
            .collect(),
        "adapters_best.safetensors holds checkpoint 4's adapter"
    );
    // Kept aside: the run keeps only the newest checkpoints.
    let step4 = adapter_values(&run.best_adapter_path());

    let mut resumed = cfg.clone();
    resumed.resume_from = Some(run.latest_checkpoint_path());
    let mut obs = RecordingObserver::default();
    let mut jsonl = JsonlObserver::new(out.path(), &mut obs).unwrap();
    let summary = train::train(&resumed, &settings, &mut jsonl, &CancelToken::new()).unwrap();
    drop(jsonl);

    let records = voice_records(out.path());
    assert_eq!(records.keys().copied().collect::<Vec<_>>(), [0, 4, 8, 12]);
    for (step, r) in &records {
        assert_eq!(r.samples.len(), 2, "step {step}");
        assert_eq!(r.summary.samples, 2);
        assert!(r.summary.wer.is_none() && r.summary.cer.is_none());
        let sim = r.summary.similarity.unwrap();
        assert!(
            sim.is_finite() && (-1.0..=1.0).contains(&sim),
            "step {step}: {sim}"
        );
        for s in &r.samples {
            assert!(s.path.is_file(), "{} missing", s.path.display());
            assert_eq!(s.path, run.voice_sample_path(*step, s.prompt));
            // The random model never ends a sample: the length guard does,
            // at 2 s + 0.2 s a character.
            assert_eq!(s.stop_reason, csm_core::generate::StopReason::LengthLimit);
            let cap = 2.0 + 0.2 * s.text.chars().count() as f64;
            assert!(s.duration_secs <= cap + 0.08, "{} s", s.duration_secs);
            assert!(
                s.warnings[0].starts_with("did not end by itself"),
                "{:?}",
                s.warnings
            );
        }
        assert_eq!(
            r.summary.health_warnings,
            r.samples.iter().map(|s| s.warnings.len()).sum::<usize>()
        );
        // Each record names the best so far, steps before the stop included.
        let want = (*step > 0).then(|| most_similar(&records, *step));
        assert_eq!(r.best_step, want, "step {step}");
        assert_eq!(r.new_best, want == Some(*step), "step {step}");
    }
    let best = most_similar(&records, 12);
    assert_eq!(run.best_adapter_step(), Some(best));
    let want = if best == 4 {
        step4
    } else {
        adapter_values(&run.checkpoint_path(best))
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("adapter.")?.to_string(), v)))
            .collect()
    };
    assert_eq!(adapter_values(&run.best_adapter_path()), want);
    // A loadable mlx_lm adapter.
    let mut assets = train::load_assets(&paths.model, None, None, mlx_rs::Dtype::Float32).unwrap();
    adapter::load_mlx(&mut assets.loaded.model, &run.best_adapter_path()).unwrap();

    let voice = summary.voice.expect("the summary has the voice outcome");
    assert_eq!(voice.base.as_ref(), Some(&records[&0].summary));
    assert_eq!(voice.best, Some((best, records[&best].summary.clone())));
    assert_eq!(voice.last, Some((12, records[&12].summary.clone())));
}
