//! The Model screen's downloads from the Hugging Face hub (through
//! `csm-hub`): bundles with per-file progress on a channel, cancel (a later
//! download resumes the partial files), the hub cache's list with delete,
//! and saving a token where `huggingface-cli login` keeps it.
//!
//! Settings come from the environment as the CLI's do (`HF_HOME`,
//! `HF_HUB_CACHE`, `HF_ASSETS_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`,
//! `HF_HUB_OFFLINE`, `CSM_PYPI_URL`), read here at each command (the
//! library reads none): the app and Python tools share one cache, and a test
//! points `HF_ENDPOINT` at a mock hub.

use std::path::PathBuf;
use std::sync::Mutex;

use csm_hub::{
    find_bundle, Cancel, DownloadObserver, Hub, HubError, HubSettings, PackageCache, RepoKind,
    Role, BUNDLES,
};
use serde::Serialize;
use tauri::ipc::Channel;
use tauri::State;

use crate::error::{blocking, Error, Result};
use crate::state::AllowedPaths;

/// The download in progress, if any (one at a time).
#[derive(Debug, Default)]
pub struct HubDownloads(Mutex<Option<Cancel>>);

/// Progress of one `download_bundle`, per file (mirrors `DownloadEvent` in
/// `api.ts`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "event",
    content = "data"
)]
pub enum DownloadEvent {
    /// Already in the cache.
    Cached {
        /// `org/name`.
        repo: String,
        /// File in the repo.
        file: String,
        /// Bytes.
        size: u64,
    },
    /// Waiting for another download of the same file (another app or a
    /// Python tool) to finish.
    Waiting {
        /// `org/name`.
        repo: String,
        /// File in the repo.
        file: String,
    },
    /// Bytes on disk so far (also sent when a transfer starts or resumes).
    Progress {
        /// `org/name`.
        repo: String,
        /// File in the repo.
        file: String,
        /// Bytes on disk.
        done: u64,
        /// Total bytes, when the hub announced them.
        total: Option<u64>,
    },
    /// The transfer broke and is being resumed.
    Retrying {
        /// `org/name`.
        repo: String,
        /// File in the repo.
        file: String,
        /// What broke.
        reason: String,
    },
    /// Checking the file's sha256.
    Verifying {
        /// `org/name`.
        repo: String,
        /// File in the repo.
        file: String,
    },
    /// Downloaded and verified.
    Finished {
        /// `org/name`.
        repo: String,
        /// File in the repo.
        file: String,
        /// Bytes.
        size: u64,
    },
}

/// Where the hub and its cache are (mirrors `HubStatus` in `api.ts`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubStatus {
    /// The hub's URL.
    pub endpoint: String,
    /// The shared cache folder.
    pub cache_dir: PathBuf,
    /// Where the token comes from (`$HF_TOKEN`, the token file), if any.
    pub token_source: Option<String>,
    /// Where `save_hub_token` writes.
    pub token_path: PathBuf,
    /// `HF_HUB_OFFLINE` is set.
    pub offline: bool,
}

/// One file of a bundle (mirrors `BundleFileInfo` in `api.ts`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleFileInfo {
    /// `model`, `codec`, `tokenizer`, or the camelCase name of a role
    /// csm-hub added later (see [`role_name`]).
    pub role: String,
    /// `org/name`.
    pub repo: &'static str,
    /// File in the repo.
    pub file: &'static str,
    /// Its path when already cached.
    pub cached: Option<PathBuf>,
}

/// A bundle the app can download (mirrors `BundleInfo` in `api.ts`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleInfo {
    /// `csm-1b`.
    pub name: &'static str,
    /// One line.
    pub description: &'static str,
    /// Its files.
    pub files: Vec<BundleFileInfo>,
}

/// One downloaded file (mirrors `DownloadedFile` in `api.ts`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownloadedFile {
    /// As in [`BundleFileInfo::role`].
    pub role: String,
    /// `org/name`.
    pub repo: String,
    /// File in the repo.
    pub file: String,
    /// Its snapshot path in the cache.
    pub path: PathBuf,
}

/// A downloaded bundle: the paths for the model slots when it has them, and
/// every file (mirrors `DownloadedBundle` in `api.ts`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownloadedBundle {
    /// The snapshot folder of its `model` files (`--model-path`), if any.
    pub model_path: Option<PathBuf>,
    /// Its `codec` file (`--mimi-path`), if any.
    pub mimi_path: Option<PathBuf>,
    /// Its `tokenizer` file (`--tokenizer-path`), if any.
    pub tokenizer_path: Option<PathBuf>,
    /// Every file of the bundle, in its order.
    pub files: Vec<DownloadedFile>,
}

/// One repo of the hub cache, or one release of the package cache (mirrors
/// `CachedModel` in `api.ts`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedModel {
    /// `org/name`, or `pypi:project==version` for a package.
    pub repo: String,
    /// `model`, `dataset`, `space` or `package`.
    pub kind: &'static str,
    /// Bytes of complete files.
    pub size_bytes: u64,
    /// Bytes of interrupted downloads (resumed by the next download).
    pub partial_bytes: u64,
    /// Branches pointing at the cached commits, e.g. `main`.
    pub refs: Vec<String>,
    /// File names over all cached commits.
    pub files: Vec<String>,
}

/// The wire name of a bundle role: its variant name in camelCase
/// (`Model` -> `model`, a later `SpeakerEncoder` -> `speakerEncoder`), so
/// roles csm-hub adds reach the UI without a change here.
pub fn role_name(role: Role) -> String {
    let name = format!("{role:?}");
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => name,
    }
}

/// The hub settings of this process's environment.
pub fn settings_from_env() -> Result<HubSettings> {
    HubSettings::from_environment(&|k| std::env::var(k).ok()).map_err(Error::from)
}

/// The app's words for a refused repo: the licence page and the token field
/// on this screen, instead of the CLI's `HF_TOKEN` / `huggingface-cli login`.
fn access_denied(
    repo: &str,
    repo_url: &str,
    status: u16,
    code: &str,
    token: Option<&str>,
) -> Error {
    let tokens_url = repo_url
        .strip_suffix(repo)
        .map(|endpoint| format!("{endpoint}settings/tokens"))
        .unwrap_or_else(|| "the hub's settings page".into());
    let message = match token {
        None => format!(
            "{repo} is gated or private (HTTP {status}{code}) and no token was sent. Sign in on \
             the hub, accept its licence at {repo_url}, create a read token at {tokens_url}, \
             save it in the token field below, then download again."
        ),
        Some(source) => format!(
            "{repo} refused the token from {source} (HTTP {status}{code}). Accept its licence \
             at {repo_url} with the account that token belongs to (approval can take a \
             moment), or save another token below, then download again."
        ),
    };
    Error::AccessDenied {
        message,
        url: repo_url.to_string(),
    }
}

impl From<HubError> for Error {
    fn from(e: HubError) -> Self {
        match e {
            HubError::AccessDenied {
                repo,
                repo_url,
                status,
                code,
                token,
                ..
            } => access_denied(&repo, &repo_url, status, &code, token.as_deref()),
            e @ HubError::Cancelled { .. } => Error::Cancelled(e.to_string()),
            e @ (HubError::InvalidRepoId { .. }
            | HubError::InvalidFileName { .. }
            | HubError::InvalidRevision { .. }) => Error::InvalidInput(e.to_string()),
            e => Error::Download(e.to_string()),
        }
    }
}

/// Sends csm-hub's events on the channel (best effort).
struct ChannelObserver<F: FnMut(DownloadEvent)>(F);

impl<F: FnMut(DownloadEvent)> DownloadObserver for ChannelObserver<F> {
    fn on_event(&mut self, event: &csm_hub::DownloadEvent<'_>) {
        use csm_hub::DownloadEvent as E;
        let out = match *event {
            E::Cached {
                repo, file, size, ..
            } => DownloadEvent::Cached {
                repo: repo.into(),
                file: file.into(),
                size,
            },
            E::WaitingForLock { repo, file } => DownloadEvent::Waiting {
                repo: repo.into(),
                file: file.into(),
            },
            E::Started {
                repo,
                file,
                total,
                resumed_from,
            } => DownloadEvent::Progress {
                repo: repo.into(),
                file: file.into(),
                done: resumed_from,
                total,
            },
            E::Progress {
                repo,
                file,
                done,
                total,
            } => DownloadEvent::Progress {
                repo: repo.into(),
                file: file.into(),
                done,
                total,
            },
            E::Retrying {
                repo, file, reason, ..
            } => DownloadEvent::Retrying {
                repo: repo.into(),
                file: file.into(),
                reason: reason.into(),
            },
            E::Verifying { repo, file } => DownloadEvent::Verifying {
                repo: repo.into(),
                file: file.into(),
            },
            E::Finished {
                repo, file, size, ..
            } => DownloadEvent::Finished {
                repo: repo.into(),
                file: file.into(),
                size,
            },
            _ => return,
        };
        (self.0)(out);
    }
}

/// Downloads bundle `name` (resuming partial files), sending events to
/// `send`; the synchronous body of [`download_bundle`].
pub fn download(
    settings: HubSettings,
    name: &str,
    send: impl FnMut(DownloadEvent),
    cancel: &Cancel,
) -> Result<DownloadedBundle> {
    let bundle = find_bundle(name).ok_or_else(|| {
        let names: Vec<&str> = BUNDLES.iter().map(|b| b.name).collect();
        Error::InvalidInput(format!("no bundle `{name}` (known: {})", names.join(", ")))
    })?;
    let hub = Hub::new(settings)?;
    let got = bundle.download(&hub, &mut ChannelObserver(send), cancel)?;
    let first = |role| {
        got.iter()
            .find(|(f, _)| f.role == role)
            .map(|(_, r)| r.path.clone())
    };
    Ok(DownloadedBundle {
        // The snapshot folder holds the weights and config.json side by side.
        model_path: first(Role::Model).and_then(|p| p.parent().map(PathBuf::from)),
        mimi_path: first(Role::Codec),
        tokenizer_path: first(Role::Tokenizer),
        files: got
            .iter()
            .map(|(f, r)| DownloadedFile {
                role: role_name(f.role),
                repo: f.repo.to_string(),
                file: f.file.to_string(),
                path: r.path.clone(),
            })
            .collect(),
    })
}

/// Where the hub and the cache are, and whether a token is set.
///
/// # Errors
/// `download` when no cache folder can be found.
#[tauri::command]
pub async fn hub_status() -> Result<HubStatus> {
    let s = settings_from_env()?;
    Ok(HubStatus {
        endpoint: s.endpoint.clone(),
        cache_dir: s.cache_dir.clone(),
        token_source: s.token.as_ref().map(|t| t.source().to_string()),
        token_path: s.token_path.clone(),
        offline: s.offline,
    })
}

/// The bundles the app can download, with what of them is cached.
///
/// # Errors
/// `download` when no cache folder can be found.
#[tauri::command]
pub async fn list_bundles() -> Result<Vec<BundleInfo>> {
    let hub = Hub::new(settings_from_env()?)?;
    Ok(BUNDLES
        .iter()
        .map(|b| BundleInfo {
            name: b.name,
            description: b.description,
            files: b
                .files
                .iter()
                .map(|f| BundleFileInfo {
                    role: role_name(f.role),
                    repo: f.repo,
                    file: f.file,
                    cached: f.cached(&hub),
                })
                .collect(),
        })
        .collect())
}

/// Downloads a bundle into the shared hub cache, sending
/// [`DownloadEvent`]s on `on_event`; files already there are not fetched
/// again and partial ones resume. The cache becomes readable by the other
/// commands.
///
/// # Errors
/// `alreadyRunning` while another download runs; `cancelled` after
/// `cancel_download` (partial files are kept); `accessDenied` (with the
/// repo page as `url`) when the hub refuses a gated or private repo;
/// `download` for a missing repo or file, a broken connection, a checksum
/// mismatch, a full disk or an unwritable cache, each naming what to do.
#[tauri::command]
pub async fn download_bundle(
    allowed: State<'_, AllowedPaths>,
    jobs: State<'_, HubDownloads>,
    name: String,
    on_event: Channel<DownloadEvent>,
) -> Result<DownloadedBundle> {
    let settings = settings_from_env()?;
    let cancel = {
        let mut job = jobs.0.lock().expect("downloads lock");
        if job.is_some() {
            return Err(Error::AlreadyRunning(
                "a download is already running; cancel it first".into(),
            ));
        }
        let cancel = Cancel::new();
        *job = Some(cancel.clone());
        cancel
    };
    allowed.allow(&settings.cache_dir);
    allowed.allow(&settings.assets_dir);
    let send = move |e: DownloadEvent| {
        let _ = on_event.send(e);
    };
    let result = blocking("download_bundle", move || {
        download(settings, &name, send, &cancel)
    })
    .await;
    *jobs.0.lock().expect("downloads lock") = None;
    result
}

/// Stops the running download at its next chunk (it fails with
/// `cancelled`; the partial file stays for resuming). Does nothing when none
/// runs.
///
/// # Errors
/// None in practice.
#[tauri::command]
pub async fn cancel_download(jobs: State<'_, HubDownloads>) -> Result<()> {
    if let Some(cancel) = jobs.0.lock().expect("downloads lock").as_ref() {
        cancel.cancel();
    }
    Ok(())
}

/// The repos in the shared hub cache, then the releases whose files came
/// from package-index wheels (`pypi:project==version`, kind `package`), with
/// sizes.
///
/// # Errors
/// `download` when a cache folder cannot be read.
#[tauri::command]
pub async fn list_cached_models() -> Result<Vec<CachedModel>> {
    let settings = settings_from_env()?;
    blocking("list_cached_models", move || {
        let packages = PackageCache::new(&settings.assets_dir).list()?;
        let cache = csm_hub::HubCache::new(settings.cache_dir);
        let mut out: Vec<CachedModel> = cache
            .list()?
            .into_iter()
            .map(|r| {
                let mut files: Vec<String> = r
                    .revisions
                    .iter()
                    .flat_map(|rev| rev.files.iter().map(|f| f.name.clone()))
                    .collect();
                files.sort();
                files.dedup();
                CachedModel {
                    refs: r
                        .revisions
                        .iter()
                        .flat_map(|rev| rev.refs.clone())
                        .collect(),
                    kind: match r.kind {
                        RepoKind::Model => "model",
                        RepoKind::Dataset => "dataset",
                        RepoKind::Space => "space",
                    },
                    repo: r.repo,
                    size_bytes: r.size_on_disk,
                    partial_bytes: r.incomplete_bytes,
                    files,
                }
            })
            .collect();
        out.extend(packages.into_iter().map(|p| CachedModel {
            repo: p.label(),
            kind: "package",
            size_bytes: p.size_on_disk,
            partial_bytes: p.incomplete_bytes,
            refs: Vec::new(),
            files: p.files.into_iter().map(|f| f.name).collect(),
        }));
        Ok(out)
    })
    .await
}

/// Deletes a model repo from the hub cache, or a `pypi:project==version`
/// release from the package cache (as `list_cached_models` names them);
/// returns the bytes freed.
///
/// # Errors
/// `download` when it is not cached or cannot be removed; `alreadyRunning`
/// while a download runs.
#[tauri::command]
pub async fn delete_cached_model(jobs: State<'_, HubDownloads>, repo: String) -> Result<u64> {
    if jobs.0.lock().expect("downloads lock").is_some() {
        return Err(Error::AlreadyRunning(
            "a download is running; cancel it before deleting".into(),
        ));
    }
    let settings = settings_from_env()?;
    blocking("delete_cached_model", move || {
        let deleted = match repo.strip_prefix("pypi:").and_then(|r| r.split_once("==")) {
            Some((project, version)) => {
                PackageCache::new(&settings.assets_dir).delete(project, version)?
            }
            None => csm_hub::HubCache::new(settings.cache_dir).delete_repo(&repo)?,
        };
        Ok(deleted.freed)
    })
    .await
}

/// Saves `token` where `huggingface-cli login` does (`$HF_HOME/token`,
/// owner-only), so later downloads, here and in Python tools, use it. The
/// UI calls this only after the user agreed to that.
///
/// # Errors
/// `invalidInput` for an empty token; `download` when the file cannot be
/// written.
#[tauri::command]
pub async fn save_hub_token(token: String) -> Result<PathBuf> {
    if token.trim().is_empty() {
        return Err(Error::InvalidInput("the token is empty".into()));
    }
    let settings = settings_from_env()?;
    Ok(csm_hub::save_token(&settings, &token)?)
}
