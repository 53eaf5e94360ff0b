//! The long-form loop on a two-minute espeak-ng recording with pauses,
//! rebuilt at test time exactly as `scripts/fixtures/make_whisper_fixtures.py`
//! builds it (espeak-ng at 22050 Hz, silences, linear interpolation to
//! 16 kHz in f64), against openai-whisper's `transcribe()` on the same
//! random weights: windows, seeks, segment bounds, tokens and word times.
//! Also: progress events and cancellation.

mod common;
mod whisper_support;

use std::process::Command;

use csm_core::cancel::CancelToken;
use csm_core::whisper::{TranscribeEvent, TranscribeOptions, WhisperError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use whisper_support::*;

fn espeak_22k(text: &str) -> Vec<i16> {
    let out = Command::new("espeak-ng")
        .arg("--stdout")
        .arg(text)
        .output()
        .expect("espeak-ng runs");
    assert!(out.status.success());
    // espeak-ng streams its WAV with a placeholder length; data::audio repairs it.
    let audio = csm_core::data::audio::read_wav_bytes("espeak.wav".as_ref(), &out.stdout).unwrap();
    assert_eq!(audio.sample_rate, 22050);
    audio
        .to_mono()
        .iter()
        .map(|&v| (v * 32768.0).round() as i16)
        .collect()
}

/// The recording, or `None` (with a note) when this espeak-ng speaks
/// differently from the one that made the reference.
fn long_recording(reference: &Value) -> Option<Vec<f32>> {
    let long = &reference["long"];
    let mut x: Vec<i16> = Vec::new();
    for s in long["sentences"].as_array().unwrap() {
        x.extend(espeak_22k(s[0].as_str().unwrap()));
        let pause = (s[1].as_f64().unwrap() * 22050.0).round() as usize;
        x.extend(std::iter::repeat_n(0, pause));
    }
    let total = (long["seconds"].as_f64().unwrap() * 22050.0) as usize;
    assert!(x.len() <= total);
    x.resize(total, 0);
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let hash = format!("{:x}", Sha256::digest(&bytes));
    if hash != long["sha256_22k_i16"].as_str().unwrap() {
        eprintln!(
            "SKIP: espeak-ng output differs from the reference's ({})",
            reference["versions"]["espeak-ng"]
        );
        return None;
    }
    // Linear interpolation 22050 -> 16000 Hz, as the fixture script.
    let xf: Vec<f64> = x.iter().map(|&v| v as f64 / 32768.0).collect();
    let n_out = x.len() * 16000 / 22050;
    let step = 22050.0f64 / 16000.0;
    Some(
        (0..n_out)
            .map(|k| {
                let t = k as f64 * step;
                let i = t.floor() as usize;
                let frac = t - i as f64;
                let next = (i + 1).min(xf.len() - 1);
                (xf[i] * (1.0 - frac) + xf[next] * frac) as f32
            })
            .collect(),
    )
}

#[test]
fn two_minute_recording_matches_openai_whisper() {
    let reference = reference();
    let Some(audio) = long_recording(&reference) else {
        return;
    };
    assert_eq!(audio.len(), 120 * 16000);
    for name in MODELS {
        let w = load(name);
        let want = &reference["models"][name]["openai_transcribe"];
        let mut events = Vec::new();
        let options = TranscribeOptions {
            temperatures: vec![0.0],
            word_timestamps: true,
            ..TranscribeOptions::default()
        };
        let got = w
            .transcribe(
                &audio,
                &options,
                &mut |e| events.push(e),
                &CancelToken::new(),
            )
            .unwrap();
        assert_transcript_matches(&got, &want["long"], &format!("{name} long"));
        assert_eq!(got.text, want["long"]["text"].as_str().unwrap());
        // Progress: a detected language, then windows ending at 120 s.
        assert!(matches!(events[0], TranscribeEvent::Language { .. }));
        let done: Vec<f64> = events
            .iter()
            .filter_map(|e| match e {
                TranscribeEvent::Window { done_s, .. } => Some(*done_s),
                _ => None,
            })
            .collect();
        assert!(done.windows(2).all(|p| p[0] <= p[1]));
        assert!((done.last().unwrap() - 120.0).abs() < 1e-9);
        // Seeks inside the recording move to the last word, not by 30 s.
        let seeks: Vec<usize> = got.segments.iter().map(|s| s.seek).collect();
        eprintln!("{name}: window seeks {seeks:?}");

        let options = TranscribeOptions {
            language: Some("en".into()),
            condition_on_previous_text: false,
            ..options
        };
        let got = w
            .transcribe(&audio, &options, &mut |_| {}, &CancelToken::new())
            .unwrap();
        assert_transcript_matches(
            &got,
            &want["long_en_no_condition"],
            &format!("{name} long, en, unconditioned"),
        );
    }
}

/// The same recording read from a file in two streamed passes (the path
/// of `csm transcribe`): the same features bit for bit, window by window
/// across the STFT's batch boundaries, and the same transcript as
/// openai-whisper.
#[test]
fn a_streamed_recording_gives_the_same_windows_and_transcript() {
    use csm_core::whisper::audio::{log_mel_spectrogram, scan_recording, MelWindows, RecordingMel};
    let reference = reference();
    let Some(audio) = long_recording(&reference) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.wav");
    csm_core::data::audio::write_wav(
        &path,
        &audio,
        16_000,
        csm_core::data::audio::WavEncoding::Float32,
    )
    .unwrap();
    let name = "tiny128";
    let w = load(name);
    let cancel = CancelToken::new();
    let whole = log_mel_spectrogram(&audio, 128, 480_000).unwrap();
    let scan = scan_recording(&path, 128, None, &cancel).unwrap();
    assert_eq!(scan.samples_16k, audio.len());
    let mut streamed = RecordingMel::open(&path, 128, &scan).unwrap();
    assert_eq!(streamed.total_frames(), whole.frames());
    // Starts on both sides of the 6000-frame batches, one step back, the
    // padded end.
    for start in [0, 2990, 5999, 6000, 9100, 8000, 11_999, 12_001, 14_500] {
        let a = whole.window(start, 3000);
        let b = streamed.read_window(start, 3000).unwrap();
        assert_eq!(
            a.as_slice::<f32>(),
            b.as_slice::<f32>(),
            "window at {start}"
        );
    }
    assert!(streamed.read_window(100, 3000).is_err(), "too far back");

    let options = TranscribeOptions {
        temperatures: vec![0.0],
        word_timestamps: true,
        ..TranscribeOptions::default()
    };
    let mut streamed = RecordingMel::open(&path, 128, &scan).unwrap();
    let got = w
        .transcribe_windows(&mut streamed, &options, &mut |_| {}, &cancel)
        .unwrap();
    let want = &reference["models"][name]["openai_transcribe"]["long"];
    assert_transcript_matches(&got, want, "tiny128 long, streamed");
}

#[test]
fn cancel_stops_before_the_next_window() {
    let w = load("tiny80");
    let audio = vec![0f32; 16000 * 70];
    let cancel = CancelToken::new();
    let mut windows = 0;
    let options = TranscribeOptions {
        language: Some("en".into()),
        temperatures: vec![0.0],
        sample_len: Some(8),
        ..TranscribeOptions::default()
    };
    let err = w
        .transcribe(
            &audio,
            &options,
            &mut |e| {
                if matches!(e, TranscribeEvent::Window { .. }) {
                    windows += 1;
                    cancel.cancel();
                }
            },
            &cancel,
        )
        .unwrap_err();
    assert!(matches!(err, WhisperError::Cancelled));
    assert_eq!(windows, 1);
}
