//! Silence trimming is a setting, and with it off our data path gives
//! transformers' loss on the file as it is.
//!
//! The fixture `tests/fixtures/silence_clip` (from
//! `scripts/fixtures/make_silence_fixture.py`) is one WAV with 0.5 s of
//! silence at each end and the loss `CsmForConditionalGeneration` computes on
//! it with the tiny model `csm_tiny_hf`, its codec encoding the audio. Here
//! the same folder goes through what `csm evaluate` runs: the dataset loader
//! and segmenting, Mimi encoding through the codes cache, the example layout
//! and the loss with every frame through the depth decoder.

use std::path::{Path, PathBuf};

use csm_core::model::LossWeights;
use csm_core::train::{self, RecordingObserver, TrainConfig};
use mlx_rs::Dtype;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[derive(serde::Deserialize)]
struct Reference {
    text_ids: Vec<i32>,
    samples: usize,
    silence_samples_each_end: usize,
    loss: f32,
    backbone_loss: f32,
    depth_decoder_loss: f32,
    codes: Vec<Vec<i32>>,
}

fn reference() -> Reference {
    let path = fixtures().join("silence_clip/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn config(trim_silence: bool) -> TrainConfig {
    let clip = fixtures().join("silence_clip");
    TrainConfig {
        model_path: fixtures().join("csm_tiny_hf"),
        tokenizer_path: Some(clip.join("tokenizer.json")),
        audio_dir: clip.join("audio"),
        transcript_dir: clip.join("transcripts"),
        context_turns: 0,
        val_split: 0.0,
        batch_size: 1,
        trim_silence,
        ..TrainConfig::default()
    }
}

/// `(examples' frames, evaluate's losses, seconds used)` for `cfg`.
fn evaluate(cfg: &TrainConfig) -> (Vec<train::batch::Example>, train::LossValues, f64) {
    cfg.validate().unwrap();
    let mut assets = train::load_assets(
        &cfg.model_path,
        cfg.mimi_path.as_deref(),
        cfg.tokenizer_path.as_deref(),
        Dtype::Float32,
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let prepared = train::prepare(
        &mut assets,
        cfg,
        cache.path(),
        &mut RecordingObserver::default(),
    )
    .unwrap();
    let weights = LossWeights {
        semantic: cfg.semantic_weight,
        acoustic: cfg.acoustic_weight,
    };
    let loss = train::evaluate(
        &mut assets.loaded.model,
        &prepared.train,
        cfg.batch_size,
        weights,
    )
    .unwrap();
    (prepared.train, loss, prepared.usage.seconds_used)
}

fn assert_rel(got: f32, want: f32, what: &str) {
    let rel = (got - want).abs() / want.abs();
    eprintln!("{what}: {got} vs transformers {want} (relative {rel:.1e})");
    assert!(
        rel < 1e-4,
        "{what}: {got} vs transformers {want} (relative {rel:e})"
    );
}

#[test]
fn untrimmed_evaluate_equals_transformers_on_the_file() {
    let r = reference();
    let (examples, loss, used) = evaluate(&config(false));
    assert_eq!(examples.len(), 1);
    assert_eq!(used, r.samples as f64 / 24_000.0, "the whole file is used");

    // Same sequence: the text frames, then the codes transformers' codec
    // gives for the whole file, then the EOS frame.
    let ex = &examples[0];
    let k = ex.num_codebooks;
    let rows: Vec<&[i32]> = ex.frames.chunks(k + 1).collect();
    let n_text = r.text_ids.len();
    assert_eq!(rows.len(), n_text + r.codes.len() + 1);
    let text: Vec<i32> = rows[..n_text].iter().map(|f| f[k]).collect();
    assert_eq!(text, r.text_ids);
    for (t, (row, want)) in rows[n_text..].iter().zip(&r.codes).enumerate() {
        assert_eq!(&row[..k], want.as_slice(), "codes of frame {t}");
    }

    assert_rel(loss.semantic, r.backbone_loss, "backbone (codebook 0) loss");
    assert_rel(loss.acoustic, r.depth_decoder_loss, "depth-decoder loss");
    assert_rel(loss.total, r.loss, "total loss");
}

#[test]
fn trimming_by_default_changes_what_is_evaluated() {
    let r = reference();
    let cfg = config(true);
    assert_eq!(cfg.trim_silence, TrainConfig::default().trim_silence);
    let (examples, loss, used) = evaluate(&cfg);
    // 0.2 s of the 0.5 s of silence is kept at each end.
    let kept =
        (r.samples - 2 * r.silence_samples_each_end) as f64 / 24_000.0 + 2.0 * cfg.edge_pad_secs;
    assert!(
        (used - kept).abs() < 0.011,
        "{used} s used, {kept} s expected"
    );
    assert!(examples[0].len() < r.text_ids.len() + r.codes.len());
    let rel = (loss.total - r.loss).abs() / r.loss;
    assert!(
        rel > 1e-3,
        "trimmed loss {} is transformers' {}",
        loss.total,
        r.loss
    );
}
