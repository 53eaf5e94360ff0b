//! Our PEFT-layout export holds the values peft expects, checked two ways
//! without Python:
//!
//! - tensor by tensor: `lora_A = a^T`, `lora_B = b^T`, with the q/k rows of
//!   `lora_B` in transformers' rotate-half order, computed here by an index
//!   map of our own;
//! - as peft uses it: the PEFT tensors merged into the transformers
//!   checkpoint (`W + alpha/r * B A`, names and all) and loaded back give
//!   the backbone and depth-decoder outputs of our model with the adapter.
//!
//! It also writes `target/tmp/peft-check/` for `bench/peer/check_peft.py`,
//! which loads the export in PyPI peft + transformers (needs torch, so it is
//! run beside the fixtures, not in CI; its result is recorded in
//! bench/peer/README.md).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

mod common;
use common::{max_abs, max_abs_diff};

use csm_core::adapter::{self, LoraSpec, TargetLayers};
use csm_core::checkpoint::write::save_safetensors;
use csm_core::checkpoint::WeightMap;
use csm_core::mlx_rs::module::ModuleParameters;
use csm_core::mlx_rs::ops::indexing::IndexOp;
use csm_core::mlx_rs::{ops, random, Array, Dtype};
use csm_core::model::load::{load_csm, LoadOptions};
use csm_core::model::{AttentionMask, Csm, FrameInput};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn spec() -> LoraSpec {
    LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        modules: adapter::ALL_MODULES.map(String::from).to_vec(),
        layers: TargetLayers::all(),
        bias: false,
    }
}

/// The tiny transformers model with a random adapter on every projection
/// of both stacks (B non-zero, so every tensor matters).
fn adapted_model() -> Csm {
    let mut loaded = load_csm(&fixtures().join("csm_tiny_hf"), &LoadOptions::default()).unwrap();
    random::seed(21).unwrap();
    adapter::attach(&mut loaded.model, &spec()).unwrap();
    let mut update = HashMap::new();
    for (k, v) in adapter::adapter_tensors(&loaded.model) {
        if k.ends_with("lora_b") {
            let b = random::normal::<f32>(v.shape(), None, None, None)
                .unwrap()
                .multiply(Array::from_f32(0.05))
                .unwrap();
            update.insert(std::rc::Rc::from(k.as_str()), b);
        }
    }
    loaded.model.update_flattened(update);
    loaded.model
}

/// Backbone states, codebook-0 logits and depth-decoder logits of every
/// depth frame of `csm_tiny_ref`.
fn outputs(model: &mut Csm) -> BTreeMap<String, Array> {
    let reference =
        WeightMap::from_safetensors(&[fixtures().join("csm_tiny_ref.safetensors")], None).unwrap();
    let frames = reference.tensors["frames"].clone();
    let mask = reference.tensors["frames_mask"]
        .as_dtype(Dtype::Float32)
        .unwrap();
    let h = model
        .backbone_hidden(FrameInput {
            tokens: &frames,
            mask: &mask,
            attention: AttentionMask::Causal,
        })
        .unwrap(); // [1, S, D]
    let c0 = model.c0_logits(&h).unwrap();
    let t = reference.tensors["depth_frames_all"]
        .as_dtype(Dtype::Int32)
        .unwrap();
    let h_prev = h
        .index(0)
        .take_axis(t.subtract(Array::from_int(1)).unwrap(), 0)
        .unwrap(); // [N, D]
    let codes = frames.index(0).take_axis(&t, 0).unwrap().index((.., ..8)); // [N, 8]
    let depth = model.depth_logits(&h_prev, &codes).unwrap(); // [N, 7, V]
    BTreeMap::from([
        ("backbone_hidden".to_string(), h),
        ("c0_logits".to_string(), c0),
        ("depth_logits_all".to_string(), depth),
    ])
}

/// The PEFT name of one of our adapter tensors.
fn peft_name(ours: &str) -> String {
    let (prefix, part) = ours.rsplit_once('.').unwrap();
    let prefix = prefix.replacen("backbone.", "backbone_model.", 1).replacen(
        "decoder.",
        "depth_decoder.model.",
        1,
    );
    let part = match part {
        "lora_a" => "lora_A.weight",
        "lora_b" => "lora_B.weight",
        other => panic!("unexpected adapter tensor {other}"),
    };
    format!("base_model.model.{prefix}.{part}")
}

/// For each row of a q/k projection in transformers' rotate-half order,
/// the row of the interleaved (original) order it holds: within a head,
/// the first half takes the even rows, the second half the odd ones.
fn rotate_half_rows(heads: usize, head_dim: usize) -> Vec<usize> {
    let mut rows = Vec::with_capacity(heads * head_dim);
    for h in 0..heads {
        for half in 0..2 {
            for j in 0..head_dim / 2 {
                rows.push(h * head_dim + 2 * j + half);
            }
        }
    }
    rows
}

fn host(a: &Array) -> (Vec<usize>, Vec<f32>) {
    let a = a.as_dtype(Dtype::Float32).unwrap().contiguous().unwrap();
    let shape = a.shape().iter().map(|&d| d as usize).collect();
    (shape, a.as_slice::<f32>().to_vec())
}

/// `a^T` of a 2-D host matrix, rows picked by `rows` (all when `None`).
fn transposed(shape: &[usize], v: &[f32], rows: Option<&[usize]>) -> Vec<f32> {
    let (n, m) = (shape[0], shape[1]); // transposed: [m, n]
    let order: Vec<usize> = rows.map_or_else(|| (0..m).collect(), <[usize]>::to_vec);
    order
        .iter()
        .flat_map(|&r| (0..n).map(move |c| v[c * m + r]))
        .collect()
}

/// Writes the PEFT export of `model` into `dir`.
fn export(model: &Csm, dir: &Path) -> WeightMap {
    adapter::save_peft(
        dir,
        model,
        &spec(),
        &model.config,
        Some(&fixtures().join("csm_tiny_hf")),
    )
    .unwrap();
    WeightMap::from_safetensors(&[dir.join("adapter_model.safetensors")], None).unwrap()
}

#[test]
fn peft_tensors_are_our_adapter_in_transformers_layout() {
    let model = adapted_model();
    let dir = tempfile::tempdir().unwrap();
    let peft = export(&model, dir.path());
    let ours = adapter::adapter_tensors(&model);
    assert_eq!(
        peft.tensors.len(),
        ours.len(),
        "one PEFT tensor per adapter tensor"
    );
    // (heads, head_dim) of the q and k rows.
    let qk = |name: &str| -> Option<(usize, usize)> {
        let c = &model.config;
        let stack = if name.starts_with("backbone.") {
            &c.backbone
        } else {
            &c.decoder
        };
        let hd = stack.head_dim as usize;
        if name.contains("q_proj.lora_b") {
            Some((stack.num_heads as usize, hd))
        } else if name.contains("k_proj.lora_b") {
            Some((stack.num_kv_heads as usize, hd))
        } else {
            None
        }
    };
    let mut permuted = 0;
    for (name, value) in &ours {
        let key = peft_name(name);
        let got = peft
            .tensors
            .get(&key)
            .unwrap_or_else(|| panic!("{key} missing from the export"));
        let (shape, v) = host(value);
        let rows = qk(name).map(|(h, hd)| rotate_half_rows(h, hd));
        permuted += usize::from(rows.is_some());
        let want = transposed(&shape, &v, rows.as_deref());
        let (got_shape, got) = host(got);
        assert_eq!(got_shape, [shape[1], shape[0]], "{key}: shape");
        assert_eq!(got, want, "{key}: values");
    }
    // q and k of 2 + 2 layers.
    assert_eq!(permuted, 8);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (config["r"].as_u64(), config["lora_alpha"].as_f64()),
        (Some(4), Some(8.0))
    );
    assert_eq!(config["peft_type"], "LORA");
}

/// The transformers checkpoint with PEFT `tensors` merged in as peft
/// merges them (`W + alpha/r * B A` on the checkpoint's own names), loaded.
fn merged_model(tensors: &BTreeMap<String, Array>, scale: f32) -> Csm {
    let base_dir = fixtures().join("csm_tiny_hf");
    let mut base =
        WeightMap::from_safetensors(&[base_dir.join("model.safetensors")], None).unwrap();
    let mut merged_count = 0;
    for (key, a) in tensors {
        let Some(module) = key.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let b = &tensors[&format!("{module}.lora_B.weight")];
        let weight = format!(
            "{}.weight",
            module.strip_prefix("base_model.model.").unwrap()
        );
        let w = base
            .tensors
            .get(&weight)
            .unwrap_or_else(|| panic!("{key}: the checkpoint has no {weight}"));
        let delta = ops::matmul(b, a)
            .unwrap()
            .multiply(Array::from_f32(scale))
            .unwrap(); // [out, in]
        let w = w.add(&delta).unwrap();
        base.tensors.insert(weight, w);
        merged_count += 1;
    }
    assert_eq!(merged_count, 2 * 2 * 7, "one merge per adapted projection");
    let dir = tempfile::tempdir().unwrap();
    save_safetensors(
        &dir.path().join("model.safetensors"),
        &base.tensors,
        &HashMap::from([("format".to_string(), "pt".to_string())]),
    )
    .unwrap();
    std::fs::copy(base_dir.join("config.json"), dir.path().join("config.json")).unwrap();
    load_csm(dir.path(), &LoadOptions::default()).unwrap().model
}

#[test]
fn peft_export_merged_into_the_transformers_checkpoint_gives_our_outputs() {
    let mut model = adapted_model();
    let ours = outputs(&mut model);

    let out =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("peft-check-{}", std::process::id()));
    let peft = export(&model, &out.join("adapter"));
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let scale = (config["lora_alpha"].as_f64().unwrap() / config["r"].as_f64().unwrap()) as f32;

    let theirs = outputs(&mut merged_model(&peft.tensors, scale));
    let mut plain = load_csm(&fixtures().join("csm_tiny_hf"), &LoadOptions::default())
        .unwrap()
        .model;
    let base_out = outputs(&mut plain);
    // Control: the q/k rows of lora_B left in our (interleaved) order, as an
    // export without the permutation would write them.
    let mut unpermuted = peft.tensors.clone();
    for (name, b) in adapter::adapter_tensors(&model) {
        if name.contains("_proj.lora_b") && (name.contains("q_proj") || name.contains("k_proj")) {
            unpermuted.insert(peft_name(&name), b.t());
        }
    }
    let wrong = outputs(&mut merged_model(&unpermuted, scale));
    for (name, want) in &ours {
        let d = max_abs_diff(&theirs[name], want);
        let moved = max_abs_diff(&base_out[name], want);
        let d_wrong = max_abs_diff(&wrong[name], want);
        eprintln!(
            "{name}: merged PEFT vs ours {d:e}; the adapter moves it by {moved:e}; \
             unpermuted q/k rows miss by {d_wrong:e}"
        );
        assert!(d < 1e-4 * max_abs(want).max(1.0), "{name}: {d:e}");
        assert!(
            moved > 1e3 * d.max(1e-6),
            "{name}: the adapter changes too little to tell"
        );
        assert!(
            d_wrong > 1e2 * d.max(1e-6),
            "{name}: a wrong q/k order would pass"
        );
    }

    // Stable location for the Python check (latest run wins).
    save_safetensors(&out.join("expected.safetensors"), &ours, &HashMap::new()).unwrap();
    let stable = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peft-check");
    let _ = std::fs::remove_dir_all(&stable);
    let _ = std::fs::rename(&out, &stable);
}
