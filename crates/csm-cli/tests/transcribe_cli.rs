//! `csm transcribe` on the tiny random Whisper of `tests/fixtures/whisper`
//! (its transcripts are random tokens; the folder handling is under test):
//! the dataset layout, a bad file reported while the others are written,
//! no overwriting, resuming, `--overwrite`; every format and issue 17's
//! bad inputs in one folder.

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

/// Runs a tool that makes test input; a missing one fails with the way to
/// install it.
fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("`{program}` is needed ({e}); scripts/setup.sh installs it"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ffmpeg(input: &Path, codec_args: &[&str], output: &Path) {
    let mut args = vec!["-hide_banner", "-loglevel", "error", "-y", "-i"];
    args.push(input.to_str().unwrap());
    args.extend_from_slice(codec_args);
    args.push(output.to_str().unwrap());
    tool("ffmpeg", &args);
}

/// Issue 17's bad inputs beside good recordings in four formats, made at
/// test time with espeak-ng, sox and ffmpeg: the good ones are transcribed
/// from their own format, each bad one is named with its reason, the exit
/// status is 3, and files written before (by the user or an earlier run)
/// are left exactly as they were.
#[test]
fn a_folder_mixing_formats_and_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    let (raw, data) = (tmp.path().join("raw"), tmp.path().join("data"));
    std::fs::create_dir_all(&raw).unwrap();
    let speech = tmp.path().join("speech.wav");
    tool(
        "espeak-ng",
        &[
            "-w",
            speech.to_str().unwrap(),
            "The quick brown fox jumps over the lazy dog near the river bank.",
        ],
    );
    // Stereo at 44.1 kHz, as recordings come.
    let stereo = tmp.path().join("stereo.wav");
    tool(
        "sox",
        &[
            speech.to_str().unwrap(),
            stereo.to_str().unwrap(),
            "remix",
            "1",
            "1v0.5",
            "rate",
            "44100",
        ],
    );
    let good = ["podcast.mp3", "memo.m4a", "chapter.flac", "voice.ogg"];
    ffmpeg(
        &stereo,
        &["-c:a", "libmp3lame", "-b:a", "96k"],
        &raw.join(good[0]),
    );
    ffmpeg(&stereo, &["-c:a", "aac", "-b:a", "96k"], &raw.join(good[1]));
    ffmpeg(&stereo, &["-c:a", "flac"], &raw.join(good[2]));
    ffmpeg(&stereo, &["-c:a", "libvorbis"], &raw.join(good[3]));
    // Bad: Opus in an .ogg (no decoder), a cut MP3, an empty file, text
    // named .mp3, two seconds of digital silence.
    ffmpeg(&stereo, &["-c:a", "libopus"], &raw.join("opus_call.ogg"));
    let mp3 = std::fs::read(raw.join(good[0])).unwrap();
    std::fs::write(raw.join("cut.mp3"), &mp3[..mp3.len() * 2 / 5 + 7]).unwrap();
    std::fs::write(raw.join("empty.m4a"), b"").unwrap();
    std::fs::write(
        raw.join("notes.mp3"),
        b"Meeting notes: buy milk.\n".repeat(40),
    )
    .unwrap();
    tool(
        "sox",
        &[
            "-n",
            "-r",
            "16000",
            "-c",
            "1",
            raw.join("quiet.flac").to_str().unwrap(),
            "trim",
            "0",
            "2",
        ],
    );
    std::fs::write(raw.join("readme.txt"), b"not audio, not listed").unwrap();
    let bad = [
        ("opus_call.ogg", "Opus audio is not supported"),
        ("cut.mp3", "truncated"),
        ("empty.m4a", "empty (0 bytes)"),
        ("notes.mp3", "not a recognised audio file"),
        ("quiet.flac", "silent"),
    ];
    // Written before this run: a user's audio for a name whose recording
    // now fails, and a finished recording (skipped).
    for d in ["audio", "transcripts", "alignments"] {
        std::fs::create_dir_all(data.join(d)).unwrap();
    }
    std::fs::write(data.join("audio/cut.wav"), b"the user's own cut.wav").unwrap();
    std::fs::copy(&speech, raw.join("done.wav")).unwrap();
    std::fs::write(data.join("transcripts/done.txt"), "proofread\n").unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> = walk(&data)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();

    let out = csm(&[
        "transcribe",
        "--audio-dir",
        raw.to_str().unwrap(),
        "--output-dir",
        data.to_str().unwrap(),
        "--whisper-model",
        model.to_str().unwrap(),
        "--language",
        "en",
        "--temperature",
        "0",
    ]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains("transcribed 4 recording(s)") && log.contains("skipped 1, failed 5"),
        "{log}"
    );
    for (file, reason) in bad {
        assert!(
            log.lines().any(|l| l.contains(file) && l.contains(reason)),
            "{file}: {reason}\n{log}"
        );
        let stem = file.split('.').next().unwrap();
        assert!(!data.join(format!("transcripts/{stem}.txt")).exists());
        assert!(!data.join(format!("alignments/{stem}.json")).exists());
    }
    for (path, bytes) in &before {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{}", path.display());
    }
    assert!(!data.join("audio/quiet.wav").exists());
    assert!(
        !data.join("audio/done.wav").exists(),
        "skipped, not rewritten"
    );
    for file in good {
        let stem = file.split('.').next().unwrap();
        // The 24 kHz copy is the decoder's output, as 16-bit samples.
        let want = csm_core::data::decode::load_mono_24k(&raw.join(file)).unwrap();
        let wav = csm_core::data::audio::read_wav(&data.join(format!("audio/{stem}.wav"))).unwrap();
        assert_eq!((wav.sample_rate, wav.channels.len()), (24_000, 1), "{file}");
        assert_eq!(wav.frames(), want.len(), "{file}");
        // Written as round(x * 32767), read back as i / 32768.
        let mismatched = wav.channels[0]
            .iter()
            .zip(&want)
            .filter(|(a, b)| (*a * 32768.0).round() != (b.clamp(-1.0, 1.0) * 32767.0).round())
            .count();
        assert_eq!(mismatched, 0, "{file}");
        assert!(
            (wav.duration_s() - 3.67).abs() < 0.1,
            "{file}: {}",
            wav.duration_s()
        );
        let txt = std::fs::read_to_string(data.join(format!("transcripts/{stem}.txt"))).unwrap();
        assert!(!txt.trim().is_empty(), "{file}");
        let al = csm_core::data::alignment::read_alignment(
            &data.join(format!("alignments/{stem}.json")),
        )
        .unwrap();
        assert!(!al.words.is_empty(), "{file}");
    }
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
