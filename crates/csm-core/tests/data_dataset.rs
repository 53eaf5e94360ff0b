//! Dataset folders end to end: pairing, the scan report, strict loading
//! with alignments, the split and context turns, and every bad input.

use std::path::{Path, PathBuf};

use csm_core::data::audio::{self, WavEncoding};
use csm_core::data::dataset::{pair_files, ProblemKind, SplitUnit};
use csm_core::data::segment::LongUnaligned;
use csm_core::data::{
    audio_usage, load_dataset, scan_dataset, AlignmentFormat, DataError, DatasetLayout,
    LoadOptions, ScanOptions, SegmentConfig, Split,
};

/// A dataset folder with `audio/` and `transcripts/` (and `alignments/` once
/// one is written).
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("audio")).unwrap();
        std::fs::create_dir_all(root.join("transcripts")).unwrap();
        Self { _dir: dir, root }
    }

    fn layout(&self) -> DatasetLayout {
        DatasetLayout::from_root(&self.root)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn wav(&self, name: &str, samples: &[f32], rate: u32) -> PathBuf {
        let p = self.path(&format!("audio/{name}"));
        audio::write_wav(&p, samples, rate, WavEncoding::Int16).unwrap();
        p
    }

    fn stereo_wav(&self, name: &str, samples: &[f32], rate: u32) -> PathBuf {
        let p = self.path(&format!("audio/{name}"));
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: rate,
            bits_per_sample: 24,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&p, spec).unwrap();
        for &s in samples {
            let v = (s * 8_388_607.0) as i32;
            w.write_sample(v).unwrap();
            w.write_sample(v).unwrap();
        }
        w.finalize().unwrap();
        p
    }

    fn file(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

fn tone(rate: u32, secs: f64, amp: f32) -> Vec<f32> {
    let n = (f64::from(rate) * secs) as usize;
    (0..n)
        .map(|i| amp * (2.0 * std::f32::consts::PI * 220.0 * i as f32 / rate as f32).sin())
        .collect()
}

/// "Speech": 0.4 s tone bursts (words) with 0.15 s gaps and a 0.7 s pause
/// after every 6th word; returns the audio and whisper-style JSON.
fn speech(rate: u32, secs: f64) -> (Vec<f32>, String, String) {
    let mut samples = vec![0.0f32; (f64::from(rate) * secs) as usize];
    let mut words = Vec::new();
    let mut text = Vec::new();
    let mut t = 0.3;
    let mut i = 0;
    while t + 0.4 < secs - 0.5 {
        let s = (t * f64::from(rate)) as usize;
        let e = ((t + 0.4) * f64::from(rate)) as usize;
        for (k, x) in samples[s..e].iter_mut().enumerate() {
            *x = 0.3 * (2.0 * std::f32::consts::PI * 300.0 * k as f32 / rate as f32).sin();
        }
        let w = if i % 6 == 5 {
            format!("w{i}.")
        } else {
            format!("w{i}")
        };
        words.push(format!(
            r#"{{"word": " {w}", "start": {t:.3}, "end": {:.3}}}"#,
            t + 0.4
        ));
        text.push(w);
        t += 0.4 + if i % 6 == 5 { 0.7 } else { 0.15 };
        i += 1;
    }
    let json = format!(r#"{{"segments": [{{"words": [{}]}}]}}"#, words.join(", "));
    (samples, text.join(" "), json)
}

#[test]
fn pairing_lists_unpaired_files_by_name() {
    let f = Fixture::new();
    f.wav("a.wav", &tone(24_000, 1.0, 0.3), 24_000);
    f.wav("b.wav", &tone(24_000, 1.0, 0.3), 24_000);
    f.file("transcripts/a.txt", "hello");
    f.file("transcripts/c.txt", "orphan");
    f.file("transcripts/notes.md", "ignored");
    f.file("audio/.DS_Store", "ignored");
    let err = pair_files(&f.layout()).unwrap_err();
    match &err {
        DataError::Unpaired {
            audio_without_transcript,
            transcripts_without_audio,
        } => {
            assert_eq!(audio_without_transcript, &["b.wav"]);
            assert_eq!(transcripts_without_audio, &["c.txt"]);
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("b.wav") && msg.contains("c.txt"), "{msg}");

    f.file("transcripts/b.txt", "bee");
    std::fs::remove_file(f.path("transcripts/c.txt")).unwrap();
    // An original next to its converted WAV is not an error.
    f.file("audio/a.flac", "fLaC");
    let pairs = pair_files(&f.layout()).unwrap();
    assert_eq!(
        pairs.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(pairs.iter().all(|p| p.alignment.is_none()));
}

#[test]
fn folder_errors_name_the_folder() {
    let f = Fixture::new();
    let err = load_dataset(&f.layout(), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, DataError::EmptyDir { path, .. } if *path == f.path("audio")),
        "{err:?}"
    );
    assert!(scan_dataset(&f.layout(), &ScanOptions::default()).is_err());

    let missing = DatasetLayout::new(f.path("nope"), f.path("transcripts"), None);
    let err = pair_files(&missing).unwrap_err();
    assert!(matches!(&err, DataError::MissingDir { path } if *path == f.path("nope")));
    assert!(err.to_string().contains("nope"));

    f.wav("a.wav", &tone(24_000, 1.0, 0.3), 24_000);
    f.wav("b.wav", &tone(24_000, 1.0, 0.3), 24_000);
    // A transcript folder with no .txt at all names the folder and every
    // audio file left without a transcript.
    f.file("transcripts/a.text", "not a .txt");
    let err = pair_files(&f.layout()).unwrap_err();
    assert!(
        matches!(&err, DataError::NoTranscripts { path, audio_without_transcript }
            if *path == f.path("transcripts") && *audio_without_transcript == ["a.wav", "b.wav"]),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("transcripts") && msg.contains("a.wav, b.wav"),
        "{msg}"
    );
}

/// Every bad single file stops a strict load with the right variant naming it.
#[test]
fn bad_inputs_give_typed_errors_naming_the_file() {
    type Check = fn(&DataError, &Path) -> bool;
    type Make = Box<dyn Fn(&Fixture) -> PathBuf>;
    let cases: Vec<(&str, Make, Check)> = vec![
        (
            "undecodable audio format",
            Box::new(|f| {
                f.file("transcripts/song.txt", "la la");
                f.file("audio/song.wma", b"0&\xb2u")
            }),
            |e, p| matches!(e, DataError::UnsupportedAudio { path, .. } if path == p),
        ),
        (
            "an .mp3 that is not audio",
            Box::new(|f| {
                f.file("transcripts/fake.txt", "la la");
                f.file("audio/fake.mp3", b"ID3\x03\x00")
            }),
            |e, p| matches!(e, DataError::Decode { path, .. } if path == p),
        ),
        (
            "corrupt WAV",
            Box::new(|f| {
                f.file("transcripts/bad.txt", "text");
                f.file("audio/bad.wav", b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
            }),
            |e, p| matches!(e, DataError::InvalidWav { path, .. } if path == p),
        ),
        (
            "0-length audio",
            Box::new(|f| {
                f.file("transcripts/empty.txt", "text");
                let p = f.path("audio/empty.wav");
                audio::write_wav(&p, &[], 24_000, WavEncoding::Int16).unwrap();
                p
            }),
            |e, p| matches!(e, DataError::EmptyAudio { path } if path == p),
        ),
        (
            "empty transcript",
            Box::new(|f| {
                f.wav("x.wav", &tone(24_000, 1.0, 0.3), 24_000);
                f.file("transcripts/x.txt", "  \n")
            }),
            |e, p| matches!(e, DataError::EmptyTranscript { path } if path == p),
        ),
        (
            "non-UTF-8 transcript",
            Box::new(|f| {
                f.wav("x.wav", &tone(24_000, 1.0, 0.3), 24_000);
                f.file("transcripts/x.txt", b"na\xefve")
            }),
            |e, p| matches!(e, DataError::TranscriptNotUtf8 { path, .. } if path == p),
        ),
        (
            "invalid alignment JSON",
            Box::new(|f| {
                f.wav("x.wav", &tone(24_000, 1.0, 0.3), 24_000);
                f.file("transcripts/x.txt", "hi");
                f.file("alignments/x.json", "{\"words\": [")
            }),
            |e, p| matches!(e, DataError::AlignmentJson { path, .. } if path == p),
        ),
        (
            "alignment of an unknown layout",
            Box::new(|f| {
                f.wav("x.wav", &tone(24_000, 1.0, 0.3), 24_000);
                f.file("transcripts/x.txt", "hi");
                f.file("alignments/x.json", r#"{"tokens": [1, 2]}"#)
            }),
            |e, p| matches!(e, DataError::MalformedAlignment { path, .. } if path == p),
        ),
        (
            "long recording without alignment",
            Box::new(|f| {
                f.file("transcripts/long.txt", "a long read");
                f.wav("long.wav", &tone(16_000, 20.0, 0.3), 16_000)
            }),
            |e, p| matches!(e, DataError::NeedsAlignment { path, .. } if path == p),
        ),
    ];
    for (what, make, check) in cases {
        let f = Fixture::new();
        let bad = make(&f);
        let err = load_dataset(&f.layout(), &LoadOptions::default()).unwrap_err();
        assert!(check(&err, &bad), "{what}: got {err:?}");
        let name = bad.file_name().unwrap().to_str().unwrap();
        assert!(
            err.to_string().contains(name),
            "{what}: message `{err}` lacks {name}"
        );
    }
}

#[test]
fn scan_report_flags_problems_per_file() {
    let f = Fixture::new();
    f.wav("good.wav", &tone(24_000, 2.0, 0.5), 24_000);
    f.file(
        "transcripts/good.txt",
        "A fairly long transcript that the preview should cut off somewhere before the end of it.",
    );
    let clipped: Vec<f32> = tone(24_000, 2.0, 3.0)
        .iter()
        .map(|s| s.clamp(-1.0, 1.0))
        .collect();
    f.wav("clipped.wav", &clipped, 24_000);
    f.file("transcripts/clipped.txt", "loud");
    f.stereo_wav("silent.wav", &vec![0.0; 44_100], 44_100);
    f.file("transcripts/silent.txt", "quiet");
    f.wav("notext.wav", &tone(24_000, 1.0, 0.3), 24_000);
    f.file("transcripts/orphan.txt", "no audio");
    f.wav("blank.wav", &tone(24_000, 1.0, 0.3), 24_000);
    f.file("transcripts/blank.txt", "\n");
    f.wav("long.wav", &tone(16_000, 15.0, 0.3), 16_000);
    f.file("transcripts/long.txt", "long");
    f.file("audio/corrupt.wav", "not a wav");
    f.file("transcripts/corrupt.txt", "text");
    f.file("audio/song.wma", "0&");
    f.file("transcripts/song.txt", "la");
    let empty = f.path("audio/zero.wav");
    audio::write_wav(&empty, &[], 24_000, WavEncoding::Int16).unwrap();
    f.file("transcripts/zero.txt", "nothing");

    let report = scan_dataset(&f.layout(), &ScanOptions::default()).unwrap();
    let row = |name: &str| report.files.iter().find(|r| r.name == name).unwrap();
    let kinds = |name: &str| {
        row(name)
            .problems
            .iter()
            .map(|p| p.kind)
            .collect::<Vec<_>>()
    };

    let good = row("good");
    assert!(good.problems.is_empty(), "{:?}", good.problems);
    assert!(good.usable && good.transcript_found);
    assert_eq!(
        (good.sample_rate, good.channels, good.bits_per_sample),
        (Some(24_000), Some(1), Some(16))
    );
    assert!((good.duration_s.unwrap() - 2.0).abs() < 1e-9);
    let preview = good.text_preview.as_deref().unwrap();
    assert!(preview.starts_with("A fairly long") && preview.ends_with('…'));
    assert!((good.peak_dbfs.unwrap() - (-6.02)).abs() < 0.1);

    assert_eq!(kinds("clipped"), [ProblemKind::Clipping]);
    assert!(row("clipped").usable, "clipping is a warning");
    assert_eq!(kinds("silent"), [ProblemKind::Silence]);
    assert_eq!(row("silent").channels, Some(2));
    assert_eq!(row("silent").sample_rate, Some(44_100));
    assert_eq!(kinds("notext"), [ProblemKind::MissingTranscript]);
    assert!(!row("notext").transcript_found && !row("notext").usable);
    assert_eq!(kinds("orphan"), [ProblemKind::MissingAudio]);
    assert_eq!(kinds("blank"), [ProblemKind::EmptyTranscript]);
    assert_eq!(kinds("long"), [ProblemKind::TooLong]);
    assert_eq!(kinds("corrupt"), [ProblemKind::Unreadable]);
    assert!(row("corrupt").problems[0].message.contains("corrupt.wav"));
    assert_eq!(kinds("song"), [ProblemKind::NotWav]);
    assert_eq!(kinds("zero"), [ProblemKind::EmptyAudio]);

    let t = &report.totals;
    assert_eq!(t.files, 10);
    assert_eq!(t.audio_files, 9);
    assert_eq!(t.usable_files, 3);
    assert_eq!(t.train_files + t.validation_files, 3);
    assert_eq!(report.split_unit, SplitUnit::Recording);
    let minutes = (2.0 + 2.0 + 1.0 + 1.0 + 1.0 + 15.0) / 60.0;
    assert!(
        (t.total_minutes - minutes).abs() < 1e-6,
        "{}",
        t.total_minutes
    );
    assert!((t.usable_minutes - 5.0 / 60.0).abs() < 1e-6);
    assert!(report.files.iter().all(|r| r.split.is_some() == r.usable));

    // The GUI receives it as JSON.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["files"][0]["name"], "blank");
    assert_eq!(json["files"][0]["problems"][0]["kind"], "empty_transcript");
    assert!(json["totals"]["usable_minutes"].is_number());
}

#[test]
fn scan_split_is_deterministic_and_respects_val_split() {
    let f = Fixture::new();
    for i in 0..20 {
        f.wav(&format!("f{i:02}.wav"), &tone(24_000, 0.5, 0.3), 24_000);
        f.file(&format!("transcripts/f{i:02}.txt"), "hi");
    }
    let opts = ScanOptions {
        val_split: 0.25,
        seed: 3,
        ..ScanOptions::default()
    };
    let a = scan_dataset(&f.layout(), &opts).unwrap();
    let b = scan_dataset(&f.layout(), &opts).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.totals.validation_files, 5);
    assert_eq!(a.totals.train_files, 15);
    let c = scan_dataset(
        &f.layout(),
        &ScanOptions {
            seed: 4,
            ..opts.clone()
        },
    )
    .unwrap();
    let val = |r: &csm_core::data::ScanReport| {
        r.files
            .iter()
            .filter(|f| f.split == Some(Split::Validation))
            .map(|f| f.name.clone())
            .collect::<Vec<_>>()
    };
    assert_ne!(val(&a), val(&c));
    let bad = ScanOptions {
        val_split: 1.5,
        ..opts
    };
    assert!(matches!(
        scan_dataset(&f.layout(), &bad),
        Err(DataError::InvalidOption { .. })
    ));
}

#[test]
fn load_cuts_aligned_recordings_and_builds_context() {
    let f = Fixture::new();
    // 45 s of 48 kHz stereo "speech" with whisper-style word timings.
    let (samples, text, json) = speech(48_000, 45.0);
    f.stereo_wav("long.wav", &samples, 48_000);
    f.file("transcripts/long.txt", &text);
    f.file("alignments/long.json", &json);
    // Short unaligned recordings are used whole.
    for name in ["s1", "s2", "s3"] {
        f.wav(&format!("{name}.wav"), &tone(16_000, 4.0, 0.3), 16_000);
        f.file(&format!("transcripts/{name}.txt"), format!("short {name}"));
    }
    let opts = LoadOptions {
        val_split: 0.25,
        seed: 11,
        ..LoadOptions::default()
    };
    let ds = load_dataset(&f.layout(), &opts).unwrap();
    assert_eq!(ds.conversations.len(), 4);
    assert_eq!(ds.split_unit, SplitUnit::Recording);
    // The three unaligned ones are noted (alignment folder exists).
    assert_eq!(
        ds.warnings
            .iter()
            .filter(|w| w.contains("no alignment"))
            .count(),
        3
    );

    let long = &ds.conversations[0];
    assert_eq!(long.recording_id, "long");
    assert_eq!(long.alignment_format, Some(AlignmentFormat::SegmentWords));
    assert!(long.utterances.len() >= 4, "{}", long.utterances.len());
    let cfg = SegmentConfig::default();
    for u in &long.utterances {
        assert!(
            (cfg.min_s..=cfg.max_s).contains(&u.duration_s()),
            "{} s",
            u.duration_s()
        );
        // Words were cut at sentence ends, and the text keeps the transcript's.
        assert!(
            u.index + 1 == long.utterances.len() || u.text.ends_with('.'),
            "{}",
            u.text
        );
        // Audio starts and ends in silence (never inside a burst).
        let s = u.samples();
        assert!(s[0].abs() < 0.02 && s[s.len() - 1].abs() < 0.02);
    }
    let all: Vec<&str> = long.utterances.iter().map(|u| u.text.as_str()).collect();
    assert_eq!(all.join(" "), text);
    for s in &ds.conversations[1..] {
        assert_eq!(s.utterances.len(), 1);
        assert_eq!(s.utterances[0].samples().len(), 4 * 24_000);
        assert_eq!(s.alignment_format, None);
    }

    // One of four recordings held out, whole.
    let val_recordings: std::collections::BTreeSet<usize> =
        ds.validation.iter().map(|id| id.conversation).collect();
    assert_eq!(val_recordings.len(), 1);
    assert_eq!(ds.train.len() + ds.validation.len(), ds.len());

    // Context turns: previous N utterances of the same recording, in order.
    let examples = ds.examples(Split::Train, 2);
    let examples: Vec<_> = examples
        .into_iter()
        .chain(ds.examples(Split::Validation, 2))
        .filter(|e| e.target.recording_id == "long")
        .collect();
    assert_eq!(examples.len(), long.utterances.len());
    for e in examples {
        let expect: Vec<usize> = (e.target.index.saturating_sub(2)..e.target.index).collect();
        assert_eq!(
            e.context.iter().map(|u| u.index).collect::<Vec<_>>(),
            expect
        );
        assert!(e.context.iter().all(|u| u.recording_id == "long"));
    }

    // Length buckets cover the split exactly once.
    let batches = ds.batches(Split::Train, 2, 2, 5).unwrap();
    let mut seen: Vec<_> = batches.iter().flatten().copied().collect();
    seen.sort();
    let mut train = ds.train.clone();
    train.sort();
    assert_eq!(seen, train);
    assert!(batches.iter().all(|b| b.len() <= 2));

    // The scan shows the same split the load made.
    let scan = scan_dataset(
        &f.layout(),
        &ScanOptions {
            val_split: opts.val_split,
            seed: opts.seed,
            ..ScanOptions::default()
        },
    )
    .unwrap();
    let scan_val: Vec<&str> = scan
        .files
        .iter()
        .filter(|r| r.split == Some(Split::Validation))
        .map(|r| r.name.as_str())
        .collect();
    let load_val: Vec<&str> = val_recordings
        .iter()
        .map(|&c| ds.conversations[c].recording_id.as_str())
        .collect();
    assert_eq!(scan_val, load_val);

    // Deterministic: loading again gives the same split and content keys.
    let again = load_dataset(&f.layout(), &opts).unwrap();
    assert_eq!(again.validation, ds.validation);
    let keys = |d: &csm_core::data::Dataset| {
        d.conversations
            .iter()
            .flat_map(|c| c.utterances.iter().map(|u| u.content_key()))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&again), keys(&ds));
}

#[test]
fn single_recording_splits_its_utterances() {
    let f = Fixture::new();
    let (samples, text, json) = speech(24_000, 60.0);
    f.wav("only.wav", &samples, 24_000);
    f.file("transcripts/only.txt", &text);
    f.file("alignments/only.json", &json);
    let ds = load_dataset(
        &f.layout(),
        &LoadOptions {
            val_split: 0.2,
            seed: 1,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(ds.split_unit, SplitUnit::Utterance);
    let n = ds.len();
    assert_eq!(
        ds.validation.len(),
        ((n as f64) * 0.2).round().max(1.0) as usize
    );
    // Validation examples still get their recording's previous turns.
    let v = ds.examples(Split::Validation, 3);
    assert!(v.iter().all(|e| e.context.len() == e.target.index.min(3)));
}

#[test]
fn long_unaligned_can_be_skipped_instead_of_refused() {
    let f = Fixture::new();
    f.wav("long.wav", &tone(24_000, 20.0, 0.3), 24_000);
    f.file("transcripts/long.txt", "long");
    f.wav("ok.wav", &tone(24_000, 3.0, 0.3), 24_000);
    f.file("transcripts/ok.txt", "ok");
    let opts = LoadOptions {
        segment: SegmentConfig {
            long_unaligned: LongUnaligned::Skip,
            ..SegmentConfig::default()
        },
        ..LoadOptions::default()
    };
    let ds = load_dataset(&f.layout(), &opts).unwrap();
    assert_eq!(ds.conversations.len(), 1);
    assert_eq!(ds.conversations[0].recording_id, "ok");
    assert!(ds
        .warnings
        .iter()
        .any(|w| w.contains("long.wav") && w.contains("skipped")));
}

#[test]
fn usage_reports_the_audio_left_after_trimming_and_skipping() {
    let f = Fixture::new();
    // 0.5 s silence, 1 s tone, 0.5 s silence.
    let mut padded = vec![0.0f32; 12_000];
    padded.extend(tone(24_000, 1.0, 0.3));
    padded.extend(vec![0.0f32; 12_000]);
    f.wav("padded.wav", &padded, 24_000);
    f.file("transcripts/padded.txt", "padded");
    f.wav("long.wav", &tone(24_000, 20.0, 0.3), 24_000);
    f.file("transcripts/long.txt", "long");
    let skip = SegmentConfig {
        long_unaligned: LongUnaligned::Skip,
        ..SegmentConfig::default()
    };
    let opts = LoadOptions {
        segment: skip.clone(),
        val_split: 0.0,
        ..LoadOptions::default()
    };
    let usage = audio_usage(&f.layout(), &opts, &mut |_| {}).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 0.011;
    assert!(close(usage.seconds_in, 22.0), "{usage:?}");
    // Trimmed to the tone plus the default 0.2 s of edge padding.
    assert!(close(usage.seconds_used, 1.4), "{usage:?}");
    assert_eq!((usage.utterances, usage.recordings_used), (1, 1));
    assert_eq!(
        (usage.train_utterances, usage.validation_utterances),
        (1, 0)
    );
    assert!(close(usage.train_seconds, usage.seconds_used));
    // +0.0, not the -0.0 of an empty float sum (shown as "-0.0 s").
    assert_eq!(usage.validation_seconds.to_bits(), 0.0f64.to_bits());
    let names: Vec<&str> = usage
        .recordings
        .iter()
        .map(|r| r.recording_id.as_str())
        .collect();
    assert_eq!(names, ["long", "padded"]);
    assert_eq!(usage.recordings[0].utterances, 0);
    assert_eq!(usage.recordings[0].seconds_used, 0.0);
    assert!(usage.warnings.iter().any(|w| w.contains("long.wav")));

    // Trimming off: the whole file is used.
    let untrimmed = LoadOptions {
        segment: SegmentConfig {
            trim_silence: false,
            ..skip
        },
        ..opts
    };
    let ds = load_dataset(&f.layout(), &untrimmed).unwrap();
    assert_eq!(ds.usage().seconds_used, 2.0);
    assert_eq!(ds.usage().recordings[1].seconds_in, 2.0);
}

#[test]
fn scan_reports_alignment_layouts_and_problems() {
    let f = Fixture::new();
    let (samples, text, json) = speech(24_000, 20.0);
    f.wav("aligned.wav", &samples, 24_000);
    f.file("transcripts/aligned.txt", &text);
    f.file("alignments/aligned.json", &json);
    f.wav("broken.wav", &tone(24_000, 2.0, 0.3), 24_000);
    f.file("transcripts/broken.txt", "hi");
    f.file(
        "alignments/broken.json",
        "[{\"word\": \"hi\", \"start\": 0.1",
    );
    f.wav("late.wav", &tone(24_000, 2.0, 0.3), 24_000);
    f.file("transcripts/late.txt", "hi");
    f.file(
        "alignments/late.json",
        r#"[{"word": "hi", "start": 100, "end": 2000}]"#,
    );
    f.wav("plain.wav", &tone(24_000, 2.0, 0.3), 24_000);
    f.file("transcripts/plain.txt", "hi");

    let report = scan_dataset(&f.layout(), &ScanOptions::default()).unwrap();
    let row = |name: &str| report.files.iter().find(|r| r.name == name).unwrap();
    let aligned = row("aligned");
    assert_eq!(
        aligned.alignment_format,
        Some(AlignmentFormat::SegmentWords)
    );
    assert!(
        aligned.usable && aligned.problems.is_empty(),
        "{:?}",
        aligned.problems
    );
    let broken = row("broken");
    assert_eq!(broken.problems[0].kind, ProblemKind::BadAlignment);
    assert!(broken.problems[0].message.contains("broken.json"));
    assert!(!broken.usable);
    assert_eq!(row("late").problems[0].kind, ProblemKind::BadAlignment);
    let plain = row("plain");
    assert_eq!(plain.problems[0].kind, ProblemKind::MissingAlignment);
    assert!(plain.usable, "a short file without alignment is used whole");
}

#[test]
fn load_reports_progress_for_every_recording() {
    let f = Fixture::new();
    for i in 0..5 {
        f.wav(&format!("r{i}.wav"), &tone(22_050, 1.0, 0.3), 22_050);
        f.file(&format!("transcripts/r{i}.txt"), "hello");
    }
    let mut seen = Vec::new();
    let ds = csm_core::data::load_dataset_with_progress(
        &f.layout(),
        &LoadOptions::default(),
        &mut |p| seen.push((p.done, p.total, p.recording_id)),
    )
    .unwrap();
    assert_eq!(ds.conversations.len(), 5);
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(seen.iter().all(|s| s.1 == 5));
    let mut ids: Vec<&str> = seen.iter().map(|s| s.2.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["r0", "r1", "r2", "r3", "r4"]);
    // 22.05 kHz in, 24 kHz out.
    assert!(ds
        .conversations
        .iter()
        .all(|c| c.utterances[0].len() == 24_000));
}
