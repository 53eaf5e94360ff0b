//! The training-mode flags of `csm finetune-lora` (`--quantize`,
//! `--method`, `--train`) refuse what cannot work, and `csm lr-find`
//! writes its report and nothing else into the output directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

mod common;
use common::{demo, run, run_csm, text};

/// `csm finetune-lora` with the flags of a one-folder dataset plus `extra`;
/// the settings are refused before any file is read.
fn refused(extra: &[&str]) -> String {
    let mut args = vec![
        "finetune-lora",
        "--model-path",
        "/nonexistent/model",
        "--audio-dir",
        "/nonexistent/audio",
        "--transcript-dir",
        "/nonexistent/transcripts",
    ];
    args.extend_from_slice(extra);
    let (out, _) = run_csm(&args, Duration::from_secs(60), &[]);
    assert!(!out.status.success(), "csm {args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !stderr.contains("nonexistent"),
        "a file was looked at first: {stderr}"
    );
    stderr
}

#[test]
fn impossible_mode_flags_are_clear_errors() {
    let e = refused(&["--quantize", "3"]);
    assert!(e.contains("--quantize 3") && e.contains("4 or 8"), "{e}");

    let e = refused(&[
        "--method",
        "full",
        "--lora-r",
        "4",
        "--target-modules",
        "q_proj",
    ]);
    assert!(
        e.contains("--lora-r, --target-modules are LoRA settings") && e.contains("--method full"),
        "{e}"
    );

    let e = refused(&["--method", "full", "--quantize", "4"]);
    assert!(
        e.contains("--quantize") && e.contains("full precision"),
        "{e}"
    );

    let e = refused(&["--train", "decoder"]);
    assert!(e.contains("--train") && e.contains("--method full"), "{e}");

    let e = refused(&["--method", "full", "--train", "decoder,heads"]);
    assert!(e.contains("unknown part `heads`"), "{e}");
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// `csm lr-find` into a folder that holds a finished run: the run's files
/// are left byte for byte, `lr_find.json` is added, and the table names
/// the suggestion the report holds.
#[test]
fn lr_find_writes_its_report_and_leaves_the_run_folder_alone() {
    let paths = demo();
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    std::fs::write(out.path().join("config.json"), "{\"lora_r\": 4}").unwrap();
    std::fs::write(out.path().join("metrics.jsonl"), "{\"event\": \"step\"}\n").unwrap();
    std::fs::create_dir(out.path().join("samples")).unwrap();
    std::fs::write(out.path().join("samples").join("step_0000010.wav"), b"RIFF").unwrap();
    let before = snapshot(out.path());

    let args: Vec<String> = [
        "lr-find",
        "--model-path",
        &s(&paths.model),
        "--audio-dir",
        &s(&paths.audio_dir),
        "--transcript-dir",
        &s(&paths.transcript_dir),
        "--output-dir",
        &s(out.path()),
        "--context-turns",
        "0",
        "--batch-size",
        "2",
        "--steps",
        "30",
        "--min-lr",
        "1e-5",
        "--max-lr",
        "0.1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (result, _) = run(&args, cache.path(), Duration::from_secs(600));
    assert!(result.status.success(), "{}", text(&result));
    let stdout = String::from_utf8_lossy(&result.stdout);

    let mut after = snapshot(out.path());
    let report = after.remove("lr_find.json").expect("lr_find.json written");
    assert_eq!(after, before, "lr-find changed the run folder");
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    let points = report["points"].as_array().unwrap();
    assert!(points.len() >= 10 && points.len() <= 30, "{}", points.len());
    let first = points[0]["lr"].as_f64().unwrap();
    assert!((first / 1e-5 - 1.0).abs() < 1e-4, "{first}");
    let lr = report["suggestedLr"].as_f64().expect("a suggestion") as f32;
    assert!(
        stdout.contains(&format!("suggested learning rate: {lr:.2e}")),
        "{stdout}"
    );
    assert!(stdout.contains("<- suggested"), "{stdout}");
}
