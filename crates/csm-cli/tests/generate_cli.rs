//! `csm generate` and `csm bench-generate` end to end on the tiny fixture
//! model (`tests/fixtures/csm_tiny_hf`, which carries a tiny Mimi). The
//! happy path uses a hand-made word-level tokenizer whose ids fit the tiny
//! model's 300-id text table; the refusal uses Llama-3-sized ids (the real
//! tokenizer from `scripts/fetch-test-tokenizer.sh` when it is present).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use csm_core::data::audio::{read_wav, write_wav, WavEncoding};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn csm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_csm"))
        .args(args)
        .output()
        .expect("runs the csm binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A word-level `tokenizer.json` with `<|begin_of_text|>` = `base + 1`,
/// `<|end_of_text|>` = `base + 2` and words from `base + 5`.
fn word_tokenizer(path: &Path, base: u32) {
    let words = [
        "[", "]", "0", "1", "hello", "there", "how", "are", "you", ".", "?",
    ];
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), (base + 3).into());
    for (i, w) in words.iter().enumerate() {
        vocab.insert((*w).into(), (base + 5 + i as u32).into());
    }
    vocab.insert("<|begin_of_text|>".into(), (base + 1).into());
    vocab.insert("<|end_of_text|>".into(), (base + 2).into());
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(base + 1, "<|begin_of_text|>"), special(base + 2, "<|end_of_text|>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(path, json.to_string()).unwrap();
}

fn context_wav(path: &Path) {
    // 48 kHz on purpose: the CLI resamples to 24 kHz.
    let samples: Vec<f32> = (0..800)
        .map(|i| 0.3 * (i as f32 * 330.0 * std::f32::consts::TAU / 48_000.0).sin())
        .collect();
    write_wav(path, &samples, 48_000, WavEncoding::Int16).unwrap();
}

#[test]
fn generate_writes_a_24k_wav() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    word_tokenizer(&tok, 0);
    let ctx = dir.path().join("ctx.wav");
    context_wav(&ctx);
    let out = dir.path().join("out.wav");
    let model = fixtures().join("csm_tiny_hf");
    let result = csm(&[
        "generate",
        "--model-path",
        model.to_str().unwrap(),
        "--tokenizer-path",
        tok.to_str().unwrap(),
        "--text",
        "hello there.",
        "--speaker-id",
        "0",
        "--context-audio",
        ctx.to_str().unwrap(),
        "--context-text",
        "how are you?",
        "--context-speaker",
        "1",
        "--max-audio-ms",
        "640",
        "--dtype",
        "f32",
        "--output",
        out.to_str().unwrap(),
    ]);
    let stdout = text(&result.stdout);
    assert!(
        result.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&result.stderr)
    );
    let frames: usize = stdout
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no frame count in:\n{stdout}"));
    assert!(frames <= 8, "{stdout}");
    assert!(stdout.contains("real-time factor"), "{stdout}");
    let wav = read_wav(&out).unwrap();
    assert_eq!(wav.sample_rate, 24_000);
    // The tiny Mimi's hop is 16 samples.
    assert_eq!(wav.frames(), 16 * frames);
}

#[test]
fn generate_refuses_token_ids_beyond_the_text_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let real = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-data/llama3.2-tokenizer.json");
    let tok = if real.is_file() {
        real
    } else {
        let tok = dir.path().join("tokenizer.json");
        word_tokenizer(&tok, 128_000);
        tok
    };
    let out = dir.path().join("out.wav");
    let model = fixtures().join("csm_tiny_hf");
    let result = csm(&[
        "generate",
        "--model-path",
        model.to_str().unwrap(),
        "--tokenizer-path",
        tok.to_str().unwrap(),
        "--text",
        "hello",
        "--output",
        out.to_str().unwrap(),
    ]);
    let stderr = text(&result.stderr);
    assert!(!result.status.success());
    assert!(
        stderr.contains("outside this model's text vocabulary of 300 ids"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn generate_checks_context_flags_pair_up() {
    let result = csm(&[
        "generate",
        "--model-path",
        "x",
        "--text",
        "hi",
        "--context-audio",
        "a.wav",
        "--output",
        "o.wav",
    ]);
    assert!(!result.status.success());
    assert!(
        text(&result.stderr).contains("1 --context-audio, 0 --context-text"),
        "{}",
        text(&result.stderr)
    );
}

#[test]
fn bench_generate_tiny_reports_json() {
    let result = csm(&[
        "bench-generate",
        "--size",
        "tiny",
        "--frames",
        "3",
        "--warmup",
        "0",
        "--dtype",
        "f32",
        "--json",
    ]);
    let stdout = text(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        text(&result.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(json["frames"], 3);
    assert_eq!(json["eos_ignored"], true);
    assert_eq!(json["decoded_samples"], 3 * 1920);
    for key in [
        "ms_per_frame",
        "frames_per_s",
        "rtf_generate",
        "mimi_decode_ms",
    ] {
        assert!(
            json[key].as_f64().is_some_and(f64::is_finite),
            "{key}: {json}"
        );
    }
}
