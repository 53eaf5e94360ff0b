//! Speaker encoder parity with resemblyzer 0.1.4's PyTorch `VoiceEncoder`
//! on its real weights (`target/test-data/resemblyzer-pretrained.pt`, from
//! `scripts/fetch-test-speaker-encoder.sh`), on the waveform, mel and
//! embeddings of `tests/fixtures/speaker/reference.safetensors`
//! (`scripts/fixtures/make_speaker_fixtures.py`).
//!
//! Partial and utterance embeddings must agree within 1e-4. Run with
//! `--nocapture` to see the errors.

use std::path::{Path, PathBuf};

use csm_core::checkpoint::WeightMap;
use csm_core::mlx_rs::ops::indexing::IndexOp;
use csm_core::mlx_rs::{ops, Array};
use csm_core::speaker::mel::mel_filters;
use csm_core::speaker::preprocess::trim_long_silences;
use csm_core::speaker::{PartialOptions, SpeakerEncoder, SpeakerEncoderConfig};

const EMBED_TOL: f32 = 1e-4;

fn reference() -> WeightMap {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/speaker/reference.safetensors");
    WeightMap::from_safetensors(&[path], None).expect("fixture file")
}

fn weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-data/resemblyzer-pretrained.pt")
}

fn get(map: &WeightMap, key: &str) -> Array {
    map.tensors
        .get(key)
        .unwrap_or_else(|| panic!("fixture has no `{key}`"))
        .clone()
}

fn floats(a: &Array) -> Vec<f32> {
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn mel_filters_match_librosa() {
    let r = reference();
    let want = floats(&get(&r, "mel_filters"));
    let got = mel_filters(16_000, 400, 40);
    let diff = max_diff(&got, &want);
    let peak = want.iter().copied().fold(0.0, f32::max);
    println!("mel filters: max |diff| {diff:.3e} (peak {peak:.3e})");
    assert!(diff <= 1e-6 * peak, "{diff}");
}

/// The spectrogram needs no weights: checked against resemblyzer's
/// `wav_to_mel_spectrogram` (librosa) relative to each frame's energy.
#[test]
fn mel_matches_resemblyzer() {
    let r = reference();
    let encoder = SpeakerEncoder::new(SpeakerEncoderConfig::resemblyzer()).unwrap();
    let wav = floats(&get(&r, "wav"));
    let want = get(&r, "mel");
    let frames = want.shape()[0] as usize;
    let padded = {
        let mut w = wav.clone();
        w.resize((frames - 1) * 160, 0.0);
        w
    };
    let got = encoder.mel(&padded).unwrap();
    assert_eq!(got.shape(), want.shape());
    let (got, want) = (floats(&got), floats(&want));
    let mut worst = 0f32;
    for (g, w) in got.chunks(40).zip(want.chunks(40)) {
        let scale = w.iter().copied().fold(1e-8, f32::max);
        worst = worst.max(max_diff(g, w) / scale);
    }
    println!("mel: max |diff| / frame peak {worst:.3e}");
    assert!(worst < 1e-4, "{worst}");
}

#[test]
#[cfg_attr(
    not(csm_test_speaker_encoder),
    ignore = "needs target/test-data/resemblyzer-pretrained.pt: run scripts/fetch-test-speaker-encoder.sh"
)]
fn embeddings_match_resemblyzer() {
    let r = reference();
    let encoder = SpeakerEncoder::load(&weights()).expect("resemblyzer weights load");
    let want_partials = get(&r, "partials");
    let want_embedding = floats(&get(&r, "embedding"));

    // The network alone, on resemblyzer's own mel windows.
    let mel = get(&r, "mel");
    let slices = floats(&get(&r, "mel_slices"));
    let windows: Vec<Array> = slices
        .chunks(2)
        .map(|s| mel.index((s[0] as i32..s[1] as i32, ..)))
        .collect();
    let batch = ops::stack(&windows, 0).unwrap();
    let partials = encoder.forward(&batch).unwrap();
    let net_diff = max_diff(&floats(&partials), &floats(&want_partials));
    println!("network on the reference mel: partials max |diff| {net_diff:.3e}");
    assert!(net_diff < EMBED_TOL, "{net_diff}");

    // The whole pipeline from the preprocessed waveform.
    let wav = floats(&get(&r, "wav"));
    let out = encoder
        .embed_utterance(&wav, PartialOptions::default())
        .unwrap();
    let got_slices: Vec<f32> = out
        .slices
        .iter()
        .flat_map(|s| [s.start as f32, s.end as f32])
        .collect();
    assert_eq!(got_slices, slices);
    let flat: Vec<f32> = out.partials.concat();
    let partial_diff = max_diff(&flat, &floats(&want_partials));
    let embed_diff = max_diff(&out.embedding, &want_embedding);
    println!(
        "from the waveform: {} partials max |diff| {partial_diff:.3e}, utterance {embed_diff:.3e}",
        out.partials.len()
    );
    assert!(partial_diff < EMBED_TOL, "{partial_diff}");
    assert!(embed_diff < EMBED_TOL, "{embed_diff}");
}

/// The energy VAD against resemblyzer's webrtcvad on the same utterance:
/// not equal by design (see `csm_core::speaker`'s docs), but close, and the
/// embeddings of both trims nearly the same.
#[test]
#[cfg_attr(
    not(csm_test_speaker_encoder),
    ignore = "needs target/test-data/resemblyzer-pretrained.pt: run scripts/fetch-test-speaker-encoder.sh"
)]
fn energy_vad_is_close_to_webrtcvad() {
    let r = reference();
    let config = SpeakerEncoderConfig::resemblyzer();
    let normalized = floats(&get(&r, "normalized"));
    let theirs = floats(&get(&r, "wav"));
    let ours = trim_long_silences(&normalized, &config);
    let ratio = ours.len() as f64 / theirs.len() as f64;
    println!(
        "kept {} samples (webrtcvad: {}, of {}), ratio {ratio:.3}",
        ours.len(),
        theirs.len(),
        normalized.len()
    );
    assert!((0.9..=1.1).contains(&ratio), "{ratio}");
    let encoder = SpeakerEncoder::load(&weights()).unwrap();
    let a = encoder
        .embed_utterance(&ours, PartialOptions::default())
        .unwrap();
    let b = floats(&get(&r, "embedding"));
    let sim = csm_core::speaker::cosine_similarity(&a.embedding, &b);
    println!("cosine(energy VAD, webrtcvad) = {sim:.4}");
    assert!(sim > 0.98, "{sim}");
}
