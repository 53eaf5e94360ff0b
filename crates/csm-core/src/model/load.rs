//! Finding, recognising and loading CSM checkpoints in every layout we
//! support, and converting our canonical names back for export.
//!
//! The canonical names are the csm-mlx ones (`docs/architecture.md`,
//! "The model"), with q/k rows in the original interleaved order. Loading is:
//! [`detect`] (what is at the path: files, layout, config) -> read a
//! [`WeightMap`] -> [`to_canonical`] (renames, transformers q/k
//! un-permutation, codec split-off) -> [`load_strict`]. [`to_format`] is the
//! inverse of [`to_canonical`] for saving merged models in the input's
//! layout.
//!
//! A PyTorch `.pt` source only needs a "raw tensors -> [`WeightMap`]" reader
//! in [`read_weights`]; detection and renaming are shared.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};
use serde_json::Value;

use super::config::{ConfigKind, CsmConfig};
use super::csm::Csm;
use super::error::ModelError;
use crate::checkpoint::{load_strict, WeightMap};

/// Tensor-name layouts of CSM checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ModelFormat {
    /// SesameAILabs/csm (torchtune) names: `backbone.layers.N.attn.q_proj`,
    /// `sa_norm.scale`, `mlp.w1`, ... (`sesame/csm-1b` `model.safetensors`,
    /// `ckpt.pt`, `mlx-community/csm-1b`).
    Original,
    /// transformers `CsmForConditionalGeneration`: `backbone_model.*`,
    /// `depth_decoder.*`, `lm_head`, q/k rows permuted for rotate-half RoPE,
    /// Mimi under `codec_model.*`.
    Transformers,
    /// senstella/csm-mlx names (our canonical layout).
    CsmMlx,
    /// mlx-audio: csm-mlx names under a `model.` prefix.
    MlxAudio,
}

impl ModelFormat {
    /// Human-readable name.
    pub fn describe(self) -> &'static str {
        match self {
            ModelFormat::Original => "original Sesame/torchtune names",
            ModelFormat::Transformers => "transformers CsmForConditionalGeneration",
            ModelFormat::CsmMlx => "csm-mlx names",
            ModelFormat::MlxAudio => "mlx-audio names (model. prefix)",
        }
    }

    /// Recognises a layout from tensor names.
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut found = None;
        for key in keys {
            let guess = if key.starts_with("backbone_model.")
                || key.starts_with("depth_decoder.")
                || key.starts_with("embed_text_tokens.")
                || key == "lm_head.weight"
            {
                Some(ModelFormat::Transformers)
            } else if key.starts_with("model.backbone.") || key.starts_with("model.decoder.") {
                Some(ModelFormat::MlxAudio)
            } else if key.starts_with("backbone.") || key.starts_with("decoder.") {
                let original = key.contains(".attn.")
                    || key.ends_with(".scale")
                    || key.contains(".mlp.w1.")
                    || key.contains(".mlp.w2.")
                    || key.contains(".mlp.w3.");
                let mlx = key.contains(".self_attn.")
                    || key.contains("layernorm.")
                    || key.contains("_proj.weight")
                    || key.ends_with("norm.weight");
                match (original, mlx) {
                    (true, _) => Some(ModelFormat::Original),
                    (false, true) => Some(ModelFormat::CsmMlx),
                    _ => None,
                }
            } else {
                None
            };
            // Transformers and mlx-audio prefixes are decisive; between the
            // two unprefixed layouts, any original-style key decides.
            match (found, guess) {
                (_, Some(ModelFormat::Transformers)) | (_, Some(ModelFormat::MlxAudio)) => {
                    return guess
                }
                (None, g) => found = g,
                (Some(ModelFormat::CsmMlx), Some(ModelFormat::Original)) => {
                    found = Some(ModelFormat::Original)
                }
                _ => {}
            }
        }
        found
    }
}

impl fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// How the tensors are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// One or more `.safetensors` files.
    Safetensors,
    /// A PyTorch `torch.save` pickle (`.pt`, `.pth`, `.bin`).
    TorchPickle,
}

/// Where a model's config came from.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigOrigin {
    /// A `config.json` next to the weights.
    File(PathBuf, ConfigKind),
    /// Given by the caller.
    Caller,
    /// No config found; the CSM-1B preset matched the tensor shapes.
    Csm1bPreset,
}

/// What [`detect`] found at a model path.
#[derive(Debug, Clone)]
pub struct Detected {
    /// The path as given.
    pub path: PathBuf,
    /// Storage.
    pub container: Container,
    /// Weight files (several for sharded checkpoints).
    pub weight_files: Vec<PathBuf>,
    /// Tensor-name layout.
    pub format: ModelFormat,
    /// Parsed `config.json`, if there was one.
    pub config: Option<(PathBuf, CsmConfig, ConfigKind)>,
    /// Tensor names and shapes from the file headers.
    pub tensors: BTreeMap<String, Vec<i32>>,
}

impl fmt::Display for Detected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files = match self.weight_files.as_slice() {
            [one] => one.display().to_string(),
            many => format!("{} shards in {}", many.len(), self.path.display()),
        };
        write!(
            f,
            "{} ({} tensors in {files})",
            self.format,
            self.tensors.len()
        )?;
        if let Some((path, _, kind)) = &self.config {
            write!(f, ", config {} ({kind:?} layout)", path.display())?;
        }
        if self.tensors.keys().any(|k| k.starts_with("codec_model.")) {
            write!(f, ", with the Mimi codec (codec_model.*)")?;
        }
        Ok(())
    }
}

/// Options of [`load_csm`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype of the weights (f32 on CPU, bf16 on GPU).
    pub dtype: Dtype,
    /// Config to use when the checkpoint has no `config.json`.
    pub config: Option<CsmConfig>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: Dtype::Float32,
            config: None,
        }
    }
}

/// A loaded model and what was learnt about its source.
#[derive(Debug)]
pub struct LoadedCsm {
    /// The model, weights in the requested dtype.
    pub model: Csm,
    /// The source's layout (save merged models back in it).
    pub format: ModelFormat,
    /// Where the config came from.
    pub config_origin: ConfigOrigin,
    /// Mimi weights found in the same checkpoint (`codec_model.*` of a
    /// transformers checkpoint, prefix removed), for the codec loader.
    pub codec: Option<WeightMap>,
    /// What [`detect`] found.
    pub detected: Detected,
}

/// Finds the weight files, layout and config at `path` (a file or a
/// directory), reading only file headers.
///
/// # Errors
/// Nothing loadable at the path, an unreadable file, a malformed config or
/// shard index, or an unknown layout (listing some keys).
pub fn detect(path: &Path) -> Result<Detected, ModelError> {
    detect_with(path, None)
}

/// [`detect`], taking tensor shapes from `preloaded` when given (pickles
/// have no cheap header, so [`load_csm`] reads them once, up front).
fn detect_with(path: &Path, preloaded: Option<&WeightMap>) -> Result<Detected, ModelError> {
    let (container, weight_files, dir) = find_weight_files(path)?;
    let tensors = match (container, preloaded) {
        (_, Some(map)) => map
            .tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.shape().to_vec()))
            .collect(),
        (Container::Safetensors, None) => {
            let mut all = BTreeMap::new();
            for file in &weight_files {
                all.extend(safetensors_shapes(file)?);
            }
            all
        }
        (Container::TorchPickle, None) => read_pickle(&weight_files[0], None)?
            .tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.shape().to_vec()))
            .collect(),
    };
    let format = ModelFormat::from_keys(tensors.keys().map(String::as_str)).ok_or_else(|| {
        ModelError::UnknownFormat {
            path: path.to_path_buf(),
            sample_keys: tensors.keys().take(8).cloned().collect(),
        }
    })?;
    let config_path = dir.join("config.json");
    let config = if config_path.is_file() {
        let (config, kind) = read_config(&config_path)?;
        Some((config_path, config, kind))
    } else {
        None
    };
    Ok(Detected {
        path: path.to_path_buf(),
        container,
        weight_files,
        format,
        config,
        tensors,
    })
}

/// Reads and parses a `config.json` (Sesame or transformers layout).
pub fn read_config(path: &Path) -> Result<(CsmConfig, ConfigKind), ModelError> {
    let json = read_json(path)?;
    CsmConfig::from_json(&json).map_err(|message| ModelError::Config {
        path: path.to_path_buf(),
        message,
    })
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// `(container, files, directory holding them)`.
fn find_weight_files(path: &Path) -> Result<(Container, Vec<PathBuf>, PathBuf), ModelError> {
    let not_found = |message: String| ModelError::NotFound {
        path: path.to_path_buf(),
        message,
    };
    if path.is_file() {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".safetensors.index.json") {
            return Ok((Container::Safetensors, shard_files(path)?, dir));
        }
        return match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok((Container::Safetensors, vec![path.to_path_buf()], dir)),
            Some("pt" | "pth" | "bin" | "ckpt") => {
                Ok((Container::TorchPickle, vec![path.to_path_buf()], dir))
            }
            _ => Err(not_found(
                "expected a .safetensors, .safetensors.index.json or .pt file".into(),
            )),
        };
    }
    if !path.is_dir() {
        return Err(not_found("no such file or directory".into()));
    }
    let index = path.join("model.safetensors.index.json");
    if index.is_file() {
        return Ok((
            Container::Safetensors,
            shard_files(&index)?,
            path.to_path_buf(),
        ));
    }
    for name in ["model.safetensors", "ckpt.safetensors"] {
        let file = path.join(name);
        if file.is_file() {
            return Ok((Container::Safetensors, vec![file], path.to_path_buf()));
        }
    }
    let entries = std::fs::read_dir(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut safetensors = Vec::new();
    let mut pickles = Vec::new();
    for entry in entries.flatten() {
        let p = entry.path();
        match p.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => safetensors.push(p),
            Some("pt" | "pth") => pickles.push(p),
            _ => {}
        }
    }
    safetensors.sort();
    pickles.sort();
    match (safetensors.as_slice(), pickles.as_slice()) {
        ([one], _) => Ok((
            Container::Safetensors,
            vec![one.clone()],
            path.to_path_buf(),
        )),
        ([], [one]) => Ok((
            Container::TorchPickle,
            vec![one.clone()],
            path.to_path_buf(),
        )),
        ([], []) => Err(not_found(
            "the directory holds no model.safetensors, model.safetensors.index.json, \
             ckpt.safetensors or .pt file"
                .into(),
        )),
        _ => Err(not_found(format!(
            "the directory holds several candidate weight files ({}); pass the file itself",
            safetensors
                .iter()
                .chain(&pickles)
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Shard files named by a `model.safetensors.index.json`, in name order.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let json = read_json(index)?;
    let dir = index.parent().map(Path::to_path_buf).unwrap_or_default();
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| ModelError::Config {
            path: index.to_path_buf(),
            message: "no `weight_map` object".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(ModelError::Config {
            path: index.to_path_buf(),
            message: "`weight_map` names no files".into(),
        });
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Tensor names and shapes from a safetensors header (the data is not read).
pub fn safetensors_shapes(path: &Path) -> Result<BTreeMap<String, Vec<i32>>, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(ModelError::Config {
            path: path.to_path_buf(),
            message: format!("not a safetensors file (header length {len})"),
        });
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let json: Value = serde_json::from_slice(&header).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let obj = json.as_object().ok_or_else(|| ModelError::Config {
        path: path.to_path_buf(),
        message: "safetensors header is not an object".into(),
    })?;
    let mut out = BTreeMap::new();
    for (key, info) in obj {
        if key == "__metadata__" {
            continue;
        }
        let shape = info
            .get("shape")
            .and_then(Value::as_array)
            .map(|dims| {
                dims.iter()
                    .filter_map(Value::as_i64)
                    .map(|d| d as i32)
                    .collect()
            })
            .ok_or_else(|| ModelError::Config {
                path: path.to_path_buf(),
                message: format!("tensor `{key}` has no shape in the header"),
            })?;
        out.insert(key.clone(), shape);
    }
    Ok(out)
}

/// Reads every tensor of a detected checkpoint, floats cast to `dtype`.
pub fn read_weights(detected: &Detected, dtype: Dtype) -> Result<WeightMap, ModelError> {
    match detected.container {
        Container::Safetensors => Ok(WeightMap::from_safetensors(
            &detected.weight_files,
            Some(dtype),
        )?),
        Container::TorchPickle => read_pickle(&detected.weight_files[0], Some(dtype)),
    }
}

/// Reads a PyTorch `torch.save` state dict into a [`WeightMap`], floats
/// cast to `dtype`. This is the one place the restricted pickle reader
/// (`checkpoint::pickle`, merged separately) plugs in: everything after
/// the raw tensors (layout detection, renames, strict loading) is shared
/// with safetensors.
/// Reads a PyTorch `.pt`/`.bin` checkpoint with the restricted reader.
fn read_pickle(path: &Path, dtype: Option<Dtype>) -> Result<WeightMap, ModelError> {
    Ok(WeightMap::from_torch_checkpoint(path, dtype)?)
}

/// Loads a CSM model from a file or directory in any supported layout.
///
/// Config: the `config.json` next to the weights, else `options.config`,
/// else the CSM-1B preset if every tensor shape matches it. A caller config
/// that contradicts the file's is an error.
///
/// # Errors
/// See [`detect`]; also a missing or conflicting config and any key or
/// shape mismatch (listed by [`load_strict`]).
pub fn load_csm(path: &Path, options: &LoadOptions) -> Result<LoadedCsm, ModelError> {
    let (container, files, _) = find_weight_files(path)?;
    let (detected, weights) = match container {
        Container::TorchPickle => {
            let weights = read_pickle(&files[0], Some(options.dtype))?;
            (detect_with(path, Some(&weights))?, Some(weights))
        }
        Container::Safetensors => (detect(path)?, None),
    };
    let (config, config_origin) = resolve_config(&detected, options.config.as_ref())?;
    let weights = match weights {
        Some(w) => w,
        None => read_weights(&detected, options.dtype)?,
    };
    let (weights, codec) = to_canonical(weights, detected.format, &config)?;
    let mut model = Csm::new(&config).map_err(ModelError::mlx("building the model"))?;
    model
        .cast(options.dtype)
        .map_err(ModelError::mlx("casting the model"))?;
    load_strict(&mut model, weights)?;
    mlx_rs::transforms::eval_params(mlx_rs::module::ModuleParameters::parameters(&model))
        .map_err(ModelError::mlx("materialising the weights"))?;
    tracing::info!(%detected, ?config_origin, "loaded CSM");
    Ok(LoadedCsm {
        model,
        format: detected.format,
        config_origin,
        codec,
        detected,
    })
}

fn resolve_config(
    detected: &Detected,
    caller: Option<&CsmConfig>,
) -> Result<(CsmConfig, ConfigOrigin), ModelError> {
    match (&detected.config, caller) {
        (Some((path, file, kind)), caller) => {
            if let Some(c) = caller {
                if c != file {
                    return Err(ModelError::Config {
                        path: path.clone(),
                        message: "the config given by the caller differs from this config.json; \
                                  pass only one"
                            .into(),
                    });
                }
            }
            Ok((file.clone(), ConfigOrigin::File(path.clone(), *kind)))
        }
        (None, Some(c)) => Ok((c.clone(), ConfigOrigin::Caller)),
        (None, None) => {
            let preset = CsmConfig::csm_1b();
            match preset_mismatch(detected, &preset)? {
                None => Ok((preset, ConfigOrigin::Csm1bPreset)),
                Some(why) => Err(ModelError::NoConfig {
                    path: detected.path.clone(),
                    message: format!(
                        "no config.json next to the checkpoint, none given, and it is not \
                         CSM-1B ({why}); put the model's config.json next to it"
                    ),
                }),
            }
        }
    }
}

/// Why the checkpoint's shapes are not those of `config`, if they are not.
fn preset_mismatch(detected: &Detected, config: &CsmConfig) -> Result<Option<String>, ModelError> {
    let model = Csm::new(config).map_err(ModelError::mlx("building the preset model"))?;
    let expected: BTreeMap<String, Vec<i32>> = mlx_rs::module::ModuleParameters::parameters(&model)
        .flatten()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.shape().to_vec()))
        .collect();
    let mut found = BTreeMap::new();
    for (key, shape) in &detected.tensors {
        if let Some(name) = canonical_name(key, detected.format) {
            found.insert(name, shape.clone());
        }
    }
    for (key, shape) in &expected {
        match found.get(key) {
            None => return Ok(Some(format!("no tensor for `{key}`"))),
            Some(s) if s != shape => {
                return Ok(Some(format!("`{key}` is {s:?}, CSM-1B has {shape:?}")))
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Segment renames between the original and canonical names.
const ORIGINAL_SEGMENTS: [(&str, &str); 7] = [
    ("attn", "self_attn"),
    ("output_proj", "o_proj"),
    ("sa_norm", "input_layernorm"),
    ("mlp_norm", "post_attention_layernorm"),
    ("w1", "gate_proj"),
    ("w2", "down_proj"),
    ("w3", "up_proj"),
];

fn original_to_canonical(key: &str) -> String {
    let mut parts: Vec<&str> = key.split('.').collect();
    for p in parts.iter_mut() {
        if let Some((_, to)) = ORIGINAL_SEGMENTS.iter().find(|(from, _)| from == p) {
            *p = to;
        }
    }
    if parts.last() == Some(&"scale") {
        *parts.last_mut().expect("non-empty") = "weight";
    }
    parts.join(".")
}

fn canonical_to_original(key: &str) -> String {
    let mut parts: Vec<&str> = key.split('.').collect();
    let is_norm = parts.len() >= 2 && {
        let module = parts[parts.len() - 2];
        module == "norm" || module.ends_with("_layernorm")
    };
    for p in parts.iter_mut() {
        if let Some((from, _)) = ORIGINAL_SEGMENTS.iter().find(|(_, to)| to == p) {
            *p = from;
        }
    }
    if is_norm && parts.last() == Some(&"weight") {
        *parts.last_mut().expect("non-empty") = "scale";
    }
    parts.join(".")
}

/// transformers name -> canonical name (`None`: not a CSM tensor here, i.e.
/// the tied decoder embedding copy or the codec).
fn transformers_to_canonical(key: &str) -> Option<String> {
    let fixed = match key {
        "embed_text_tokens.weight" | "backbone_model.embed_tokens.embed_text_tokens.weight" => {
            Some("text_embeddings.weight")
        }
        "backbone_model.embed_tokens.embed_audio_tokens.weight" => Some("audio_embeddings.weight"),
        "depth_decoder.model.inputs_embeds_projector.weight" => Some("projection.weight"),
        "lm_head.weight" => Some("codebook0_head.weight"),
        "depth_decoder.codebooks_head.weight" => Some("audio_head"),
        "depth_decoder.model.embed_tokens.weight" => return None,
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    if key.starts_with("codec_model.") {
        return None;
    }
    if let Some(rest) = key.strip_prefix("backbone_model.") {
        return Some(format!("backbone.{rest}"));
    }
    if let Some(rest) = key.strip_prefix("depth_decoder.model.") {
        return Some(format!("decoder.{rest}"));
    }
    Some(key.to_string())
}

fn canonical_to_transformers(key: &str) -> String {
    match key {
        "text_embeddings.weight" => "embed_text_tokens.weight".into(),
        "audio_embeddings.weight" => "backbone_model.embed_tokens.embed_audio_tokens.weight".into(),
        "projection.weight" => "depth_decoder.model.inputs_embeds_projector.weight".into(),
        "codebook0_head.weight" => "lm_head.weight".into(),
        "audio_head" => "depth_decoder.codebooks_head.weight".into(),
        _ => {
            if let Some(rest) = key.strip_prefix("backbone.") {
                format!("backbone_model.{rest}")
            } else if let Some(rest) = key.strip_prefix("decoder.") {
                format!("depth_decoder.model.{rest}")
            } else {
                key.to_string()
            }
        }
    }
}

/// The canonical name of a tensor of `format`, or `None` for tensors that
/// are not CSM parameters (the codec, transformers' tied embedding copy).
pub fn canonical_name(key: &str, format: ModelFormat) -> Option<String> {
    match format {
        ModelFormat::Original => Some(original_to_canonical(key)),
        ModelFormat::CsmMlx => Some(key.to_string()),
        ModelFormat::MlxAudio => Some(original_to_canonical(
            key.strip_prefix("model.").unwrap_or(key),
        )),
        ModelFormat::Transformers => transformers_to_canonical(key),
    }
}

/// The name a canonical tensor has in `format` (inverse of
/// [`canonical_name`]); also usable for adapter keys such as
/// `backbone.layers.0.self_attn.q_proj.lora_a`.
pub fn format_name(canonical: &str, format: ModelFormat) -> String {
    match format {
        ModelFormat::Original => canonical_to_original(canonical),
        ModelFormat::CsmMlx => canonical.to_string(),
        ModelFormat::MlxAudio => format!("model.{canonical}"),
        ModelFormat::Transformers => canonical_to_transformers(canonical),
    }
}

/// `(heads, head_dim)` of a canonical q/k projection key (`None` for every
/// other key): what [`permute_for_rope`] needs for it. Adapter exports use
/// it too: a transformers-order LoRA `B` for q/k is `permute_for_rope` of
/// `lora_b^T` (`[out, r]`, PEFT's `lora_B.weight`).
pub fn rope_permuted_heads(key: &str, config: &CsmConfig) -> Option<(i32, i32)> {
    let stack = if key.starts_with("backbone.") {
        &config.backbone
    } else if key.starts_with("decoder.") {
        &config.decoder
    } else {
        return None;
    };
    if key.ends_with(".self_attn.q_proj.weight") {
        Some((stack.num_heads, stack.head_dim))
    } else if key.ends_with(".self_attn.k_proj.weight") {
        Some((stack.num_kv_heads, stack.head_dim))
    } else {
        None
    }
}

/// transformers' `permute_for_rope`: within each head, rows `(hd/2, 2)`
/// become `(2, hd/2)` (interleaved order -> rotate-half order).
///
/// # Shapes
/// `w: [heads * hd, ...]` -> same
pub fn permute_for_rope(
    w: &Array,
    heads: i32,
    head_dim: i32,
) -> Result<Array, mlx_rs::error::Exception> {
    let shape = w.shape().to_vec();
    let rest: i32 = shape[1..].iter().product();
    w.reshape(&[heads, head_dim / 2, 2, rest])? // [H, hd/2, 2, in]
        .transpose_axes(&[0, 2, 1, 3])? // [H, 2, hd/2, in]
        .reshape(&shape) // [H*hd, in]
}

/// Inverse of [`permute_for_rope`] (rotate-half order -> interleaved).
///
/// # Shapes
/// `w: [heads * hd, ...]` -> same
pub fn unpermute_for_rope(
    w: &Array,
    heads: i32,
    head_dim: i32,
) -> Result<Array, mlx_rs::error::Exception> {
    let shape = w.shape().to_vec();
    let rest: i32 = shape[1..].iter().product();
    w.reshape(&[heads, 2, head_dim / 2, rest])? // [H, 2, hd/2, in]
        .transpose_axes(&[0, 2, 1, 3])? // [H, hd/2, 2, in]
        .reshape(&shape) // [H*hd, in]
}

fn check_rows(source: &str, key: &str, w: &Array, heads: i32, hd: i32) -> Result<(), ModelError> {
    if w.ndim() != 2 || w.shape()[0] != heads * hd {
        return Err(ModelError::Shape {
            source_name: source.to_string(),
            key: key.to_string(),
            expected: format!("[{heads} heads x {hd}, in] per the config"),
            found: w.shape().to_vec(),
        });
    }
    Ok(())
}

/// Converts a checkpoint of `format` to canonical names and layout.
/// Returns the CSM weights and, for transformers checkpoints holding the
/// codec, the `codec_model.*` tensors with the prefix removed.
///
/// # Errors
/// q/k tensors whose rows do not match the config's heads, or transformers'
/// two audio-embedding copies differing.
pub fn to_canonical(
    mut weights: WeightMap,
    format: ModelFormat,
    config: &CsmConfig,
) -> Result<(WeightMap, Option<WeightMap>), ModelError> {
    let mut codec = None;
    if format == ModelFormat::Transformers {
        if weights.has_prefix("codec_model.") {
            codec = Some(weights.split_prefix("codec_model."));
        }
        let tied = weights.remove("depth_decoder.model.embed_tokens.weight");
        let audio_key = "backbone_model.embed_tokens.embed_audio_tokens.weight";
        match (tied, weights.tensors.get(audio_key)) {
            (Some(t), Some(a)) => {
                let same = t.shape() == a.shape()
                    && t.eq_values(a)
                        .map_err(ModelError::mlx("comparing the tied audio embeddings"))?;
                if !same {
                    return Err(ModelError::UntiedEmbeddings {
                        source_name: weights.source.clone(),
                    });
                }
            }
            (Some(t), None) => weights.insert(audio_key, t),
            (None, _) => {}
        }
    }
    weights.rename(|k| canonical_name(k, format));
    if format == ModelFormat::Transformers {
        let keys: Vec<String> = weights.tensors.keys().cloned().collect();
        for key in keys {
            if let Some((heads, hd)) = rope_permuted_heads(&key, config) {
                let w = weights.remove(&key).expect("listed above");
                check_rows(&weights.source, &key, &w, heads, hd)?;
                let w = unpermute_for_rope(&w, heads, hd)
                    .map_err(ModelError::mlx(format!("un-permuting {key}")))?;
                weights.insert(key, w);
            }
        }
    }
    Ok((weights, codec))
}

/// Converts canonical weights (e.g. a merged model's parameters) to the
/// names and layout of `format`: the inverse of [`to_canonical`],
/// re-permuting q/k for transformers and writing both of its audio
/// embedding copies. A transformers export without `codec_model.*` can be
/// completed with [`add_codec`].
pub fn to_format(
    weights: &WeightMap,
    format: ModelFormat,
    config: &CsmConfig,
) -> Result<WeightMap, ModelError> {
    let mut out = WeightMap::new(format!("{} as {format}", weights.source));
    for (key, w) in &weights.tensors {
        let w = match (format, rope_permuted_heads(key, config)) {
            (ModelFormat::Transformers, Some((heads, hd))) => {
                check_rows(&weights.source, key, w, heads, hd)?;
                permute_for_rope(w, heads, hd)
                    .map_err(ModelError::mlx(format!("permuting {key}")))?
            }
            _ => w.clone(),
        };
        if format == ModelFormat::Transformers && key == "audio_embeddings.weight" {
            out.insert("depth_decoder.model.embed_tokens.weight", w.clone());
        }
        out.insert(format_name(key, format), w);
    }
    Ok(out)
}

/// Adds a codec's tensors under transformers' `codec_model.` prefix.
pub fn add_codec(weights: &mut WeightMap, codec: &WeightMap) {
    for (key, w) in &codec.tensors {
        weights.insert(format!("codec_model.{key}"), w.clone());
    }
}

/// The model's parameters as a canonical [`WeightMap`] (for [`to_format`]).
pub fn canonical_weights(model: &Csm) -> WeightMap {
    let mut map = WeightMap::new("model parameters");
    for (k, v) in mlx_rs::module::ModuleParameters::parameters(model).flatten() {
        map.insert(k.to_string(), v.clone());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::csm::tiny_config;

    #[test]
    fn original_names_round_trip() {
        for (orig, canon) in [
            (
                "backbone.layers.3.attn.q_proj.weight",
                "backbone.layers.3.self_attn.q_proj.weight",
            ),
            (
                "decoder.layers.0.attn.output_proj.weight",
                "decoder.layers.0.self_attn.o_proj.weight",
            ),
            (
                "backbone.layers.1.sa_norm.scale",
                "backbone.layers.1.input_layernorm.weight",
            ),
            (
                "backbone.layers.1.mlp_norm.scale",
                "backbone.layers.1.post_attention_layernorm.weight",
            ),
            (
                "backbone.layers.1.mlp.w1.weight",
                "backbone.layers.1.mlp.gate_proj.weight",
            ),
            (
                "backbone.layers.1.mlp.w2.weight",
                "backbone.layers.1.mlp.down_proj.weight",
            ),
            (
                "backbone.layers.1.mlp.w3.weight",
                "backbone.layers.1.mlp.up_proj.weight",
            ),
            ("decoder.norm.scale", "decoder.norm.weight"),
            ("text_embeddings.weight", "text_embeddings.weight"),
            ("audio_head", "audio_head"),
            ("projection.weight", "projection.weight"),
        ] {
            assert_eq!(canonical_name(orig, ModelFormat::Original).unwrap(), canon);
            assert_eq!(format_name(canon, ModelFormat::Original), orig);
            let mlx_audio = format!("model.{canon}");
            assert_eq!(
                canonical_name(&mlx_audio, ModelFormat::MlxAudio).unwrap(),
                canon
            );
            assert_eq!(format_name(canon, ModelFormat::MlxAudio), mlx_audio);
            let hf = format_name(canon, ModelFormat::Transformers);
            assert_eq!(
                canonical_name(&hf, ModelFormat::Transformers).unwrap(),
                canon
            );
        }
        assert_eq!(
            format_name(
                "backbone.layers.2.self_attn.v_proj.weight",
                ModelFormat::Transformers
            ),
            "backbone_model.layers.2.self_attn.v_proj.weight"
        );
        assert_eq!(
            format_name("decoder.norm.weight", ModelFormat::Transformers),
            "depth_decoder.model.norm.weight"
        );
        assert_eq!(
            canonical_name(
                "backbone_model.embed_tokens.embed_text_tokens.weight",
                ModelFormat::Transformers
            )
            .unwrap(),
            "text_embeddings.weight"
        );
        assert!(canonical_name("codec_model.encoder.x", ModelFormat::Transformers).is_none());
    }

    #[test]
    fn detects_formats_from_keys() {
        let f = |keys: &[&str]| ModelFormat::from_keys(keys.iter().copied());
        assert_eq!(
            f(&["audio_head", "backbone.layers.0.attn.q_proj.weight"]),
            Some(ModelFormat::Original)
        );
        assert_eq!(
            f(&[
                "backbone.layers.0.self_attn.q_proj.weight",
                "backbone.norm.scale"
            ]),
            Some(ModelFormat::Original)
        );
        assert_eq!(
            f(&["audio_head", "backbone.layers.0.self_attn.q_proj.weight"]),
            Some(ModelFormat::CsmMlx)
        );
        assert_eq!(
            f(&["lm_head.weight", "backbone_model.norm.weight"]),
            Some(ModelFormat::Transformers)
        );
        assert_eq!(
            f(&["model.audio_head", "model.backbone.norm.weight"]),
            Some(ModelFormat::MlxAudio)
        );
        assert_eq!(f(&["encoder.conv.weight", "decoder_x"]), None);
    }

    #[test]
    fn rope_permutation_inverts() {
        let w = Array::from_iter(0..(2 * 8 * 3), &[16, 3])
            .as_dtype(Dtype::Float32)
            .unwrap();
        let p = permute_for_rope(&w, 2, 8).unwrap();
        // Head 0 rows: even rows first, then odd rows.
        let rows: Vec<f32> = p.as_slice::<f32>().chunks(3).map(|r| r[0] / 3.0).collect();
        assert_eq!(
            rows,
            vec![0., 2., 4., 6., 1., 3., 5., 7., 8., 10., 12., 14., 9., 11., 13., 15.]
        );
        let back = unpermute_for_rope(&p, 2, 8).unwrap();
        assert_eq!(back.as_slice::<f32>(), w.as_slice::<f32>());
    }

    /// Writes a safetensors header (no data: only headers are read here)
    /// naming `shapes` in the original layout.
    fn header_only(path: &Path, shapes: &BTreeMap<String, Vec<i32>>) {
        let mut header = serde_json::Map::new();
        for (k, shape) in shapes {
            header.insert(
                format_name(k, ModelFormat::Original),
                serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]}),
            );
        }
        let bytes = serde_json::to_vec(&Value::Object(header)).unwrap();
        let mut out = (bytes.len() as u64).to_le_bytes().to_vec();
        out.extend(bytes);
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn csm_1b_preset_is_used_only_when_shapes_match() {
        let model = Csm::new(&CsmConfig::csm_1b()).unwrap(); // lazy: nothing computed
        let mut shapes: BTreeMap<String, Vec<i32>> = canonical_weights(&model)
            .tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.shape().to_vec()))
            .collect();
        assert_eq!(shapes["audio_head"], vec![31, 1024, 2051]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        header_only(&path, &shapes);
        let detected = detect(&path).unwrap();
        assert_eq!(detected.format, ModelFormat::Original);
        assert!(detected
            .tensors
            .contains_key("backbone.layers.15.sa_norm.scale"));
        let (config, origin) = resolve_config(&detected, None).unwrap();
        assert_eq!(
            (config, origin),
            (CsmConfig::csm_1b(), ConfigOrigin::Csm1bPreset)
        );

        shapes.insert(
            "decoder.layers.0.mlp.gate_proj.weight".into(),
            vec![4096, 1024],
        );
        header_only(&path, &shapes);
        let err = resolve_config(&detect(&path).unwrap(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("decoder.layers.0.mlp.gate_proj.weight"),
            "{err}"
        );

        // A Sesame config.json next to the file wins, and must agree with a
        // caller's config.
        let sesame = CsmConfig::csm_1b().to_sesame_json().unwrap();
        std::fs::write(dir.path().join("config.json"), sesame.to_string()).unwrap();
        let detected = detect(dir.path()).unwrap();
        let (config, origin) = resolve_config(&detected, Some(&CsmConfig::csm_1b())).unwrap();
        assert_eq!(config, CsmConfig::csm_1b());
        assert!(matches!(origin, ConfigOrigin::File(_, ConfigKind::Sesame)));
        let mut other = CsmConfig::csm_1b();
        other.audio_num_codebooks = 16;
        assert!(resolve_config(&detected, Some(&other)).is_err());
    }

    #[test]
    fn transformers_audio_embedding_tie() {
        let cfg = tiny_config();
        let canon = canonical_weights(&Csm::new(&cfg).unwrap());
        let hf = to_format(&canon, ModelFormat::Transformers, &cfg).unwrap();
        let depth_key = "depth_decoder.model.embed_tokens.weight";
        let backbone_key = "backbone_model.embed_tokens.embed_audio_tokens.weight";
        // Either side alone is accepted.
        for drop in [depth_key, backbone_key] {
            let mut w = to_format(&canon, ModelFormat::Transformers, &cfg).unwrap();
            w.remove(drop);
            let (back, _) = to_canonical(w, ModelFormat::Transformers, &cfg).unwrap();
            assert!(back.tensors["audio_embeddings.weight"]
                .eq_values(&canon.tensors["audio_embeddings.weight"])
                .unwrap());
        }
        // Two different tables cannot be represented.
        let mut w = hf;
        let bumped = w.tensors[depth_key].add(Array::from_f32(1.0)).unwrap();
        w.insert(depth_key, bumped);
        let err = to_canonical(w, ModelFormat::Transformers, &cfg).unwrap_err();
        assert!(matches!(err, ModelError::UntiedEmbeddings { .. }), "{err}");
    }

    #[test]
    fn canonical_round_trip_through_every_format() {
        let cfg = tiny_config();
        let model = Csm::new(&cfg).unwrap();
        let canon = canonical_weights(&model);
        for format in [
            ModelFormat::Original,
            ModelFormat::Transformers,
            ModelFormat::CsmMlx,
            ModelFormat::MlxAudio,
        ] {
            let exported = to_format(&canon, format, &cfg).unwrap();
            assert_eq!(
                ModelFormat::from_keys(exported.tensors.keys().map(String::as_str)),
                Some(format)
            );
            let (back, codec) = to_canonical(exported, format, &cfg).unwrap();
            assert!(codec.is_none());
            assert_eq!(
                back.tensors.keys().collect::<Vec<_>>(),
                canon.tensors.keys().collect::<Vec<_>>(),
                "{format}"
            );
            for (k, v) in &canon.tensors {
                let eq = back.tensors[k].eq_values(v).unwrap();
                assert!(eq, "{format}: {k}");
            }
            let mut fresh = Csm::new(&cfg).unwrap();
            load_strict(&mut fresh, back).unwrap();
        }
    }
}
