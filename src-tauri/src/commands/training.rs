//! `start_training`, `stop_training`, `estimate_run`: the Run screen over
//! `csm_core::train`. Each run trains on its own OS thread (MLX arrays are
//! created and used there only) and streams `TrainingEvent`s on the
//! channel the UI passed, while `JsonlObserver` writes `metrics.jsonl` for
//! History.

use std::path::{Path, PathBuf};
use std::time::Instant;

use csm_core::train::metrics::JsonlObserver;
use csm_core::adapter::TargetLayers;
use csm_core::cancel::CancelToken;
use csm_core::train::{
    LrSchedule, Phase as CorePhase, SaveMode as CoreSaveMode,
    TrainConfig, TrainError, TrainEvent, TrainingObserver,
};
use serde::{Deserialize, Serialize};
use tauri::ipc::Channel;
use tauri::{AppHandle, Runtime, State};

use crate::contract::{
    EventError, FinishStatus, Phase, SaveMode, StepData, TrainingEvent, WarningKind,
};
use crate::error::{blocking, Error, Result};
use crate::state::{ActiveJob, AllowedPaths, RunRoots, TrainingJobs};

/// The run config as the UI and `config.json` files hold it (docs/ipc.md,
/// "RunConfig"): the `csm finetune-lora` flag names, snake_case. Field
/// meanings, defaults and limits: `FIELDS` in `ui/src/lib/config.ts` and
/// `csm_core::train::TrainConfig`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model_path: PathBuf,
    pub output_dir: PathBuf,
    pub audio_dir: PathBuf,
    pub transcript_dir: PathBuf,
    pub alignment_dir: Option<PathBuf>,
    pub mimi_path: Option<PathBuf>,
    pub tokenizer_path: Option<PathBuf>,
    pub speaker_id: u32,
    pub max_seq_len: usize,
    pub context_turns: usize,
    pub context_loss: bool,
    pub lora_r: usize,
    pub lora_alpha: f32,
    pub lora_dropout: f32,
    pub target_modules: Vec<String>,
    pub target_layers: String,
    pub lora_bias: bool,
    pub learning_rate: f32,
    pub lr_schedule: LrSchedule,
    pub warmup_steps: usize,
    pub semantic_weight: f32,
    pub acoustic_weight: f32,
    pub decoder_fraction: f32,
    pub weight_decay: f32,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub epochs: usize,
    pub max_grad_norm: f32,
    pub val_split: f32,
    pub val_every: usize,
    pub save_every: usize,
    pub save_mode: CoreSaveMode,
    pub resume_from: Option<PathBuf>,
    pub generate_samples: bool,
    pub sample_prompt: Option<String>,
    pub seed: u64,
    pub log_level: String,
    pub debug: bool,
}

impl RunConfig {
    /// The trainer's config, writing into `run_dir`.
    pub fn to_train_config(&self, run_dir: &Path) -> Result<TrainConfig> {
        let target_layers = TargetLayers::parse(&self.target_layers)
            .map_err(|e| Error::InvalidInput(format!("target_layers: {e}")))?;
        let defaults = TrainConfig::default();
        let cfg = TrainConfig {
            model_path: self.model_path.clone(),
            mimi_path: self.mimi_path.clone(),
            tokenizer_path: self.tokenizer_path.clone(),
            output_dir: run_dir.to_path_buf(),
            audio_dir: self.audio_dir.clone(),
            transcript_dir: self.transcript_dir.clone(),
            alignment_dir: self.alignment_dir.clone(),
            speaker_id: self.speaker_id,
            max_seq_len: self.max_seq_len,
            context_turns: self.context_turns,
            context_loss: self.context_loss,
            lora_r: self.lora_r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            target_modules: self.target_modules.clone(),
            target_layers,
            lora_bias: self.lora_bias,
            learning_rate: self.learning_rate,
            semantic_weight: self.semantic_weight,
            acoustic_weight: self.acoustic_weight,
            weight_decay: self.weight_decay,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            epochs: self.epochs,
            max_grad_norm: self.max_grad_norm,
            decoder_fraction: self.decoder_fraction,
            lr_schedule: self.lr_schedule,
            warmup_steps: self.warmup_steps,
            seed: self.seed,
            val_split: self.val_split,
            val_every: self.val_every,
            save_every: self.save_every,
            save_mode: self.save_mode,
            resume_from: self.resume_from.clone(),
            generate_samples: self.generate_samples,
            sample_prompt: self.sample_prompt.clone().unwrap_or(defaults.sample_prompt),
            log_level: self.log_level.clone(),
            debug: self.debug,
        };
        cfg.validate()
            .map_err(|errors| Error::InvalidInput(errors.join("\n")))?;
        Ok(cfg)
    }

    /// The UI's config of a run folder's `config.json` (whose `output_dir`
    /// is the run folder itself; the UI's is its parent).
    pub fn from_train_config(cfg: &TrainConfig) -> Self {
        RunConfig {
            model_path: cfg.model_path.clone(),
            output_dir: cfg
                .output_dir
                .parent()
                .map_or_else(|| cfg.output_dir.clone(), Path::to_path_buf),
            audio_dir: cfg.audio_dir.clone(),
            transcript_dir: cfg.transcript_dir.clone(),
            alignment_dir: cfg.alignment_dir.clone(),
            mimi_path: cfg.mimi_path.clone(),
            tokenizer_path: cfg.tokenizer_path.clone(),
            speaker_id: cfg.speaker_id,
            max_seq_len: cfg.max_seq_len,
            context_turns: cfg.context_turns,
            context_loss: cfg.context_loss,
            lora_r: cfg.lora_r,
            lora_alpha: cfg.lora_alpha,
            lora_dropout: cfg.lora_dropout,
            target_modules: cfg.target_modules.clone(),
            target_layers: cfg.target_layers.to_arg(),
            lora_bias: cfg.lora_bias,
            learning_rate: cfg.learning_rate,
            lr_schedule: cfg.lr_schedule,
            warmup_steps: cfg.warmup_steps,
            semantic_weight: cfg.semantic_weight,
            acoustic_weight: cfg.acoustic_weight,
            decoder_fraction: cfg.decoder_fraction,
            weight_decay: cfg.weight_decay,
            batch_size: cfg.batch_size,
            grad_accum: cfg.grad_accum,
            epochs: cfg.epochs,
            max_grad_norm: cfg.max_grad_norm,
            val_split: cfg.val_split,
            val_every: cfg.val_every,
            save_every: cfg.save_every,
            save_mode: cfg.save_mode,
            resume_from: cfg.resume_from.clone(),
            generate_samples: cfg.generate_samples,
            sample_prompt: Some(cfg.sample_prompt.clone()),
            seed: cfg.seed,
            log_level: cfg.log_level.clone(),
            debug: cfg.debug,
        }
    }
}

/// Optimizer steps per epoch, the UI's rule (docs/ipc.md, `estimate_run`).
pub fn steps_per_epoch(train_examples: u64, batch_size: u64, grad_accum: u64) -> u64 {
    train_examples
        .div_ceil(batch_size.max(1))
        .div_ceil(grad_accum.max(1))
        .max(1)
}

/// Mirrors `RunEstimate` in `ui/src/lib/api.ts`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunEstimate {
    /// Seconds per optimizer step, from a previous run of the same model.
    pub secs_per_step: Option<f64>,
    /// Peak MLX memory of a previous run of the same model and batch size.
    pub peak_memory_bytes: Option<u64>,
}

/// Estimates from measured runs only: the newest run (in the known runs
/// folders) of the same model gives seconds per step, scaled linearly by
/// examples per step (`batch_size × grad_accum`); its peak memory is given
/// when the batch size matches. Without such a run both are `null`.
///
/// # Errors
/// `invalidInput` when `batch_size` or `grad_accum` is 0.
#[tauri::command]
pub async fn estimate_run<R: Runtime>(
    app: AppHandle<R>,
    roots: State<'_, RunRoots>,
    config: RunConfig,
) -> Result<RunEstimate> {
    let roots = roots.all(&app)?;
    blocking("estimate_run", move || estimate(&roots, &config)).await
}

/// Synchronous body of [`estimate_run`].
pub fn estimate(roots: &[PathBuf], config: &RunConfig) -> Result<RunEstimate> {
    if config.batch_size == 0 || config.grad_accum == 0 {
        return Err(Error::InvalidInput(
            "batch_size and grad_accum must be at least 1".into(),
        ));
    }
    let mut runs = super::history::scan_runs(roots, None);
    runs.sort_by(|a, b| b.summary.started_at.cmp(&a.summary.started_at));
    let same_model = |r: &&super::history::RunRecord| {
        crate::state::normalize(&r.summary.config.model_path)
            == crate::state::normalize(&config.model_path)
    };
    let Some(run) = runs
        .iter()
        .filter(same_model)
        .find(|r| r.secs_per_step.is_some())
    else {
        return Ok(RunEstimate {
            secs_per_step: None,
            peak_memory_bytes: None,
        });
    };
    let prev = &run.summary.config;
    let scale = (config.batch_size * config.grad_accum) as f64
        / (prev.batch_size * prev.grad_accum).max(1) as f64;
    Ok(RunEstimate {
        secs_per_step: run.secs_per_step.map(|s| s * scale),
        peak_memory_bytes: run
            .peak_memory_bytes
            .filter(|_| prev.batch_size == config.batch_size),
    })
}

/// Starts a run in `<output_dir>/<run id>`; progress arrives on `on_event`.
///
/// # Errors
/// `alreadyRunning`, `notFound` (model or data folders), `invalidInput`
/// (bad values, or paths the user did not choose).
#[tauri::command]
pub async fn start_training<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    roots: State<'_, RunRoots>,
    jobs: State<'_, TrainingJobs>,
    config: RunConfig,
    on_event: Channel<TrainingEvent>,
) -> Result<String> {
    for p in [
        Some(&config.model_path),
        Some(&config.audio_dir),
        Some(&config.transcript_dir),
    ]
    .into_iter()
    .chain([
        config.alignment_dir.as_ref(),
        config.mimi_path.as_ref(),
        config.tokenizer_path.as_ref(),
    ])
    .chain([config.resume_from.as_ref()])
    .flatten()
    {
        if !p.exists() {
            return Err(Error::NotFound(p.clone()));
        }
        allowed.check(&app, p)?;
    }
    if config.output_dir.as_os_str().is_empty() {
        return Err(Error::InvalidInput("output_dir is required".into()));
    }
    allowed.check(&app, &config.output_dir)?;
    let sink = move |ev: TrainingEvent| {
        // Best effort: a closed window never fails the run.
        let _ = on_event.send(ev);
    };
    let id = start(&jobs, &config, sink)?;
    roots.remember(&app, &config.output_dir)?;
    allowed.allow(&config.output_dir);
    Ok(id)
}

/// Asks the run to stop after the current step (it saves a checkpoint).
///
/// # Errors
/// `notRunning` when `run_id` is not the active run.
#[tauri::command]
pub async fn stop_training(jobs: State<'_, TrainingJobs>, run_id: String) -> Result<()> {
    stop(&jobs, &run_id)
}

/// Synchronous body of [`stop_training`].
pub fn stop(jobs: &TrainingJobs, run_id: &str) -> Result<()> {
    match jobs.running() {
        Some(job) if job.run_id == run_id => {
            job.cancel.cancel();
            Ok(())
        }
        Some(job) => Err(Error::NotRunning(format!(
            "run {run_id} is not running (the active run is {})",
            job.run_id
        ))),
        None => Err(Error::NotRunning(format!("run {run_id} is not running"))),
    }
}

/// Validates, creates the run folder and spawns the training thread.
/// Returns the run id; the thread sends every event to `sink`.
pub fn start(
    jobs: &TrainingJobs,
    config: &RunConfig,
    sink: impl Fn(TrainingEvent) + Send + 'static,
) -> Result<String> {
    let mut active = jobs.0.lock().expect("jobs lock");
    if let Some(job) = active.as_ref() {
        return Err(Error::AlreadyRunning(format!(
            "run {} is still running; stop it first",
            job.run_id
        )));
    }
    std::fs::create_dir_all(&config.output_dir).map_err(|e| Error::io(&config.output_dir, e))?;
    let (run_id, run_dir) = new_run_dir(&config.output_dir)?;
    let cfg = match config.to_train_config(&run_dir) {
        Ok(cfg) => cfg,
        Err(e) => {
            let _ = std::fs::remove_dir(&run_dir);
            return Err(e);
        }
    };
    let cancel = CancelToken::new();
    *active = Some(ActiveJob {
        run_id: run_id.clone(),
        run_dir: run_dir.clone(),
        cancel: cancel.clone(),
    });
    drop(active);
    let slot = jobs.0.clone();
    let id = run_id.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("train-{run_id}"))
        .spawn(move || {
            run_thread(&id, &run_dir, &cfg, &cancel, &sink);
            // The trainer's arrays are gone: give their memory back.
            csm_core::runtime::release_free_memory();
            *slot.lock().expect("jobs lock") = None;
        });
    if let Err(e) = spawned {
        *jobs.0.lock().expect("jobs lock") = None;
        return Err(Error::Internal(format!(
            "cannot start the training thread: {e}"
        )));
    }
    Ok(run_id)
}

/// `YYYYMMDD-HHMMSS` (UTC), with `-2`, `-3`... when taken.
fn new_run_dir(root: &Path) -> Result<(String, PathBuf)> {
    let base = super::history::format_time(std::time::SystemTime::now(), true);
    for n in 1..1000 {
        let id = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let dir = root.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    Err(Error::Internal(format!(
        "no free run folder name under {}",
        root.display()
    )))
}

/// The training thread: runs the trainer, maps its events, reports the end.
fn run_thread(
    run_id: &str,
    run_dir: &Path,
    cfg: &TrainConfig,
    cancel: &CancelToken,
    sink: &dyn Fn(TrainingEvent),
) {
    let mut mapper = EventMapper::new(run_id, run_dir, cfg, sink);
    // The app's edge, like the `csm` tool's: CSM_CACHE_DIR, CSM_COMPILE.
    let settings = csm_core::train::RunSettings::from_env(|k| std::env::var_os(k));
    let result = match (settings, JsonlObserver::new(run_dir, &mut mapper)) {
        (Err(message), _) => Err(("invalidInput", message)),
        (Ok(settings), Ok(mut jsonl)) => csm_core::train::train(cfg, &settings, &mut jsonl, cancel)
            .map_err(|e| (train_error_kind(&e), e.to_string())),
        (Ok(_), Err(e)) => Err((
            "io",
            format!("{}: {e}", run_dir.join("metrics.jsonl").display()),
        )),
    };
    if let Err((kind, message)) = result {
        append_failure(run_dir, kind, &message);
        let step = mapper.last_step;
        sink(TrainingEvent::Failed {
            step,
            error: EventError {
                kind: kind.into(),
                message,
            },
        });
    }
}

fn train_error_kind(e: &TrainError) -> &'static str {
    match e {
        TrainError::Config(_) | TrainError::Resume { .. } => "invalidInput",
        TrainError::Model(_)
        | TrainError::Codec(_)
        | TrainError::Tokenizer(_)
        | TrainError::Asset(_) => "modelLoad",
        TrainError::Output { .. } => "io",
        _ => "training",
    }
}

/// `metrics.jsonl` gets a `failed` line, so History knows how the run ended.
fn append_failure(run_dir: &Path, kind: &str, message: &str) {
    use std::io::Write;
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let line = serde_json::json!({ "event": "failed", "data": { "kind": kind, "message": message }, "time": time });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("metrics.jsonl"))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Core `TrainEvent` → contract `TrainingEvent`.
struct EventMapper<'a> {
    run_id: String,
    run_dir: PathBuf,
    batch_size: u64,
    grad_accum: u64,
    sample_prompt: String,
    sink: &'a dyn Fn(TrainingEvent),
    started: Instant,
    phase: Phase,
    phase_message: Option<String>,
    steps_per_epoch: u64,
    last_step: Option<u64>,
    best_val: Option<f32>,
}

impl<'a> EventMapper<'a> {
    fn new(
        run_id: &str,
        run_dir: &Path,
        cfg: &TrainConfig,
        sink: &'a dyn Fn(TrainingEvent),
    ) -> Self {
        EventMapper {
            run_id: run_id.into(),
            run_dir: run_dir.into(),
            batch_size: cfg.batch_size as u64,
            grad_accum: cfg.grad_accum as u64,
            sample_prompt: cfg.sample_prompt.clone(),
            sink,
            started: Instant::now(),
            phase: Phase::Loading,
            phase_message: None,
            steps_per_epoch: 1,
            last_step: None,
            best_val: None,
        }
    }
}

/// Maps one core phase to the UI's.
pub fn phase(p: CorePhase) -> Phase {
    match p {
        CorePhase::Loading => Phase::Loading,
        CorePhase::EncodingAudio => Phase::Encoding,
        CorePhase::Training => Phase::Training,
        CorePhase::Saving => Phase::Saving,
    }
}

/// The UI's step record of a core step report.
pub fn step_data(r: &csm_core::train::StepReport, steps_per_epoch: u64) -> StepData {
    StepData {
        step: r.step as u64,
        total_steps: r.total_steps as u64,
        epoch: r.step as f64 / steps_per_epoch.max(1) as f64,
        loss: r.loss,
        semantic_loss: r.semantic_loss,
        acoustic_loss: r.acoustic_loss,
        lr: f64::from(r.lr),
        grad_norm: r.grad_norm,
        frames_per_sec: f64::from(r.frames_per_sec),
        memory_bytes: r.memory_bytes,
        elapsed_secs: r.elapsed_secs,
        eta_secs: r.eta_secs.is_finite().then_some(r.eta_secs),
    }
}

/// Seconds of a WAV file, 0 when unreadable.
pub fn wav_secs(path: &Path) -> f32 {
    csm_core::data::audio::read_wav_info(path).map_or(0.0, |i| i.duration_s() as f32)
}

impl TrainingObserver for EventMapper<'_> {
    fn on_event(&mut self, event: &TrainEvent) {
        let out = match event {
            TrainEvent::Started {
                total_steps,
                train_examples,
                val_examples,
                ..
            } => {
                self.steps_per_epoch =
                    steps_per_epoch(*train_examples as u64, self.batch_size, self.grad_accum);
                TrainingEvent::Started {
                    run_id: self.run_id.clone(),
                    run_dir: self.run_dir.clone(),
                    total_steps: *total_steps as u64,
                    steps_per_epoch: self.steps_per_epoch,
                    train_examples: *train_examples as u64,
                    val_examples: *val_examples as u64,
                }
            }
            TrainEvent::Phase { phase: p, detail } => {
                self.phase = phase(*p);
                self.phase_message = Some(detail.clone());
                TrainingEvent::Phase {
                    phase: self.phase,
                    message: Some(detail.clone()),
                    done: None,
                    total: None,
                }
            }
            TrainEvent::Progress { done, total } => TrainingEvent::Phase {
                phase: self.phase,
                message: self.phase_message.clone(),
                done: Some(*done as u64),
                total: Some(*total as u64),
            },
            TrainEvent::Step(r) => {
                self.last_step = Some(r.step as u64);
                TrainingEvent::Step(step_data(r, self.steps_per_epoch))
            }
            TrainEvent::Validation(v) => {
                if v.loss.is_finite() {
                    self.best_val = Some(self.best_val.map_or(v.loss, |b| b.min(v.loss)));
                }
                TrainingEvent::Validation {
                    step: v.step as u64,
                    loss: v.loss,
                    semantic_loss: v.semantic_loss,
                    acoustic_loss: v.acoustic_loss,
                }
            }
            TrainEvent::Checkpoint { step, path } => TrainingEvent::Checkpoint {
                step: *step as u64,
                path: path.clone(),
                mode: SaveMode::Lora,
            },
            TrainEvent::Sample { step, path } => TrainingEvent::Sample {
                step: *step as u64,
                path: path.clone(),
                text: self.sample_prompt.clone(),
                duration_secs: wav_secs(path),
            },
            TrainEvent::Warning { message } => TrainingEvent::Warning {
                step: self.last_step,
                kind: if message.to_lowercase().contains("nan") {
                    WarningKind::Nan
                } else {
                    WarningKind::Other
                },
                message: message.clone(),
            },
            TrainEvent::Finished {
                step,
                cancelled,
                output_dir,
            } => {
                let adapter = output_dir.join("adapters.safetensors");
                TrainingEvent::Finished {
                    status: if *cancelled {
                        FinishStatus::Stopped
                    } else {
                        FinishStatus::Completed
                    },
                    step: *step as u64,
                    elapsed_secs: self.started.elapsed().as_secs_f64(),
                    best_val_loss: self.best_val,
                    adapter_path: (!cancelled && adapter.is_file()).then_some(adapter),
                }
            }
        };
        (self.sink)(out);
    }
}
