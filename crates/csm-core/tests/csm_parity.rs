//! Parity of the MLX CSM with the PyTorch (transformers 5.24) reference on
//! the tiny random model of `tests/fixtures` (see its `MANIFEST.md`):
//! every checkpoint layout loads to the same weights, and hidden states,
//! logits, losses and greedy generation match the reference.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod common;
use common::max_abs_diff;

use csm_core::checkpoint::WeightMap;
use csm_core::model::llama::AttentionInput;
use csm_core::model::load::{canonical_weights, read_config, to_format, ConfigOrigin};
use csm_core::model::{
    load_csm, padded_causal_mask, AttentionMask, Csm, CsmConfig, FrameInput, LoadOptions,
    LossBatch, LossWeights, ModelError, ModelFormat,
};
use mlx_rs::module::Module;
use mlx_rs::ops::indexing::{argmax_axis, IndexOp};
use mlx_rs::{ops, Array, Dtype};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn reference() -> WeightMap {
    WeightMap::from_safetensors(&[fixtures().join("csm_tiny_ref.safetensors")], None).unwrap()
}

fn r(map: &WeightMap, key: &str) -> Array {
    map.tensors
        .get(key)
        .unwrap_or_else(|| panic!("reference has no `{key}`"))
        .clone()
}

fn tiny_config() -> CsmConfig {
    read_config(&fixtures().join("csm_tiny_hf/config.json"))
        .unwrap()
        .0
}

fn load(path: &Path, config: Option<CsmConfig>) -> csm_core::model::LoadedCsm {
    let options = LoadOptions {
        config,
        ..LoadOptions::default()
    };
    load_csm(path, &options).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn hf_model() -> Csm {
    load(&fixtures().join("csm_tiny_hf"), None).model
}

fn scalar(a: &Array) -> f32 {
    a.reshape(&[]).unwrap().item_cast::<f32>()
}

fn assert_rel(got: f32, want: f32, tol: f32, what: &str) {
    let rel = (got - want).abs() / want.abs().max(1e-12);
    assert!(rel < tol, "{what}: {got} vs {want} (relative {rel:e})");
    eprintln!("{what}: {got} vs {want} (relative {rel:.2e})");
}

fn to_vec_i32(a: &Array) -> Vec<i32> {
    a.as_dtype(Dtype::Int32)
        .unwrap()
        .contiguous()
        .unwrap()
        .as_slice::<i32>()
        .to_vec()
}

#[test]
fn config_json_parses_to_tiny_dims() {
    let c = tiny_config();
    assert_eq!((c.backbone.embed_dim, c.decoder.embed_dim), (64, 48));
    assert_eq!((c.backbone.head_dim, c.decoder.head_dim), (16, 12));
    assert_eq!(
        (c.audio_num_codebooks, c.audio_vocab_size, c.text_vocab_size),
        (8, 67, 300)
    );
    // Our llama3 periods are the reciprocals of transformers' inv_freq.
    let reference = reference();
    for (stack, key) in [
        (&c.backbone, "rope_inv_freq_backbone"),
        (&c.decoder, "rope_inv_freq_depth"),
    ] {
        let want = r(&reference, key);
        let got: Vec<f32> = stack.rope_periods().iter().map(|p| 1.0 / p).collect();
        let got = Array::from_slice(&got, &[got.len() as i32]);
        let rel = got
            .subtract(&want)
            .unwrap()
            .abs()
            .unwrap()
            .divide(&want)
            .unwrap();
        let rel = rel.max(None).unwrap().item_cast::<f32>();
        assert!(rel < 1e-6, "{key}: relative {rel}");
    }
}

#[test]
fn every_format_loads_the_same_weights() {
    let config = tiny_config();
    let hf = load(&fixtures().join("csm_tiny_hf"), None);
    assert_eq!(hf.format, ModelFormat::Transformers);
    assert!(matches!(hf.config_origin, ConfigOrigin::File(..)));
    let described = hf.detected.to_string();
    eprintln!("{described}");
    assert!(described.starts_with("transformers CsmForConditionalGeneration (153 tensors"));
    assert!(described.contains("config.json (Transformers layout)"));
    assert!(described.contains("with the Mimi codec"));
    let codec = hf.codec.as_ref().expect("codec_model.* split off");
    assert_eq!(codec.tensors.len(), 110);
    assert!(codec.tensors.contains_key("downsample.conv.weight"));
    let reference = canonical_weights(&hf.model);

    let original = load(
        &fixtures().join("csm_tiny_original.safetensors"),
        Some(config.clone()),
    );
    assert_eq!(original.format, ModelFormat::Original);
    assert_eq!(original.config_origin, ConfigOrigin::Caller);
    let mlx = load(
        &fixtures().join("csm_tiny_mlx.safetensors"),
        Some(config.clone()),
    );
    assert_eq!(mlx.format, ModelFormat::CsmMlx);

    // mlx-audio: the csm-mlx file under a `model.` prefix.
    let dir = tempfile::tempdir().unwrap();
    let mlx_audio = to_format(
        &canonical_weights(&mlx.model),
        ModelFormat::MlxAudio,
        &config,
    )
    .unwrap();
    let path = dir.path().join("model.safetensors");
    save(&mlx_audio, &path);
    let audio = load(dir.path(), Some(config.clone()));
    assert_eq!(audio.format, ModelFormat::MlxAudio);

    for (name, model) in [
        ("original", &original.model),
        ("csm-mlx", &mlx.model),
        ("mlx-audio", &audio.model),
    ] {
        let w = canonical_weights(model);
        assert_eq!(w.tensors.len(), reference.tensors.len(), "{name}");
        for (k, v) in &reference.tensors {
            let d = max_abs_diff(&w.tensors[k], v);
            assert_eq!(d, 0.0, "{name}: `{k}` differs from transformers by {d}");
        }
    }
}

fn save(map: &WeightMap, path: &Path) {
    let tensors: HashMap<String, Array> = map.tensors.clone().into_iter().collect();
    Array::save_safetensors(tensors, None, path).unwrap();
}

#[test]
fn export_reproduces_the_source_files() {
    let config = tiny_config();
    let model = hf_model();
    let canon = canonical_weights(&model);
    for (format, file) in [
        (ModelFormat::Transformers, "csm_tiny_hf/model.safetensors"),
        (ModelFormat::Original, "csm_tiny_original.safetensors"),
        (ModelFormat::CsmMlx, "csm_tiny_mlx.safetensors"),
    ] {
        let exported = to_format(&canon, format, &config).unwrap();
        let mut source = WeightMap::from_safetensors(&[fixtures().join(file)], None).unwrap();
        source.split_prefix("codec_model.");
        for (k, v) in &source.tensors {
            let got = exported
                .tensors
                .get(k)
                .unwrap_or_else(|| panic!("{format}: export lacks `{k}`"));
            assert_eq!(max_abs_diff(got, v), 0.0, "{format}: `{k}`");
        }
        // transformers: the export also writes the backbone side of the tie.
        let extra: Vec<&String> = exported
            .tensors
            .keys()
            .filter(|k| !source.tensors.contains_key(*k))
            .collect();
        match format {
            ModelFormat::Transformers => assert_eq!(
                extra,
                vec!["backbone_model.embed_tokens.embed_audio_tokens.weight"]
            ),
            _ => assert!(extra.is_empty(), "{format}: extra keys {extra:?}"),
        }
    }
}

#[test]
fn pt_checkpoint_loads_the_same_weights_as_safetensors() {
    let options = LoadOptions {
        config: Some(tiny_config()),
        ..LoadOptions::default()
    };
    let pt = load_csm(&fixtures().join("csm_tiny_original.pt"), &options).unwrap();
    let st = load_csm(&fixtures().join("csm_tiny_original.safetensors"), &options).unwrap();
    assert_eq!(pt.format, ModelFormat::Original);
    let a = canonical_weights(&pt.model);
    let b = canonical_weights(&st.model);
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    for (k, v) in &a.tensors {
        let diff = max_abs_diff(v, &b.tensors[k]);
        assert_eq!(diff, 0.0, "{k}");
    }
}

#[test]
fn malicious_pt_is_refused_and_runs_nothing() {
    let marker = std::path::Path::new("/tmp/csm_pwned");
    let _ = std::fs::remove_file(marker);
    let err = load_csm(
        &fixtures().join("malicious.pt"),
        &LoadOptions {
            config: Some(tiny_config()),
            ..LoadOptions::default()
        },
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("malicious.pt") && text.contains("os.system"),
        "{text}"
    );
    assert!(!marker.exists(), "the pickle's command ran");
}

#[test]
fn mismatched_checkpoint_fails_with_a_listing() {
    let config = tiny_config();
    let mut w =
        WeightMap::from_safetensors(&[fixtures().join("csm_tiny_mlx.safetensors")], None).unwrap();
    w.remove("decoder.layers.1.mlp.up_proj.weight");
    w.insert(
        "backbone.layers.0.self_attn.v_proj.weight",
        ops::zeros::<f32>(&[16, 64]).unwrap(),
    );
    w.insert(
        "backbone.layers.0.extra.weight",
        ops::zeros::<f32>(&[2]).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.safetensors");
    save(&w, &path);
    let err = load_csm(
        &path,
        &LoadOptions {
            config: Some(config),
            ..LoadOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    eprintln!("{err}");
    assert!(err.contains("broken.safetensors"), "{err}");
    assert!(
        err.contains("1 missing:\n    decoder.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
    assert!(
        err.contains("1 unexpected:\n    backbone.layers.0.extra.weight"),
        "{err}"
    );
    assert!(
        err.contains("backbone.layers.0.self_attn.v_proj.weight: [32, 64] vs [16, 64]"),
        "{err}"
    );

    // Without a config and not CSM-1B-shaped: a clear refusal.
    let err = load_csm(
        &fixtures().join("csm_tiny_mlx.safetensors"),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::NoConfig { .. }), "{err}");
    assert!(err.to_string().contains("not CSM-1B"), "{err}");

    // Unknown layouts list some keys.
    let mut other = WeightMap::new("x");
    other.insert("encoder.weight", ops::zeros::<f32>(&[2]).unwrap());
    let path = dir.path().join("other.safetensors");
    save(&other, &path);
    let err = load_csm(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unrecognised checkpoint layout") && err.contains("encoder.weight"),
        "{err}"
    );
}

#[test]
fn forward_matches_transformers() {
    let reference = reference();
    let mut model = hf_model();
    let frames = r(&reference, "frames");
    let mask = r(&reference, "frames_mask");

    let emb = model.embed_frames(&frames, &mask).unwrap();
    let d = max_abs_diff(&emb, &r(&reference, "inputs_embeds"));
    eprintln!("inputs_embeds max |diff| {d:e}");
    assert!(d < 1e-5);

    let layer0 = model.backbone.layers[0]
        .forward(AttentionInput {
            x: &emb,
            mask: AttentionMask::Causal,
            cache: None,
        })
        .unwrap();
    let d = max_abs_diff(&layer0, &r(&reference, "backbone_layer0_out"));
    eprintln!("backbone_layer0_out max |diff| {d:e}");
    assert!(d < 1e-4);

    let h = model
        .backbone_hidden(FrameInput {
            tokens: &frames,
            mask: &mask,
            attention: AttentionMask::Causal,
        })
        .unwrap();
    let d = max_abs_diff(&h, &r(&reference, "backbone_hidden"));
    eprintln!("backbone_hidden max |diff| {d:e}");
    assert!(d < 1e-4);

    let c0 = model.c0_logits(&h).unwrap();
    let d = max_abs_diff(&c0, &r(&reference, "c0_logits"));
    eprintln!("c0_logits max |diff| {d:e}");
    assert!(d < 1e-3);

    for (frames_key, logits_key) in [
        ("depth_frames", "depth_logits"),
        ("depth_frames_all", "depth_logits_all"),
    ] {
        let t = r(&reference, frames_key).as_dtype(Dtype::Int32).unwrap();
        let h0 = h.index(0); // [S, D]
        let h_prev = h0
            .take_axis(t.subtract(Array::from_int(1)).unwrap(), 0)
            .unwrap();
        let codes = frames.index(0).take_axis(&t, 0).unwrap().index((.., ..8)); // [N, 8]
        let logits = model.depth_logits(&h_prev, &codes).unwrap();
        let d = max_abs_diff(&logits, &r(&reference, logits_key));
        eprintln!("{logits_key} max |diff| {d:e}");
        assert!(d < 1e-3);
    }
}

/// `loss_mask` from the expanded labels (codebook 0 not -100).
fn loss_mask_from_labels(labels: &Array) -> (Array, Vec<bool>) {
    let c0 = labels.index((.., .., 0));
    let m = c0.ne(Array::from_int(-100)).unwrap();
    let host: Vec<bool> = to_vec_i32(&c0).iter().map(|&v| v != -100).collect();
    (m, host)
}

#[test]
fn loss_matches_transformers() {
    let reference = reference();
    let mut model = hf_model();
    let frames = r(&reference, "frames");
    let mask = r(&reference, "frames_mask");
    let (loss_mask, host) = loss_mask_from_labels(&r(&reference, "labels"));
    let all = csm_core::model::loss_frame_indices(&host, 34);
    assert_eq!(
        all,
        to_vec_i32(&r(&reference, "depth_frames_all")),
        "loss frames are the depth frames at ratio 1"
    );
    for (frames_key, suffix) in [("depth_frames_all", ""), ("depth_frames_amort", "_amort")] {
        let decoder_frames = to_vec_i32(&r(&reference, frames_key));
        let loss = model
            .loss(
                &LossBatch {
                    tokens: &frames,
                    mask: &mask,
                    loss_mask: &loss_mask,
                    decoder_frames: &decoder_frames,
                    attention: AttentionMask::Causal,
                },
                LossWeights::default(),
            )
            .unwrap();
        let tag = |k: &str| format!("{k}{suffix}");
        assert_rel(
            scalar(&loss.semantic),
            scalar(&r(&reference, &tag("loss_backbone"))),
            1e-3,
            &tag("loss_backbone"),
        );
        assert_rel(
            scalar(&loss.acoustic),
            scalar(&r(&reference, &tag("loss_depth"))),
            1e-3,
            &tag("loss_depth"),
        );
        assert_rel(
            scalar(&loss.total),
            scalar(&r(&reference, &tag("loss_total"))),
            1e-3,
            &tag("loss_total"),
        );
    }
}

#[test]
fn padded_batch_matches_transformers() {
    let reference = reference();
    let mut model = hf_model();
    let frames = r(&reference, "frames_b2");
    let mask = r(&reference, "frames_mask_b2");
    let valid = r(&reference, "pad_mask_b2");
    let attention = padded_causal_mask(&valid).unwrap();
    let h = model
        .backbone_hidden(FrameInput {
            tokens: &frames,
            mask: &mask,
            attention: AttentionMask::Array(&attention),
        })
        .unwrap();
    // Reference zeroes padded positions: compare real frames only.
    let keep = valid
        .as_dtype(Dtype::Float32)
        .unwrap()
        .expand_dims(-1)
        .unwrap();
    let d = max_abs_diff(
        &h.multiply(&keep).unwrap(),
        &r(&reference, "backbone_hidden_b2").multiply(&keep).unwrap(),
    );
    eprintln!("backbone_hidden_b2 max |diff| {d:e}");
    assert!(d < 1e-4);
    let c0 = model.c0_logits(&h).unwrap();
    let d = max_abs_diff(
        &c0.multiply(&keep).unwrap(),
        &r(&reference, "c0_logits_b2").multiply(&keep).unwrap(),
    );
    assert!(d < 1e-3);

    let (loss_mask, host) = loss_mask_from_labels(&r(&reference, "labels_b2"));
    let frames_idx = csm_core::model::loss_frame_indices(&host, 34);
    assert_eq!(frames_idx.len(), 35);
    for attention in [AttentionMask::Array(&attention), AttentionMask::Causal] {
        let loss = model
            .loss(
                &LossBatch {
                    tokens: &frames,
                    mask: &mask,
                    loss_mask: &loss_mask,
                    decoder_frames: &frames_idx,
                    attention,
                },
                LossWeights::default(),
            )
            .unwrap();
        assert_rel(
            scalar(&loss.semantic),
            scalar(&r(&reference, "loss_backbone_b2")),
            1e-3,
            "loss_backbone_b2",
        );
        assert_rel(
            scalar(&loss.acoustic),
            scalar(&r(&reference, "loss_depth_b2")),
            1e-3,
            "loss_depth_b2",
        );
        assert_rel(
            scalar(&loss.total),
            scalar(&r(&reference, "loss_total_b2")),
            1e-3,
            "loss_total_b2",
        );
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    let reference = reference();
    let mut model = hf_model();
    let prompt_len = to_vec_i32(&r(&reference, "gen_prompt_len"))[0];
    let frames = r(&reference, "frames").index((.., ..prompt_len, ..));
    let mask = r(&reference, "frames_mask").index((.., ..prompt_len, ..));
    let want = r(&reference, "gen_frames"); // [1, 4, 8]
    let mut cache = model.new_backbone_cache();
    let mut h = model.backbone_step(&frames, &mask, &mut cache).unwrap();
    let mut greedy = |logits: &Array, _cb: i32| argmax_axis(logits, -1, None);
    let mut got = Vec::new();
    for _ in 0..want.shape()[1] {
        let codes = model.generate_frame(&h, &mut greedy).unwrap(); // [1, 8]
        let (tokens, mask) = model.audio_frame(&codes).unwrap();
        h = model.backbone_step(&tokens, &mask, &mut cache).unwrap();
        got.push(codes);
    }
    let got = ops::stack(&got, 1).unwrap(); // [1, 4, 8]
    assert_eq!(to_vec_i32(&got), to_vec_i32(&want));
}

#[test]
fn bf16_load_stays_close_to_the_f32_reference() {
    let reference = reference();
    let loaded = load_csm(
        &fixtures().join("csm_tiny_hf"),
        &LoadOptions {
            dtype: Dtype::Bfloat16,
            config: None,
        },
    )
    .unwrap();
    let mut model = loaded.model;
    assert_eq!(model.dtype(), Dtype::Bfloat16);
    let h = model
        .backbone_hidden(FrameInput {
            tokens: &r(&reference, "frames"),
            mask: &r(&reference, "frames_mask"),
            attention: AttentionMask::Causal,
        })
        .unwrap();
    assert_eq!(h.dtype(), Dtype::Bfloat16);
    let got = h
        .as_dtype(Dtype::Float32)
        .unwrap()
        .flatten(None, None)
        .unwrap();
    let want = r(&reference, "backbone_hidden")
        .flatten(None, None)
        .unwrap();
    let dot = |a: &Array, b: &Array| a.multiply(b).unwrap().sum(None).unwrap().item_cast::<f32>();
    let cosine = dot(&got, &want) / (dot(&got, &got).sqrt() * dot(&want, &want).sqrt());
    eprintln!("bf16 backbone_hidden cosine {cosine}");
    assert!(cosine > 0.999, "cosine {cosine}");
}
