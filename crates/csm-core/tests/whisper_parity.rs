//! Parity of the MLX Whisper with transformers 5.24 and openai-whisper
//! 20250625 on the tiny random models of `tests/fixtures/whisper` (see
//! `scripts/fixtures/make_whisper_fixtures.py`): tokenizer, log-mel
//! features, encoder output, logits, greedy tokens of transformers'
//! `generate`, and openai-whisper's `transcribe()` with word timestamps on
//! short clips.

mod common;
mod whisper_support;
use common::max_abs_diff;

use csm_core::checkpoint::WeightMap;
use csm_core::whisper::audio::log_mel_spectrogram;
use csm_core::whisper::config::{N_FRAMES, N_SAMPLES};
use csm_core::whisper::decode::{decode, SuppressTokens};
use csm_core::whisper::{DecodeOptions, TranscribeOptions, WhisperConfig, WhisperModel};
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array};

use whisper_support::*;

#[test]
fn tokenizer_matches_openai_whisper() {
    let reference = reference();
    for name in MODELS {
        let r = &reference["models"][name];
        let w = load(name);
        let sp = &w.tokenizer.special;
        let s = &r["special"];
        let got = [
            sp.eot,
            sp.sot,
            sp.sot_prev,
            sp.transcribe,
            sp.translate,
            sp.no_speech,
            sp.no_timestamps,
            sp.timestamp_begin,
        ];
        let want: Vec<u32> = [
            "eot",
            "sot",
            "sot_prev",
            "transcribe",
            "translate",
            "no_speech",
            "no_timestamps",
            "timestamp_begin",
        ]
        .iter()
        .map(|k| s[k].as_u64().unwrap() as u32)
        .collect();
        assert_eq!(got.to_vec(), want, "{name}: special ids");
        assert_eq!(
            w.tokenizer.language_token("en"),
            Some(s["en"].as_u64().unwrap() as u32)
        );
        assert_eq!(
            w.tokenizer.non_speech_tokens().unwrap(),
            ids(&r["non_speech_tokens"]),
            "{name}"
        );
        for (text, want) in r["tokenizer_checks"].as_object().unwrap() {
            let got = w.tokenizer.encode(text).unwrap();
            assert_eq!(got, ids(want), "{name}: encode {text:?}");
            assert_eq!(&w.tokenizer.decode(&got), text);
        }
        assert_eq!(
            w.tokenizer
                .decode_with_timestamps(&[sp.timestamp_begin + 50]),
            "<|1.00|>"
        );
    }
}

#[test]
fn log_mel_matches_transformers() {
    let audio = clip("clip0");
    for name in MODELS {
        let r = ref_tensors(name);
        let head = &r.tensors["mel_head"]; // [n_mels, 400]
        let n_mels = head.shape()[0] as usize;
        let mel = log_mel_spectrogram(&audio, n_mels, N_SAMPLES - audio.len()).unwrap();
        assert_eq!(mel.frames(), N_FRAMES);
        let got = mel.to_array().index((..400, ..)).transpose().unwrap();
        let diff = max_abs_diff(&got, head);
        eprintln!("{name}: log-mel max |diff| {diff:.2e}");
        assert!(diff < 1e-4, "{name}: log-mel differs by {diff}");
        let pad = r.tensors["mel_pad_value"].as_slice::<f32>()[0];
        let speech = r.tensors["mel_speech_frames"].as_slice::<i32>()[0] as usize;
        let tail = &mel.data[(speech + 2) * n_mels..];
        let worst = tail.iter().map(|v| (v - pad).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{name}: padding frames differ by {worst}");
    }
}

#[test]
fn encoder_and_logits_match_transformers() {
    let audio = clip("clip0");
    for name in MODELS {
        let r = ref_tensors(name);
        let w = load(name);
        let n_mels = w.model.config.num_mel_bins as usize;
        let mel = log_mel_spectrogram(&audio, n_mels, N_SAMPLES - audio.len()).unwrap();
        let enc = w.model.encoder.forward(&mel.window(0, N_FRAMES)).unwrap();
        let d_enc = max_abs_diff(&enc, &r.tensors["encoder_out"]);
        let ids = &r.tensors["decoder_input_ids"];
        let mut cache = w.model.decoder.new_cache(&enc).unwrap();
        let (h, _) = w.model.decoder.forward(ids, &mut cache, false).unwrap();
        let logits = w.model.decoder.logits(&h).unwrap(); // [1, T, V]
        let subset = logits.take_axis(&r.tensors["logit_ids"], -1).unwrap();
        let d_logits = max_abs_diff(&subset, &r.tensors["logits_subset"]);
        let lse = ops::logsumexp_axis(&logits, -1, false).unwrap();
        let d_lse = max_abs_diff(&lse, &r.tensors["logits_logsumexp"]);
        let argmax = ops::indexing::argmax_axis(&logits, -1, false).unwrap();
        eprintln!("{name}: encoder {d_enc:.2e}, logits {d_logits:.2e}, logsumexp {d_lse:.2e}");
        assert!(d_enc < 1e-4 && d_logits < 1e-4 && d_lse < 1e-4);
        assert_eq!(
            argmax
                .as_dtype(mlx_rs::Dtype::Int32)
                .unwrap()
                .as_slice::<i32>(),
            r.tensors["logits_argmax"].as_slice::<i32>()
        );

        // Step-by-step decoding over the KV cache equals the full forward.
        let mut cache = w.model.decoder.new_cache(&enc).unwrap();
        let t = ids.shape()[1];
        let (first, _) = w
            .model
            .decoder
            .forward(&ids.index((.., ..2)), &mut cache, false)
            .unwrap();
        let mut outs = vec![first];
        for i in 2..t {
            outs.push(
                w.model
                    .decoder
                    .forward(&ids.index((.., i..i + 1)), &mut cache, false)
                    .unwrap()
                    .0,
            );
        }
        let stepped = ops::concatenate(&outs, 1).unwrap();
        assert!(max_abs_diff(&stepped, &h) < 1e-5);
    }
}

#[test]
fn loading_is_strict() {
    let dir = fixtures().join("tiny80");
    let config = WhisperConfig::from_dir(&dir).unwrap();
    let mut weights = WeightMap::from_safetensors(&[dir.join("model.safetensors")], None).unwrap();
    weights.remove("model.decoder.layers.1.fc2.bias");
    weights.insert(
        "model.decoder.extra.weight",
        Array::from_slice(&[1f32], &[1]),
    );
    let w = weights
        .tensors
        .remove("model.encoder.layer_norm.weight")
        .unwrap();
    weights.insert(
        "model.encoder.layer_norm.weight",
        ops::concatenate(&[&w, &w], 0).unwrap(),
    );
    let err = WhisperModel::from_weights(&config, weights)
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(err.contains("decoder.layers.1.fc2.bias"));
    assert!(err.contains("decoder.extra.weight"));
    assert!(err.contains("encoder.layer_norm.weight: [8] vs [16]"));
}

#[test]
fn greedy_tokens_match_transformers_generate() {
    let reference = reference();
    for name in MODELS {
        let w = load(name);
        let greedy = &reference["models"][name]["greedy_transformers"];
        for clip_name in ["clip0", "clip1", "clip2"] {
            let audio = clip(clip_name);
            let mel = log_mel_spectrogram(
                &audio,
                w.model.config.num_mel_bins as usize,
                N_SAMPLES - audio.len(),
            )
            .unwrap();
            let features = w.model.encoder.forward(&mel.window(0, N_FRAMES)).unwrap();
            let options = DecodeOptions {
                language: Some("en".into()),
                without_timestamps: true,
                sample_len: Some(40),
                suppress_tokens: SuppressTokens::NonSpeech,
                ..DecodeOptions::default()
            };
            let result = decode(&w.model, &w.tokenizer, &features, &options).unwrap();
            let want = ids(&greedy[clip_name]);
            // transformers 5 returns the new tokens only (without the
            // SOT/language/task/notimestamps prompt).
            let want: Vec<u32> = want
                .iter()
                .copied()
                .take_while(|&t| t != w.tokenizer.special.eot)
                .collect();
            assert_eq!(result.tokens, want, "{name} {clip_name}");
        }
    }
}

#[test]
fn transcribe_short_clips_matches_openai_whisper() {
    let reference = reference();
    for name in MODELS {
        let w = load(name);
        for clip_name in ["clip0", "clip1", "clip2"] {
            let options = TranscribeOptions {
                temperatures: vec![0.0],
                word_timestamps: true,
                ..TranscribeOptions::default()
            };
            let got = w
                .transcribe(
                    &clip(clip_name),
                    &options,
                    &mut |_| {},
                    &csm_core::cancel::CancelToken::new(),
                )
                .unwrap();
            assert_transcript_matches(
                &got,
                &reference["models"][name]["openai_transcribe"][clip_name],
                &format!("{name} {clip_name}"),
            );
        }
    }
}
