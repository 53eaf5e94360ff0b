//! Loading Mimi checkpoints: detect the naming scheme, sanitize names and
//! layouts into this crate's parameter names, then [`load_strict`].
//!
//! Supported layouts:
//! * **kyutai** (`tokenizer-e351c8d8-checkpoint125.safetensors`, and
//!   `state_dict()` of moshi's `MimiModel`): `encoder.model.N.conv.conv.*`,
//!   fused `in_proj_weight` (or moshi's newer `in_projs.0.weight`), EMA
//!   codebooks `_codebook.{embedding_sum, cluster_usage, _initialized}`.
//! * **transformers** `MimiModel` (`config.json` + `model.safetensors`):
//!   `encoder.layers.N.conv.*`, split `q_proj`/`k_proj`/`v_proj` whose q/k
//!   rows the converter permuted for rotate-half RoPE; they are un-permuted
//!   here so that the interleaved RoPE of [`super::transformer`] applies.
//! * the same transformers names under `codec_model.` inside a transformers
//!   CSM checkpoint ([`Mimi::from_hf_weights`] takes them prefix-stripped).
//!
//! Layouts become MLX's: conv `[out, in/g, k] -> [out, k, in/g]`,
//! conv-transpose `[in, out/g, k] -> [out, k, in/g]`, 1x1 projections
//! `[out, in, 1] -> [out, in]`, codebooks
//! `embedding_sum / clamp(cluster_usage, 1e-5)` stacked `[n_q, bins, dim]`.
//! Weight-normed convs (`weight_g`/`weight_v`) are folded. Everything is fp32.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlx_rs::{ops, Array, Dtype};
use serde_json::Value;

use super::config::{read_json, MimiConfig};
use super::error::CodecError;
use super::mimi::Mimi;
use crate::checkpoint::{load_strict, WeightMap};

/// The kyutai Mimi file name CSM loads (`kyutai/moshiko-pytorch-bf16`).
pub const KYUTAI_MIMI_FILE: &str = "tokenizer-e351c8d8-checkpoint125.safetensors";

/// Naming scheme of a Mimi checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MimiCheckpointFormat {
    /// kyutai / moshi names.
    Kyutai,
    /// transformers `MimiModel` names.
    Transformers,
    /// transformers names under `codec_model.` (a transformers CSM file).
    TransformersCsm,
}

/// `mimi`'s parameters as a checkpoint this module loads back: this crate's
/// names, with the resampling convs in PyTorch layout (conv `[out, in, k]`,
/// depthwise conv-transpose `[ch, 1, k]`), as the loader expects them. For
/// writing random-weight models (the demo, benchmarks).
pub fn checkpoint_weights(mimi: &Mimi) -> Result<BTreeMap<String, Array>, CodecError> {
    use mlx_rs::module::ModuleParameters;
    let mut weights: BTreeMap<String, Array> = mimi
        .parameters()
        .flatten()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    for key in ["downsample.weight", "upsample.weight"] {
        if let Some(w) = weights.remove(key) {
            weights.insert(key.to_string(), w.swap_axes(1, 2)?);
        }
    }
    Ok(weights)
}

/// Detects the naming scheme from the keys.
pub fn detect_format(weights: &WeightMap) -> Result<MimiCheckpointFormat, CodecError> {
    let has = |p: &str| weights.has_prefix(p);
    if has("codec_model.encoder.layers.") || has("codec_model.quantizer.") {
        Ok(MimiCheckpointFormat::TransformersCsm)
    } else if has("encoder.model.") || has("quantizer.rvq_first.") {
        Ok(MimiCheckpointFormat::Kyutai)
    } else if has("encoder.layers.") || has("quantizer.semantic_residual_vector_quantizer.") {
        Ok(MimiCheckpointFormat::Transformers)
    } else {
        let sample: Vec<&str> = weights.tensors.keys().take(5).map(String::as_str).collect();
        Err(CodecError::UnknownLayout {
            source_name: weights.source.clone(),
            sample: if sample.is_empty() {
                "(no tensors)".into()
            } else {
                sample.join(", ")
            },
        })
    }
}

impl Mimi {
    /// Builds Mimi from `config` and a checkpoint in any supported naming
    /// (detected from the keys), failing on any missing, unexpected or
    /// mis-shaped tensor.
    pub fn from_weights(config: MimiConfig, mut weights: WeightMap) -> Result<Self, CodecError> {
        if detect_format(&weights)? == MimiCheckpointFormat::TransformersCsm {
            let source = weights.source.clone();
            weights = weights.split_prefix("codec_model.");
            weights.source = source;
        }
        let mut mimi = Mimi::new(config)?;
        let sanitized = sanitize(&mimi.config, weights)?;
        load_strict(&mut mimi, sanitized)?;
        Ok(mimi)
    }

    /// Builds Mimi from a transformers `MimiConfig` JSON value (for CSM: the
    /// `codec_config` object) and its weights with the `codec_model.` prefix
    /// already stripped.
    pub fn from_hf_weights(config: &Value, weights: WeightMap) -> Result<Self, CodecError> {
        let config = MimiConfig::from_hf_json(config)?;
        Self::from_weights(config, weights)
    }

    /// Loads a kyutai-format safetensors file with the given config
    /// ([`MimiConfig::mimi_v0_1`] for the released file).
    pub fn from_kyutai_file(path: &Path, config: MimiConfig) -> Result<Self, CodecError> {
        let weights = WeightMap::from_safetensors(&[path.to_path_buf()], Some(Dtype::Float32))?;
        Self::from_weights(config, weights)
    }

    /// Loads a transformers `MimiModel` directory (`config.json` plus
    /// `model.safetensors` or sharded `model-*.safetensors`). A transformers
    /// CSM directory works too: its `codec_config` and `codec_model.*`
    /// tensors are used.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, CodecError> {
        let config_path = dir.join("config.json");
        let json = read_json(&config_path)?;
        let codec_json = json.get("codec_config").unwrap_or(&json);
        let config = MimiConfig::from_hf_json(codec_json).map_err(|e| e.in_file(&config_path))?;
        let files = safetensors_files(dir)?;
        let mut weights = WeightMap::from_safetensors(&files, Some(Dtype::Float32))?;
        if json.get("codec_config").is_some() {
            let source = weights.source.clone();
            weights = weights.split_prefix("codec_model.");
            weights.source = source;
        }
        Self::from_weights(config, weights)
    }

    /// Loads Mimi from a path: a transformers directory (with
    /// `config.json`), a directory holding [`KYUTAI_MIMI_FILE`], or a
    /// safetensors file in either naming. For a kyutai file `config` defaults
    /// to [`MimiConfig::mimi_v0_1`]; a transformers file needs `config` or a
    /// `config.json` beside it.
    pub fn load(path: &Path, config: Option<MimiConfig>) -> Result<Self, CodecError> {
        if path.is_dir() {
            if path.join("config.json").is_file() && config.is_none() {
                return Self::from_hf_dir(path);
            }
            let kyutai = path.join(KYUTAI_MIMI_FILE);
            if kyutai.is_file() {
                return Self::from_kyutai_file(
                    &kyutai,
                    config.unwrap_or_else(MimiConfig::mimi_v0_1),
                );
            }
            let files = safetensors_files(path)?;
            return Self::load_files(&files, config, path);
        }
        Self::load_files(&[path.to_path_buf()], config, path)
    }

    fn load_files(
        files: &[PathBuf],
        config: Option<MimiConfig>,
        path: &Path,
    ) -> Result<Self, CodecError> {
        let weights = WeightMap::from_safetensors(files, Some(Dtype::Float32))?;
        let format = detect_format(&weights)?;
        let config = match (config, format) {
            (Some(c), _) => c,
            (None, MimiCheckpointFormat::Kyutai) => MimiConfig::mimi_v0_1(),
            (None, _) => {
                let dir = if path.is_dir() {
                    path
                } else {
                    path.parent().unwrap_or(Path::new("."))
                };
                let config_path = dir.join("config.json");
                if !config_path.is_file() {
                    return Err(CodecError::ConfigFile {
                        path: config_path,
                        message: "a transformers Mimi checkpoint needs its config.json".into(),
                    });
                }
                let json = read_json(&config_path)?;
                let codec_json = json.get("codec_config").unwrap_or(&json);
                MimiConfig::from_hf_json(codec_json).map_err(|e| e.in_file(&config_path))?
            }
        };
        Self::from_weights(config, weights)
    }
}

/// `model.safetensors`, or every `*.safetensors` in `dir` (sorted).
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, CodecError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let entries = std::fs::read_dir(dir).map_err(|source| CodecError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CodecError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no .safetensors file in directory",
            ),
        });
    }
    Ok(files)
}

/// How a checkpoint tensor becomes a parameter.
#[derive(Debug, Clone, Copy)]
enum Convert {
    /// Taken as is.
    Plain,
    /// PyTorch conv `[out, in/g, k]` -> MLX `[out, k, in/g]`.
    Conv,
    /// PyTorch conv-transpose `[in, out/g, k]` -> MLX `[out, k, in/g]`.
    ConvTr { groups: i32 },
    /// 1x1 conv `[out, in, 1]` -> linear `[out, in]`.
    Proj,
}

/// Role of a SEANet layer index.
#[derive(Debug, Clone)]
enum SeanetRole {
    Conv(String),
    ConvTr(String),
    Residual(String),
}

/// Index -> role tables for `encoder.model.N` and `decoder.model.N`.
fn seanet_roles(cfg: &MimiConfig) -> (BTreeMap<usize, SeanetRole>, BTreeMap<usize, SeanetRole>) {
    let n_res = cfg.n_residual_layers as usize;
    let n_blocks = cfg.ratios.len();
    let mut enc = BTreeMap::new();
    enc.insert(0, SeanetRole::Conv("encoder.init_conv".into()));
    let mut idx = 1;
    for b in 0..n_blocks {
        for j in 0..n_res {
            enc.insert(
                idx,
                SeanetRole::Residual(format!("encoder.blocks.{b}.residuals.{j}")),
            );
            idx += 1;
        }
        idx += 1; // ELU
        enc.insert(
            idx,
            SeanetRole::Conv(format!("encoder.blocks.{b}.downsample")),
        );
        idx += 1;
    }
    idx += 1; // ELU
    enc.insert(idx, SeanetRole::Conv("encoder.final_conv".into()));

    let mut dec = BTreeMap::new();
    dec.insert(0, SeanetRole::Conv("decoder.init_conv".into()));
    let mut idx = 1;
    for b in 0..n_blocks {
        idx += 1; // ELU
        dec.insert(
            idx,
            SeanetRole::ConvTr(format!("decoder.blocks.{b}.upsample")),
        );
        idx += 1;
        for j in 0..n_res {
            dec.insert(
                idx,
                SeanetRole::Residual(format!("decoder.blocks.{b}.residuals.{j}")),
            );
            idx += 1;
        }
    }
    idx += 1; // ELU
    dec.insert(idx, SeanetRole::Conv("decoder.final_conv".into()));
    (enc, dec)
}

/// A checkpoint tensor with its original key.
type Named = (String, Array);

/// `embedding_sum` and `cluster_usage` of one codebook.
type CodebookParts = (Option<Named>, Option<Named>);

/// What one checkpoint key means.
#[derive(Debug)]
enum Target {
    /// A parameter with its conversion.
    Param(String, Convert),
    /// One of transformers' split q/k/v projections of `prefix` (0, 1, 2).
    Qkv(String, usize),
    /// A codebook's `embedding_sum` (`rvq`, layer).
    CodebookSum(String, usize),
    /// A codebook's `cluster_usage` (`rvq`, layer).
    CodebookUsage(String, usize),
    /// Not a parameter (`_initialized`).
    Drop,
}

/// Maps a (weight-norm folded) checkpoint key, kyutai or transformers
/// naming, to its target; `None` for keys we do not know.
fn classify(
    key: &str,
    cfg: &MimiConfig,
    roles: &(BTreeMap<usize, SeanetRole>, BTreeMap<usize, SeanetRole>),
) -> Option<Target> {
    let parts: Vec<&str> = key.split('.').collect();
    let param = *parts.last()?;
    match parts.as_slice() {
        [side @ ("encoder" | "decoder"), "model" | "layers", idx, rest @ ..] => {
            let idx: usize = idx.parse().ok()?;
            let table = if *side == "encoder" {
                &roles.0
            } else {
                &roles.1
            };
            // Drop the conv wrappers: kyutai `conv.conv.` / `convtr.convtr.`,
            // transformers `conv.`.
            let rest: Vec<&str> = rest
                .iter()
                .copied()
                .filter(|p| *p != "conv" && *p != "convtr")
                .collect();
            if param != "weight" && param != "bias" {
                return None;
            }
            let convert_weight = |c: Convert| if param == "weight" { c } else { Convert::Plain };
            match (table.get(&idx)?, rest.as_slice()) {
                (SeanetRole::Conv(name), [_]) => Some(Target::Param(
                    format!("{name}.{param}"),
                    convert_weight(Convert::Conv),
                )),
                (SeanetRole::ConvTr(name), [_]) => Some(Target::Param(
                    format!("{name}.{param}"),
                    convert_weight(Convert::ConvTr { groups: 1 }),
                )),
                (SeanetRole::Residual(name), ["block", i, _]) => {
                    let conv = match *i {
                        "1" => "conv1",
                        "3" => "conv2",
                        _ => return None,
                    };
                    Some(Target::Param(
                        format!("{name}.{conv}.{param}"),
                        convert_weight(Convert::Conv),
                    ))
                }
                _ => None,
            }
        }
        [tr @ ("encoder_transformer" | "decoder_transformer"), rest @ ..] => {
            let rest = match rest {
                ["transformer", "layers", r @ ..] | ["layers", r @ ..] => r,
                _ => return None,
            };
            let [layer, sub @ ..] = rest else { return None };
            let layer: usize = layer.parse().ok()?;
            let prefix = format!("{tr}.layers.{layer}");
            let plain =
                |name: &str| Some(Target::Param(format!("{prefix}.{name}"), Convert::Plain));
            match sub {
                ["self_attn", "in_proj_weight"]
                | ["self_attn", "in_proj", "weight"]
                | ["self_attn", "in_projs", "0", "weight"] => plain("self_attn.in_proj"),
                ["self_attn", "out_proj" | "o_proj", "weight"]
                | ["self_attn", "out_projs", "0", "weight"] => plain("self_attn.out_proj"),
                ["self_attn", "q_proj", "weight"] => Some(Target::Qkv(prefix, 0)),
                ["self_attn", "k_proj", "weight"] => Some(Target::Qkv(prefix, 1)),
                ["self_attn", "v_proj", "weight"] => Some(Target::Qkv(prefix, 2)),
                ["norm1" | "input_layernorm", p @ ("weight" | "bias")] => {
                    plain(&format!("norm1.{p}"))
                }
                ["norm2" | "post_attention_layernorm", p @ ("weight" | "bias")] => {
                    plain(&format!("norm2.{p}"))
                }
                ["linear1", "weight"] | ["mlp", "fc1", "weight"] => plain("linear1"),
                ["linear2", "weight"] | ["mlp", "fc2", "weight"] => plain("linear2"),
                ["layer_scale_1" | "self_attn_layer_scale", "scale"] => plain("layer_scale_1"),
                ["layer_scale_2" | "mlp_layer_scale", "scale"] => plain("layer_scale_2"),
                _ => None,
            }
        }
        ["downsample", rest @ ..]
            if rest.iter().all(|p| *p == "conv" || *p == "weight") && param == "weight" =>
        {
            Some(Target::Param("downsample.weight".into(), Convert::Conv))
        }
        ["upsample", rest @ ..]
            if rest
                .iter()
                .all(|p| *p == "convtr" || *p == "conv" || *p == "weight")
                && param == "weight" =>
        {
            let groups = cfg.resample.as_ref().map_or(1, |r| r.upsample_groups);
            Some(Target::Param(
                "upsample.weight".into(),
                Convert::ConvTr { groups },
            ))
        }
        ["quantizer", rvq, rest @ ..] => {
            let rvq = match *rvq {
                "rvq_first" | "semantic_residual_vector_quantizer" => "rvq_first",
                "rvq_rest" | "acoustic_residual_vector_quantizer" => "rvq_rest",
                _ => return None,
            };
            let rest: Vec<&str> = rest
                .iter()
                .copied()
                .filter(|p| !matches!(*p, "vq" | "_codebook" | "codebook"))
                .collect();
            match rest.as_slice() {
                [proj @ ("input_proj" | "output_proj"), "weight"] => Some(Target::Param(
                    format!("quantizer.{rvq}.{proj}"),
                    Convert::Proj,
                )),
                ["layers", layer, name] => {
                    let layer: usize = layer.parse().ok()?;
                    match *name {
                        "embedding_sum" | "embed_sum" | "embed_avg" => {
                            Some(Target::CodebookSum(rvq.into(), layer))
                        }
                        "cluster_usage" | "cluster_size" => {
                            Some(Target::CodebookUsage(rvq.into(), layer))
                        }
                        "_initialized" | "initialized" | "inited" => Some(Target::Drop),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn tensor_err(source: &str, key: &str, message: impl Into<String>) -> CodecError {
    CodecError::Tensor {
        source_name: source.to_string(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// Folds `X.weight_g`/`X.weight_v` (and torch's parametrization names
/// `X.parametrizations.weight.original0/1`) into `X.weight`:
/// `g * v / ||v||`, the norm over every dim but the first.
fn fold_weight_norm(weights: &mut WeightMap) -> Result<(), CodecError> {
    let pairs: Vec<(String, String, String)> = weights
        .tensors
        .keys()
        .filter_map(|k| {
            if let Some(base) = k.strip_suffix(".weight_g") {
                Some((
                    k.clone(),
                    format!("{base}.weight_v"),
                    format!("{base}.weight"),
                ))
            } else {
                k.strip_suffix(".parametrizations.weight.original0")
                    .map(|base| {
                        (
                            k.clone(),
                            format!("{base}.parametrizations.weight.original1"),
                            format!("{base}.weight"),
                        )
                    })
            }
        })
        .collect();
    for (g_key, v_key, w_key) in pairs {
        let g = weights.remove(&g_key).expect("listed above");
        let v = weights.remove(&v_key).ok_or_else(|| {
            tensor_err(
                &weights.source,
                &v_key,
                format!("missing (needed with `{g_key}`)"),
            )
        })?;
        let axes: Vec<i32> = (1..v.ndim() as i32).collect();
        let norm = v.square()?.sum_axes(&axes, true)?.sqrt()?; // [out, 1, 1]
                                                               // g: [out, 1, ..] or [out] -> [out, 1, ..] like `norm`
        let w = v.multiply(&g.reshape(norm.shape())?)?.divide(&norm)?;
        weights.insert(w_key, w);
    }
    Ok(())
}

/// Renames and converts a checkpoint into [`Mimi`]'s parameter names and
/// MLX layouts. Unknown keys are kept as they are, so that
/// [`load_strict`] lists them as unexpected.
fn sanitize(cfg: &MimiConfig, mut weights: WeightMap) -> Result<WeightMap, CodecError> {
    for value in weights.tensors.values_mut() {
        if value.dtype() != Dtype::Float32 && value.dtype().is_float() {
            *value = value.as_dtype(Dtype::Float32)?;
        }
    }
    fold_weight_norm(&mut weights)?;
    let source = weights.source.clone();
    let roles = seanet_roles(cfg);
    let mut out = WeightMap::new(source.clone());
    let mut qkv: BTreeMap<String, [Option<Named>; 3]> = BTreeMap::new();
    let mut books: BTreeMap<(String, usize), CodebookParts> = BTreeMap::new();
    for (key, value) in std::mem::take(&mut weights.tensors) {
        match classify(&key, cfg, &roles) {
            None => out.insert(key, value),
            Some(Target::Drop) => {}
            Some(Target::Param(name, convert)) => {
                let value = convert_layout(&source, &key, value, convert)?;
                if out.tensors.contains_key(&name) {
                    return Err(tensor_err(
                        &source,
                        &key,
                        format!("maps to `{name}`, which another tensor already provides"),
                    ));
                }
                out.insert(name, value);
            }
            Some(Target::Qkv(prefix, i)) => qkv.entry(prefix).or_default()[i] = Some((key, value)),
            Some(Target::CodebookSum(rvq, layer)) => {
                books.entry((rvq, layer)).or_default().0 = Some((key, value))
            }
            Some(Target::CodebookUsage(rvq, layer)) => {
                books.entry((rvq, layer)).or_default().1 = Some((key, value))
            }
        }
    }
    fuse_qkv(cfg, &source, qkv, &mut out)?;
    fuse_codebooks(&source, books, &mut out)?;
    Ok(out)
}

fn convert_layout(
    source: &str,
    key: &str,
    value: Array,
    convert: Convert,
) -> Result<Array, CodecError> {
    let shape = value.shape().to_vec();
    let need = |n: usize| -> Result<(), CodecError> {
        if shape.len() == n {
            Ok(())
        } else {
            Err(tensor_err(
                source,
                key,
                format!("expected {n} dimensions, found shape {shape:?}"),
            ))
        }
    };
    Ok(match convert {
        Convert::Plain => value,
        Convert::Conv => {
            need(3)?;
            value.swap_axes(1, 2)? // [out, in/g, k] -> [out, k, in/g]
        }
        Convert::ConvTr { groups } => {
            need(3)?;
            let (cin, cout_g, k) = (shape[0], shape[1], shape[2]);
            if cin % groups != 0 {
                return Err(tensor_err(
                    source,
                    key,
                    format!("{cin} input channels do not split into {groups} groups"),
                ));
            }
            // [in, out/g, k] -> [g, in/g, out/g, k] -> [g, out/g, k, in/g] -> [out, k, in/g]
            value
                .reshape(&[groups, cin / groups, cout_g, k])?
                .transpose_axes(&[0, 2, 3, 1])?
                .reshape(&[groups * cout_g, k, cin / groups])?
        }
        Convert::Proj => {
            need(3)?;
            if shape[2] != 1 {
                return Err(tensor_err(
                    source,
                    key,
                    format!("expected a 1x1 conv, found shape {shape:?}"),
                ));
            }
            value.reshape(&[shape[0], shape[1]])? // [out, in, 1] -> [out, in]
        }
    })
}

/// Un-permutes transformers' q/k rows (rotate-half order back to
/// interleaved pairs) and fuses q, k, v into `in_proj`.
fn fuse_qkv(
    cfg: &MimiConfig,
    source: &str,
    qkv: BTreeMap<String, [Option<Named>; 3]>,
    out: &mut WeightMap,
) -> Result<(), CodecError> {
    let t = &cfg.transformer;
    let head_dim = t.head_dim();
    for (prefix, parts) in qkv {
        let mut fused = Vec::with_capacity(3);
        for (i, part) in parts.into_iter().enumerate() {
            let name = ["q_proj", "k_proj", "v_proj"][i];
            let (key, w) = part.ok_or_else(|| {
                tensor_err(
                    source,
                    &format!("{prefix}.self_attn.{name}.weight"),
                    "missing (the other projections of this layer are present)",
                )
            })?;
            let heads = if i == 0 { t.num_heads } else { t.num_kv_heads };
            let shape = w.shape().to_vec();
            if shape.len() != 2 || shape[0] != heads * head_dim {
                return Err(tensor_err(
                    source,
                    &key,
                    format!("expected [{}, d_model], found {shape:?}", heads * head_dim),
                ));
            }
            let w = if i < 2 {
                // rows (h, half, i) -> (h, i, half): [H*hd, D] -> [H, 2, hd/2, D]
                // -> [H, hd/2, 2, D] -> [H*hd, D]
                w.reshape(&[heads, 2, head_dim / 2, shape[1]])?
                    .transpose_axes(&[0, 2, 1, 3])?
                    .reshape(&[heads * head_dim, shape[1]])?
            } else {
                w
            };
            fused.push(w);
        }
        out.insert(
            format!("{prefix}.self_attn.in_proj"),
            ops::concatenate(&fused, 0)?,
        );
    }
    Ok(())
}

/// Centroids `embedding_sum / clamp(cluster_usage, 1e-5)`, stacked per RVQ
/// into `quantizer.{rvq}.codebooks` `[n_q, bins, dim]`.
fn fuse_codebooks(
    source: &str,
    books: BTreeMap<(String, usize), CodebookParts>,
    out: &mut WeightMap,
) -> Result<(), CodecError> {
    let mut per_rvq: BTreeMap<String, Vec<(usize, Array)>> = BTreeMap::new();
    for ((rvq, layer), (sum, usage)) in books {
        let what = format!("quantizer.{rvq} codebook {layer}");
        let (sum_key, sum) = sum.ok_or_else(|| {
            tensor_err(
                source,
                &what,
                "embedding_sum is missing (cluster_usage is present)",
            )
        })?;
        let (usage_key, usage) = usage.ok_or_else(|| {
            tensor_err(
                source,
                &what,
                "cluster_usage is missing (embedding_sum is present)",
            )
        })?;
        if sum.ndim() != 2 || usage.ndim() != 1 || usage.shape()[0] != sum.shape()[0] {
            return Err(tensor_err(
                source,
                &sum_key,
                format!(
                    "shape {:?} does not match `{usage_key}` {:?}",
                    sum.shape(),
                    usage.shape()
                ),
            ));
        }
        let usage = ops::maximum(&usage, Array::from_f32(1e-5))?.reshape(&[-1, 1])?; // [bins] -> [bins, 1]
        per_rvq
            .entry(rvq)
            .or_default()
            .push((layer, sum.divide(&usage)?));
    }
    for (rvq, layers) in per_rvq {
        for (expect, (layer, _)) in layers.iter().enumerate() {
            if *layer != expect {
                return Err(tensor_err(
                    source,
                    &format!("quantizer.{rvq} codebook {expect}"),
                    "missing (later codebooks are present)",
                ));
            }
        }
        let arrays: Vec<Array> = layers.into_iter().map(|(_, a)| a).collect();
        out.insert(
            format!("quantizer.{rvq}.codebooks"),
            ops::stack(&arrays, 0)?,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::module::ModuleParameters;

    fn tiny() -> MimiConfig {
        let json = serde_json::json!({
            "sample_rate": 24000, "frame_rate": 1500.0,
            "seanet": {"dimension": 16, "n_filters": 4, "ratios": [4, 2]},
            "transformer": {"d_model": 16, "num_heads": 2, "num_layers": 2,
                            "dim_feedforward": 32, "context": 5},
            "quantizer": {"dimension": 8, "n_q": 4, "bins": 32},
        });
        MimiConfig::from_kyutai_json(&json).unwrap()
    }

    /// Writes a kyutai-named checkpoint (PyTorch layouts) from a random
    /// model by inverting our layout conversion, for round-trip tests.
    fn kyutai_state_dict(m: &Mimi) -> WeightMap {
        let (enc, dec) = seanet_roles(&m.config);
        let params = m.parameters().flatten();
        let get = |k: &str| -> Array { (*params.get(k).unwrap_or_else(|| panic!("{k}"))).clone() };
        let mut w = WeightMap::new("test");
        let conv_pt = |a: Array| a.swap_axes(1, 2).unwrap();
        for (table, side) in [(&enc, "encoder"), (&dec, "decoder")] {
            for (idx, role) in table.iter() {
                match role {
                    SeanetRole::Conv(n) => {
                        w.insert(
                            format!("{side}.model.{idx}.conv.conv.weight"),
                            conv_pt(get(&format!("{n}.weight"))),
                        );
                        w.insert(
                            format!("{side}.model.{idx}.conv.conv.bias"),
                            get(&format!("{n}.bias")),
                        );
                    }
                    SeanetRole::ConvTr(n) => {
                        // [out, k, in] -> [in, out, k]
                        let a = get(&format!("{n}.weight"))
                            .transpose_axes(&[2, 0, 1])
                            .unwrap();
                        w.insert(format!("{side}.model.{idx}.convtr.convtr.weight"), a);
                        w.insert(
                            format!("{side}.model.{idx}.convtr.convtr.bias"),
                            get(&format!("{n}.bias")),
                        );
                    }
                    SeanetRole::Residual(n) => {
                        for (b, c) in [("1", "conv1"), ("3", "conv2")] {
                            w.insert(
                                format!("{side}.model.{idx}.block.{b}.conv.conv.weight"),
                                conv_pt(get(&format!("{n}.{c}.weight"))),
                            );
                            w.insert(
                                format!("{side}.model.{idx}.block.{b}.conv.conv.bias"),
                                get(&format!("{n}.{c}.bias")),
                            );
                        }
                    }
                }
            }
        }
        for tr in ["encoder_transformer", "decoder_transformer"] {
            for l in 0..m.config.transformer.num_layers {
                let p = format!("{tr}.layers.{l}");
                let k = format!("{tr}.transformer.layers.{l}");
                w.insert(
                    format!("{k}.self_attn.in_proj_weight"),
                    get(&format!("{p}.self_attn.in_proj")),
                );
                w.insert(
                    format!("{k}.self_attn.out_proj.weight"),
                    get(&format!("{p}.self_attn.out_proj")),
                );
                for n in ["norm1", "norm2"] {
                    w.insert(format!("{k}.{n}.weight"), get(&format!("{p}.{n}.weight")));
                    w.insert(format!("{k}.{n}.bias"), get(&format!("{p}.{n}.bias")));
                }
                w.insert(format!("{k}.linear1.weight"), get(&format!("{p}.linear1")));
                w.insert(format!("{k}.linear2.weight"), get(&format!("{p}.linear2")));
                w.insert(
                    format!("{k}.layer_scale_1.scale"),
                    get(&format!("{p}.layer_scale_1")),
                );
                w.insert(
                    format!("{k}.layer_scale_2.scale"),
                    get(&format!("{p}.layer_scale_2")),
                );
            }
        }
        w.insert(
            "downsample.conv.conv.conv.weight",
            conv_pt(get("downsample.weight")),
        );
        // depthwise [out, k, 1] -> [in, 1, k]
        w.insert(
            "upsample.convtr.convtr.convtr.weight",
            get("upsample.weight").transpose_axes(&[0, 2, 1]).unwrap(),
        );
        for rvq in ["rvq_first", "rvq_rest"] {
            for proj in ["input_proj", "output_proj"] {
                let a = get(&format!("quantizer.{rvq}.{proj}"));
                let s = a.shape().to_vec();
                w.insert(
                    format!("quantizer.{rvq}.{proj}.weight"),
                    a.reshape(&[s[0], s[1], 1]).unwrap(),
                );
            }
            let books = get(&format!("quantizer.{rvq}.codebooks"));
            for l in 0..books.shape()[0] {
                let usage = ops::full::<f32>(&[books.shape()[1]], Array::from_f32(2.0)).unwrap();
                let sum = mlx_rs::ops::indexing::IndexOp::index(&books, l)
                    .multiply(Array::from_f32(2.0))
                    .unwrap();
                let base = format!("quantizer.{rvq}.vq.layers.{l}._codebook");
                w.insert(format!("{base}.embedding_sum"), sum);
                w.insert(format!("{base}.cluster_usage"), usage);
                w.insert(
                    format!("{base}._initialized"),
                    Array::from_slice(&[1.0f32], &[1]),
                );
            }
        }
        w
    }

    #[test]
    fn kyutai_round_trip_reproduces_outputs() {
        let cfg = tiny();
        let mut a = Mimi::new(cfg.clone()).unwrap();
        let sd = kyutai_state_dict(&a);
        assert_eq!(detect_format(&sd).unwrap(), MimiCheckpointFormat::Kyutai);
        let mut b = Mimi::from_weights(cfg, sd).unwrap();
        let wav = mlx_rs::random::normal::<f32>(&[1, 1, 75], None, None, None).unwrap();
        let ca = a.encode(&wav).unwrap();
        let cb = b.encode(&wav).unwrap();
        assert!(ca.eq_values(&cb).unwrap());
        let da = a.decode(&ca).unwrap();
        let db = b.decode(&ca).unwrap();
        let diff = da
            .subtract(&db)
            .unwrap()
            .abs()
            .unwrap()
            .max(None)
            .unwrap()
            .item_exact::<f32>();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn strict_load_reports_missing_and_unexpected() {
        let cfg = tiny();
        let a = Mimi::new(cfg.clone()).unwrap();
        let mut sd = kyutai_state_dict(&a);
        sd.remove("encoder.model.0.conv.conv.bias");
        sd.insert("encoder.model.0.conv.conv.extra", Array::from_f32(1.0));
        let err = Mimi::from_weights(cfg, sd).unwrap_err().to_string();
        assert!(err.contains("encoder.init_conv.bias"), "{err}");
        assert!(err.contains("encoder.model.0.conv.conv.extra"), "{err}");
    }

    #[test]
    fn unknown_layout_is_a_clear_error() {
        let mut w = WeightMap::new("somefile.safetensors");
        w.insert("model.layers.0.weight", Array::from_f32(1.0));
        let err = Mimi::from_weights(tiny(), w).unwrap_err();
        assert!(matches!(err, CodecError::UnknownLayout { .. }), "{err}");
        assert!(err.to_string().contains("somefile.safetensors"));
    }

    #[test]
    fn hf_qk_unpermute_inverts_the_converter_permutation() {
        // converter: W.view(H, hd/2, 2, D).transpose(1, 2).reshape(H*hd, D)
        let (h, hd, d) = (2, 4, 3);
        let w: Vec<f32> = (0..h * hd * d).map(|i| i as f32).collect();
        let orig = Array::from_slice(&w, &[h * hd, d]);
        let permuted = orig
            .reshape(&[h, hd / 2, 2, d])
            .unwrap()
            .transpose_axes(&[0, 2, 1, 3])
            .unwrap()
            .reshape(&[h * hd, d])
            .unwrap();
        let mut cfg = tiny();
        cfg.transformer.d_model = h * hd;
        cfg.transformer.num_heads = h;
        cfg.transformer.num_kv_heads = h;
        let mut qkv = BTreeMap::new();
        let v = Array::from_slice(&vec![0.5f32; (h * hd * d) as usize], &[h * hd, d]);
        qkv.insert(
            "enc.layers.0".to_string(),
            [
                Some(("q".to_string(), permuted.clone())),
                Some(("k".to_string(), permuted)),
                Some(("v".to_string(), v)),
            ],
        );
        let mut out = WeightMap::new("t");
        fuse_qkv(&cfg, "t", qkv, &mut out).unwrap();
        let fused = out.remove("enc.layers.0.self_attn.in_proj").unwrap();
        assert_eq!(fused.shape(), &[3 * h * hd, d]);
        let q = mlx_rs::ops::indexing::IndexOp::index(&fused, ..h * hd);
        assert!(q.eq_values(&orig).unwrap());
    }

    #[test]
    fn weight_norm_is_folded() {
        // v [2, 1, 2]: rows (3, 4) and (1, 0); g = (10, 2).
        let mut w = WeightMap::new("t");
        w.insert(
            "a.conv.weight_v",
            Array::from_slice(&[3.0f32, 4.0, 1.0, 0.0], &[2, 1, 2]),
        );
        w.insert(
            "a.conv.weight_g",
            Array::from_slice(&[10.0f32, 2.0], &[2, 1, 1]),
        );
        w.insert(
            "b.parametrizations.weight.original1",
            Array::from_slice(&[0.0f32, 2.0], &[1, 1, 2]),
        );
        w.insert(
            "b.parametrizations.weight.original0",
            Array::from_slice(&[3.0f32], &[1, 1, 1]),
        );
        fold_weight_norm(&mut w).unwrap();
        assert_eq!(w.tensors.len(), 2);
        let a = w.remove("a.conv.weight").unwrap();
        assert_eq!(a.as_slice::<f32>(), &[6.0, 8.0, 2.0, 0.0]);
        let b = w.remove("b.weight").unwrap();
        assert_eq!(b.as_slice::<f32>(), &[0.0, 3.0]);
    }
}
