//! `inspect_model` (Model screen cards) and `demo_assets` (the bundled
//! tiny model + dataset, built in the app data dir on first use).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use csm_core::codec::Mimi;
use csm_core::demo::{create_demo, DemoPaths};
use csm_core::mlx_rs::module::ModuleParameters;
use csm_core::model::load::detect;
use csm_core::tokenizer::TextTokenizer;
use serde::{Deserialize, Serialize};
use tauri::{AppHandle, Runtime, State};

use crate::error::{blocking, Error, Result};
use crate::state::{data_dir, AllowedPaths};

/// What the Model screen can inspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ModelKind {
    /// A CSM checkpoint.
    Csm,
    /// Mimi codec weights.
    Mimi,
    /// A `tokenizer.json`.
    Tokenizer,
}

/// Mirrors `ModelInfo` in `ui/src/lib/api.ts`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// As given.
    pub path: PathBuf,
    /// As asked.
    pub kind: ModelKind,
    /// e.g. "safetensors", "safetensors (3 shards)", "tokenizer.json".
    pub format: String,
    /// Bytes of the weight (or tokenizer) files.
    pub size_bytes: u64,
    /// Storage dtypes, e.g. "float32" or "bfloat16 + float32".
    pub dtype: Option<String>,
    /// Parameter count.
    pub parameters: Option<u64>,
    /// Extra facts.
    pub details: BTreeMap<String, String>,
}

/// Mirrors `DemoAssets` in `ui/src/lib/api.ts`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DemoAssets {
    /// Tiny CSM checkpoint folder.
    pub model_path: PathBuf,
    /// Random-weight Mimi.
    pub mimi_path: PathBuf,
    /// Byte-level tokenizer.
    pub tokenizer_path: PathBuf,
    /// Clips.
    pub audio_dir: PathBuf,
    /// Transcripts.
    pub transcript_dir: PathBuf,
    /// Always `None` (the demo has no alignments).
    pub alignment_dir: Option<PathBuf>,
}

/// Clips of the app's demo dataset: the first third of the core's sentence
/// list (`csm_core::data::espeak::DEMO_SENTENCES`), so the one-click demo
/// builds and trains in seconds.
pub const DEMO_CLIPS: usize = csm_core::data::espeak::DEMO_SENTENCES.len() / 3;

/// Inspects a checkpoint file or folder.
///
/// # Errors
/// `notFound`, `unsupportedFormat` (no weights / unknown layout), `modelLoad`
/// (the loader's exact error).
#[tauri::command]
pub async fn inspect_model<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    path: PathBuf,
    kind: ModelKind,
) -> Result<ModelInfo> {
    allowed.check(&app, &path)?;
    blocking("inspect_model", move || inspect(&path, kind)).await
}

/// Builds (once) and returns the demo model and dataset under the app data dir.
///
/// # Errors
/// `io` when the demo cannot be written (e.g. espeak-ng is missing).
#[tauri::command]
pub async fn demo_assets<R: Runtime>(app: AppHandle<R>) -> Result<DemoAssets> {
    let root = data_dir(&app)?.join("demo");
    blocking("demo_assets", move || demo(&root)).await
}

/// Synchronous body of [`demo_assets`]: reuses a complete demo, else builds it.
pub fn demo(root: &Path) -> Result<DemoAssets> {
    let paths = DemoPaths::under(root);
    let assets = DemoAssets {
        model_path: paths.model,
        mimi_path: paths.mimi,
        tokenizer_path: paths.tokenizer,
        audio_dir: paths.audio_dir,
        transcript_dir: paths.transcript_dir,
        alignment_dir: None,
    };
    let marker = root.join(".complete");
    if marker.is_file() {
        return Ok(assets);
    }
    // A half-built demo (killed mid-way) is rebuilt from scratch.
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(|e| Error::io(root, e))?;
    }
    create_demo(root, DEMO_CLIPS, 7).map_err(|e| Error::Io {
        path: root.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::write(&marker, b"").map_err(|e| Error::io(&marker, e))?;
    Ok(assets)
}

/// Synchronous body of [`inspect_model`].
pub fn inspect(path: &Path, kind: ModelKind) -> Result<ModelInfo> {
    if !path.exists() {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    match kind {
        ModelKind::Csm => inspect_csm(path),
        ModelKind::Mimi => inspect_mimi(path),
        ModelKind::Tokenizer => inspect_tokenizer(path),
    }
}

fn inspect_csm(path: &Path) -> Result<ModelInfo> {
    use csm_core::model::ModelError;
    let detected = detect(path).map_err(|e| match e {
        ModelError::UnknownFormat { .. } => Error::UnsupportedFormat(e.to_string()),
        other => Error::ModelLoad(other.to_string()),
    })?;
    let files = &detected.weight_files;
    let format = match files.len() {
        1 => container_name(&files[0]),
        n => format!("{} ({n} shards)", container_name(&files[0])),
    };
    let size_bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let dtypes = files
        .iter()
        .map(|f| safetensors_dtypes(f))
        .collect::<Option<Vec<_>>>();
    let parameters: u64 = detected
        .tensors
        .values()
        .map(|s| s.iter().map(|&d| d.max(0) as u64).product::<u64>())
        .sum();
    let mut details = BTreeMap::new();
    details.insert("layout".into(), detected.format.to_string());
    details.insert("tensors".into(), detected.tensors.len().to_string());
    if let Some((cfg_path, cfg, _)) = &detected.config {
        details.insert("config".into(), cfg_path.display().to_string());
        details.insert(
            "backbone layers".into(),
            cfg.backbone.num_layers.to_string(),
        );
        details.insert("decoder layers".into(), cfg.decoder.num_layers.to_string());
        details.insert("codebooks".into(), cfg.audio_num_codebooks.to_string());
        details.insert("text vocab".into(), cfg.text_vocab_size.to_string());
    }
    if detected
        .tensors
        .keys()
        .any(|k| k.starts_with("codec_model."))
    {
        details.insert("codec".into(), "Mimi included (codec_model.*)".into());
    }
    Ok(ModelInfo {
        path: path.to_path_buf(),
        kind: ModelKind::Csm,
        format,
        size_bytes,
        dtype: dtypes.map(|d| join_dtypes(d.into_iter().flatten())),
        parameters: Some(parameters),
        details,
    })
}

fn inspect_mimi(path: &Path) -> Result<ModelInfo> {
    let mimi = Mimi::load(path, None).map_err(|e| Error::ModelLoad(e.to_string()))?;
    let params = mimi.parameters().flatten();
    let parameters: u64 = params.values().map(|a| a.size() as u64).sum();
    let files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    let size_bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let dtypes = files.iter().filter_map(|f| safetensors_dtypes(f)).flatten();
    let mut details = BTreeMap::new();
    details.insert("tensors".into(), params.len().to_string());
    Ok(ModelInfo {
        path: path.to_path_buf(),
        kind: ModelKind::Mimi,
        format: files
            .first()
            .map_or_else(|| "safetensors".into(), |f| container_name(f)),
        size_bytes,
        dtype: Some(join_dtypes(dtypes)),
        parameters: Some(parameters),
        details,
    })
}

fn inspect_tokenizer(path: &Path) -> Result<ModelInfo> {
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        return Err(Error::NotFound(file));
    }
    let tok = TextTokenizer::from_file(&file).map_err(|e| Error::ModelLoad(e.to_string()))?;
    let mut details = BTreeMap::new();
    details.insert("vocab size".into(), tok.vocab_size().to_string());
    details.insert("bos id".into(), tok.bos_id().to_string());
    details.insert("eos id".into(), tok.eos_id().to_string());
    Ok(ModelInfo {
        path: path.to_path_buf(),
        kind: ModelKind::Tokenizer,
        format: "tokenizer.json".into(),
        size_bytes: std::fs::metadata(&file)
            .map_err(|e| Error::io(&file, e))?
            .len(),
        dtype: None,
        parameters: None,
        details,
    })
}

fn container_name(file: &Path) -> String {
    file.extension()
        .map_or_else(|| "unknown".into(), |x| x.to_string_lossy().into_owned())
}

/// Dtypes in a safetensors header (`None` for other containers).
fn safetensors_dtypes(file: &Path) -> Option<BTreeSet<String>> {
    if file.extension()? != "safetensors" {
        return None;
    }
    let mut f = std::fs::File::open(file).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&header).ok()?;
    Some(
        v.as_object()?
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .filter_map(|(_, t)| t.get("dtype")?.as_str().map(dtype_name))
            .collect(),
    )
}

fn dtype_name(st: &str) -> String {
    match st {
        "F32" => "float32",
        "F16" => "float16",
        "BF16" => "bfloat16",
        "F64" => "float64",
        "I64" => "int64",
        "I32" => "int32",
        "U8" => "uint8",
        "BOOL" => "bool",
        other => other,
    }
    .to_string()
}

fn join_dtypes(d: impl IntoIterator<Item = String>) -> String {
    d.into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(" + ")
}
