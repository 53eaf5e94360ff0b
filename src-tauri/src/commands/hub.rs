//! The Model screen's downloads from the Hugging Face hub (through
//! `csm-hub`): bundles with per-file progress on a channel, cancel (a later
//! download resumes the partial files), the hub cache's list with delete,
//! and saving a token where `huggingface-cli login` keeps it.
//!
//! Settings come from the environment as the CLI's do (`HF_HOME`,
//! `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`): the app and
//! Python tools share one cache.

use std::path::PathBuf;
use std::sync::Mutex;

use csm_hub::{
    find_bundle, Cancel, DownloadObserver, Hub, HubError, HubSettings, RepoKind, Role, BUNDLES,
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
    /// `model`, `codec` or `tokenizer`.
    pub role: &'static str,
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

/// A downloaded bundle, ready for the model slots (mirrors
/// `DownloadedBundle` in `api.ts`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownloadedBundle {
    /// The model's snapshot folder (`--model-path`).
    pub model_path: PathBuf,
    /// The codec file (`--mimi-path`).
    pub mimi_path: Option<PathBuf>,
    /// The tokenizer file (`--tokenizer-path`).
    pub tokenizer_path: Option<PathBuf>,
}

/// One repo of the cache (mirrors `CachedModel` in `api.ts`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedModel {
    /// `org/name`.
    pub repo: String,
    /// `model`, `dataset` or `space`.
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

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Model => "model",
        Role::Codec => "codec",
        Role::Tokenizer => "tokenizer",
        _ => "other",
    }
}

/// The hub settings of this process's environment.
pub fn settings_from_env() -> Result<HubSettings> {
    HubSettings::from_environment(&|k| std::env::var(k).ok()).map_err(Error::from)
}

impl From<HubError> for Error {
    fn from(e: HubError) -> Self {
        match e {
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
    let model = first(Role::Model)
        .ok_or_else(|| Error::Internal(format!("bundle {name} has no model file")))?;
    Ok(DownloadedBundle {
        model_path: model.parent().map(PathBuf::from).unwrap_or(model),
        mimi_path: first(Role::Codec),
        tokenizer_path: first(Role::Tokenizer),
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
                    cached: hub.cache().cached_file(f.repo, csm_hub::MAIN, f.file),
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
/// `cancel_download` (partial files are kept); `download` for the hub's
/// refusals (gated repo, no token, not found), a broken connection, a
/// checksum mismatch, a full disk or an unwritable cache, each naming what
/// to do.
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

/// The repos in the shared hub cache, with sizes.
///
/// # Errors
/// `download` when the cache folder cannot be read.
#[tauri::command]
pub async fn list_cached_models() -> Result<Vec<CachedModel>> {
    let settings = settings_from_env()?;
    blocking("list_cached_models", move || {
        let cache = csm_hub::HubCache::new(settings.cache_dir);
        Ok(cache
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
            .collect())
    })
    .await
}

/// Deletes a model repo from the hub cache; returns the bytes freed.
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
        Ok(csm_hub::HubCache::new(settings.cache_dir)
            .delete_repo(&repo)?
            .freed)
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
