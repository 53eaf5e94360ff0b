//! `csm evaluate` and `csm prepare` on a clip with 0.5 s of silence at each
//! end (`tests/fixtures/silence_clip`, whose `reference.json` holds the loss
//! transformers computes on the file as it is): with `--no-trim-silence` the
//! loss is transformers', by default the edge silence is trimmed, and both
//! commands say how much audio they used.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;
use common::{run_with_env, text};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn args(command: &str, extra: &[&str]) -> Vec<String> {
    let clip = fixtures().join("silence_clip");
    let path = |p: PathBuf| p.to_str().unwrap().to_string();
    let mut a = vec![
        command.to_string(),
        "--model-path".into(),
        path(fixtures().join("csm_tiny_hf")),
        "--tokenizer-path".into(),
        path(clip.join("tokenizer.json")),
        "--audio-dir".into(),
        path(clip.join("audio")),
        "--transcript-dir".into(),
        path(clip.join("transcripts")),
        "--val-split".into(),
        "0".into(),
        "--context-turns".into(),
        "0".into(),
        "--batch-size".into(),
        "1".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// The JSON line `csm evaluate` prints.
fn evaluate(extra: &[&str]) -> serde_json::Value {
    let cache = tempfile::tempdir().unwrap();
    let (out, _) = run_with_env(
        &args("evaluate", extra),
        cache.path(),
        Duration::from_secs(300),
        &[("NO_COLOR", "")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn reference() -> serde_json::Value {
    let path = fixtures().join("silence_clip/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rel(got: &serde_json::Value, want: &serde_json::Value) -> f64 {
    let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
    (g - w).abs() / w.abs()
}

#[test]
fn evaluate_without_trimming_gives_transformers_loss_on_the_file() {
    let r = reference();
    let got = evaluate(&["--no-trim-silence"]);
    assert_eq!(got["trim_silence"], false, "{got}");
    assert_eq!(got["seconds_in"], got["seconds_used"], "{got}");
    for (ours, theirs) in [
        ("loss", "loss"),
        ("semantic_loss", "backbone_loss"),
        ("acoustic_loss", "depth_decoder_loss"),
    ] {
        let d = rel(&got[ours], &r[theirs]);
        assert!(
            d < 1e-4,
            "{ours} {} vs transformers {theirs} {}",
            got[ours],
            r[theirs]
        );
    }
}

#[test]
fn evaluate_trims_edge_silence_by_default_and_says_so() {
    let r = reference();
    let got = evaluate(&[]);
    assert_eq!(got["trim_silence"], true, "{got}");
    let (used, read) = (
        got["seconds_used"].as_f64().unwrap(),
        got["seconds_in"].as_f64().unwrap(),
    );
    assert_eq!(read, 1.25, "{got}");
    // 0.25 s of sound plus 0.2 s of edge padding on each side.
    assert!((used - 0.65).abs() < 0.011, "{got}");
    assert!(rel(&got["loss"], &r["loss"]) > 1e-3, "{got}");
}

#[test]
fn prepare_reports_the_audio_read_and_used() {
    let cache = tempfile::tempdir().unwrap();
    let (out, _) = run_with_env(
        &args("prepare", &["--no-trim-silence"]),
        cache.path(),
        Duration::from_secs(300),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let whole = format!("{:.1} s", 1.25);
    assert!(
        stdout.contains(&format!(
            "audio read: {whole} in 1 recording(s); used: {whole} in 1 utterance(s) from 1 recording(s), edge silence kept (--no-trim-silence)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "split: 1 utterance(s) ({whole}) for training, 0 (0.0 s) for validation"
        )),
        "{stdout}"
    );

    let (out, _) = run_with_env(
        &args("prepare", &[]),
        cache.path(),
        Duration::from_secs(300),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("audio read: {whole} in 1 recording(s); used: 0."))
            && stdout.contains("edge silence trimmed to 0.20 s (--no-trim-silence keeps it)"),
        "{stdout}"
    );
}
