//! Raw recordings on the Dataset screen: `scan_recordings` (a folder of
//! audio files in any format `csm_core::data::decode` reads, and which of
//! them already have a transcript), `whisper_models` (the Whisper models in
//! the Hugging Face cache) and `transcribe_recordings` /
//! `cancel_transcription`: Whisper over the folder into the dataset layout,
//! through `csm_core::whisper::dataset::transcribe_folder`, the function
//! behind `csm transcribe`, so the app and the tool write the same files.
//! Progress (per file and overall, with an ETA) goes out on a channel, as
//! training's does.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use csm_core::cancel::CancelToken;
use csm_core::data::decode::{is_audio_file, is_unsupported_audio_extension, AudioStream};
use csm_core::whisper::dataset::{transcribe_folder, FolderEvent, FolderOptions};
use csm_core::whisper::{TranscribeOptions, Whisper, WhisperError};
use csm_hub::{find_bundle, Bundle, Cancel, DownloadObserver, Hub, Role, BUNDLES, MAIN};
use serde::{Deserialize, Serialize};
use tauri::ipc::Channel;
use tauri::{AppHandle, Runtime, State};

use super::hub::settings_from_env;
use crate::error::{blocking, Error, Result};
use crate::state::AllowedPaths;

/// The Whisper model proposed when none is chosen (`csm transcribe`'s default).
pub const DEFAULT_WHISPER: &str = "openai/whisper-large-v3-turbo";

/// csm-hub's Whisper bundles (`whisper-large-v3-turbo` ... `whisper-tiny`).
fn whisper_bundles() -> impl Iterator<Item = &'static Bundle> {
    BUNDLES
        .iter()
        .filter(|b| b.files_for(Role::Whisper).next().is_some())
}

/// The Whisper repo of a bundle.
fn bundle_repo(b: &Bundle) -> &'static str {
    b.files_for(Role::Whisper).next().map_or("", |f| f.repo)
}

/// The dataset folder a raw folder is transcribed into unless the user
/// picks another: inside the raw folder (so it is covered by the drop that
/// allowed the folder, and the raw folder's own listing, which is not
/// recursive, never sees it).
pub const DEFAULT_OUTPUT: &str = "dataset";

/// The transcription in progress, if any (one at a time).
#[derive(Debug, Default)]
pub struct TranscriptionJobs(Mutex<Option<(CancelToken, Cancel)>>);

impl TranscriptionJobs {
    /// Registers a job; `None` when one runs already.
    fn start(&self) -> Option<(CancelToken, Cancel)> {
        let mut slot = self.0.lock().expect("transcription lock");
        if slot.is_some() {
            return None;
        }
        let tokens = (CancelToken::new(), Cancel::new());
        *slot = Some(tokens.clone());
        Some(tokens)
    }

    fn finish(&self) {
        *self.0.lock().expect("transcription lock") = None;
    }

    /// Stops the job in progress; returns whether there was one.
    pub fn cancel(&self) -> bool {
        match &*self.0.lock().expect("transcription lock") {
            Some((token, hub)) => {
                token.cancel();
                hub.cancel();
                true
            }
            None => false,
        }
    }
}

/// One audio file of a raw folder (mirrors `Recording` in `api.ts`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Recording {
    /// File name.
    pub file: String,
    /// Absolute path.
    pub path: PathBuf,
    /// Length, when the container says (WAV, FLAC, most M4A; not always MP3).
    pub duration_secs: Option<f64>,
    /// Rate of the file.
    pub sample_rate: Option<u32>,
    /// Channels of the file.
    pub channels: Option<u16>,
    /// Codec (`pcm`, `mp3`, `aac`...).
    pub codec: Option<String>,
    /// Why it cannot be read, if it cannot.
    pub error: Option<String>,
    /// `OUTPUT/transcripts/NAME.txt` exists: done, skipped by a new run.
    pub transcribed: bool,
}

/// A folder of raw recordings (mirrors `RecordingsScan` in `api.ts`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingsScan {
    /// The folder.
    pub dir: PathBuf,
    /// The dataset folder the transcripts go to (`dir/dataset` unless given).
    pub output_dir: PathBuf,
    /// Audio files directly in `dir`, by name.
    pub items: Vec<Recording>,
    /// Seconds of the files whose length is known.
    pub seconds: f64,
    /// Files with a transcript in `output_dir`.
    pub transcribed: usize,
}

/// Lists the recordings of a folder the user dropped or chose.
///
/// # Errors
/// `notFound`, `invalidInput` (not a folder, not chosen, no audio in it).
#[tauri::command]
pub async fn scan_recordings<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    dir: PathBuf,
    output_dir: Option<PathBuf>,
) -> Result<RecordingsScan> {
    allowed.check(&app, &dir)?;
    if let Some(out) = &output_dir {
        allowed.check(&app, out)?;
    }
    blocking("scan_recordings", move || {
        scan_recordings_in(&dir, output_dir.as_deref())
    })
    .await
}

/// Synchronous body of [`scan_recordings`].
pub fn scan_recordings_in(dir: &Path, output_dir: Option<&Path>) -> Result<RecordingsScan> {
    if !dir.exists() {
        return Err(Error::NotFound(dir.to_path_buf()));
    }
    if !dir.is_dir() {
        return Err(Error::InvalidInput(format!(
            "{} is not a folder",
            dir.display()
        )));
    }
    let output_dir = output_dir.map_or_else(|| dir.join(DEFAULT_OUTPUT), Path::to_path_buf);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            let unsupported = p
                .extension()
                .is_some_and(|e| is_unsupported_audio_extension(&e.to_string_lossy()));
            p.is_file() && !hidden && (is_audio_file(p) || unsupported)
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} holds no audio files (.wav, .flac, .mp3, .m4a, .ogg)",
            dir.display()
        )));
    }
    let items: Vec<Recording> = paths
        .into_iter()
        .map(|path| {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let transcribed = output_dir
                .join("transcripts")
                .join(format!("{stem}.txt"))
                .is_file();
            let file = path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match AudioStream::open(&path) {
                Ok(stream) => {
                    let info = stream.info();
                    Recording {
                        file,
                        duration_secs: info
                            .frames
                            .map(|f| f as f64 / f64::from(info.sample_rate.max(1))),
                        sample_rate: Some(info.sample_rate),
                        channels: Some(info.channels),
                        codec: Some(info.codec.clone()),
                        error: None,
                        transcribed,
                        path,
                    }
                }
                Err(e) => Recording {
                    file,
                    duration_secs: None,
                    sample_rate: None,
                    channels: None,
                    codec: None,
                    error: Some(e.to_string()),
                    transcribed,
                    path,
                },
            }
        })
        .collect();
    Ok(RecordingsScan {
        dir: dir.to_path_buf(),
        seconds: items.iter().filter_map(|i| i.duration_secs).sum(),
        transcribed: items.iter().filter(|i| i.transcribed).count(),
        output_dir,
        items,
    })
}

/// A Whisper model the app offers (mirrors `WhisperModel` in `api.ts`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WhisperModelInfo {
    /// `org/name` (what the model field takes).
    pub repo: String,
    /// The csm-hub bundle of it (`whisper-tiny`), if one.
    pub bundle: Option<&'static str>,
    /// One line about it (the bundle's), if known.
    pub description: Option<&'static str>,
    /// Its snapshot folder, when the files Whisper needs are all cached.
    pub path: Option<PathBuf>,
    /// Bytes in the cache (0 when not cached).
    pub size_bytes: u64,
}

/// csm-hub's Whisper bundles (the default first) and every other Whisper
/// repo in the cache (`path` tells which can run without a download).
///
/// # Errors
/// `download` when the hub settings or the cache cannot be read.
#[tauri::command]
pub async fn whisper_models() -> Result<Vec<WhisperModelInfo>> {
    blocking("whisper_models", || {
        let hub = Hub::new(settings_from_env()?)?;
        list_whisper_models(&hub)
    })
    .await
}

/// Synchronous body of [`whisper_models`].
pub fn list_whisper_models(hub: &Hub) -> Result<Vec<WhisperModelInfo>> {
    let cached = hub.cache().list()?;
    let mut bundles: Vec<&Bundle> = whisper_bundles().collect();
    bundles.sort_by_key(|b| bundle_repo(b) != DEFAULT_WHISPER);
    let mut repos: Vec<(String, Option<&'static Bundle>)> = bundles
        .into_iter()
        .map(|b| (bundle_repo(b).to_string(), Some(b)))
        .collect();
    for r in &cached {
        if r.repo.to_lowercase().contains("whisper") && !repos.iter().any(|(x, _)| *x == r.repo) {
            repos.push((r.repo.clone(), None));
        }
    }
    Ok(repos
        .into_iter()
        .map(|(repo, bundle)| WhisperModelInfo {
            path: cached_whisper(hub, &repo),
            size_bytes: cached
                .iter()
                .find(|r| r.repo == repo)
                .map_or(0, |r| r.size_on_disk),
            bundle: bundle.map(|b| b.name),
            description: bundle.map(|b| b.description),
            repo,
        })
        .collect())
}

/// The cached snapshot of `repo` when it holds what [`Whisper::load`] reads.
fn cached_whisper(hub: &Hub, repo: &str) -> Option<PathBuf> {
    let (commit, files) = hub.cache().snapshot_files(repo, MAIN)?;
    let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    csm_core::whisper::load::files_to_fetch(&names).ok()?;
    Some(hub.cache().snapshot_dir(repo, &commit))
}

/// Mirrors `TranscribeRequest` in `api.ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscribeRequest {
    /// Folder of recordings.
    pub audio_dir: PathBuf,
    /// Dataset folder (`audio/`, `transcripts/`, `alignments/` go in it).
    pub output_dir: PathBuf,
    /// A Whisper folder (transformers layout), a bundle (`whisper-tiny`)
    /// or a hub id (`openai/whisper-small`).
    pub whisper_model: String,
    /// Language code; `None` detects it per recording.
    pub language: Option<String>,
    /// Decoding temperature; `None` is 0 with openai-whisper's fallback.
    pub temperature: Option<f32>,
    /// Replace outputs that exist.
    pub overwrite: bool,
}

/// Progress of `transcribe_recordings` (mirrors `TranscriptionEvent` in `api.ts`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "event",
    content = "data"
)]
pub enum TranscriptionEvent {
    /// Finding (maybe downloading) and loading the model.
    Loading {
        /// The model as given.
        model: String,
    },
    /// Bytes of a model file downloaded so far.
    Downloading {
        /// `org/name`.
        repo: String,
        /// File in the repo.
        file: String,
        /// Bytes on disk.
        done: u64,
        /// Total bytes, when announced.
        total: Option<u64>,
    },
    /// The work ahead.
    Started {
        /// Recordings to transcribe.
        files: usize,
        /// Their seconds of audio.
        total_secs: f64,
        /// Recordings skipped because their transcript exists.
        skipped: usize,
    },
    /// A recording starts.
    FileStarted {
        /// Its name (stem).
        name: String,
        /// 0-based among the recordings to transcribe.
        index: usize,
        /// Its length.
        duration_secs: f64,
    },
    /// After each 30 s window.
    Progress {
        /// The recording.
        name: String,
        /// Seconds of it done.
        file_done_secs: f64,
        /// Its length.
        file_secs: f64,
        /// Seconds done over all recordings.
        done_secs: f64,
        /// Seconds over all recordings.
        total_secs: f64,
        /// Since the transcription started (model loading excluded).
        elapsed_secs: f64,
        /// Time left at the pace so far; `None` before the first window.
        eta_secs: Option<f64>,
    },
    /// A recording is written.
    FileDone {
        /// Its name.
        name: String,
        /// Its transcript.
        text: String,
    },
    /// A recording failed; the others go on.
    FileFailed {
        /// Its name.
        name: String,
        /// Why.
        error: String,
    },
}

/// A recording that failed (mirrors `TranscriptionSummary.failed`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailedFile {
    /// File name.
    pub file: String,
    /// Why.
    pub reason: String,
}

/// What `transcribe_recordings` did (mirrors `TranscriptionSummary`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptionSummary {
    /// The dataset folder.
    pub output_dir: PathBuf,
    /// Recordings transcribed now.
    pub transcribed: Vec<String>,
    /// Recordings left alone (transcript already there).
    pub skipped: Vec<String>,
    /// Recordings that failed.
    pub failed: Vec<FailedFile>,
    /// Seconds of audio transcribed now.
    pub audio_secs: f64,
}

/// Transcribes every recording of `request.audio_dir` into the dataset
/// layout of `request.output_dir` (as `csm transcribe` does), sending
/// [`TranscriptionEvent`]s on `on_event` (best effort).
///
/// # Errors
/// `alreadyRunning`, `notFound`, `invalidInput` (paths not chosen, a model
/// that is neither a folder nor a hub id, overwriting the recordings
/// themselves), `download`, `modelLoad`, `cancelled` (the recordings
/// finished before the cancel stay written; a new run continues).
#[tauri::command]
pub async fn transcribe_recordings<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    jobs: State<'_, TranscriptionJobs>,
    request: TranscribeRequest,
    on_event: Channel<TranscriptionEvent>,
) -> Result<TranscriptionSummary> {
    if !request.audio_dir.is_dir() {
        return Err(Error::NotFound(request.audio_dir.clone()));
    }
    allowed.check(&app, &request.audio_dir)?;
    allowed.check(&app, &request.output_dir)?;
    let model = PathBuf::from(&request.whisper_model);
    if model.is_absolute() {
        if !model.exists() {
            return Err(Error::NotFound(model));
        }
        allowed.check(&app, &model)?;
    }
    let Some((cancel, hub_cancel)) = jobs.start() else {
        return Err(Error::AlreadyRunning(
            "a transcription is running; wait for it or stop it first".into(),
        ));
    };
    let send = move |e: TranscriptionEvent| {
        let _ = on_event.send(e);
    };
    let result = blocking("transcribe_recordings", move || {
        let result = transcribe(&request, &send, &cancel, &hub_cancel);
        csm_core::runtime::release_free_memory();
        result
    })
    .await;
    jobs.finish();
    result
}

/// Stops the transcription in progress after its current 30 s window (or
/// the model download at its next chunk). Does nothing when none runs.
///
/// # Errors
/// None in practice.
#[tauri::command]
pub async fn cancel_transcription(jobs: State<'_, TranscriptionJobs>) -> Result<()> {
    jobs.cancel();
    Ok(())
}

/// Sends csm-hub's byte counts as [`TranscriptionEvent::Downloading`].
struct DownloadEvents<'a>(&'a dyn Fn(TranscriptionEvent));

impl DownloadObserver for DownloadEvents<'_> {
    fn on_event(&mut self, event: &csm_hub::DownloadEvent<'_>) {
        use csm_hub::DownloadEvent as E;
        let (repo, file, done, total) = match *event {
            E::Started {
                repo,
                file,
                total,
                resumed_from,
            } => (repo, file, resumed_from, total),
            E::Progress {
                repo,
                file,
                done,
                total,
            } => (repo, file, done, total),
            E::Cached {
                repo, file, size, ..
            } => (repo, file, size, Some(size)),
            _ => return,
        };
        (self.0)(TranscriptionEvent::Downloading {
            repo: repo.into(),
            file: file.into(),
            done,
            total,
        });
    }
}

/// The Whisper folder for `model`: an absolute folder as it is; a bundle
/// name (`whisper-tiny`) or a hub id: its cached snapshot, downloaded first
/// (with `downloading` events) when the cache lacks it: a bundle's files, or
/// for a repo no bundle names what `whisper::load::files_to_fetch` picks
/// from its listing. `hub` is called only for a bundle or a hub id.
pub fn whisper_dir(
    model: &str,
    hub: impl FnOnce() -> Result<Hub>,
    on_event: &dyn Fn(TranscriptionEvent),
    cancel: &Cancel,
) -> Result<PathBuf> {
    let as_path = Path::new(model);
    if as_path.is_absolute() && as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let bundle = find_bundle(model)
        .filter(|b| b.files_for(Role::Whisper).next().is_some())
        .or_else(|| whisper_bundles().find(|b| bundle_repo(b) == model));
    let is_repo =
        !as_path.is_absolute() && model.contains('/') && csm_hub::validate_repo_id(model).is_ok();
    if bundle.is_none() && !is_repo {
        let names: Vec<&str> = whisper_bundles().map(|b| b.name).collect();
        return Err(Error::InvalidInput(format!(
            "{model} is neither a Whisper folder, nor a bundle ({}), nor a hub id like openai/whisper-medium",
            names.join(", ")
        )));
    }
    let hub = hub()?;
    let repo: &str = match bundle {
        Some(b) => bundle_repo(b),
        None => model,
    };
    if let Some(dir) = cached_whisper(&hub, repo) {
        return Ok(dir);
    }
    let listing;
    let wanted: Vec<&str> = match bundle {
        Some(b) => b.files_for(Role::Whisper).map(|f| f.file).collect(),
        None => {
            listing = hub.repo_files(repo, MAIN)?;
            csm_core::whisper::load::files_to_fetch(&listing.files)
                .map_err(|e| Error::UnsupportedFormat(format!("{repo}: {e}")))?
        }
    };
    let paths = hub.download_files(repo, MAIN, &wanted, &mut DownloadEvents(on_event), cancel)?;
    paths[0]
        .path
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::Internal(format!("{} has no folder", paths[0].path.display())))
}

/// Synchronous body of [`transcribe_recordings`] (MLX runs on this thread only).
pub fn transcribe(
    request: &TranscribeRequest,
    on_event: &dyn Fn(TranscriptionEvent),
    cancel: &CancelToken,
    hub_cancel: &Cancel,
) -> Result<TranscriptionSummary> {
    let same = |a: &Path, b: &Path| crate::state::normalize(a) == crate::state::normalize(b);
    if request.overwrite && same(&request.audio_dir, &request.output_dir.join("audio")) {
        return Err(Error::InvalidInput(format!(
            "overwriting would replace the recordings in {} themselves; transcribe into another folder, or turn overwriting off",
            request.audio_dir.display()
        )));
    }
    if let Some(t) = request.temperature {
        if !(0.0..=1.0).contains(&t) {
            return Err(Error::InvalidInput(format!(
                "temperature {t} is outside 0-1"
            )));
        }
    }
    on_event(TranscriptionEvent::Loading {
        model: request.whisper_model.clone(),
    });
    let hub = || Ok(Hub::new(settings_from_env()?)?);
    let dir = whisper_dir(&request.whisper_model, hub, on_event, hub_cancel)?;
    let whisper = Whisper::load(&dir)
        .map_err(|e| Error::ModelLoad(format!("loading Whisper from {}: {e}", dir.display())))?;
    if cancel.is_cancelled() {
        return Err(Error::Cancelled(
            "transcription cancelled while loading the model; nothing was written".into(),
        ));
    }
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
    let options = FolderOptions {
        audio_dir: request.audio_dir.clone(),
        output_dir: request.output_dir.clone(),
        overwrite: request.overwrite,
        transcribe,
    };
    let mut progress = Progress::default();
    let mut observer = |e: FolderEvent| {
        if let Some(out) = progress.map(e) {
            on_event(out);
        }
    };
    match transcribe_folder(&whisper, &options, &mut observer, cancel) {
        Ok(s) => Ok(TranscriptionSummary {
            output_dir: request.output_dir.clone(),
            transcribed: s.transcribed,
            skipped: s.skipped,
            failed: s
                .failed
                .into_iter()
                .map(|(file, reason)| FailedFile { file, reason })
                .collect(),
            audio_secs: s.audio_s,
        }),
        Err(WhisperError::Cancelled) => Err(Error::Cancelled(format!(
            "transcription cancelled after {} of {} recordings were written; they are in {} and a new run continues from there",
            progress.finished,
            progress.files,
            request.output_dir.display()
        ))),
        Err(WhisperError::Io { path, source }) => Err(Error::io(&path, source)),
        Err(e) => Err(Error::Internal(e.to_string())),
    }
}

/// Core `FolderEvent`s -> [`TranscriptionEvent`]s with overall progress and ETA.
#[derive(Debug, Default)]
struct Progress {
    started: Option<Instant>,
    files: usize,
    total_s: f64,
    /// Seconds of the recordings finished (or failed).
    before_s: f64,
    current: Option<(String, f64)>,
    index: usize,
    /// Recordings written.
    finished: usize,
}

impl Progress {
    fn map(&mut self, e: FolderEvent) -> Option<TranscriptionEvent> {
        Some(match e {
            FolderEvent::Start {
                files,
                total_s,
                skipped,
            } => {
                self.started = Some(Instant::now());
                self.files = files;
                self.total_s = total_s;
                TranscriptionEvent::Started {
                    files,
                    total_secs: total_s,
                    skipped,
                }
            }
            FolderEvent::FileStart { name, duration_s } => {
                self.current = Some((name.clone(), duration_s));
                let index = self.index;
                self.index += 1;
                TranscriptionEvent::FileStarted {
                    name,
                    index,
                    duration_secs: duration_s,
                }
            }
            FolderEvent::Progress { done_s } => {
                let (name, file_s) = self.current.clone()?;
                let file_done = done_s.min(file_s);
                let done = self.before_s + file_done;
                let elapsed = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
                let eta = (done > 0.0 && self.total_s > 0.0)
                    .then(|| elapsed * (self.total_s - done).max(0.0) / done);
                TranscriptionEvent::Progress {
                    name,
                    file_done_secs: file_done,
                    file_secs: file_s,
                    done_secs: done,
                    total_secs: self.total_s,
                    elapsed_secs: elapsed,
                    eta_secs: eta,
                }
            }
            FolderEvent::FileDone { name, text } => {
                self.end_file();
                self.finished += 1;
                TranscriptionEvent::FileDone { name, text }
            }
            FolderEvent::FileFailed { name, error } => {
                // A recording may fail before it starts (it cannot be read).
                self.end_file();
                TranscriptionEvent::FileFailed { name, error }
            }
        })
    }

    fn end_file(&mut self) {
        if let Some((_, s)) = self.current.take() {
            self.before_s += s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_matches_the_shared_fixture() {
        // ui/tests/transcribe.test.ts feeds the same file through its reducer.
        let fixture: serde_json::Value = serde_json::from_str(include_str!(
            "../../../docs/ipc-fixtures/transcription-events.json"
        ))
        .unwrap();
        let ours = serde_json::to_value(vec![
            TranscriptionEvent::Loading {
                model: "whisper-tiny".into(),
            },
            TranscriptionEvent::Downloading {
                repo: "openai/whisper-tiny".into(),
                file: "model.safetensors".into(),
                done: 1_048_576,
                total: Some(151_061_672),
            },
            TranscriptionEvent::Started {
                files: 2,
                total_secs: 90.5,
                skipped: 1,
            },
            TranscriptionEvent::FileStarted {
                name: "memo1".into(),
                index: 0,
                duration_secs: 60.5,
            },
            TranscriptionEvent::Progress {
                name: "memo1".into(),
                file_done_secs: 30.0,
                file_secs: 60.5,
                done_secs: 30.0,
                total_secs: 90.5,
                elapsed_secs: 6.0,
                eta_secs: Some(12.1),
            },
            TranscriptionEvent::FileDone {
                name: "memo1".into(),
                text: "Hello there.".into(),
            },
            TranscriptionEvent::FileFailed {
                name: "memo2".into(),
                error: "memo2.mp3: cannot decode audio: not audio".into(),
            },
        ])
        .unwrap();
        assert_eq!(
            ours, fixture,
            "docs/ipc-fixtures/transcription-events.json must be the wire format"
        );
    }

    #[test]
    fn progress_counts_finished_files_and_estimates_the_rest() {
        let mut p = Progress::default();
        p.map(FolderEvent::Start {
            files: 2,
            total_s: 40.0,
            skipped: 1,
        });
        p.map(FolderEvent::FileStart {
            name: "a".into(),
            duration_s: 10.0,
        });
        p.map(FolderEvent::FileDone {
            name: "a".into(),
            text: "hi".into(),
        });
        p.map(FolderEvent::FileStart {
            name: "b".into(),
            duration_s: 30.0,
        });
        match p.map(FolderEvent::Progress { done_s: 10.0 }) {
            Some(TranscriptionEvent::Progress {
                name,
                file_done_secs,
                done_secs,
                total_secs,
                eta_secs,
                elapsed_secs,
                ..
            }) => {
                assert_eq!(name, "b");
                assert_eq!((file_done_secs, done_secs, total_secs), (10.0, 20.0, 40.0));
                // Half done: the time left equals the time spent.
                let eta = eta_secs.unwrap();
                assert!((eta - elapsed_secs).abs() < 1e-9, "{eta} vs {elapsed_secs}");
            }
            other => panic!("{other:?}"),
        }
        // A window past the end of the file is clamped to its length.
        match p.map(FolderEvent::Progress { done_s: 31.5 }) {
            Some(TranscriptionEvent::Progress { done_secs, .. }) => assert_eq!(done_secs, 40.0),
            other => panic!("{other:?}"),
        }
    }
}
