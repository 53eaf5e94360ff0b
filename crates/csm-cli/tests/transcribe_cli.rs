//! `csm transcribe` on the tiny random Whisper of `tests/fixtures/whisper`
//! (its transcripts are random tokens; the folder handling is under test):
//! the dataset layout, a bad file reported while the others are written,
//! no overwriting, resuming, `--overwrite`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/whisper")
}

fn csm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_csm"))
        .args(args)
        .output()
        .expect("runs the csm binary")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The tiny80 model folder with its tokenizer unpacked beside it.
fn model_dir(root: &Path) -> PathBuf {
    let dir = root.join("whisper-tiny80");
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(fixtures().join("tiny80")).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap() != "ref.safetensors" {
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
    }
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(fixtures().join("multilingual.tiktoken.zip"))
        .arg(&dir)
        .status()
        .expect("python3 unzips");
    assert!(status.success());
    dir
}

#[test]
fn transcribes_a_folder_into_the_dataset_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    let raw = tmp.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    for c in ["clip0", "clip1"] {
        std::fs::copy(
            fixtures().join(format!("{c}.wav")),
            raw.join(format!("{c}.wav")),
        )
        .unwrap();
    }
    std::fs::write(raw.join("broken.wav"), b"RIFF not really a wav").unwrap();
    std::fs::write(raw.join("notes.txt"), b"ignored").unwrap();
    let data = tmp.path().join("data");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["transcribe", "--audio-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(raw.display().to_string());
        a.extend(["--output-dir".to_string(), data.display().to_string()]);
        a.extend(["--whisper-model".to_string(), model.display().to_string()]);
        a.extend(
            ["--language", "en", "--temperature", "0"]
                .iter()
                .map(|s| s.to_string()),
        );
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        csm(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // One bad file: the others are written, the exit code says it failed.
    let out = run(&[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("broken.wav"), "{}", text(&out));
    for c in ["clip0", "clip1"] {
        let wav = csm_core::data::audio::read_wav(&data.join(format!("audio/{c}.wav"))).unwrap();
        assert_eq!((wav.sample_rate, wav.channels.len()), (24_000, 1));
        let src = csm_core::data::audio::read_wav(&fixtures().join(format!("{c}.wav"))).unwrap();
        assert_eq!(wav.frames(), (src.frames() as f64 * 1.5).round() as usize);
        let txt = std::fs::read_to_string(data.join(format!("transcripts/{c}.txt"))).unwrap();
        assert!(!txt.trim().is_empty());
        let al =
            csm_core::data::alignment::read_alignment(&data.join(format!("alignments/{c}.json")))
                .unwrap();
        assert_eq!(al.format, csm_core::data::AlignmentFormat::SegmentWords);
        assert!(!al.words.is_empty() && al.words.iter().all(|w| w.span.is_some()));
    }
    assert!(!data.join("transcripts/broken.txt").exists());
    assert!(!data.join("audio/broken.wav").exists());

    // A second run skips what is done and touches nothing of the user's.
    std::fs::remove_file(raw.join("broken.wav")).unwrap();
    std::fs::write(data.join("transcripts/clip0.txt"), "my proofread text\n").unwrap();
    let out = run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("skipped 2"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(data.join("transcripts/clip0.txt")).unwrap(),
        "my proofread text\n"
    );

    // A recording whose transcript is missing is done again; the files that
    // exist (the user's alignment) stay.
    std::fs::remove_file(data.join("transcripts/clip1.txt")).unwrap();
    std::fs::write(data.join("alignments/clip1.json"), "{\"words\": []}\n").unwrap();
    let out = run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("transcribed 1"), "{}", text(&out));
    assert!(data.join("transcripts/clip1.txt").exists());
    assert_eq!(
        std::fs::read_to_string(data.join("alignments/clip1.json")).unwrap(),
        "{\"words\": []}\n"
    );

    // --overwrite replaces everything.
    let out = run(&["--overwrite"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(
        std::fs::read_to_string(data.join("transcripts/clip0.txt")).unwrap(),
        "my proofread text\n"
    );
    assert_ne!(
        std::fs::read_to_string(data.join("alignments/clip1.json")).unwrap(),
        "{\"words\": []}\n"
    );
    let leftovers: Vec<_> = walk(&data)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
