//! Several speakers on the command line: `--help` teaches the layouts,
//! and bad speaker data stops `csm finetune-lora` before any model loads,
//! with a message naming the file and key and a non-zero exit.

use std::path::Path;
use std::time::Duration;

mod common;
use common::{run_csm, text};

/// `dir/audio/NAME.wav` (never decoded: who speaks is checked first) and
/// `dir/transcripts/NAME.txt`.
fn recordings(dir: &Path, names: &[&str]) {
    for d in ["audio", "transcripts"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    for n in names {
        std::fs::write(dir.join(format!("audio/{n}.wav")), b"").unwrap();
        std::fs::write(dir.join(format!("transcripts/{n}.txt")), "hi").unwrap();
    }
}

/// Runs `csm finetune-lora --data-dir DATA extra...`; returns its exit
/// code and what it printed.
fn finetune(data: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out_dir = data.with_extension("out");
    let mut args = vec![
        "finetune-lora".to_string(),
        "--model-path".into(),
        "/nonexistent/model".into(),
        "--output-dir".into(),
        out_dir.to_str().unwrap().into(),
        "--data-dir".into(),
        data.to_str().unwrap().into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let (out, _) = run_csm(&args, Duration::from_secs(60), &[]);
    assert!(
        !out_dir.exists(),
        "nothing is written before the data is checked"
    );
    (out.status.code(), text(&out))
}

#[test]
fn help_teaches_the_speaker_flags() {
    let (out, _) = run_csm(&["finetune-lora", "--help"], Duration::from_secs(60), &[]);
    // Wrapped to the terminal's width: compare with single spaces.
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for needle in [
        "--data-dir",
        "DATA/alice/audio",
        "speakers.json",
        "conversation",
        "--speakers",
        "--speaker-map",
        "byte order",
        "OUTPUT/config.json",
    ] {
        assert!(help.contains(needle), "`{needle}` not in --help:\n{help}");
    }
}

#[test]
fn bad_speaker_data_is_named_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    // speakers.json naming a recording that is not there.
    let file = tmp.path().join("file");
    recordings(&file, &["a"]);
    std::fs::write(
        file.join("speakers.json"),
        r#"{"recordings": {"a": "zoe", "missing": "max"}}"#,
    )
    .unwrap();
    let (code, out) = finetune(&file, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("speakers.json") && out.contains("`recordings.missing`"),
        "{out}"
    );

    // An alignment naming a speaker the dataset does not have.
    std::fs::write(
        file.join("speakers.json"),
        r#"{"recordings": {"a": "zoe"}}"#,
    )
    .unwrap();
    std::fs::create_dir_all(file.join("alignments")).unwrap();
    std::fs::write(
        file.join("alignments/a.json"),
        r#"{"words": [{"word": "hi", "start": 0, "end": 0.5, "speaker": "carol"}]}"#,
    )
    .unwrap();
    let (code, out) = finetune(&file, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("a.json") && out.contains("`words[0].speaker`") && out.contains("carol"),
        "{out}"
    );

    // Mixed layouts.
    let mixed = tmp.path().join("mixed");
    recordings(&mixed, &["a"]);
    recordings(&mixed.join("alice"), &["a"]);
    let (code, out) = finetune(&mixed, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("mixed layouts") && out.contains("alice"),
        "{out}"
    );

    // --speaker-id where the data has several speakers, and a bad map.
    let per = tmp.path().join("per");
    recordings(&per.join("alice"), &["a"]);
    recordings(&per.join("bob"), &["a"]);
    let (code, out) = finetune(&per, &["--speaker-id", "3"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("--speaker-map") && out.contains("alice=0, bob=1"),
        "{out}"
    );
    let (code, out) = finetune(&per, &["--speaker-map", "alice=x"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--speaker-map `alice=x`"), "{out}");
}
