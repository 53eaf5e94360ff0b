//! The real resemblyzer weights tell two espeak-ng voices apart (needs
//! `espeak-ng`, which CI installs, and the weights from
//! `scripts/fetch-test-speaker-encoder.sh`).
//!
//! Voice A is `en+m3` at pitch 30, voice B `en+f4` at pitch 70; each speaks
//! three sentences the other does not. Every same-voice pair must score
//! above every cross-voice pair, and a recording against a copy of itself
//! resampled to 24 kHz and stored as 16-bit (what generated samples go
//! through) above 0.99. Run with `--nocapture` to see the scores.

use std::path::{Path, PathBuf};
use std::process::Command;

use csm_core::data::audio::{read_wav, resample, write_wav, WavEncoding};
use csm_core::speaker::{cosine_similarity, SpeakerEncoder};

const VOICE_A: [&str; 4] = ["-v", "en+m3", "-p", "30"];
const VOICE_B: [&str; 4] = ["-v", "en+f4", "-p", "70"];
const SENTENCES_A: [&str; 3] = [
    "The morning train was late again, so we walked to the harbour.",
    "Please remember to water the plants before you leave on Friday.",
    "Seven small boats drifted slowly past the old stone lighthouse.",
];
const SENTENCES_B: [&str; 3] = [
    "A cold wind came down from the hills and rattled every window.",
    "She counted the coins twice and still found one missing.",
    "Nobody expected the concert to sell out in under an hour.",
];

fn weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-data/resemblyzer-pretrained.pt")
}

fn speak(dir: &Path, name: &str, voice: &[&str], text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wav"));
    let status = Command::new("espeak-ng")
        .args(voice)
        .arg("-w")
        .arg(&path)
        .arg(text)
        .status()
        .expect("espeak-ng runs (install it: apt-get install espeak-ng)");
    assert!(status.success(), "espeak-ng failed for {name}");
    path
}

#[test]
#[cfg_attr(
    not(csm_test_speaker_encoder),
    ignore = "needs target/test-data/resemblyzer-pretrained.pt: run scripts/fetch-test-speaker-encoder.sh"
)]
fn real_weights_separate_two_voices() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = SpeakerEncoder::load(&weights()).expect("resemblyzer weights load");
    let mut embeddings = Vec::new();
    for (voice, sentences, tag) in [(&VOICE_A, &SENTENCES_A, 'A'), (&VOICE_B, &SENTENCES_B, 'B')] {
        for (i, text) in sentences.iter().enumerate() {
            let path = speak(dir.path(), &format!("{tag}{i}"), voice, text);
            embeddings.push((tag, encoder.embed_wav_file(&path).unwrap()));
        }
    }
    let mut same = Vec::new();
    let mut cross = Vec::new();
    for i in 0..embeddings.len() {
        for j in i + 1..embeddings.len() {
            let score = cosine_similarity(&embeddings[i].1, &embeddings[j].1);
            if embeddings[i].0 == embeddings[j].0 {
                same.push(score);
            } else {
                cross.push(score);
            }
        }
    }
    let lowest_same = same.iter().copied().fold(f32::INFINITY, f32::min);
    let highest_cross = cross.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    println!("same-voice pairs {same:.3?}");
    println!("cross-voice pairs {cross:.3?}");
    println!("lowest same {lowest_same:.4} > highest cross {highest_cross:.4}");
    assert_eq!((same.len(), cross.len()), (6, 9));
    assert!(
        lowest_same > highest_cross,
        "{lowest_same} <= {highest_cross}"
    );
}

#[test]
#[cfg_attr(
    not(csm_test_speaker_encoder),
    ignore = "needs target/test-data/resemblyzer-pretrained.pt: run scripts/fetch-test-speaker-encoder.sh"
)]
fn a_recording_matches_itself() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = SpeakerEncoder::load(&weights()).expect("resemblyzer weights load");
    let path = speak(dir.path(), "self", &VOICE_A, SENTENCES_A[0]);
    let audio = read_wav(&path).unwrap();
    let at_24k = resample(&audio.to_mono(), audio.sample_rate, 24_000).unwrap();
    let copy = dir.path().join("copy.wav");
    write_wav(&copy, &at_24k, 24_000, WavEncoding::Int16).unwrap();
    let a = encoder.embed_wav_file(&path).unwrap();
    let b = encoder.embed_wav_file(&copy).unwrap();
    let score = cosine_similarity(&a, &b);
    println!("recording vs its 24 kHz 16-bit copy: {score:.5}");
    assert!(score > 0.99, "{score}");
}
