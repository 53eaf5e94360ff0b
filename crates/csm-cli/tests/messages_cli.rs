//! What a user reads: log lines are plain text unless stderr is a terminal
//! (and `NO_COLOR` is unset), and a `--resume-from` that is not a
//! checkpoint is named by the flag.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::{run_with_env, text, CSM};

use csm_core::data::audio::{write_wav, WavEncoding};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `csm prepare` on two recordings, one skipped with a logged warning
/// (longer than `--max-unaligned-secs`).
fn prepare_with_a_warning(root: &Path) -> Vec<String> {
    let clip = fixtures().join("silence_clip");
    for d in ["audio", "transcripts"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(clip.join("audio/clip.wav"), root.join("audio/long.wav")).unwrap();
    let tone: Vec<f32> = (0..12_000).map(|i| 0.3 * (i as f32 * 0.07).sin()).collect();
    write_wav(
        &root.join("audio/short.wav"),
        &tone,
        24_000,
        WavEncoding::Int16,
    )
    .unwrap();
    std::fs::write(root.join("transcripts/long.txt"), "long").unwrap();
    std::fs::write(root.join("transcripts/short.txt"), "short").unwrap();
    [
        "prepare",
        "--model-path",
        &s(&fixtures().join("csm_tiny_hf")),
        "--tokenizer-path",
        &s(&clip.join("tokenizer.json")),
        "--audio-dir",
        &s(&root.join("audio")),
        "--transcript-dir",
        &s(&root.join("transcripts")),
        "--val-split",
        "0",
        "--max-unaligned-secs",
        "1",
        "--long-unaligned",
        "skip",
    ]
    .map(String::from)
    .to_vec()
}

/// Whether `line` holds an ANSI colour (SGR) sequence, `ESC [ ... m`.
fn has_colour(line: &str) -> bool {
    line.split('\x1b').skip(1).any(|rest| {
        rest.strip_prefix('[').is_some_and(|r| {
            let end = r.find(|c: char| !(c.is_ascii_digit() || c == ';'));
            end.is_some_and(|i| r[i..].starts_with('m'))
        })
    })
}

/// The line of the logged warning about the skipped recording.
fn warning_line(output: &str) -> &str {
    output
        .lines()
        .find(|l| l.contains("WARN") && l.contains("long.wav"))
        .unwrap_or_else(|| panic!("no logged warning in:\n{output}"))
}

#[test]
fn logs_are_plain_text_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let args = prepare_with_a_warning(dir.path());
    let (out, _) = run_with_env(
        &args,
        &dir.path().join("cache"),
        Duration::from_secs(300),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    warning_line(&stderr);
    assert!(
        !stderr.contains('\x1b'),
        "escape codes in a pipe:\n{stderr:?}"
    );
}

/// Runs `csm args` on a pseudo-terminal (util-linux `script`), returning
/// what the terminal showed.
fn on_a_terminal(args: &[String], cache: &Path, no_color: Option<&str>) -> String {
    assert!(
        Command::new("script").arg("--version").output().is_ok(),
        "util-linux `script` makes the pseudo-terminal: apt install bsdutils"
    );
    let quoted: Vec<String> = std::iter::once(CSM.to_string())
        .chain(args.iter().cloned())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &quoted.join(" "), "/dev/null"])
        .env("CSM_CACHE_DIR", cache)
        .env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "drives util-linux `script` for a pseudo-terminal"
)]
fn logs_are_coloured_on_a_terminal_unless_no_color_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let args = prepare_with_a_warning(dir.path());
    let cache = dir.path().join("cache");
    let shown = on_a_terminal(&args, &cache, None);
    assert!(has_colour(warning_line(&shown)), "{shown:?}");
    let shown = on_a_terminal(&args, &cache, Some("1"));
    assert!(!has_colour(warning_line(&shown)), "{shown:?}");
}

#[test]
fn resume_from_a_file_that_is_not_a_checkpoint_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not a checkpoint").unwrap();
    let model = fixtures().join("csm_tiny_hf/model.safetensors");
    let missing = dir.path().join("missing.safetensors");
    for (file, why) in [
        (&notes, "not a csm training checkpoint"),
        // A real safetensors file, but a model's, not a run's.
        (&model, "not a csm training checkpoint"),
        (&missing, "cannot read it"),
    ] {
        let args: Vec<String> = [
            "finetune-lora",
            "--model-path",
            &s(&fixtures().join("csm_tiny_hf")),
            "--audio-dir",
            &s(&dir.path().join("audio")),
            "--transcript-dir",
            &s(&dir.path().join("transcripts")),
            "--output-dir",
            &s(&dir.path().join("out")),
            "--resume-from",
            &s(file),
        ]
        .map(String::from)
        .to_vec();
        let (out, _) = run_with_env(
            &args,
            &dir.path().join("cache"),
            Duration::from_secs(120),
            &[],
        );
        assert!(!out.status.success(), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let error = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
        let expected = format!("error: --resume-from {}: {why}", file.display());
        assert!(
            error.starts_with(&expected),
            "{error}\nexpected it to start with {expected}"
        );
    }
}
