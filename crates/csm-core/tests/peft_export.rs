//! Our PEFT-layout export, checked two ways: here, it reloads through our
//! own loader to the same outputs; and it writes `target/peft-check/` for
//! `bench/peer/check_peft.py`, which loads it in PyPI peft + transformers and
//! compares the logits (needs torch, so it is run beside the fixtures, not
//! in CI; its result is recorded in bench/peer/README.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use csm_core::adapter::TargetLayers;
use csm_core::adapter::{self, LoraSpec};
use csm_core::checkpoint::write::save_safetensors;
use csm_core::checkpoint::WeightMap;
use csm_core::mlx_rs::module::ModuleParameters;
use csm_core::mlx_rs::{random, Array, Dtype};
use csm_core::model::load::{load_csm, LoadOptions};
use csm_core::model::{AttentionMask, FrameInput};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn peft_export_is_written_for_the_python_check() {
    let mut loaded = load_csm(&fixtures().join("csm_tiny_hf"), &LoadOptions::default()).unwrap();
    let spec = LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        modules: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
        layers: TargetLayers::all(),
        bias: false,
    };
    random::seed(21).unwrap();
    adapter::attach(&mut loaded.model, &spec).unwrap();
    // Non-zero B everywhere, so the check proves something.
    let mut update = std::collections::HashMap::new();
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

    let reference =
        WeightMap::from_safetensors(&[fixtures().join("csm_tiny_ref.safetensors")], None).unwrap();
    let frames = reference.tensors["frames"].clone();
    let mask = reference.tensors["frames_mask"]
        .as_dtype(Dtype::Float32)
        .unwrap();
    let h = loaded
        .model
        .backbone_hidden(FrameInput {
            tokens: &frames,
            mask: &mask,
            attention: AttentionMask::Causal,
        })
        .unwrap();
    let logits = loaded.model.c0_logits(&h).unwrap();

    let out =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("peft-check-{}", std::process::id()));
    let adapter_dir = out.join("adapter");
    adapter::save_peft(
        &adapter_dir,
        &loaded.model,
        &spec,
        &loaded.model.config,
        Some(&fixtures().join("csm_tiny_hf")),
    )
    .unwrap();
    let expected = BTreeMap::from([
        ("backbone_hidden".to_string(), h.clone()),
        ("c0_logits".to_string(), logits.clone()),
    ]);
    save_safetensors(
        &out.join("expected.safetensors"),
        &expected,
        &Default::default(),
    )
    .unwrap();
    // Stable location for the Python check (latest run wins).
    let stable = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peft-check");
    let _ = std::fs::remove_dir_all(&stable);
    let _ = std::fs::rename(&out, &stable);

    let peft =
        WeightMap::from_safetensors(&[stable.join("adapter/adapter_model.safetensors")], None)
            .unwrap();
    // 2 stacks x 2 layers x 7 projections x (A, B)
    assert_eq!(peft.tensors.len(), 2 * 2 * 7 * 2);
    let key = "base_model.model.backbone_model.layers.0.self_attn.q_proj.lora_A.weight";
    assert_eq!(peft.tensors[key].shape(), &[4, 64]);
    let key = "base_model.model.depth_decoder.model.layers.1.mlp.down_proj.lora_B.weight";
    assert_eq!(peft.tensors[key].shape(), &[48, 4]);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(stable.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["r"], 4);
    assert_eq!(config["peft_type"], "LORA");
}
