//! `generate_sample`: speaks a text with the base model or a fine-tuned
//! checkpoint (`csm_core::generate`), writes a 24 kHz WAV under the app
//! data dir and returns its peaks for the waveform.

use std::path::{Path, PathBuf};

use csm_core::data::audio::{load_mono_24k, write_wav, WavEncoding};
use csm_core::data::TARGET_SAMPLE_RATE;
use csm_core::generate::{Generator, SamplingConfig, Segment};
use serde::{Deserialize, Serialize};
use tauri::{AppHandle, Runtime, State};

use crate::error::{blocking, Error, Result};
use crate::state::{data_dir, AllowedPaths};

/// Mirrors `GenerateRequest` in `ui/src/lib/api.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateRequest {
    /// What to say.
    pub text: String,
    /// Speaker id of the prompt.
    pub speaker_id: u32,
    /// Optional context clip.
    pub context_audio: Option<PathBuf>,
    /// Its transcript.
    pub context_text: Option<String>,
    /// Adapter folder/file or training checkpoint; `None` = base model.
    pub checkpoint: Option<PathBuf>,
    /// CSM checkpoint.
    pub model_path: PathBuf,
    /// Mimi weights.
    pub mimi_path: Option<PathBuf>,
    /// tokenizer.json.
    pub tokenizer_path: Option<PathBuf>,
    /// Sampling seed.
    pub seed: u64,
    /// Softmax temperature.
    pub temperature: f32,
    /// Top-k.
    pub top_k: usize,
    /// Longest audio.
    pub max_audio_secs: f32,
}

/// Mirrors `GeneratedSample`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GeneratedSample {
    /// Unique id (file stem).
    pub id: String,
    /// The WAV written.
    pub path: PathBuf,
    /// Always 24000.
    pub sample_rate: u32,
    /// Length.
    pub duration_secs: f64,
    /// 512 peaks in [0, 1].
    pub peaks: Vec<f32>,
    /// As requested.
    pub checkpoint: Option<PathBuf>,
    /// As requested.
    pub seed: u64,
    /// As requested.
    pub text: String,
}

/// Generates one sample (deterministic for a seed).
///
/// # Errors
/// `notFound`, `modelLoad` (model, codec, tokenizer or adapter), `generation`.
#[tauri::command]
pub async fn generate_sample<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    request: GenerateRequest,
) -> Result<GeneratedSample> {
    for p in [
        Some(&request.model_path),
        request.mimi_path.as_ref(),
        request.tokenizer_path.as_ref(),
    ]
    .into_iter()
    .chain([request.checkpoint.as_ref(), request.context_audio.as_ref()])
    .flatten()
    {
        if !p.exists() {
            return Err(Error::NotFound(p.clone()));
        }
        allowed.check(&app, p)?;
    }
    let out_dir = data_dir(&app)?.join("samples");
    blocking("generate_sample", move || generate(&request, &out_dir)).await
}

/// Synchronous body of [`generate_sample`] (MLX runs on this thread only).
pub fn generate(req: &GenerateRequest, out_dir: &Path) -> Result<GeneratedSample> {
    if req.text.trim().is_empty() {
        return Err(Error::InvalidInput("the text to speak is empty".into()));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let backend = csm_core::runtime::use_best_device();
    let mut generator = Generator::load(
        &req.model_path,
        req.mimi_path.as_deref(),
        req.tokenizer_path.as_deref(),
        backend.default_dtype(),
    )
    .map_err(|e| Error::ModelLoad(e.to_string()))?;
    if let Some(ckpt) = &req.checkpoint {
        let adapter = adapter_path(ckpt, out_dir)?;
        generator
            .apply_adapter(&adapter)
            .map_err(|e| Error::ModelLoad(e.to_string()))?;
    }
    let mut context = Vec::new();
    if let Some(audio) = &req.context_audio {
        let samples = load_mono_24k(audio).map_err(|e| Error::UnsupportedFormat(e.to_string()))?;
        context.push(Segment {
            speaker: req.speaker_id,
            text: req.context_text.clone().unwrap_or_default(),
            audio: Some(samples),
        });
    }
    let sampling = SamplingConfig {
        temperature: req.temperature,
        top_k: req.top_k,
        seed: req.seed,
        max_audio_ms: (req.max_audio_secs.max(0.08) * 1000.0) as u32,
    };
    let out = generator
        .generate(&context, &req.text, req.speaker_id, &sampling)
        .map_err(|e| Error::Generation(e.to_string()))?;
    let id = format!(
        "{}-{}-seed{}",
        super::history::format_time(std::time::SystemTime::now(), true),
        std::process::id() ^ (out.audio.len() as u32),
        req.seed
    );
    let mut path = out_dir.join(format!("{id}.wav"));
    let mut n = 1;
    while path.exists() {
        n += 1;
        path = out_dir.join(format!("{id}-{n}.wav"));
    }
    write_wav(&path, &out.audio, TARGET_SAMPLE_RATE, WavEncoding::Float32).map_err(|e| {
        Error::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    Ok(GeneratedSample {
        id: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or(id),
        path,
        sample_rate: TARGET_SAMPLE_RATE,
        duration_secs: out.audio.len() as f64 / f64::from(TARGET_SAMPLE_RATE),
        peaks: super::audio::peaks(&out.audio, 512),
        checkpoint: req.checkpoint.clone(),
        seed: req.seed,
        text: req.text.clone(),
    })
}

/// An mlx_lm adapter for `ckpt`: adapter folders and files are used as they
/// are; a training checkpoint (`checkpoint_step_*.safetensors`) has its
/// adapter tensors extracted once into `<out_dir>/adapters/<stem>/`.
fn adapter_path(ckpt: &Path, out_dir: &Path) -> Result<PathBuf> {
    let is_training_ckpt = ckpt.is_file()
        && ckpt
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("checkpoint_"));
    if !is_training_ckpt {
        return Ok(ckpt.to_path_buf());
    }
    let run_dir = ckpt.parent().unwrap_or(Path::new("."));
    let resolved = ckpt.canonicalize().map_err(|e| Error::io(ckpt, e))?;
    let stem = format!(
        "{}-{}",
        run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        resolved
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let dir = out_dir.join("adapters").join(stem);
    let file = dir.join("adapters.safetensors");
    if !file.is_file() {
        super::history::export(resolved.parent().unwrap_or(run_dir), Some(&resolved), &file)?;
    }
    Ok(dir)
}
