//! Helpers shared by the Whisper tests: the fixture models, clips and the
//! recorded references of `scripts/fixtures/make_whisper_fixtures.py`.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

use csm_core::checkpoint::WeightMap;
use csm_core::whisper::{Whisper, WhisperConfig, WhisperModel, WhisperTokenizer};
use serde_json::Value;

pub const MODELS: [&str; 2] = ["tiny80", "tiny128"];

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/whisper")
}

pub fn reference() -> Value {
    let bytes = std::fs::read(fixtures().join("reference.json")).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

pub fn tiktoken_text() -> String {
    let file = std::fs::File::open(fixtures().join("multilingual.tiktoken.zip")).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let mut text = String::new();
    zip.by_name("multilingual.tiktoken")
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

pub fn load(name: &str) -> Whisper {
    let dir = fixtures().join(name);
    let config = WhisperConfig::from_dir(&dir).unwrap();
    let model = WhisperModel::load_dir(&dir, &config).unwrap();
    let tokenizer =
        WhisperTokenizer::from_tiktoken(&tiktoken_text(), config.num_languages()).unwrap();
    Whisper { model, tokenizer }
}

pub fn clip(name: &str) -> Vec<f32> {
    let audio = csm_core::data::audio::read_wav(&fixtures().join(format!("{name}.wav"))).unwrap();
    assert_eq!(audio.sample_rate, 16_000);
    audio.to_mono()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn ref_tensors(name: &str) -> WeightMap {
    WeightMap::from_safetensors(&[fixtures().join(name).join("ref.safetensors")], None).unwrap()
}

/// Checks our transcript against openai-whisper's (as recorded).
pub fn assert_transcript_matches(got: &csm_core::whisper::Transcript, want: &Value, what: &str) {
    assert_eq!(
        got.language,
        want["language"].as_str().unwrap(),
        "{what}: language"
    );
    let segs = want["segments"].as_array().unwrap();
    assert_eq!(got.segments.len(), segs.len(), "{what}: segment count");
    let close = |a: f64, b: &Value, tol: f64| (a - b.as_f64().unwrap()).abs() <= tol;
    let mut worst_word = 0f64;
    for (i, (g, w)) in got.segments.iter().zip(segs).enumerate() {
        let at = format!("{what}: segment {i}");
        assert_eq!(g.seek as u64, w["seek"].as_u64().unwrap(), "{at} seek");
        assert_eq!(g.tokens, ids(&w["tokens"]), "{at} tokens");
        assert_eq!(g.text, w["text"].as_str().unwrap(), "{at} text");
        assert!(
            close(g.start, &w["start"], 1e-6) && close(g.end, &w["end"], 1e-6),
            "{at} bounds {} {} vs {} {}",
            g.start,
            g.end,
            w["start"],
            w["end"]
        );
        assert!(
            close(g.avg_logprob, &w["avg_logprob"], 1e-3),
            "{at} avg_logprob {} vs {}",
            g.avg_logprob,
            w["avg_logprob"]
        );
        assert!(
            close(g.no_speech_prob, &w["no_speech_prob"], 1e-4),
            "{at} no_speech_prob"
        );
        // Our deflate is miniz's, not zlib's: the ratio differs (23.6 vs
        // 31.0 on a repeated token), the side of the 2.4 threshold must not.
        let cr = w["compression_ratio"].as_f64().unwrap();
        assert_eq!(
            g.compression_ratio > 2.4,
            cr > 2.4,
            "{at} compression ratio {} vs {cr}",
            g.compression_ratio
        );
        let words = w["words"].as_array().unwrap();
        assert_eq!(g.words.len(), words.len(), "{at} word count");
        for (gw, ww) in g.words.iter().zip(words) {
            assert_eq!(gw.word, ww["word"].as_str().unwrap(), "{at} word");
            let d = (gw.start - ww["start"].as_f64().unwrap())
                .abs()
                .max((gw.end - ww["end"].as_f64().unwrap()).abs());
            worst_word = worst_word.max(d);
            assert!(
                d < 1e-6,
                "{at} word {:?}: {} {} vs {} {}",
                gw.word,
                gw.start,
                gw.end,
                ww["start"],
                ww["end"]
            );
            assert!(
                close(gw.probability, &ww["probability"], 1e-4),
                "{at} word probability"
            );
        }
    }
    eprintln!(
        "{what}: {} segments, {} words match",
        got.segments.len(),
        got.segments.iter().map(|s| s.words.len()).sum::<usize>()
    );
}
