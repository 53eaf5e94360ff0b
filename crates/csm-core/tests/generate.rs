//! Generation on the tiny random model of `tests/fixtures` (see its
//! `MANIFEST.md`): greedy parity with transformers, seeding, EOS, prompt
//! layout, decoding length, adapters, and the library-level happy path with
//! a hand-made word-level tokenizer whose ids fit the tiny text vocabulary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod common;
use common::max_abs_diff;

use csm_core::adapter::load_mlx;
use csm_core::checkpoint::WeightMap;
use csm_core::generate::{
    check_text_ids, generate_frames, FrameOptions, GenerateError, GenerateHooks, Generator, Guards,
    LengthRule, PromptFrames, SamplingConfig, Segment, StopReason,
};
use csm_core::model::proj::Proj;
use csm_core::model::{load_csm, Csm, LoadOptions};
use csm_core::tokenizer::TextTokenizer;
use mlx_rs::module::Param;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, random, Array, Dtype};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn reference() -> WeightMap {
    WeightMap::from_safetensors(&[fixtures().join("csm_tiny_ref.safetensors")], None).unwrap()
}

fn r(map: &WeightMap, key: &str) -> Array {
    map.tensors[key].clone()
}

fn to_vec_i32(a: &Array) -> Vec<i32> {
    let a = a.as_dtype(Dtype::Int32).unwrap();
    a.eval().unwrap();
    a.as_slice::<i32>().to_vec()
}

fn tiny() -> Csm {
    load_csm(&fixtures().join("csm_tiny_hf"), &LoadOptions::default())
        .unwrap()
        .model
}

/// The reference prompt: segment A complete + segment B's text (24 frames).
fn prompt(reference: &WeightMap) -> (Array, Array) {
    let len = to_vec_i32(&r(reference, "gen_prompt_len"))[0];
    (
        r(reference, "frames").index((.., ..len, ..)),
        r(reference, "frames_mask").index((.., ..len, ..)),
    )
}

fn run(csm: &mut Csm, cfg: &SamplingConfig, frames: usize, eos: bool) -> (Vec<Vec<i32>>, bool) {
    let reference = reference();
    let (tokens, mask) = prompt(&reference);
    let options = FrameOptions {
        max_frames: frames,
        stop_on_eos: eos,
        code_limit: None,
    };
    let out =
        generate_frames(csm, &tokens, &mask, cfg, &options, GenerateHooks::default()).unwrap();
    (out.codes, out.stopped_on_eos)
}

fn greedy() -> SamplingConfig {
    SamplingConfig {
        top_k: 1,
        ..SamplingConfig::default()
    }
}

#[test]
fn greedy_frames_match_transformers() {
    let want = to_vec_i32(&r(&reference(), "gen_frames")); // [1, 4, 8]
    let mut csm = tiny();
    let mut seen = 0;
    let mut count = |p: &csm_core::generate::FrameProgress| {
        seen += 1;
        assert_eq!((p.frames, p.max_frames), (seen, 4));
    };
    let reference = reference();
    let (tokens, mask) = prompt(&reference);
    let options = FrameOptions {
        max_frames: 4,
        stop_on_eos: false,
        code_limit: None,
    };
    let out = generate_frames(
        &mut csm,
        &tokens,
        &mask,
        &greedy(),
        &options,
        GenerateHooks {
            progress: Some(&mut count),
            cancel: None,
            stop: None,
        },
    )
    .unwrap();
    assert_eq!(seen, 4);
    assert!(!out.stopped_on_eos);
    let got: Vec<i32> = out.codes.into_iter().flatten().collect();
    assert_eq!(got, want);
    // Temperature 0 is greedy too.
    let cfg = SamplingConfig {
        temperature: 0.0,
        ..SamplingConfig::default()
    };
    let (codes, _) = run(&mut csm, &cfg, 4, false);
    assert_eq!(codes.into_iter().flatten().collect::<Vec<_>>(), want);
}

#[test]
fn prompt_frames_follow_the_reference_layout() {
    let reference = reference();
    let (tokens, mask) = prompt(&reference);
    let frames = r(&reference, "frames");
    // Segment A audio = frames 7..17, codes in columns 0..8.
    let audio = to_vec_i32(&frames.index((0, 7..17, ..8)));
    let audio: Vec<Vec<i32>> = audio.chunks(8).map(<[i32]>::to_vec).collect();
    let mut p = PromptFrames::new(8);
    p.push_text(&[1, 36, 70, 22, 283, 171, 2]);
    p.push_audio(&audio).unwrap();
    p.push_eos();
    p.push_text(&[1, 56, 271, 15, 5, 2]);
    assert_eq!(p.len(), 24);
    let (t, m) = p.to_arrays();
    assert_eq!(to_vec_i32(&t), to_vec_i32(&tokens));
    assert_eq!(to_vec_i32(&m), to_vec_i32(&mask));
    assert!(p.push_audio(&[vec![1, 2, 3]]).is_err());
}

#[test]
fn same_seed_same_output_other_seed_differs() {
    let mut csm = tiny();
    let cfg = |seed| SamplingConfig {
        temperature: 1.0,
        top_k: 50,
        seed,
        ..SamplingConfig::default()
    };
    let (a, _) = run(&mut csm, &cfg(1), 6, false);
    let (b, _) = run(&mut csm, &cfg(1), 6, false);
    let (c, _) = run(&mut csm, &cfg(2), 6, false);
    assert_eq!(a.len(), 6);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn all_zero_frame_stops_generation() {
    // Zero heads make every logit equal; argmax then picks code 0 for every
    // codebook, i.e. the EOS frame.
    let mut csm = tiny();
    let w = csm.codebook0_head.weight.value.clone();
    csm.codebook0_head.weight = Param::new(ops::zeros_like(&w).unwrap());
    let h = csm.audio_head.value.clone();
    csm.audio_head = Param::new(ops::zeros_like(&h).unwrap());
    let cfg = SamplingConfig {
        temperature: 0.0,
        ..SamplingConfig::default()
    };
    let (codes, stopped) = run(&mut csm, &cfg, 5, true);
    assert!(stopped);
    assert!(codes.is_empty(), "the EOS frame is not part of the output");
    // Without the EOS rule the zero frames are generated up to the cap.
    let (codes, stopped) = run(&mut csm, &cfg, 5, false);
    assert!(!stopped);
    assert_eq!(codes, vec![vec![0; 8]; 5]);
}

#[test]
fn prompt_longer_than_the_context_allows_is_refused() {
    let mut csm = tiny();
    let reference = reference();
    let (tokens, mask) = prompt(&reference);
    let options = FrameOptions {
        max_frames: 2048 - 24,
        stop_on_eos: true,
        code_limit: None,
    };
    let err = generate_frames(
        &mut csm,
        &tokens,
        &mask,
        &SamplingConfig::default(),
        &options,
        GenerateHooks::default(),
    )
    .unwrap_err();
    assert!(matches!(err, GenerateError::PromptTooLong { .. }), "{err}");
    assert!(err.to_string().contains("24 frames"), "{err}");
    assert_eq!(SamplingConfig::default().max_frames(), 1125);
}

#[test]
fn text_ids_outside_the_vocabulary_are_refused() {
    assert!(check_text_ids(&[1, 299], 300, "x").is_ok());
    let err = check_text_ids(&[1, 128_000, 2], 300, "the target text").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("128000") && msg.contains("300"), "{msg}");
}

// ---------------------------------------------------------------- adapters

fn write_adapter(
    dir: &Path,
    tensors: HashMap<String, Array>,
    rank: i32,
    targets: &[&str],
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    Array::save_safetensors(tensors, None, dir.join("adapters.safetensors")).unwrap();
    let config = serde_json::json!({
        "lora_parameters": {"rank": rank, "scale": 4.0, "dropout": 0.0},
        "target_modules": targets,
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    dir.to_path_buf()
}

fn lora_pair(proj: &Proj, rank: i32, zero_b: bool) -> (Array, Array) {
    let (out, input) = proj.dims();
    let a = random::normal::<f32>(&[input, rank], None, None, None).unwrap();
    let b = if zero_b {
        ops::zeros::<f32>(&[rank, out]).unwrap()
    } else {
        random::normal::<f32>(&[rank, out], None, None, None).unwrap()
    };
    (a, b)
}

fn adapter_tensors(csm: &Csm, zero_b: bool) -> HashMap<String, Array> {
    random::seed(3).unwrap();
    let mut t = HashMap::new();
    for (name, proj) in [
        (
            "backbone.layers.0.self_attn.q_proj",
            &csm.backbone.layers[0].self_attn.q_proj,
        ),
        (
            "backbone.layers.1.mlp.down_proj",
            &csm.backbone.layers[1].mlp.down_proj,
        ),
        (
            "decoder.layers.0.mlp.down_proj",
            &csm.decoder.layers[0].mlp.down_proj,
        ),
    ] {
        let (a, b) = lora_pair(proj, 4, zero_b);
        t.insert(format!("{name}.lora_a"), a);
        t.insert(format!("{name}.lora_b"), b);
    }
    t
}

fn c0_logits(csm: &mut Csm) -> Array {
    let reference = reference();
    let (tokens, mask) = prompt(&reference);
    let mut cache = csm.new_backbone_cache();
    let h = csm.backbone_step(&tokens, &mask, &mut cache).unwrap();
    csm.c0_logits(&h).unwrap()
}

#[test]
fn adapter_with_zero_b_changes_nothing_and_nonzero_b_changes_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = tiny();
    let (base_codes, _) = run(&mut base, &greedy(), 4, false);
    let base_logits = c0_logits(&mut base);

    let targets = ["q_proj", "down_proj"];
    let zero = write_adapter(
        &dir.path().join("zero"),
        adapter_tensors(&base, true),
        4,
        &targets,
    );
    let mut m = tiny();
    let info = load_mlx(&mut m, &zero).unwrap();
    assert_eq!(info.projections.len(), 3);
    assert_eq!((info.rank, info.scale), (4, 4.0));
    assert!(m.backbone.layers[0].self_attn.q_proj.has_lora());
    assert!(!m.backbone.layers[0].self_attn.k_proj.has_lora());
    assert_eq!(run(&mut m, &greedy(), 4, false).0, base_codes);
    let d = max_abs_diff(&c0_logits(&mut m), &base_logits);
    assert_eq!(d, 0.0);
    // Applying a second adapter on top is refused.
    let err = load_mlx(&mut m, &zero).unwrap_err();
    assert!(
        err.to_string().contains("already carries an adapter"),
        "{err}"
    );

    let nonzero = write_adapter(
        &dir.path().join("nonzero"),
        adapter_tensors(&base, false),
        4,
        &targets,
    );
    let mut m = tiny();
    // The weights file may be named directly.
    load_mlx(&mut m, &nonzero.join("adapters.safetensors")).unwrap();
    let d = max_abs_diff(&c0_logits(&mut m), &base_logits);
    assert!(d > 1e-2, "logits moved by only {d}");
    assert_ne!(run(&mut m, &greedy(), 4, false).0, base_codes);
}

#[test]
fn malformed_adapter_is_refused_with_a_listing() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny();
    let mut t = adapter_tensors(&base, false);
    // Wrong shape, missing half, unknown projection, unknown parameter.
    t.insert(
        "backbone.layers.0.self_attn.q_proj.lora_a".into(),
        ops::zeros::<f32>(&[64, 3]).unwrap(),
    );
    t.remove("decoder.layers.0.mlp.down_proj.lora_b");
    t.insert(
        "backbone.layers.7.self_attn.q_proj.lora_a".into(),
        ops::zeros::<f32>(&[64, 4]).unwrap(),
    );
    t.insert(
        "backbone.layers.1.mlp.down_proj.magnitude".into(),
        ops::zeros::<f32>(&[64]).unwrap(),
    );
    let path = write_adapter(&dir.path().join("bad"), t, 4, &["q_proj"]);
    let mut m = tiny();
    let err = load_mlx(&mut m, &path).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    for needle in [
        "backbone.layers.0.self_attn.q_proj.lora_a`: shape [64, 3], expected [64, 4]",
        "decoder.layers.0.mlp.down_proj.lora_b`: missing",
        "backbone.layers.7.self_attn.q_proj`: no such projection",
        "backbone.layers.1.mlp.down_proj.magnitude`: unexpected parameter",
        "`down_proj` is not in target_modules",
    ] {
        assert!(msg.contains(needle), "missing `{needle}` in:\n{msg}");
    }
    // Nothing was attached.
    assert!(!m.backbone.layers[1].mlp.down_proj.has_lora());

    // Config problems name the file.
    let no_config = dir.path().join("no_config");
    std::fs::create_dir_all(&no_config).unwrap();
    let err = load_mlx(&mut m, &no_config).unwrap_err();
    assert!(err.to_string().contains("adapter_config.json"), "{err}");
    let bad_config = write_adapter(
        &dir.path().join("bad_config"),
        adapter_tensors(&base, true),
        4,
        &[],
    );
    std::fs::write(
        bad_config.join("adapter_config.json"),
        r#"{"lora_parameters": {"rank": 4}}"#,
    )
    .unwrap();
    let err = load_mlx(&mut m, &bad_config).unwrap_err();
    assert!(err.to_string().contains("lora_parameters.scale"), "{err}");
}

// -------------------------------------------------- Generator (tokenizer)

/// A word-level `tokenizer.json` with the Llama-3 special tokens at
/// `base + 1` / `base + 2` and words from `base + 5` on.
fn word_tokenizer(path: &Path, base: u32) {
    let words = [
        "[", "]", "0", "1", "2", "hello", "there", "how", "are", "you", ".", "?",
    ];
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), (base + 3).into());
    for (i, w) in words.iter().enumerate() {
        vocab.insert((*w).into(), (base + 5 + i as u32).into());
    }
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    vocab.insert("<|begin_of_text|>".into(), (base + 1).into());
    vocab.insert("<|end_of_text|>".into(), (base + 2).into());
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(base + 1, "<|begin_of_text|>"), special(base + 2, "<|end_of_text|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(path, json.to_string()).unwrap();
}

fn sine(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| 0.3 * (i as f32 * 440.0 * std::f32::consts::TAU / 24_000.0).sin())
        .collect()
}

#[test]
fn generator_speaks_and_decodes_hop_times_frames() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    word_tokenizer(&tok, 0);
    let t = TextTokenizer::from_file(&tok).unwrap();
    assert_eq!(
        t.encode_segment(0, "hello there").unwrap(),
        vec![1, 5, 7, 6, 10, 11, 2]
    );

    // The transformers dir carries the codec; the tokenizer is passed.
    let mut gen = Generator::load(
        &fixtures().join("csm_tiny_hf"),
        None,
        Some(&tok),
        Dtype::Float32,
    )
    .unwrap();
    let hop = gen.mimi.hop_length();
    assert_eq!(hop, 16);
    let context = [Segment {
        speaker: 1,
        text: "how are you?".into(),
        audio: Some(sine(200)),
    }];
    // 13 frames of audio (ceil(200 / 16)) + text frames.
    let prompt = gen.prompt(&context, "hello there.", 0).unwrap();
    assert_eq!(prompt.len(), 9 + 13 + 1 + 8);
    // The reference's behaviour (no guards): to EOS or the cap, every
    // frame decoded.
    let cfg = SamplingConfig {
        seed: 5,
        max_audio_ms: 8 * 80,
        guards: Guards::off(),
        ..SamplingConfig::default()
    };
    let mut frames_seen = 0;
    let mut progress = |p: &csm_core::generate::FrameProgress| frames_seen = p.frames;
    let out = gen
        .generate_with(
            &context,
            "hello there.",
            0,
            &cfg,
            GenerateHooks {
                progress: Some(&mut progress),
                cancel: None,
                stop: None,
            },
        )
        .unwrap();
    assert!(out.frames <= 8);
    assert_eq!(out.frames, out.codes.len());
    assert_eq!(frames_seen, out.frames);
    assert_eq!(out.stopped_on_eos, out.frames < 8);
    assert_eq!(out.audio.len(), hop * out.frames);
    assert!(out.audio.iter().all(|s| s.is_finite()));
    // Codes stay within the codec's 64 entries (the model has 67 ids).
    assert!(out.codes.iter().flatten().all(|&c| (0..64).contains(&c)));
    // Deterministic per seed.
    let again = gen.generate(&context, "hello there.", 0, &cfg).unwrap();
    assert_eq!(again.codes, out.codes);
    assert_eq!(gen.decode(&out.codes).unwrap().len(), hop * out.frames);

    // A context segment without audio is refused.
    let err = gen
        .generate(
            &[Segment {
                speaker: 1,
                text: "hello".into(),
                audio: None,
            }],
            "hello",
            0,
            &cfg,
        )
        .unwrap_err();
    assert!(err.to_string().contains("has no audio"), "{err}");

    // The length rule caps a sample that does not end by itself, and says
    // so; max_audio_ms below it is named instead.
    let capped = SamplingConfig {
        guards: Guards {
            length_from_text: Some(LengthRule {
                base_s: 0.16,
                per_char_s: 0.0,
            }),
            ..Guards::off()
        },
        ..cfg.clone()
    };
    let out = gen.generate(&context, "hello there.", 0, &capped).unwrap();
    if out.stopped_on_eos {
        assert_eq!(out.stop_reason, StopReason::Eos);
        assert!(out.frames < 2);
    } else {
        assert_eq!((out.frames, out.stop_reason), (2, StopReason::LengthLimit));
        assert!(!out.stop_reason.is_healthy());
    }
    let short = SamplingConfig {
        max_audio_ms: 80,
        ..capped
    };
    let out = gen.generate(&context, "hello there.", 0, &short).unwrap();
    assert!(out.stopped_on_eos || out.stop_reason == StopReason::MaxAudio);
}

#[test]
fn generator_refuses_a_tokenizer_beyond_the_text_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    word_tokenizer(&tok, 128_000);
    let mut gen = Generator::load(
        &fixtures().join("csm_tiny_hf"),
        None,
        Some(&tok),
        Dtype::Float32,
    )
    .unwrap();
    let err = gen
        .generate(&[], "hello", 0, &SamplingConfig::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            GenerateError::TextTokenOutOfRange {
                token: 128_001,
                text_vocab: 300,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_tokenizer_and_codec_list_where_we_looked() {
    let err =
        Generator::load(&fixtures().join("csm_tiny_hf"), None, None, Dtype::Float32).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("tokenizer/tokenizer.json"),
        "{msg}"
    );
    // An original-layout file has no codec inside and none beside it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("csm_tiny_original.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("csm_tiny_hf/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let err = Generator::load(dir.path(), None, None, Dtype::Float32).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer-e351c8d8-checkpoint125.safetensors") && msg.contains("mimi"),
        "{msg}"
    );
    // With --mimi-path it finds the codec; then the tokenizer is missing.
    let err = Generator::load(
        dir.path(),
        Some(&fixtures().join("mimi_tiny_hf")),
        None,
        Dtype::Float32,
    )
    .unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn adapters_saved_by_the_trainer_load_for_generation() {
    use csm_core::adapter::{adapter_tensors, attach, save_mlx, LoraSpec};
    use csm_core::adapter::{LayerSet, TargetLayers};
    use mlx_rs::module::ModuleParameters;

    let spec = LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        modules: vec!["q_proj".into(), "down_proj".into()],
        layers: TargetLayers {
            backbone: LayerSet::All,
            decoder: LayerSet::Some(vec![1]),
        },
        bias: false,
    };
    let mut trained = tiny();
    attach(&mut trained, &spec).unwrap();
    random::seed(11).unwrap();
    let update = adapter_tensors(&trained)
        .into_iter()
        .filter(|(k, _)| k.ends_with(".lora_b"))
        .map(|(k, v)| {
            let b = random::normal::<f32>(v.shape(), None, None, None).unwrap();
            (std::rc::Rc::from(k.as_str()), b)
        })
        .collect();
    trained.update_flattened(update);
    let dir = tempfile::tempdir().unwrap();
    save_mlx(dir.path(), &trained, &spec, None).unwrap();

    let mut ours = tiny();
    let info = load_mlx(&mut ours, dir.path()).unwrap();
    // q_proj + down_proj in both backbone layers and decoder layer 1.
    assert_eq!(info.projections.len(), 6);
    assert_eq!((info.rank, info.scale), (4, 2.0));
    let mut theirs = tiny();
    load_mlx(&mut theirs, dir.path()).unwrap();
    let a = c0_logits(&mut ours);
    let b = c0_logits(&mut theirs);
    let d = max_abs_diff(&a, &b);
    assert_eq!(d, 0.0);
    assert_eq!(
        run(&mut ours, &greedy(), 4, false).0,
        run(&mut theirs, &greedy(), 4, false).0
    );
    let base = c0_logits(&mut tiny());
    let moved = max_abs_diff(&a, &base);
    assert!(moved > 1e-3, "{moved}");
}
