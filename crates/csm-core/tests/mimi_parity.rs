//! Mimi parity with PyTorch: moshi 0.2.2 (kyutai names) and transformers
//! `MimiModel` (HF names, standalone and inside a transformers CSM), on the
//! tiny random models of `tests/fixtures` (see its MANIFEST.md).
//!
//! Codes must be exactly equal; decoded audio within 1e-3 absolute. Run with
//! `--nocapture` to see the max errors.

use std::path::{Path, PathBuf};

mod common;
use common::max_abs_diff;

use csm_core::checkpoint::WeightMap;
use csm_core::codec::{detect_format, Mimi, MimiCheckpointFormat, MimiConfig};
use csm_core::mlx_rs::{Array, Dtype};

const AUDIO_TOL: f32 = 1e-3;
const HIDDEN_TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn read(path: &Path) -> WeightMap {
    WeightMap::from_safetensors(&[path.to_path_buf()], None).expect("fixture file")
}

fn get(map: &WeightMap, key: &str) -> Array {
    map.tensors
        .get(key)
        .unwrap_or_else(|| panic!("{} has no `{key}`", map.source))
        .clone()
}

/// `[B, C, T]` (PyTorch conv layout) of an intermediate `[B, T, C]`.
fn ncl(x: &Array) -> Array {
    x.transpose_axes(&[0, 2, 1]).unwrap() // [B, T, C] -> [B, C, T]
}

fn codes_vec(codes: &Array) -> Vec<i32> {
    codes
        .as_dtype(Dtype::Int32)
        .unwrap()
        .contiguous()
        .unwrap()
        .as_slice::<i32>()
        .to_vec()
}

/// Checks encode and decode of one model against one reference file, for
/// the short and the long (sliding window exercised) waveform.
fn check_model(name: &str, mimi: &mut Mimi, reference: &WeightMap) {
    for suffix in ["", "_long"] {
        let wav = get(reference, &format!("waveform{suffix}"));
        let want_codes = get(reference, &format!("codes{suffix}"));
        let want_audio = get(reference, &format!("decoded{suffix}"));
        let codes = mimi.encode(&wav).unwrap();
        assert_eq!(
            codes.shape(),
            want_codes.shape(),
            "{name}{suffix}: codes shape"
        );
        let (got, want) = (codes_vec(&codes), codes_vec(&want_codes));
        let mismatches = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            mismatches,
            0,
            "{name}{suffix}: {mismatches} of {} codes differ",
            want.len()
        );
        let audio = mimi.decode(&want_codes).unwrap();
        let err = max_abs_diff(&audio, &want_audio);
        let peak = want_audio
            .abs()
            .unwrap()
            .max(None)
            .unwrap()
            .item_exact::<f32>();
        println!(
            "{name}{suffix}: {} codes equal; decoded {:?} max |err| = {err:.3e} (peak |ref| {peak:.2})",
            want.len(),
            audio.shape()
        );
        assert!(err < AUDIO_TOL, "{name}{suffix}: decoded max error {err}");
        // Decoding our own codes gives the same audio (they are equal).
        let own = mimi.decode(&codes).unwrap();
        assert!(max_abs_diff(&own, &audio) == 0.0);
    }
}

#[test]
fn kyutai_format_matches_moshi() {
    let dir = fixtures();
    let config = MimiConfig::from_kyutai_config_file(&dir.join("mimi_tiny_kyutai_config.json"))
        .expect("kyutai config");
    let weights_path = dir.join("mimi_tiny_kyutai.safetensors");
    assert_eq!(
        detect_format(&read(&weights_path)).unwrap(),
        MimiCheckpointFormat::Kyutai
    );
    let mut mimi = Mimi::from_kyutai_file(&weights_path, config).expect("load kyutai");
    check_model(
        "kyutai",
        &mut mimi,
        &read(&dir.join("mimi_ref_kyutai.safetensors")),
    );
}

#[test]
fn transformers_format_matches_hf_with_intermediates() {
    let dir = fixtures();
    let mut mimi = Mimi::from_hf_dir(&dir.join("mimi_tiny_hf")).expect("load HF Mimi");
    let reference = read(&dir.join("mimi_ref_hf.safetensors"));
    check_model("hf", &mut mimi, &reference);

    // Stage by stage, to localise any mismatch.
    let wav = get(&reference, "waveform");
    let x = wav.transpose_axes(&[0, 2, 1]).unwrap(); // [B, 1, N] -> [B, N, 1]
    let seanet = mimi.encoder.forward(&x).unwrap();
    let tr = mimi.encoder_transformer.forward(&seanet).unwrap();
    let latent = mimi.downsample.as_ref().unwrap().forward(&tr).unwrap();
    let codes = get(&reference, "codes");
    let rvq = mimi.quantizer.decode(&codes).unwrap();
    let up = mimi.upsample.as_ref().unwrap().forward(&rvq).unwrap();
    let dtr = mimi.decoder_transformer.forward(&up).unwrap();
    for (key, ours) in [
        ("encoder_seanet_out", &seanet),
        ("encoder_transformer_out", &tr),
        ("latent", &latent),
        ("rvq_decoded", &rvq),
        ("upsampled", &up),
        ("decoder_transformer_out", &dtr),
    ] {
        let err = max_abs_diff(&ncl(ours), &get(&reference, key));
        println!("hf {key}: max |err| = {err:.3e}");
        assert!(err < HIDDEN_TOL, "{key}: max error {err}");
    }
    let latent_api = mimi.encode_to_latent(&wav).unwrap();
    assert_eq!(max_abs_diff(&latent_api, &latent), 0.0);
}

#[test]
fn transformers_csm_codec_model_matches_hf() {
    let dir = fixtures();
    let csm_dir = dir.join("csm_tiny_hf");
    let reference = read(&dir.join("mimi_ref_hf.safetensors"));

    // As the CSM loader does it: prefix stripped, codec_config handed over.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(csm_dir.join("config.json")).unwrap())
            .unwrap();
    let mut all = read(&csm_dir.join("model.safetensors"));
    assert_eq!(
        detect_format(&all).unwrap(),
        MimiCheckpointFormat::TransformersCsm
    );
    let codec = all.split_prefix("codec_model.");
    let mut mimi = Mimi::from_hf_weights(&config["codec_config"], codec).expect("codec_model");
    check_model("csm codec_model", &mut mimi, &reference);

    // The whole CSM directory through the generic loader.
    let mut from_dir = Mimi::load(&csm_dir, None).expect("load CSM dir");
    let wav = get(&reference, "waveform");
    assert_eq!(
        codes_vec(&from_dir.encode(&wav).unwrap()),
        codes_vec(&get(&reference, "codes"))
    );
}

#[test]
fn both_formats_agree_and_generic_loader_detects_them() {
    let dir = fixtures();
    let mut kyutai = Mimi::load(
        &dir.join("mimi_tiny_kyutai.safetensors"),
        Some(
            MimiConfig::from_kyutai_config_file(&dir.join("mimi_tiny_kyutai_config.json")).unwrap(),
        ),
    )
    .unwrap();
    let mut hf = Mimi::load(&dir.join("mimi_tiny_hf"), None).unwrap();
    let mut hf_file = Mimi::load(&dir.join("mimi_tiny_hf/model.safetensors"), None).unwrap();
    let wav = get(&read(&dir.join("mimi_ref_hf.safetensors")), "waveform_long");
    let a = kyutai.encode(&wav).unwrap();
    let b = hf.encode(&wav).unwrap();
    let c = hf_file.encode(&wav).unwrap();
    assert_eq!(codes_vec(&a), codes_vec(&b));
    assert_eq!(codes_vec(&b), codes_vec(&c));
    let err = max_abs_diff(&kyutai.decode(&a).unwrap(), &hf.decode(&a).unwrap());
    println!("kyutai vs hf decode (ours): max |diff| = {err:.3e}");
    assert!(err < 1e-4);
}

#[test]
fn fewer_codebooks_are_a_prefix() {
    let dir = fixtures();
    let mut mimi = Mimi::from_hf_dir(&dir.join("mimi_tiny_hf")).unwrap();
    let reference = read(&dir.join("mimi_ref_hf.safetensors"));
    let wav = get(&reference, "waveform");
    mimi.set_num_codebooks(3).unwrap();
    let codes = mimi.encode(&wav).unwrap();
    assert_eq!(codes.shape(), &[1, 3, 21]);
    let all = codes_vec(&get(&reference, "codes"));
    let got = codes_vec(&codes);
    for k in 0..3 {
        assert_eq!(&got[k * 21..(k + 1) * 21], &all[k * 21..(k + 1) * 21]);
    }
    assert_eq!(mimi.decode(&codes).unwrap().shape(), &[1, 1, 336]);
}

#[test]
fn wrong_config_is_a_strict_load_error() {
    let dir = fixtures();
    let config =
        MimiConfig::from_kyutai_config_file(&dir.join("mimi_tiny_kyutai_config.json")).unwrap();
    let mut wrong = config.clone();
    wrong.transformer.num_layers = 3;
    let err = Mimi::from_kyutai_file(&dir.join("mimi_tiny_kyutai.safetensors"), wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains("encoder_transformer.layers.2"), "{err}");
    // The released config against the tiny file: shape errors, not a panic.
    let err = Mimi::from_kyutai_file(
        &dir.join("mimi_tiny_kyutai.safetensors"),
        MimiConfig::mimi_v0_1(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("mimi_tiny_kyutai.safetensors"), "{err}");
}

/// The released checkpoint, which `CSM_MIMI_CHECKPOINT` points at (the
/// kyutai `tokenizer-e351c8d8-checkpoint125.safetensors`, a `kyutai/mimi`
/// directory or a transformers CSM directory). Run it with
/// `CSM_MIMI_CHECKPOINT=PATH cargo nextest run -p csm-core --run-ignored all released_checkpoint`.
#[test]
#[ignore = "needs CSM_MIMI_CHECKPOINT: the released Mimi weights, which are not in the repository"]
fn released_checkpoint() {
    let path = std::env::var_os("CSM_MIMI_CHECKPOINT")
        .expect("set CSM_MIMI_CHECKPOINT to the released Mimi checkpoint to run this test");
    let mut mimi = Mimi::load(Path::new(&path), None).expect("load released Mimi");
    assert_eq!(mimi.config.hop_length(), 1920);
    mimi.set_num_codebooks(32).unwrap();
    // 1 s of a 440 Hz tone: 24000 samples -> 13 frames -> 24960 samples.
    let tone: Vec<f32> = (0..24_000)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 24_000.0).sin())
        .collect();
    let wav = Array::from_slice(&tone, &[1, 1, 24_000]);
    let codes = mimi.encode(&wav).unwrap();
    assert_eq!(codes.shape(), &[1, 32, 13]);
    let audio = mimi.decode(&codes).unwrap();
    assert_eq!(audio.shape(), &[1, 1, 24_960]);
    let peak = audio.abs().unwrap().max(None).unwrap().item_exact::<f32>();
    println!(
        "released Mimi: codes[0] = {:?}, decoded peak {peak:.3}",
        &codes_vec(&codes)[..13]
    );
    assert!(peak.is_finite() && peak > 0.01 && peak < 2.0);
}

/// Settles the q/k ordering question: transformers stores q/k rows permuted
/// for rotate-half RoPE. Un-permuting them at load (what the loader does)
/// matches transformers to ~1e-6; using the stored order with interleaved
/// RoPE would not.
#[test]
fn hf_qk_rows_are_rotate_half_permuted() {
    use csm_core::mlx_rs::module::Param;
    use csm_core::mlx_rs::ops;
    use csm_core::mlx_rs::ops::indexing::IndexOp;

    let dir = fixtures();
    let mimi = Mimi::from_hf_dir(&dir.join("mimi_tiny_hf")).unwrap();
    let reference = read(&dir.join("mimi_ref_hf.safetensors"));
    // [B, C, T] -> [B, T, C]
    let input = get(&reference, "encoder_seanet_out")
        .transpose_axes(&[0, 2, 1])
        .unwrap();
    let want = get(&reference, "encoder_transformer_out");
    let ok = max_abs_diff(
        &ncl(&mimi.encoder_transformer.forward(&input).unwrap()),
        &want,
    );
    assert!(ok < HIDDEN_TOL, "{ok}");

    let mut wrong = mimi.encoder_transformer.clone();
    let (d, heads) = (32, 4);
    let hd = d / heads;
    for layer in &mut wrong.layers {
        let w = layer.self_attn.in_proj.value.clone(); // [3d, d]
                                                       // Re-apply the converter's permutation to q and k:
                                                       // [H*hd, d] -> [H, hd/2, 2, d] -> [H, 2, hd/2, d] -> [H*hd, d]
        let permute = |x: Array| {
            x.reshape(&[heads, hd / 2, 2, d])
                .unwrap()
                .transpose_axes(&[0, 2, 1, 3])
                .unwrap()
                .reshape(&[heads * hd, d])
                .unwrap()
        };
        let q = permute(w.index(..d));
        let k = permute(w.index(d..2 * d));
        let v = w.index(2 * d..);
        layer.self_attn.in_proj = Param::new(ops::concatenate(&[q, k, v], 0).unwrap());
    }
    let bad = max_abs_diff(&ncl(&wrong.forward(&input).unwrap()), &want);
    println!("encoder transformer: un-permuted q/k max |err| = {ok:.3e}; HF order with interleaved RoPE = {bad:.3e}");
    assert!(bad > 100.0 * HIDDEN_TOL, "{bad}");
}
