//! `csm score`: JSON lines on synthetic samples (health, WER/CER from a
//! supplied transcript), the flag errors, and similarity with the real
//! speaker-encoder weights when `scripts/fetch-test-speaker-encoder.sh`
//! has fetched them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use csm_core::data::audio::{write_wav, WavEncoding};

const CSM: &str = env!("CARGO_BIN_EXE_csm");
const SR: u32 = 24_000;

fn csm(args: &[&str]) -> Output {
    Command::new(CSM).args(args).output().expect("csm runs")
}

fn tone(seconds: f64, hz: f32) -> Vec<f32> {
    let n = (seconds * f64::from(SR)) as usize;
    (0..n)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * hz * i as f32 / SR as f32).sin())
        .collect()
}

fn wav(dir: &Path, name: &str, samples: &[f32]) -> PathBuf {
    let path = dir.join(name);
    write_wav(&path, samples, SR, WavEncoding::Int16).unwrap();
    path
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "csm score failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn health_and_error_rates_per_sample() {
    let dir = tempfile::tempdir().unwrap();
    let mut padded = vec![0.0; SR as usize / 2];
    padded.extend(tone(1.5, 200.0));
    padded.extend(vec![0.0; SR as usize]);
    let a = wav(dir.path(), "a.wav", &padded);
    let b = wav(dir.path(), "b.wav", &tone(1.0, 300.0));
    let out = csm(&[
        "score",
        "--text",
        "Hello there, Dr. Smith.",
        "--transcript",
        "hello their doctor smith",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    let lines = lines(&out);
    assert_eq!(lines.len(), 2);
    let first = &lines[0];
    assert_eq!(first["sample"], a.to_str().unwrap());
    assert_eq!(first["wer"]["substitutions"], 1);
    assert_eq!(first["wer"]["reference_len"], 4);
    assert!(first["similarity"].is_null());
    let health = &first["health"];
    assert!((health["leading_silence_s"].as_f64().unwrap() - 0.5).abs() < 0.02);
    assert!((health["trailing_silence_s"].as_f64().unwrap() - 1.0).abs() < 0.02);
    assert!(health["rate"]["chars_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[1]["health"]["leading_silence_s"], 0.0);

    // Without a transcript the JSON says what WER needs.
    let out = csm(&["score", a.to_str().unwrap()]);
    let lines = self::lines(&out);
    assert!(lines[0]["wer"].is_null());
    assert!(lines[0]["wer_note"].as_str().unwrap().contains("--text"));
}

#[test]
fn flag_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = wav(dir.path(), "a.wav", &tone(1.0, 200.0));
    // Without --speaker-encoder the cached bundle is used, or fetched: here
    // offline with an empty cache, so the error says what is missing.
    let out = Command::new(CSM)
        .args([
            "score",
            "--reference-dir",
            dir.path().to_str().unwrap(),
            a.to_str().unwrap(),
        ])
        .env("HF_HOME", dir.path().join("hf"))
        .env_remove("HF_ASSETS_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("csm runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--speaker-encoder speaker-encoder")
            && err.contains("resemblyzer==0.1.4")
            && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    let out = csm(&["score"]);
    assert!(!out.status.success());
}

#[test]
#[cfg_attr(
    not(csm_test_speaker_encoder),
    ignore = "needs target/test-data/resemblyzer-pretrained.pt: run scripts/fetch-test-speaker-encoder.sh"
)]
fn similarity_with_the_real_encoder() {
    let weights = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-data/resemblyzer-pretrained.pt");
    let dir = tempfile::tempdir().unwrap();
    let audio = dir.path().join("data/audio");
    std::fs::create_dir_all(&audio).unwrap();
    let say = |path: &Path, voice: &[&str], text: &str| {
        let ok = Command::new("espeak-ng")
            .args(voice)
            .arg("-w")
            .arg(path)
            .arg(text)
            .status()
            .expect("espeak-ng runs")
            .success();
        assert!(ok);
    };
    let voice = ["-v", "en+m3", "-p", "30"];
    say(
        &audio.join("1.wav"),
        &voice,
        "The train was late again this morning.",
    );
    say(
        &audio.join("2.wav"),
        &voice,
        "We walked down to the harbour instead.",
    );
    let same = dir.path().join("same.wav");
    say(&same, &voice, "Seven boats drifted past the lighthouse.");
    let other = dir.path().join("other.wav");
    say(
        &other,
        &["-v", "en+f4", "-p", "70"],
        "Seven boats drifted past the lighthouse.",
    );
    let out = csm(&[
        "score",
        "--reference-dir",
        audio.to_str().unwrap(),
        "--speaker-encoder",
        weights.to_str().unwrap(),
        same.to_str().unwrap(),
        other.to_str().unwrap(),
    ]);
    let lines = lines(&out);
    let same = lines[0]["similarity"].as_f64().unwrap();
    let other = lines[1]["similarity"].as_f64().unwrap();
    println!("similarity: same voice {same:.3}, other voice {other:.3}");
    assert!(same > other, "{same} <= {other}");
}
