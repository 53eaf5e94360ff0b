//! `generate_sample`: speaks a text with the base model or a fine-tuned
//! checkpoint (`csm_core::generate`), streaming progress over a channel,
//! writes a 24 kHz WAV under the app data dir and returns its peaks for the
//! waveform. `cancel_generation` stops it before the next frame.

use std::path::{Path, PathBuf};
use std::time::Instant;

use csm_core::cancel::CancelToken;
use csm_core::data::audio::{write_wav, WavEncoding};
use csm_core::data::decode::load_mono_24k;
use csm_core::data::TARGET_SAMPLE_RATE;
use csm_core::generate::{
    FrameProgress, GenerateError, GenerateHooks, Generator, Guards, SamplingConfig, Segment,
    FRAME_MS,
};
use csm_core::train::run_dir::is_checkpoint_file;
use csm_core::train::state::read_adapter;
use serde::{Deserialize, Serialize};
use tauri::ipc::Channel;
use tauri::{AppHandle, Runtime, State};

use crate::error::{blocking, Error, Result};
use crate::state::{data_dir, AllowedPaths, GenerationJobs};

/// What `generate_sample` is doing (mirrors `GenerationPhase` in `api.ts`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum GenerationPhase {
    /// Loading the model, codec, tokenizer and adapter.
    Loading,
    /// Encoding the prompt and generating frames (`progress` events follow;
    /// Mimi decoding and writing the WAV come after the last one).
    Generating,
}

/// Progress of one `generate_sample` call, sent on its channel
/// (mirrors `GenerationEvent` in `api.ts`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "event",
    content = "data"
)]
pub enum GenerationEvent {
    /// A new phase started.
    Phase {
        /// The phase.
        phase: GenerationPhase,
    },
    /// After every generated frame.
    Progress {
        /// Frames generated so far.
        frames: usize,
        /// Frames at most (`maxAudioSecs` at 12.5 frames per second).
        max_frames: usize,
        /// Seconds of audio the frames so far make.
        audio_secs: f64,
        /// Seconds since the command started (model loading included).
        elapsed_secs: f64,
    },
}

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

/// Generates one sample (deterministic for a seed), sending
/// [`GenerationEvent`]s on `on_progress` (best effort: a closed window never
/// fails the generation).
///
/// # Errors
/// `notFound`, `modelLoad` (model, codec, tokenizer or adapter), `generation`,
/// `cancelled` when `cancel_generation` stopped it (no file is written).
#[tauri::command]
pub async fn generate_sample<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    jobs: State<'_, GenerationJobs>,
    request: GenerateRequest,
    on_progress: Channel<GenerationEvent>,
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
    let job = jobs.start();
    let cancel = job.cancel.clone();
    let send = move |event: GenerationEvent| {
        let _ = on_progress.send(event);
    };
    let result = blocking("generate_sample", move || {
        let result = generate(&request, &out_dir, &send, &cancel);
        // The generator's arrays are gone: give their memory back.
        csm_core::runtime::release_free_memory();
        result
    })
    .await;
    drop(job);
    result
}

/// Stops every `generate_sample` in progress before its next frame; they
/// then fail with `cancelled`. Does nothing when none is running.
///
/// # Errors
/// None in practice (the signature is the commands' `Result`).
#[tauri::command]
pub async fn cancel_generation(jobs: State<'_, GenerationJobs>) -> Result<()> {
    jobs.cancel_all();
    Ok(())
}

fn cancelled(cancel: &CancelToken, what: &str) -> Result<()> {
    if cancel.is_cancelled() {
        return Err(Error::Cancelled(format!(
            "generation cancelled {what}; no file was written"
        )));
    }
    Ok(())
}

/// Synchronous body of [`generate_sample`] (MLX runs on this thread only):
/// `on_event` gets the progress, `cancel` stops it before the next frame.
pub fn generate(
    req: &GenerateRequest,
    out_dir: &Path,
    on_event: &dyn Fn(GenerationEvent),
    cancel: &CancelToken,
) -> Result<GeneratedSample> {
    if req.text.trim().is_empty() {
        return Err(Error::InvalidInput("the text to speak is empty".into()));
    }
    let start = Instant::now();
    on_event(GenerationEvent::Phase {
        phase: GenerationPhase::Loading,
    });
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
        // A training checkpoint's adapter is applied from memory; anything
        // else is an adapter in mlx_lm layout (folder or weights file).
        if is_checkpoint_file(ckpt) {
            let adapter = read_adapter(ckpt).map_err(|e| Error::ModelLoad(e.to_string()))?;
            generator.apply_loaded_adapter(&adapter)
        } else {
            generator.apply_adapter(ckpt)
        }
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
        guards: Guards::default(),
    };
    cancelled(cancel, "while loading the model")?;
    on_event(GenerationEvent::Phase {
        phase: GenerationPhase::Generating,
    });
    let mut on_frame = |p: &FrameProgress| {
        on_event(GenerationEvent::Progress {
            frames: p.frames,
            max_frames: p.max_frames,
            audio_secs: p.frames as f64 * f64::from(FRAME_MS) / 1000.0,
            elapsed_secs: start.elapsed().as_secs_f64(),
        });
    };
    let out = generator
        .generate_with(
            &context,
            &req.text,
            req.speaker_id,
            &sampling,
            GenerateHooks {
                progress: Some(&mut on_frame),
                cancel: Some(cancel),
                stop: None,
            },
        )
        .map_err(|e| match e {
            GenerateError::Cancelled { frames, max_frames } => Error::Cancelled(format!(
                "generation cancelled after {frames} of {max_frames} frames; no file was written"
            )),
            e => Error::Generation(e.to_string()),
        })?;
    let id = format!(
        "{}-{}-seed{}",
        crate::time::format_time(std::time::SystemTime::now(), true),
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
