//! Managed state shared by the commands: which paths the user gave the app,
//! where runs live, the active training job and the audio player.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
        if self.contains(path) || picked_in_dialog(app, path) {
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

/// Folders that hold run folders: the default one plus every `output_dir`
/// the app has trained into (remembered in `runs-roots.json`).
#[derive(Debug)]
pub struct RunRoots {
    default: PathBuf,
    file: PathBuf,
    roots: Mutex<Vec<PathBuf>>,
}

impl RunRoots {
    /// Loads the remembered roots from `data_dir`.
    pub fn load(data_dir: &Path) -> Self {
        let file = data_dir.join("runs-roots.json");
        let roots = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<PathBuf>>(&t).ok())
            .unwrap_or_default();
        RunRoots {
            default: data_dir.join("runs"),
            file,
            roots: Mutex::new(roots),
        }
    }

    /// The app's default runs folder.
    pub fn default_root(&self) -> &Path {
        &self.default
    }

    /// Default root first, then the remembered ones.
    pub fn all(&self) -> Vec<PathBuf> {
        let mut v = vec![self.default.clone()];
        for r in self.roots.lock().expect("run roots lock").iter() {
            if !v.contains(r) {
                v.push(r.clone());
            }
        }
        v
    }

    /// Remembers `root` (persisted best effort).
    pub fn remember(&self, root: &Path) -> Result<()> {
        let root = normalize(root);
        let mut roots = self.roots.lock().expect("run roots lock");
        if root == normalize(&self.default) || roots.contains(&root) {
            return Ok(());
        }
        roots.push(root);
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let text =
            serde_json::to_string_pretty(&*roots).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(&self.file, text).map_err(|e| Error::io(&self.file, e))
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
    pub cancel: csm_core::train::CancelToken,
}

impl TrainingJobs {
    /// The id of the running job, if any.
    pub fn running(&self) -> Option<ActiveJob> {
        self.0.lock().expect("jobs lock").clone()
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

/// Registers the state above; called from the builder's `setup`.
pub fn manage<R: Runtime>(app: &AppHandle<R>) -> Result<()> {
    let dir = data_dir(app)?;
    let allowed = AllowedPaths::default();
    allowed.allow(&dir);
    let roots = RunRoots::load(&dir);
    for r in roots.all() {
        allowed.allow(&r);
    }
    app.manage(allowed);
    app.manage(roots);
    app.manage(TrainingJobs::default());
    app.manage(crate::commands::audio::Player::default());
    Ok(())
}
