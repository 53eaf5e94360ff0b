//! New voice and the voice library: `start_voice` / `cancel_voice` run
//! csm-flow's journey (download, transcribe, cut, train with voice scores,
//! summary) on its own thread, its events forwarded on a channel as they
//! are; `voice_library`, `rename_voice`, `delete_voice` and `export_voice`
//! are csm-flow's `library`. Voices live in `<app data>/voices/<id>/`.

use std::path::{Path, PathBuf};

use csm_core::cancel::CancelToken;
use csm_core::train::{RunSettings, TrainConfig, VoiceConfig};
use csm_core::whisper::TranscribeOptions;
use csm_flow::library::{self, ExportReport, Library, LibraryError, VoiceEntry};
use csm_flow::{
    run_voice, FlowError, FlowEvent, FlowOutcome, ModelSource, Overrides, Stage, VoiceDir,
    VoiceRequest,
};
use serde::{Deserialize, Serialize};
use tauri::ipc::Channel;
use tauri::{AppHandle, Runtime, State};

use super::hub::settings_from_env;
use super::training::train_error_kind;
use crate::error::{blocking, Error, Result};
use crate::state::{data_dir, normalize, ActiveJob, AllowedPaths, TrainingJobs};

/// The library folder under the app data dir.
pub const VOICES_DIR: &str = "voices";

/// The library folder, created.
pub fn library_dir<R: Runtime>(app: &AppHandle<R>) -> Result<PathBuf> {
    let dir = data_dir(app)?.join(VOICES_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// Mirrors `NewVoiceRequest` in `api.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewVoiceRequest {
    /// The folder of raw recordings (dropped or chosen).
    pub raw_dir: PathBuf,
    /// The voice's name.
    pub name: String,
    /// An existing voice folder of the library to continue (after the
    /// review, or a stopped journey); `None`: a new one.
    pub voice_dir: Option<PathBuf>,
    /// The CSM model: a bundle name (`csm-1b`) or a checkpoint path.
    pub model: String,
    /// Its Mimi codec, when `model` is a path and the codec is elsewhere.
    pub mimi: Option<PathBuf>,
    /// Its tokenizer, likewise.
    pub tokenizer: Option<PathBuf>,
    /// Whisper: a bundle name or a folder.
    pub whisper: String,
    /// The speaker encoder: a bundle name or resemblyzer's `pretrained.pt`.
    pub speaker_encoder: String,
    /// Whisper's language; `None` detects it per recording.
    pub language: Option<String>,
    /// Whisper's temperature; `None`: 0 with openai-whisper's fallback.
    pub temperature: Option<f32>,
    /// At least this many optimizer steps (the recipe's choice otherwise).
    pub steps: Option<usize>,
    /// A checkpoint, and so a scoring, every this many steps.
    pub save_every: Option<usize>,
    /// Prompts each scoring speaks (the first K of the built-in ones);
    /// `None`: the default number.
    pub voice_prompts: Option<usize>,
    /// Stop after this stage (`transcribe`: the user proofreads, then
    /// continues); `None`: to the end.
    pub stop_after: Option<Stage>,
}

/// How `start_voice` ended (mirrors `VoiceOutcome` in `api.ts`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VoiceOutcome {
    /// Every stage done (`false`: stopped after `stopped_after`).
    pub finished: bool,
    /// The stage it stopped after, as asked.
    pub stopped_after: Option<Stage>,
    /// The voice as the library reads it now.
    pub voice: VoiceEntry,
    /// Its dataset folder (`audio/`, `transcripts/`, `alignments/`), for
    /// proofreading.
    pub dataset_dir: PathBuf,
}

/// Lists the voices of the app's library.
///
/// # Errors
/// `io` when the library folder cannot be listed.
#[tauri::command]
pub async fn voice_library<R: Runtime>(app: AppHandle<R>) -> Result<Library> {
    let dir = library_dir(&app)?;
    blocking("voice_library", move || Ok(library::list_voices(&dir)?)).await
}

/// Renames a voice of the library (its name; the folder stays).
///
/// # Errors
/// `invalidInput` (a bad name, a folder outside the library or not a
/// voice), `io`.
#[tauri::command]
pub async fn rename_voice<R: Runtime>(
    app: AppHandle<R>,
    dir: PathBuf,
    name: String,
) -> Result<VoiceEntry> {
    let dir = in_library(&library_dir(&app)?, &dir)?;
    blocking("rename_voice", move || {
        Ok(library::rename_voice(&dir, &name)?)
    })
    .await
}

/// Deletes a voice of the library, folder and all (the UI asks first).
///
/// # Errors
/// `invalidInput` (outside the library, not a voice), `alreadyRunning`
/// (the journey runs in it), `io`.
#[tauri::command]
pub async fn delete_voice<R: Runtime>(
    app: AppHandle<R>,
    jobs: State<'_, TrainingJobs>,
    dir: PathBuf,
) -> Result<()> {
    let dir = in_library(&library_dir(&app)?, &dir)?;
    if let Some(job) = jobs.running() {
        if job.run_dir.starts_with(&dir) {
            return Err(Error::AlreadyRunning(format!(
                "{} is training; stop it before deleting the voice",
                dir.display()
            )));
        }
    }
    blocking("delete_voice", move || Ok(library::delete_voice(&dir)?)).await
}

/// Exports a voice as a zip at `dest` (a file chosen in the save dialog,
/// which asked before replacing one).
///
/// # Errors
/// `invalidInput` (a `dest` not chosen, a folder outside the library),
/// `notFound` (no trained adapter), `io`, `modelLoad` (the PEFT layout
/// needs the base model).
#[tauri::command]
pub async fn export_voice<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    dir: PathBuf,
    dest: PathBuf,
) -> Result<ExportReport> {
    let dir = in_library(&library_dir(&app)?, &dir)?;
    allowed.check(&app, &dest)?;
    // A MLX model may be loaded (PEFT export): on this blocking thread only.
    blocking("export_voice", move || {
        Ok(library::export_voice(&dir, &dest, true)?)
    })
    .await
}

/// Runs the journey for `request` (one at a time, and not beside a
/// training run); its events arrive on `on_event` (csm-flow's `FlowEvent`
/// as it serializes). Resolves when it stops: finished, or after
/// `stop_after`.
///
/// # Errors
/// `alreadyRunning`, `invalidInput` (a folder not dropped or chosen, a bad
/// request), `notFound`, `download`/`accessDenied`, `cancelled`
/// (`cancel_voice`; a new call continues), `training`, `io`.
#[tauri::command]
pub async fn start_voice<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    jobs: State<'_, TrainingJobs>,
    request: NewVoiceRequest,
    on_event: Channel<FlowEvent>,
) -> Result<VoiceOutcome> {
    allowed.check(&app, &request.raw_dir)?;
    let settings = settings_from_env()?;
    let caches = [settings.cache_dir.clone(), settings.assets_dir.clone()];
    // Models given as paths (a bundle is a name): in the hub caches, or chosen.
    let mut given: Vec<PathBuf> = [request.mimi.clone(), request.tokenizer.clone()]
        .into_iter()
        .flatten()
        .collect();
    given.extend(
        [&request.model, &request.whisper, &request.speaker_encoder]
            .into_iter()
            .map(PathBuf::from)
            .filter(|p| p.is_absolute()),
    );
    for p in &given {
        check_model_path(p, &caches, |p| allowed.check(&app, p))?;
    }
    // The app's edge, like the `csm` tool's: CSM_CACHE_DIR, CSM_COMPILE.
    let run = RunSettings::from_env(|k| std::env::var_os(k)).map_err(Error::InvalidInput)?;
    let library = library_dir(&app)?;
    let voice_dir = match &request.voice_dir {
        Some(d) => in_library(&library, d)?,
        None => new_voice_dir(&library, &request.name)?,
    };
    let cancel = CancelToken::new();
    {
        let mut active = jobs.0.lock().expect("jobs lock");
        if let Some(job) = active.as_ref() {
            return Err(Error::AlreadyRunning(format!(
                "{} is still running; stop it first",
                job.run_id
            )));
        }
        *active = Some(ActiveJob {
            run_id: format!("voice:{}", voice_dir.display()),
            run_dir: VoiceDir::new(&voice_dir).run_dir(),
            cancel: cancel.clone(),
        });
    }
    // Proofreading runs while the journey goes on (the models download
    // beside it): the voice's folder is open to the dataset commands now.
    allowed.allow(&voice_dir);
    let slot = jobs.0.clone();
    let flow = flow_request(&request, voice_dir.clone(), settings, run);
    let (tx, rx) = tauri::async_runtime::channel(1);
    // MLX arrays stay on this thread (as training's do).
    let spawned = std::thread::Builder::new()
        .name("voice".into())
        .spawn(move || {
            let mut sink = |e: &FlowEvent| {
                // Best effort: a closed window never fails the journey.
                let _ = on_event.send(e.clone());
            };
            let result = run_voice(&flow, &mut sink, &cancel);
            csm_core::runtime::release_free_memory();
            *slot.lock().expect("jobs lock") = None;
            let _ = tx.blocking_send(result);
        });
    if let Err(e) = spawned {
        *jobs.0.lock().expect("jobs lock") = None;
        return Err(Error::Internal(format!(
            "cannot start the voice thread: {e}"
        )));
    }
    let mut rx = rx;
    let result = rx
        .recv()
        .await
        .ok_or_else(|| Error::Internal("the voice thread ended without a result".into()))?;
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            // A folder made for this call that the journey never started in
            // (no voice.json) goes again; removing only an empty one.
            if request.voice_dir.is_none() && !VoiceDir::new(&voice_dir).exists() {
                let _ = std::fs::remove_dir(&voice_dir);
            }
            return Err(flow_error(e));
        }
    };
    let dataset_dir = VoiceDir::new(&voice_dir).dataset_dir();
    let voice = blocking("start_voice", move || Ok(library::read_voice(&voice_dir)?)).await?;
    Ok(match outcome {
        FlowOutcome::Finished(_) => VoiceOutcome {
            finished: true,
            stopped_after: None,
            voice,
            dataset_dir,
        },
        FlowOutcome::StoppedAfter(stage) => VoiceOutcome {
            finished: false,
            stopped_after: Some(stage),
            voice,
            dataset_dir,
        },
    })
}

/// Stops the journey at its next check (a download chunk, a recording, a
/// training step); the call then rejects with `cancelled`, and a new
/// `start_voice` on the same voice continues. Returns whether one ran.
#[tauri::command]
pub async fn cancel_voice(jobs: State<'_, TrainingJobs>) -> Result<bool> {
    Ok(match jobs.running() {
        Some(job) if job.run_id.starts_with("voice:") => {
            job.cancel.cancel();
            true
        }
        _ => false,
    })
}

/// The flow's request for the app's `request`: bundles by name, paths as
/// paths; the machine settings from the environment, as training's.
fn flow_request(
    request: &NewVoiceRequest,
    voice_dir: PathBuf,
    hub: csm_hub::HubSettings,
    run: RunSettings,
) -> VoiceRequest {
    let source = |s: &str| {
        if Path::new(s).is_absolute() {
            ModelSource::Path(PathBuf::from(s))
        } else {
            ModelSource::Bundle(s.to_string())
        }
    };
    let mut transcribe = TranscribeOptions {
        language: request
            .language
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "auto")
            .map(str::to_string),
        ..TranscribeOptions::default()
    };
    if let Some(t) = request.temperature {
        transcribe.temperatures = vec![t];
    }
    VoiceRequest {
        raw_dir: request.raw_dir.clone(),
        voice_dir,
        name: Some(request.name.trim().to_string()).filter(|n| !n.is_empty()),
        speaker_name: None,
        model: source(&request.model),
        mimi: request.mimi.clone(),
        tokenizer: request.tokenizer.clone(),
        whisper: source(&request.whisper),
        speaker_encoder: source(&request.speaker_encoder),
        hub: Some(hub),
        base: TrainConfig {
            // The flow sets the encoder and Whisper; only the prompts are ours.
            voice: request.voice_prompts.map(|k| VoiceConfig {
                prompts: VoiceConfig::builtin_prompts(k),
                ..VoiceConfig::new("")
            }),
            ..TrainConfig::default()
        },
        overrides: Overrides {
            steps: request.steps,
            save_every: request.save_every,
            ..Overrides::default()
        },
        run,
        transcribe,
        stop_after: request.stop_after,
    }
}

/// A model file or folder the user gave: it must exist, and lie in the hub
/// caches (the app's own) or have been chosen (`check`).
fn check_model_path(
    p: &Path,
    caches: &[PathBuf],
    check: impl Fn(&Path) -> Result<()>,
) -> Result<()> {
    if !p.exists() {
        return Err(Error::NotFound(p.to_path_buf()));
    }
    let n = normalize(p);
    if caches.iter().any(|c| n.starts_with(normalize(c))) {
        return Ok(());
    }
    check(p)
}

/// `dir` when it is a folder directly inside the library.
fn in_library(library: &Path, dir: &Path) -> Result<PathBuf> {
    let n = normalize(dir);
    if n.parent() != Some(normalize(library).as_path()) {
        return Err(Error::InvalidInput(format!(
            "{} is not a voice of the library {}",
            dir.display(),
            library.display()
        )));
    }
    Ok(n)
}

/// A new folder for a voice called `name`: its name in lower case, letters
/// and digits joined by `-`, with `-2`, `-3`... when taken.
fn new_voice_dir(library: &Path, name: &str) -> Result<PathBuf> {
    let name = library::check_name(name)?;
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "voice" } else { slug };
    for n in 1..1000 {
        let id = if n == 1 {
            slug.to_string()
        } else {
            format!("{slug}-{n}")
        };
        let dir = library.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    Err(Error::Internal(format!(
        "no free voice folder name under {}",
        library.display()
    )))
}

/// The IPC error of a journey that failed.
fn flow_error(e: FlowError) -> Error {
    match e {
        FlowError::Download { what, source } => match Error::from(*source) {
            Error::Download(m) => Error::Download(format!("downloading {what}: {m}")),
            other => other,
        },
        e @ FlowError::Cancelled { .. } => Error::Cancelled(e.to_string()),
        e @ (FlowError::Request(_) | FlowError::NoRecordings { .. } | FlowError::Read { .. }) => {
            Error::InvalidInput(e.to_string())
        }
        FlowError::Write { path, source } => Error::io(&path, source),
        FlowError::Train(t) => match train_error_kind(&t) {
            "invalidInput" => Error::InvalidInput(t.to_string()),
            "modelLoad" => Error::ModelLoad(t.to_string()),
            "notFound" | "io" => Error::Training(t.to_string()),
            _ => Error::Training(format!("training: {t}")),
        },
        e => Error::Training(e.to_string()),
    }
}

impl From<LibraryError> for Error {
    fn from(e: LibraryError) -> Self {
        match e {
            LibraryError::NoAdapter { .. } => Error::NotFound(PathBuf::from(e.to_string())),
            LibraryError::Exists { path } => Error::AlreadyExists(path),
            e @ (LibraryError::NotAVoice { .. }
            | LibraryError::InvalidName { .. }
            | LibraryError::Voice(_)
            | LibraryError::Run { .. }) => Error::InvalidInput(e.to_string()),
            e @ LibraryError::Peft { .. } => Error::ModelLoad(e.to_string()),
            e => Error::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voice_folders_are_named_after_the_voice_and_never_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let a = new_voice_dir(tmp.path(), "  Ann's Voice! ").unwrap();
        assert_eq!(a.file_name().unwrap(), "ann-s-voice");
        let b = new_voice_dir(tmp.path(), "ann's voice").unwrap();
        assert_eq!(b.file_name().unwrap(), "ann-s-voice-2");
        assert_eq!(
            new_voice_dir(tmp.path(), "!!!")
                .unwrap()
                .file_name()
                .unwrap(),
            "voice"
        );
        assert_eq!(
            new_voice_dir(tmp.path(), " ").unwrap_err().kind(),
            "invalidInput"
        );
    }

    #[test]
    fn only_folders_directly_in_the_library_are_voices() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("voices");
        std::fs::create_dir_all(lib.join("ann")).unwrap();
        assert!(in_library(&lib, &lib.join("ann")).is_ok());
        for bad in [
            tmp.path().to_path_buf(),
            lib.clone(),
            lib.join("ann/run"),
            lib.join("../x"),
        ] {
            assert_eq!(
                in_library(&lib, &bad).unwrap_err().kind(),
                "invalidInput",
                "{bad:?}"
            );
        }
    }
}
