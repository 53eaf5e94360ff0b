//! Managed state shared by the commands: which paths the user gave the app,
//! where runs live, the active training and generation jobs (the audio
//! player is [`crate::player::Player`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tauri::{AppHandle, Manager, Runtime};

use crate::error::{Error, Result};

/// Folders and files the app may read or write: the app's own data dirs,
/// run folders it created, and what the user picked in a dialog or dropped
/// on the window. Dialog picks are recorded by tauri-plugin-dialog in the
/// asset-protocol scope (which is otherwise empty and unused by the UI);
/// drops and the app's own dirs are recorded here.
#[derive(Debug, Default)]
pub struct AllowedPaths(Mutex<Vec<PathBuf>>);

impl AllowedPaths {
    /// Allows `path` and everything below it.
    pub fn allow(&self, path: &Path) {
        let path = normalize(path);
        let mut roots = self.0.lock().expect("allowed paths lock");
        if !roots.iter().any(|r| path.starts_with(r)) {
            roots.push(path);
        }
    }

    /// Whether `path` is below an allowed root of this list.
    pub fn contains(&self, path: &Path) -> bool {
        let path = normalize(path);
        self.0
            .lock()
            .expect("allowed paths lock")
            .iter()
            .any(|r| path.starts_with(r))
    }

    /// Refuses paths the user did not give the app (`invalidInput`).
    pub fn check<R: Runtime>(&self, app: &AppHandle<R>, path: &Path) -> Result<()> {
        let norm = normalize(path);
        let own = || -> bool {
            let roots = app.state::<RunRoots>();
            data_dir(app).is_ok_and(|d| norm.starts_with(normalize(&d)))
                || roots
                    .all(app)
                    .is_ok_and(|r| r.iter().any(|r| norm.starts_with(normalize(r))))
        };
        if self.contains(path) || own() || picked_in_dialog(app, path) {
            return Ok(());
        }
        Err(Error::InvalidInput(format!(
            "{} was not chosen in a dialog or dropped on the window; choose it with the folder or file button first",
            path.display()
        )))
    }
}

fn picked_in_dialog<R: Runtime>(app: &AppHandle<R>, path: &Path) -> bool {
    // tauri-plugin-dialog adds picked folders (recursively) and files, and
    // save-dialog targets (which may not exist yet), to this scope.
    app.asset_protocol_scope().is_allowed(path)
}

/// Absolute, with symlinks resolved as far as the path exists.
pub fn normalize(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            normalize(parent).join(name)
        }
        _ => path.to_path_buf(),
    }
}

/// Folders that hold run folders: `<app data>/runs` plus every `output_dir`
/// the app has trained into (remembered in `<app data>/runs-roots.json`).
/// Read on first use (the app data dir needs an `AppHandle`).
#[derive(Debug, Default)]
pub struct RunRoots(OnceLock<RootsInner>);

#[derive(Debug)]
struct RootsInner {
    default: PathBuf,
    file: PathBuf,
    roots: Mutex<Vec<PathBuf>>,
}

impl RunRoots {
    fn inner<R: Runtime>(&self, app: &AppHandle<R>) -> Result<&RootsInner> {
        if let Some(i) = self.0.get() {
            return Ok(i);
        }
        let dir = data_dir(app)?;
        let file = dir.join("runs-roots.json");
        let roots = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<PathBuf>>(&t).ok())
            .unwrap_or_default();
        let _ = self.0.set(RootsInner {
            default: dir.join("runs"),
            file,
            roots: Mutex::new(roots),
        });
        Ok(self.0.get().expect("just set"))
    }

    /// The app's default runs folder.
    pub fn default_root<R: Runtime>(&self, app: &AppHandle<R>) -> Result<PathBuf> {
        Ok(self.inner(app)?.default.clone())
    }

    /// Default root first, then the remembered ones.
    pub fn all<R: Runtime>(&self, app: &AppHandle<R>) -> Result<Vec<PathBuf>> {
        let inner = self.inner(app)?;
        let mut v = vec![inner.default.clone()];
        for r in inner.roots.lock().expect("run roots lock").iter() {
            if !v.contains(r) {
                v.push(r.clone());
            }
        }
        Ok(v)
    }

    /// Remembers `root` (persisted).
    pub fn remember<R: Runtime>(&self, app: &AppHandle<R>, root: &Path) -> Result<()> {
        let inner = self.inner(app)?;
        let root = normalize(root);
        let mut roots = inner.roots.lock().expect("run roots lock");
        if root == normalize(&inner.default) || roots.contains(&root) {
            return Ok(());
        }
        roots.push(root);
        let text =
            serde_json::to_string_pretty(&*roots).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(&inner.file, text).map_err(|e| Error::io(&inner.file, e))
    }
}

/// The active training run, if any (one at a time).
#[derive(Debug, Clone, Default)]
pub struct TrainingJobs(pub Arc<Mutex<Option<ActiveJob>>>);

/// What `stop_training` needs of a running job.
#[derive(Debug, Clone)]
pub struct ActiveJob {
    /// Run id.
    pub run_id: String,
    /// Run folder.
    pub run_dir: PathBuf,
    /// Flips the trainer's stop flag.
    pub cancel: csm_core::cancel::CancelToken,
}

impl TrainingJobs {
    /// The id of the running job, if any.
    pub fn running(&self) -> Option<ActiveJob> {
        self.0.lock().expect("jobs lock").clone()
    }
}

/// Cancel flags of the `generate_sample` calls in progress (the Samples
/// screen's stop button cancels all of them, e.g. both halves of an A/B).
#[derive(Debug, Default)]
pub struct GenerationJobs(Mutex<Vec<(u64, csm_core::cancel::CancelToken)>>, AtomicU64);

impl GenerationJobs {
    /// Registers a generation; the guard unregisters it when dropped.
    pub fn start(&self) -> GenerationGuard<'_> {
        let id = self.1.fetch_add(1, Ordering::Relaxed);
        let cancel = csm_core::cancel::CancelToken::new();
        self.0
            .lock()
            .expect("generation jobs lock")
            .push((id, cancel.clone()));
        GenerationGuard {
            jobs: self,
            id,
            cancel,
        }
    }

    /// Cancels every generation in progress; returns how many there were.
    pub fn cancel_all(&self) -> usize {
        let jobs = self.0.lock().expect("generation jobs lock");
        for (_, cancel) in jobs.iter() {
            cancel.cancel();
        }
        jobs.len()
    }
}

/// One registered generation (see [`GenerationJobs::start`]).
#[derive(Debug)]
pub struct GenerationGuard<'a> {
    jobs: &'a GenerationJobs,
    id: u64,
    /// Set by [`GenerationJobs::cancel_all`].
    pub cancel: csm_core::cancel::CancelToken,
}

impl Drop for GenerationGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.jobs.0.lock() {
            jobs.retain(|(id, _)| *id != self.id);
        }
    }
}

/// The app data dir (`~/.local/share/<identifier>` on Linux), created.
pub fn data_dir<R: Runtime>(app: &AppHandle<R>) -> Result<PathBuf> {
    let dir = app
        .path()
        .app_data_dir()
        .map_err(|e| Error::Internal(format!("no app data dir: {e}")))?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// Registers the state above on a builder (any runtime, so tests get it too).
pub fn manage<R: Runtime>(builder: tauri::Builder<R>) -> tauri::Builder<R> {
    builder
        .manage(AllowedPaths::default())
        .manage(RunRoots::default())
        .manage(TrainingJobs::default())
        .manage(GenerationJobs::default())
        .manage(crate::player::Player::default())
}
