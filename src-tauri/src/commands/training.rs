//! `start_training`, `stop_training`, `estimate_run`: the Run screen over
//! `csm_core::train`. The run config crosses IPC as `TrainConfig`'s own
//! serde, the JSON of a run's `config.json` and of `csm finetune-lora
//! --config` (docs/ipc.md, "RunConfig"); its `output_dir` is the folder that
//! receives the run folders. Each run trains on its own OS thread (MLX
//! arrays are created and used there only) and streams `TrainingEvent`s on
//! the channel the UI passed, while `JsonlObserver` writes `metrics.jsonl`
//! for History.

use std::path::{Path, PathBuf};
use std::time::Instant;

use csm_core::cancel::CancelToken;
use csm_core::train::metrics::JsonlObserver;
use csm_core::train::run_dir::RunDir;
use csm_core::train::{Phase as CorePhase, TrainConfig, TrainError, TrainEvent, TrainingObserver};
use serde::Serialize;
use tauri::ipc::Channel;
use tauri::{AppHandle, Runtime, State};

use csm_hub::{find_bundle, BundleFile, Hub, Role};

use super::audio::audio_secs;
use super::history::{scan_runs, RunRecord};
use super::hub::settings_from_env;
use crate::contract::{
    EventError, FinishStatus, Phase, SaveMode, StepData, TrainingEvent, WarningKind,
};
use crate::error::{blocking, Error, Result};
use crate::state::{ActiveJob, AllowedPaths, RunRoots, TrainingJobs};
use crate::time::format_time;

/// The trainer's config: `config` writing into `run_dir`, checked.
fn run_config(config: &TrainConfig, run_dir: &Path) -> Result<TrainConfig> {
    let cfg = TrainConfig {
        output_dir: run_dir.to_path_buf(),
        ..config.clone()
    };
    cfg.validate()
        .map_err(|errors| Error::InvalidInput(errors.join("\n")))?;
    Ok(cfg)
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
    config: TrainConfig,
) -> Result<RunEstimate> {
    let roots = roots.all(&app)?;
    blocking("estimate_run", move || estimate(&roots, &config)).await
}

/// Synchronous body of [`estimate_run`].
pub fn estimate(roots: &[PathBuf], config: &TrainConfig) -> Result<RunEstimate> {
    if config.batch_size == 0 || config.grad_accum == 0 {
        return Err(Error::InvalidInput(
            "batch_size and grad_accum must be at least 1".into(),
        ));
    }
    let mut runs = scan_runs(roots, None);
    runs.sort_by(|a, b| b.summary.started_at.cmp(&a.summary.started_at));
    let same_model = |r: &&RunRecord| {
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
    config: TrainConfig,
    on_event: Channel<TrainingEvent>,
) -> Result<String> {
    let config = match config.voice.is_some() {
        true => {
            let settings = settings_from_env()?;
            let caches = [settings.cache_dir.clone(), settings.assets_dir.clone()];
            let bundle = || -> Result<Option<PathBuf>> {
                let hub = Hub::new(settings)?;
                Ok(speaker_encoder_bundle().and_then(|f| f.cached(&hub)))
            };
            voice_config(config, &caches, bundle, |p| allowed.check(&app, p))?
        }
        false => config,
    };
    for p in input_paths(&config) {
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

/// The files and folders a run of `config` reads: the model and its
/// companions, the dataset (its folders, or `data_dir`, and
/// `speakers_file`) and `resume_from`. An empty `audio_dir` or
/// `transcript_dir` beside a `data_dir` is left out.
pub fn input_paths(config: &TrainConfig) -> Vec<&PathBuf> {
    let dataset = match &config.data_dir {
        Some(dir) => vec![Some(dir)],
        None => vec![Some(&config.audio_dir), Some(&config.transcript_dir)],
    };
    [Some(&config.model_path)]
        .into_iter()
        .chain(dataset)
        .chain([
            config.alignment_dir.as_ref(),
            config.speakers_file.as_ref(),
            config.mimi_path.as_ref(),
            config.tokenizer_path.as_ref(),
            config.resume_from.as_ref(),
        ])
        .flatten()
        .collect()
}

/// The hub bundle the Parameters form names by [`SPEAKER_ENCODER_BUNDLE`].
fn speaker_encoder_bundle() -> Option<&'static BundleFile> {
    find_bundle(SPEAKER_ENCODER_BUNDLE)?
        .files_for(Role::SpeakerEncoder)
        .next()
}

/// The name that stands for the cached `speaker-encoder` bundle in
/// `voice.speaker_encoder` (the Parameters form's choice); the run gets
/// the cached file's path.
pub const SPEAKER_ENCODER_BUNDLE: &str = "speaker-encoder";

/// `config` with its voice-score paths checked and the bundle name
/// resolved: the speaker encoder is [`SPEAKER_ENCODER_BUNDLE`] (its cached
/// file, from `bundle`) or a file; the Whisper model, when given, a folder.
/// Paths inside the hub's caches (`caches`) are the app's own; others must
/// pass `check` (chosen in a dialog). Voice scores off: `config` as it is.
///
/// # Errors
/// `invalidInput` when scores are on without an encoder, or the bundle is
/// not downloaded (each says what to do); `notFound` for a missing file or
/// folder; what `check` or `bundle` return.
pub fn voice_config(
    mut config: TrainConfig,
    caches: &[PathBuf],
    bundle: impl FnOnce() -> Result<Option<PathBuf>>,
    check: impl Fn(&Path) -> Result<()>,
) -> Result<TrainConfig> {
    let Some(voice) = config.voice.as_mut() else {
        return Ok(config);
    };
    let ours = |p: &Path| {
        let p = crate::state::normalize(p);
        caches
            .iter()
            .any(|c| p.starts_with(crate::state::normalize(c)))
    };
    let encoder = voice.speaker_encoder.clone();
    if encoder.as_os_str().is_empty() {
        return Err(Error::InvalidInput(
            "voice scores need a speaker encoder: download the speaker-encoder bundle on the \
             Model screen (Other models) or choose resemblyzer's pretrained.pt, or turn voice \
             scores off"
                .into(),
        ));
    }
    if encoder == Path::new(SPEAKER_ENCODER_BUNDLE) {
        voice.speaker_encoder = bundle()?.ok_or_else(|| {
            Error::InvalidInput(
                "voice scores use the speaker-encoder bundle, which is not downloaded: download \
                 it on the Model screen (Other models), choose resemblyzer's pretrained.pt, or \
                 turn voice scores off"
                    .into(),
            )
        })?;
    } else {
        if !encoder.is_file() {
            return Err(Error::NotFound(encoder));
        }
        if !ours(&encoder) {
            check(&encoder)?;
        }
    }
    if let Some(dir) = &voice.whisper_model {
        if !dir.is_dir() {
            return Err(Error::NotFound(dir.clone()));
        }
        if !ours(dir) {
            check(dir)?;
        }
    }
    Ok(config)
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
    config: &TrainConfig,
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
    let cfg = match run_config(config, &run_dir) {
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
    let base = format_time(std::time::SystemTime::now(), true);
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
            format!("{}: {e}", RunDir::new(run_dir).metrics_path().display()),
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

/// The IPC error kind of a trainer error.
pub fn train_error_kind(e: &TrainError) -> &'static str {
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

/// `metrics.jsonl` gets a `failed` record, so History knows how the run
/// ended (best effort: the run has failed already).
fn append_failure(run_dir: &Path, kind: &str, message: &str) {
    if let Ok(mut log) = RunDir::new(run_dir).open_metrics() {
        let _ = log.append_failure(kind, message);
    }
}

/// Core `TrainEvent` → contract `TrainingEvent`.
struct EventMapper<'a> {
    run_id: String,
    run_dir: PathBuf,
    cfg: &'a TrainConfig,
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
        cfg: &'a TrainConfig,
        sink: &'a dyn Fn(TrainingEvent),
    ) -> Self {
        EventMapper {
            run_id: run_id.into(),
            run_dir: run_dir.into(),
            cfg,
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

impl TrainingObserver for EventMapper<'_> {
    fn on_event(&mut self, event: &TrainEvent) {
        let out = match event {
            TrainEvent::Started {
                total_steps,
                train_examples,
                val_examples,
                ..
            } => {
                // The app trains on one process.
                self.steps_per_epoch = self.cfg.steps_per_epoch(*train_examples, 1) as u64;
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
                TrainingEvent::Step(StepData::from_report(r, self.steps_per_epoch))
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
                    speakers: v.speakers.clone(),
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
                text: self.cfg.sample_prompt.clone(),
                duration_secs: audio_secs(path),
            },
            TrainEvent::VoiceSetup(v) => TrainingEvent::VoiceSetup(v.clone()),
            TrainEvent::VoiceScores(v) => TrainingEvent::VoiceScores(v.clone()),
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
                let adapter = RunDir::new(output_dir).final_adapter();
                TrainingEvent::Finished {
                    status: if *cancelled {
                        FinishStatus::Stopped
                    } else {
                        FinishStatus::Completed
                    },
                    step: *step as u64,
                    elapsed_secs: self.started.elapsed().as_secs_f64(),
                    best_val_loss: self.best_val,
                    adapter_path: adapter.filter(|_| !cancelled),
                }
            }
        };
        (self.sink)(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ui_default_config_is_train_config_default() {
        // ui/tests/config.test.ts checks DEFAULT_CONFIG against the same file.
        let fixture = include_str!("../../../docs/ipc-fixtures/train-config-default.json");
        let ours = serde_json::to_string_pretty(&TrainConfig::default()).unwrap() + "\n";
        assert_eq!(
            fixture, ours,
            "docs/ipc-fixtures/train-config-default.json must be TrainConfig::default() as \
             config.json writes it; update it (and DEFAULT_CONFIG and FIELDS in \
             ui/src/lib/config.ts) to:\n{ours}"
        );
    }

    #[test]
    fn the_ui_voice_prompts_are_the_cores() {
        // ui/tests/config.test.ts checks VOICE_PROMPTS against the same file.
        let fixture: Vec<String> = serde_json::from_str(include_str!(
            "../../../docs/ipc-fixtures/voice-prompts.json"
        ))
        .unwrap();
        assert_eq!(fixture, csm_core::train::VOICE_PROMPTS);
    }

    #[test]
    fn the_run_config_writes_into_the_run_folder_and_is_checked() {
        let form = TrainConfig {
            model_path: "/m".into(),
            audio_dir: "/a".into(),
            transcript_dir: "/t".into(),
            output_dir: "/runs".into(),
            ..TrainConfig::default()
        };
        let cfg = run_config(&form, Path::new("/runs/20260101-000000")).unwrap();
        assert_eq!(cfg.output_dir, Path::new("/runs/20260101-000000"));
        assert_eq!(
            TrainConfig {
                output_dir: form.output_dir.clone(),
                ..cfg
            },
            form,
            "nothing else changes"
        );
        let bad = TrainConfig { lora_r: 0, ..form };
        let err = run_config(&bad, Path::new("/runs/x")).unwrap_err();
        assert_eq!(err.kind(), "invalidInput");
        assert!(err.to_string().contains("--lora-r"), "{err}");
    }

    #[test]
    fn a_runs_inputs_are_its_dataset_folder_or_folders_and_speakers_file() {
        let folders = TrainConfig {
            model_path: "/m".into(),
            audio_dir: "/d/audio".into(),
            transcript_dir: "/d/transcripts".into(),
            speakers_file: Some("/d/speakers.json".into()),
            ..TrainConfig::default()
        };
        let paths =
            |c: &TrainConfig| -> Vec<PathBuf> { input_paths(c).into_iter().cloned().collect() };
        assert_eq!(
            paths(&folders),
            ["/m", "/d/audio", "/d/transcripts", "/d/speakers.json"].map(PathBuf::from)
        );
        let data_dir = TrainConfig {
            data_dir: Some("/voices".into()),
            audio_dir: PathBuf::new(),
            transcript_dir: PathBuf::new(),
            speakers_file: None,
            ..folders
        };
        assert_eq!(
            paths(&data_dir),
            ["/m", "/voices"].map(PathBuf::from),
            "no empty folder paths beside --data-dir"
        );
    }

    fn voice_on(encoder: &str, whisper: Option<&Path>) -> TrainConfig {
        TrainConfig {
            voice: Some(csm_core::train::VoiceConfig {
                whisper_model: whisper.map(Path::to_path_buf),
                ..csm_core::train::VoiceConfig::new(encoder)
            }),
            ..TrainConfig::default()
        }
    }

    fn refuse(p: &Path) -> Result<()> {
        Err(Error::InvalidInput(format!("{} not chosen", p.display())))
    }

    #[test]
    fn voice_scores_without_an_encoder_fail_saying_what_to_do() {
        let no_bundle = || Ok(None);
        let err = voice_config(voice_on("", None), &[], no_bundle, refuse).unwrap_err();
        assert_eq!(err.kind(), "invalidInput");
        assert!(err.to_string().contains("speaker-encoder bundle"), "{err}");
        let err = voice_config(
            voice_on(SPEAKER_ENCODER_BUNDLE, None),
            &[],
            no_bundle,
            refuse,
        )
        .unwrap_err();
        assert_eq!(err.kind(), "invalidInput");
        assert!(err.to_string().contains("not downloaded"), "{err}");
        let err = voice_config(
            voice_on("/nowhere/pretrained.pt", None),
            &[],
            no_bundle,
            refuse,
        )
        .unwrap_err();
        assert_eq!(err.kind(), "notFound");
        assert!(err.to_string().contains("/nowhere/pretrained.pt"), "{err}");
    }

    #[test]
    fn voice_paths_resolve_the_bundle_and_are_checked_outside_the_caches() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, mine) = (dir.path().join("cache"), dir.path().join("mine"));
        std::fs::create_dir_all(cache.join("whisper")).unwrap();
        std::fs::create_dir_all(&mine).unwrap();
        let cached = cache.join("pretrained.pt");
        let chosen = mine.join("pretrained.pt");
        std::fs::write(&cached, b"w").unwrap();
        std::fs::write(&chosen, b"w").unwrap();
        let caches = [cache.clone()];
        // The bundle name becomes the cached file; the cached Whisper folder
        // needs no dialog.
        let cfg = voice_config(
            voice_on(SPEAKER_ENCODER_BUNDLE, Some(&cache.join("whisper"))),
            &caches,
            || Ok(Some(cached.clone())),
            refuse,
        )
        .unwrap();
        let voice = cfg.voice.unwrap();
        assert_eq!(voice.speaker_encoder, cached);
        assert_eq!(voice.whisper_model, Some(cache.join("whisper")));
        // A file of the user's own must have been chosen in a dialog.
        let err = voice_config(
            voice_on(chosen.to_str().unwrap(), None),
            &caches,
            || Ok(None),
            refuse,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not chosen"), "{err}");
        let ok = voice_config(
            voice_on(chosen.to_str().unwrap(), None),
            &caches,
            || Ok(None),
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(ok.voice.unwrap().speaker_encoder, chosen);
        // Off: untouched, and the hub is never asked.
        let off = TrainConfig::default();
        let same =
            voice_config(off.clone(), &caches, || panic!("no hub when off"), refuse).unwrap();
        assert_eq!(same, off);
    }
}
