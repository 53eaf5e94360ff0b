//! The stages of [`run_voice`], in order, and the bookkeeping that lets a
//! second run continue where the first stopped (see the crate docs and
//! `docs/voice.md`, "Stopping and running again").

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, PoisonError};
use std::thread::Scope;
use std::time::Instant;

use csm_core::cancel::CancelToken;
use csm_core::data::audio::{WavEncoding, WavSink, TARGET_SAMPLE_RATE};
use csm_core::data::dataset::{audio_usage, DatasetLayout, LoadProgress};
use csm_core::data::{decode, LongUnaligned};
use csm_core::train::metrics::JsonlObserver;
use csm_core::train::run_dir::RunDir;
use csm_core::train::{TrainConfig, TrainEvent, TrainingObserver, VoiceConfig};
use csm_core::whisper::dataset::{list_audio, transcribe_folder, FolderEvent, FolderOptions};
use csm_core::whisper::Whisper;
use csm_core::{runtime, train};
use csm_hub::{find_bundle, Bundle, DownloadEvent, DownloadObserver, Hub, Role};

use crate::error::FlowError;
use crate::events::{eta, FlowEvent, FlowObserver, StageEnd, Unit};
use crate::layout::{
    DatasetInfo, DeviceInfo, FailedRecording, ModelPaths, ModelSource, Scores, Stage, StageStatus,
    Summary, VoiceDir, VoiceState, SUMMARY_FORMAT,
};
use crate::recipe::{self, DeviceKind, RecipeInput};
use crate::VoiceRequest;

/// How [`run_voice`] ended without an error.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowOutcome {
    /// Every stage is done; `summary.json` holds this.
    Finished(Box<Summary>),
    /// Stopped after this stage, as [`VoiceRequest::stop_after`] asked.
    StoppedAfter(Stage),
}

/// Runs the journey from `request.raw_dir` to a scored voice in
/// `request.voice_dir`, skipping what an earlier run finished.
///
/// Whisper is fetched first; the other models that are not cached (CSM,
/// its codec and tokenizer, the speaker encoder) download on a second
/// thread while the recordings are transcribed and cut, and training
/// waits for them. Both threads report to `observer`, one event at a time
/// (it is called under a lock, from either thread); the download's
/// `StageFinished` comes when it ends, which may be after transcription's.
/// When the run stops after a stage ([`VoiceRequest::stop_after`]), it
/// waits for the downloads first, so the next run finds them done.
///
/// # Errors
/// [`FlowError`]: a bad request, a download, transcription, dataset or
/// training failure (the stage is marked `failed` in `voice.json` with the
/// reason; a download that fails in the background is reported when a
/// stage needs its files, training or the stop after a stage), or
/// [`FlowError::Cancelled`] naming the stage (marked `cancelled`; running
/// again continues).
pub fn run_voice(
    request: &VoiceRequest,
    observer: &mut (dyn FlowObserver + Send),
    cancel: &CancelToken,
) -> Result<FlowOutcome, FlowError> {
    let events = Events(Mutex::new(observer));
    let dir = VoiceDir::new(&request.voice_dir);
    let state = open_state(request, &dir)?;
    events.emit(&FlowEvent::Opened {
        voice_dir: dir.path().to_path_buf(),
        dataset_dir: dir.dataset_dir(),
    });
    runtime::use_device(request.run.device);
    std::thread::scope(|scope| {
        let mut flow = Flow {
            request,
            state,
            dir,
            events: &events,
            cancel,
            whisper: None,
            pending: None,
            background: None,
            download_error: None,
        };
        let result = flow.stages(scope);
        if result.is_err() {
            // The journey stopped: so does the download (its partial file
            // stays for the next run); its end goes to voice.json.
            if let Some(bg) = &flow.background {
                bg.stop.cancel();
            }
            let _ = flow.wait_downloads();
        }
        result
    })
}

/// The caller's observer, shared by the flow's thread and the download
/// thread.
struct Events<'o>(Mutex<&'o mut (dyn FlowObserver + Send)>);

impl Events<'_> {
    fn emit(&self, event: &FlowEvent) {
        // A panicking observer poisons the lock; the events still go on.
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .on_event(event);
    }
}

/// `voice.json`, read or created; the request's names win.
fn open_state(request: &VoiceRequest, dir: &VoiceDir) -> Result<VoiceState, FlowError> {
    let raw = &request.raw_dir;
    if !raw.is_dir() {
        return Err(FlowError::NoRecordings {
            raw_dir: raw.clone(),
            reason: "no such folder: give the folder that holds your recordings".into(),
        });
    }
    let raw = std::fs::canonicalize(raw).map_err(|e| FlowError::Read {
        path: raw.clone(),
        reason: e.to_string(),
    })?;
    let mut state = if dir.exists() {
        let s = dir.read_state()?;
        if s.raw_dir != raw {
            return Err(FlowError::Request(format!(
                "{} was made from the recordings in {}, not {}: give that folder again, or \
                 another output folder for a new voice",
                dir.path().display(),
                s.raw_dir.display(),
                raw.display()
            )));
        }
        s
    } else {
        let name = request.name.clone().unwrap_or_else(|| {
            dir.path()
                .file_name()
                .map_or_else(|| "voice".into(), |n| n.to_string_lossy().into_owned())
        });
        VoiceState::new(name, request.speaker_name.clone(), raw)
    };
    if let Some(n) = &request.name {
        state.name.clone_from(n);
    }
    if request.speaker_name.is_some() {
        state.speaker_name.clone_from(&request.speaker_name);
    }
    dir.write_state(&mut state)?;
    Ok(state)
}

struct Flow<'a, 'o> {
    request: &'a VoiceRequest,
    state: VoiceState,
    dir: VoiceDir,
    events: &'a Events<'o>,
    cancel: &'a CancelToken,
    /// The Whisper folder, once the download stage resolved it (first).
    whisper: Option<PathBuf>,
    /// What the download stage left to the background thread.
    pending: Option<Pending>,
    /// The background download, until its end is written to `voice.json`.
    background: Option<Background>,
    /// How the background download failed, for the stage that needs it.
    download_error: Option<FlowError>,
}

/// A model's files as resolved: `(role, path)`.
type Files = Vec<(Role, PathBuf)>;

/// The download stage's work left for the background thread.
struct Pending {
    hub: csm_hub::HubSettings,
    /// The bundles to fetch, by the role they were asked for
    /// (`Role::Model` or `Role::SpeakerEncoder`).
    later: Vec<(Role, &'static Bundle)>,
    /// What is resolved already.
    model: Option<Files>,
    whisper: Files,
    encoder: Option<Files>,
    /// Bundles fetched before (Whisper).
    fetched: Vec<&'static str>,
    /// When the download stage started.
    start: Instant,
}

/// What the background thread sends back: the files by role, or the
/// file it was at (`repo/file`, or the bundle) and the hub's error.
type BackgroundResult = Result<Vec<(Role, Files)>, Box<(String, csm_hub::HubError)>>;

/// The download running beside transcription.
struct Background {
    rx: mpsc::Receiver<BackgroundResult>,
    /// Stops the transfer at its next chunk (the journey failed).
    stop: csm_hub::Cancel,
    plan: Pending,
    /// When it started (the stage's time on this thread is counted already).
    spawned: Instant,
}

/// What a stage's own work reports back.
struct Done {
    end: StageEnd,
    note: String,
    /// The stage goes on in the background (the download): it stays
    /// `running` and its end is reported later.
    continues: bool,
}

impl<'a, 'o> Flow<'a, 'o> {
    /// Every stage in order, from where an earlier run stopped; the
    /// download's background thread is spawned in `scope`.
    fn stages<'s>(&mut self, scope: &'s Scope<'s, '_>) -> Result<FlowOutcome, FlowError>
    where
        'a: 's,
        'o: 's,
    {
        let request = self.request;
        for stage in Stage::ALL {
            self.poll_downloads();
            let finished = self.state.status(stage).is_finished();
            let skip_done = finished
                && match stage {
                    // Paths are resolved every run (cheap, no network when cached).
                    Stage::Download => false,
                    Stage::Summary => self.dir.read_summary()?.is_some(),
                    _ => true,
                };
            if skip_done {
                self.events.emit(&FlowEvent::StageFinished {
                    stage,
                    end: StageEnd::Skipped,
                    seconds: 0.0,
                    note: "done by an earlier run".into(),
                });
            } else {
                self.run_stage(stage)?;
            }
            if let Some(plan) = self.pending.take() {
                self.spawn_downloads(scope, plan);
            }
            if request.stop_after == Some(stage) && stage != Stage::Summary {
                // The next run finds the models whole.
                self.wait_downloads()?;
                return Ok(FlowOutcome::StoppedAfter(stage));
            }
        }
        self.wait_downloads()?;
        let summary = self.dir.read_summary()?.ok_or_else(|| FlowError::Read {
            path: self.dir.summary_file(),
            reason: "the summary stage is done but its file is missing".into(),
        })?;
        self.events.emit(&FlowEvent::Finished {
            summary: Box::new(summary.clone()),
        });
        Ok(FlowOutcome::Finished(Box::new(summary)))
    }

    /// Starts the background download of `plan.later`.
    fn spawn_downloads<'s>(&mut self, scope: &'s Scope<'s, '_>, plan: Pending)
    where
        'a: 's,
        'o: 's,
    {
        let (tx, rx) = mpsc::channel();
        let stop = csm_hub::Cancel::new();
        let (events, cancel) = (self.events, self.cancel);
        let (hub, later, start) = (plan.hub.clone(), plan.later.clone(), plan.start);
        let names: Vec<&str> = plan.later.iter().map(|(_, b)| b.name).collect();
        let mut fetched = plan.fetched.clone();
        fetched.extend(&names);
        let thread_stop = stop.clone();
        scope.spawn(move || {
            let result = fetch_all(hub, &later, events, cancel, &thread_stop);
            match &result {
                Ok(_) => events.emit(&FlowEvent::StageFinished {
                    stage: Stage::Download,
                    end: StageEnd::Done,
                    seconds: start.elapsed().as_secs_f64(),
                    note: format!("downloaded {}", fetched.join(", ")),
                }),
                Err(failed) if !thread_stop.is_cancelled() && !cancel.is_cancelled() => {
                    let (what, e) = &**failed;
                    events.emit(&FlowEvent::Message {
                        stage: Stage::Download,
                        text: format!(
                            "FAILED: {what}: {e} (training needs it: the journey stops there; \
                             running again resumes the download)"
                        ),
                    });
                }
                Err(_) => {}
            }
            // The flow may have returned already (it waits for this thread).
            let _ = tx.send(result);
        });
        self.background = Some(Background {
            rx,
            stop,
            plan,
            spawned: Instant::now(),
        });
    }

    /// Records the background download's end in `voice.json` if it came;
    /// a failure is kept for the stage that needs the files.
    fn poll_downloads(&mut self) {
        let Some(bg) = &self.background else { return };
        match bg.rx.try_recv() {
            Ok(result) => self.record_downloads(Some(result)),
            Err(mpsc::TryRecvError::Disconnected) => self.record_downloads(None),
            Err(mpsc::TryRecvError::Empty) => {}
        }
    }

    /// Waits for the background download (if any) and records its end;
    /// its failure is the error.
    fn wait_downloads(&mut self) -> Result<(), FlowError> {
        if let Some(bg) = &self.background {
            let result = bg.rx.recv().ok();
            self.record_downloads(result);
        }
        self.download_error.take().map_or(Ok(()), Err)
    }

    fn record_downloads(&mut self, result: Option<BackgroundResult>) {
        if let Err(e) = self.finish_downloads(result) {
            self.download_error = Some(e);
        }
    }

    /// The download stage's end, from the background thread's result.
    fn finish_downloads(&mut self, result: Option<BackgroundResult>) -> Result<(), FlowError> {
        let Some(bg) = self.background.take() else {
            return Ok(());
        };
        let Some(result) = result else {
            return Err(FlowError::Request(
                "the download thread ended without a result (it panicked; see the log)".into(),
            ));
        };
        let mut plan = bg.plan;
        let outcome = result.map(|got| {
            for (role, files) in got {
                match role {
                    Role::SpeakerEncoder => plan.encoder = Some(files),
                    _ => plan.model = Some(files),
                }
            }
            let fetched: Vec<&str> = plan
                .fetched
                .iter()
                .chain(plan.later.iter().map(|(_, b)| &b.name))
                .copied()
                .collect();
            format!("downloaded {}", fetched.join(", "))
        });
        let r = self.state.stage(Stage::Download);
        r.seconds += bg.spawned.elapsed().as_secs_f64();
        r.finished_unix_s = Some(crate::layout::unix_now());
        let error = match outcome {
            Ok(note) => {
                r.status = StageStatus::Done;
                r.note = Some(note);
                r.error = None;
                let paths = model_paths(
                    self.request,
                    plan.model.as_deref().unwrap_or_default(),
                    &plan.whisper,
                    plan.encoder.as_deref().unwrap_or_default(),
                );
                self.state.models = Some(paths);
                None
            }
            Err(failed) => {
                let (what, source) = *failed;
                let e = match source {
                    csm_hub::HubError::Cancelled { .. }
                        if self.cancel.is_cancelled() || bg.stop.is_cancelled() =>
                    {
                        FlowError::Cancelled {
                            stage: Stage::Download,
                        }
                    }
                    source => FlowError::Download {
                        what,
                        source: Box::new(source),
                    },
                };
                r.status = match e {
                    FlowError::Cancelled { .. } => StageStatus::Cancelled,
                    _ => StageStatus::Failed,
                };
                r.error = Some(e.to_string());
                Some(e)
            }
        };
        self.dir.write_state(&mut self.state)?;
        error.map_or(Ok(()), Err)
    }

    fn run_stage(&mut self, stage: Stage) -> Result<(), FlowError> {
        let start = Instant::now();
        {
            let r = self.state.stage(stage);
            r.status = StageStatus::Running;
            r.attempts += 1;
            r.started_unix_s = Some(crate::layout::unix_now());
            r.error = None;
        }
        self.dir.write_state(&mut self.state)?;
        self.events.emit(&FlowEvent::StageStarted {
            stage,
            detail: describe(stage).into(),
        });
        let result = match stage {
            Stage::Download => self.download(),
            Stage::Transcribe => self.transcribe(),
            Stage::Dataset => self.dataset(),
            Stage::Train => self.train(),
            Stage::Summary => self.summary(),
        };
        let seconds = start.elapsed().as_secs_f64();
        let r = self.state.stage(stage);
        r.seconds += seconds;
        r.finished_unix_s = Some(crate::layout::unix_now());
        match result {
            Ok(done) if done.continues => {
                r.finished_unix_s = None;
                r.note = Some(done.note.clone());
                self.dir.write_state(&mut self.state)?;
                self.message(stage, done.note);
                Ok(())
            }
            Ok(done) => {
                r.status = match done.end {
                    StageEnd::Done => StageStatus::Done,
                    StageEnd::Skipped => StageStatus::Skipped,
                };
                r.note = Some(done.note.clone());
                self.dir.write_state(&mut self.state)?;
                // The summary's stage times include its own.
                if stage == Stage::Summary {
                    self.write_summary()?;
                }
                self.events.emit(&FlowEvent::StageFinished {
                    stage,
                    end: done.end,
                    seconds,
                    note: done.note,
                });
                Ok(())
            }
            Err(e) => {
                r.status = match e {
                    FlowError::Cancelled { .. } => StageStatus::Cancelled,
                    _ => StageStatus::Failed,
                };
                r.error = Some(e.to_string());
                // The stage's own error matters more than a failed write.
                let _ = self.dir.write_state(&mut self.state);
                Err(e)
            }
        }
    }

    fn cancelled(&self, stage: Stage) -> Result<(), FlowError> {
        if self.cancel.is_cancelled() {
            return Err(FlowError::Cancelled { stage });
        }
        Ok(())
    }

    fn message(&self, stage: Stage, text: String) {
        self.events.emit(&FlowEvent::Message { stage, text });
    }

    // -- download --

    /// Resolves the models: Whisper first (fetched now when missing:
    /// transcription needs it), then the CSM model and the speaker
    /// encoder, which are left to the background thread when they are
    /// bundles not in the cache.
    fn download(&mut self) -> Result<Done, FlowError> {
        let r = self.request;
        let start = Instant::now();
        let mut hub: Option<Hub> = None;
        let mut fetched = Vec::new();
        let mut later = Vec::new();
        let whisper = match self.resolve(&r.whisper, Role::Whisper, "Whisper model", &mut hub)? {
            Resolved::Ready(files) => files,
            Resolved::Missing(bundle) => {
                self.message(
                    Stage::Download,
                    format!("{}: {}", bundle.name, bundle.description),
                );
                fetched.push(bundle.name);
                self.fetch(hub.as_ref().expect("made by resolve"), bundle)?
            }
        };
        self.whisper = Some(folder(&whisper, Role::Whisper, &r.whisper));
        let mut ready = |source: &ModelSource, role: Role, what: &str, flow: &mut Self| {
            Ok::<_, FlowError>(match flow.resolve(source, role, what, &mut hub)? {
                Resolved::Ready(files) => Some(files),
                Resolved::Missing(bundle) => {
                    later.push((role, bundle));
                    None
                }
            })
        };
        let encoder = ready(
            &r.speaker_encoder,
            Role::SpeakerEncoder,
            "speaker encoder",
            self,
        )?;
        let model = ready(&r.model, Role::Model, "model", self)?;
        if !later.is_empty() {
            let names: Vec<&str> = later
                .iter()
                .map(|(_, b): &(Role, &Bundle)| b.name)
                .collect();
            let note = format!(
                "downloading {} while the recordings are transcribed; training waits for it",
                names.join(", ")
            );
            self.pending = Some(Pending {
                hub: r.hub.clone().expect("resolve checked the hub settings"),
                later,
                model,
                whisper,
                encoder,
                fetched,
                start,
            });
            return Ok(Done {
                end: StageEnd::Done,
                note,
                continues: true,
            });
        }
        let (model, encoder) = (model.expect("ready"), encoder.expect("ready"));
        self.state.models = Some(model_paths(r, &model, &whisper, &encoder));
        let bundles: Vec<&str> = [&r.model, &r.whisper, &r.speaker_encoder]
            .iter()
            .filter_map(|s| match s {
                ModelSource::Bundle(b) => Some(b.as_str()),
                ModelSource::Path(_) => None,
            })
            .collect();
        let (end, note) = if !fetched.is_empty() {
            (StageEnd::Done, format!("downloaded {}", fetched.join(", ")))
        } else if bundles.is_empty() {
            (StageEnd::Skipped, "every model given as a path".into())
        } else {
            (
                StageEnd::Skipped,
                format!("already in the cache: {}", bundles.join(", ")),
            )
        };
        Ok(Done {
            end,
            note,
            continues: false,
        })
    }

    /// A model as asked: its files (a path, or a cached bundle), or the
    /// bundle to download. Makes `hub` when a bundle is named.
    fn resolve(
        &self,
        source: &ModelSource,
        role: Role,
        what: &str,
        hub: &mut Option<Hub>,
    ) -> Result<Resolved, FlowError> {
        let name = match source {
            ModelSource::Path(p) => {
                if !p.exists() {
                    return Err(FlowError::Request(format!(
                        "the {what} {}: no such file or folder",
                        p.display()
                    )));
                }
                return Ok(Resolved::Ready(vec![(role, p.clone())]));
            }
            ModelSource::Bundle(name) => name,
        };
        let bundle = find_bundle(name)
            .filter(|b| b.files_for(role).next().is_some())
            .ok_or_else(|| {
                FlowError::Request(format!(
                    "the {what} `{name}`: not a file or folder, and no bundle of that name \
                     holds one ({})",
                    bundle_names(role)
                ))
            })?;
        if hub.is_none() {
            let settings = self.request.hub.clone().ok_or_else(|| {
                FlowError::Request(format!(
                    "the {what} is the bundle `{name}`, but no hub settings were given to find \
                     or download it"
                ))
            })?;
            *hub = Some(Hub::new(settings).map_err(|source| FlowError::Download {
                what: name.clone(),
                source: Box::new(source),
            })?);
        }
        let hub = hub.as_ref().expect("set above");
        Ok(match bundle.cached(hub) {
            Some(files) => Resolved::Ready(files.into_iter().map(|(f, p)| (f.role, p)).collect()),
            None => Resolved::Missing(bundle),
        })
    }

    /// Downloads `bundle` on this thread (Whisper, before transcription).
    fn fetch(&mut self, hub: &Hub, bundle: &Bundle) -> Result<Files, FlowError> {
        let hub_cancel = csm_hub::Cancel::new();
        download_bundle(hub, bundle, self.events, self.cancel, &hub_cancel).map_err(|failed| {
            let (what, source) = *failed;
            match source {
                csm_hub::HubError::Cancelled { .. } if self.cancel.is_cancelled() => {
                    FlowError::Cancelled {
                        stage: Stage::Download,
                    }
                }
                source => FlowError::Download {
                    what,
                    source: Box::new(source),
                },
            }
        })
    }

    // -- transcribe --

    fn transcribe(&mut self) -> Result<Done, FlowError> {
        let raw = self.state.raw_dir.clone();
        let recordings = list_audio(&raw)?;
        if recordings.is_empty() {
            return Err(FlowError::NoRecordings {
                raw_dir: raw,
                reason: format!(
                    "no recordings in it ({} files are read)",
                    decode::AUDIO_EXTENSIONS.join(", ")
                ),
            });
        }
        let (audio, text) = (self.dir.audio_dir(), self.dir.transcripts_dir());
        for d in [&audio, &text, &self.dir.alignments_dir()] {
            std::fs::create_dir_all(d).map_err(|source| FlowError::Write {
                path: d.clone(),
                source,
            })?;
        }
        // Recordings with their own transcript: a 24 kHz copy and the text.
        let mut given = 0;
        let mut failed = Vec::new();
        for path in &recordings {
            let stem = stem(path);
            let own = path.with_file_name(format!("{stem}.txt"));
            if !own.is_file() {
                continue;
            }
            given += 1;
            let out_text = text.join(format!("{stem}.txt"));
            if out_text.exists() {
                continue;
            }
            self.cancelled(Stage::Transcribe)?;
            match copy_given(path, &own, &audio.join(format!("{stem}.wav")), &out_text) {
                Ok(()) => self.message(
                    Stage::Transcribe,
                    format!("{stem}: its own transcript {}", own.display()),
                ),
                Err(reason) => {
                    self.message(Stage::Transcribe, format!("{stem}: FAILED: {reason}"));
                    failed.push(FailedRecording {
                        file: file_name(path),
                        reason,
                    });
                }
            }
        }
        let todo = recordings
            .iter()
            .filter(|p| !text.join(format!("{}.txt", stem(p))).exists())
            .count();
        let mut transcribed = 0;
        if todo > 0 {
            let whisper_dir = self.whisper.clone().ok_or_else(|| {
                FlowError::Request("Whisper is not resolved: the download stage did not run".into())
            })?;
            self.message(
                Stage::Transcribe,
                format!("loading Whisper from {}", whisper_dir.display()),
            );
            let whisper = Whisper::load(&whisper_dir)?;
            let options = FolderOptions {
                audio_dir: raw.clone(),
                output_dir: self.dir.dataset_dir(),
                overwrite: false,
                transcribe: self.request.transcribe.clone(),
            };
            let start = Instant::now();
            let (mut total, mut before, mut current) = (0.0, 0.0, 0.0);
            let events = self.events;
            let mut on_event = |e: FolderEvent| {
                let progress =
                    |done: f64, total: f64, item: Option<String>| FlowEvent::StageProgress {
                        stage: Stage::Transcribe,
                        done,
                        total,
                        unit: Unit::AudioSeconds,
                        eta_s: eta(done, total, start.elapsed().as_secs_f64()),
                        item,
                    };
                let text = |text: String| FlowEvent::Message {
                    stage: Stage::Transcribe,
                    text,
                };
                match e {
                    FolderEvent::Start { total_s, .. } => {
                        total = total_s;
                        events.emit(&progress(0.0, total, None));
                    }
                    FolderEvent::FileStart { name, duration_s } => {
                        current = duration_s;
                        events.emit(&progress(before, total, Some(name)));
                    }
                    FolderEvent::Progress { done_s } => {
                        events.emit(&progress(before + done_s.min(current), total, None));
                    }
                    FolderEvent::FileDone { name, text: t } => {
                        before += std::mem::take(&mut current);
                        let preview: String = t.chars().take(70).collect();
                        events.emit(&text(format!("{name}: {preview}")));
                    }
                    FolderEvent::FileFailed { name, error } => {
                        before += std::mem::take(&mut current);
                        events.emit(&text(format!("{name}: FAILED: {error}")));
                    }
                }
            };
            let summary = transcribe_folder(&whisper, &options, &mut on_event, self.cancel)
                .map_err(|e| match e {
                    csm_core::whisper::WhisperError::Cancelled => FlowError::Cancelled {
                        stage: Stage::Transcribe,
                    },
                    e => e.into(),
                })?;
            transcribed = summary.transcribed.len();
            failed.extend(
                summary
                    .failed
                    .into_iter()
                    .map(|(file, reason)| FailedRecording { file, reason }),
            );
        }
        let info = self.state.dataset.get_or_insert_with(DatasetInfo::default);
        info.given_transcripts = given;
        // Failures of earlier runs stay listed until the file is done.
        info.failed.retain(|f| {
            !text
                .join(format!("{}.txt", stem(Path::new(&f.file))))
                .exists()
                && !failed.iter().any(|g| g.file == f.file)
        });
        info.failed.extend(failed);
        let written = recordings
            .iter()
            .filter(|p| text.join(format!("{}.txt", stem(p))).exists())
            .count();
        if written == 0 {
            return Err(FlowError::NoRecordings {
                raw_dir: raw,
                reason: "no recording could be transcribed (reasons above)".into(),
            });
        }
        let note = format!(
            "{transcribed} transcribed now, {given} with their own transcript, {} of {} ready{}",
            written,
            recordings.len(),
            match info.failed.len() {
                0 => String::new(),
                n => format!(", {n} failed"),
            }
        );
        Ok(Done {
            end: if todo > 0 || given > 0 {
                StageEnd::Done
            } else {
                StageEnd::Skipped
            },
            note,
            continues: false,
        })
    }

    fn models(&self) -> Result<&ModelPaths, FlowError> {
        self.state.models.as_ref().ok_or_else(|| {
            FlowError::Request("the models are not resolved: the download stage did not run".into())
        })
    }

    // -- dataset --

    /// The caller's base with the flow's folders and data settings: all
    /// the dataset stage needs (no model: it runs while they download).
    fn data_config(&self) -> TrainConfig {
        let mut c = self.request.base.clone();
        c.output_dir = self.dir.run_dir();
        c.data_dir = Some(self.dir.dataset_dir());
        c.audio_dir = PathBuf::new();
        c.transcript_dir = PathBuf::new();
        c.alignment_dir = None;
        // A recording with its own transcript has no word timings: one
        // longer than max_unaligned_secs cannot be cut and is left out with
        // a warning instead of stopping the run.
        c.long_unaligned = LongUnaligned::Skip;
        c.resume_from = None;
        c
    }

    /// The run's config: [`Self::data_config`] with the models and voice
    /// scores (settings not applied yet).
    fn base_config(&self) -> Result<TrainConfig, FlowError> {
        let m = self.models()?;
        let mut c = self.data_config();
        c.model_path = m.model.clone();
        c.mimi_path = m.mimi.clone();
        c.tokenizer_path = m.tokenizer.clone();
        let mut voice = c
            .voice
            .take()
            .unwrap_or_else(|| VoiceConfig::new(&m.speaker_encoder));
        voice.speaker_encoder = m.speaker_encoder.clone();
        voice.whisper_model = Some(m.whisper.clone());
        c.voice = Some(voice);
        Ok(c)
    }

    fn dataset(&mut self) -> Result<Done, FlowError> {
        let config = self.data_config();
        let layout = DatasetLayout::from_root(&self.dir.dataset_dir());
        let start = Instant::now();
        let events = self.events;
        let cancel = self.cancel;
        let mut on_progress = |p: LoadProgress| {
            if !cancel.is_cancelled() {
                events.emit(&FlowEvent::StageProgress {
                    stage: Stage::Dataset,
                    done: p.done as f64,
                    total: p.total as f64,
                    unit: Unit::Recordings,
                    eta_s: eta(p.done as f64, p.total as f64, start.elapsed().as_secs_f64()),
                    item: Some(p.recording_id),
                });
            }
        };
        let usage = audio_usage(&layout, &config.load_options(), &mut on_progress)?;
        self.cancelled(Stage::Dataset)?;
        for w in &usage.warnings {
            self.message(Stage::Dataset, format!("warning: {w}"));
        }
        if usage.utterances < 2 {
            return Err(FlowError::NoRecordings {
                raw_dir: self.state.raw_dir.clone(),
                reason: format!(
                    "the recordings give {} utterance(s) after cutting; training needs at least \
                     2 (one is held out to score the voice): add recordings",
                    usage.utterances
                ),
            });
        }
        let info = self.state.dataset.get_or_insert_with(DatasetInfo::default);
        info.recordings = usage.recordings.len();
        info.minutes_in = usage.seconds_in / 60.0;
        info.minutes_used = usage.seconds_used / 60.0;
        info.utterances = usage.utterances;
        info.train_utterances = usage.train_utterances;
        info.validation_utterances = usage.validation_utterances;
        info.warnings = usage.warnings.clone();
        let note = format!(
            "{:.1} of {:.1} audio minutes used: {} utterance(s) from {} recording(s), {} for \
             training, {} for validation",
            info.minutes_used,
            info.minutes_in,
            info.utterances,
            usage.recordings_used,
            info.train_utterances,
            info.validation_utterances
        );
        Ok(Done {
            end: StageEnd::Done,
            note,
            continues: false,
        })
    }

    // -- train --

    /// The device the settings are chosen for.
    fn device(&self) -> DeviceInfo {
        let (memory_bytes, source) = runtime::device_memory().unwrap_or((0, "unknown"));
        DeviceInfo {
            kind: if runtime::default_device_is_cpu() {
                DeviceKind::Cpu
            } else {
                DeviceKind::Gpu
            },
            memory_bytes,
            memory_source: source.into(),
        }
    }

    /// The full run config: recipe and overrides over the base.
    fn train_config(&mut self) -> Result<TrainConfig, FlowError> {
        let mut config = self.base_config()?;
        let info = self.state.dataset.clone().ok_or_else(|| {
            FlowError::Request("the dataset is not cut: the dataset stage did not run".into())
        })?;
        let device = self.device();
        // Voice scores hold one utterance of the training split out.
        let train = info.train_utterances.saturating_sub(1).max(1);
        let recipe = recipe::choose(&RecipeInput {
            minutes: info.minutes_used,
            train_utterances: train,
            memory_bytes: device.memory_bytes,
            device: device.kind,
        });
        let choices = recipe::apply(&recipe, &self.request.overrides, train, &mut config)
            .map_err(FlowError::Request)?;
        config
            .validate()
            .map_err(|e| FlowError::Request(format!("invalid settings: {}", e.join("; "))))?;
        self.state.device = Some(device);
        self.state.settings.clone_from(&choices);
        self.dir.write_state(&mut self.state)?;
        self.events.emit(&FlowEvent::Settings { choices });
        Ok(config)
    }

    fn train(&mut self) -> Result<Done, FlowError> {
        if self.background.is_some() {
            self.message(
                Stage::Train,
                "waiting for the downloads to finish (training needs the model)".into(),
            );
        }
        self.wait_downloads()?;
        let mut config = self.train_config()?;
        let run = RunDir::new(self.dir.run_dir());
        let latest = run.latest_checkpoint_path();
        if latest.exists() {
            self.message(Stage::Train, format!("resuming from {}", latest.display()));
            config.resume_from = Some(latest);
        }
        let start = Instant::now();
        let mut bridge = TrainBridge {
            events: self.events,
            start,
            first_step: None,
            total: 0,
        };
        let mut jsonl =
            JsonlObserver::new(run.path(), &mut bridge).map_err(|source| FlowError::Write {
                path: run.metrics_path(),
                source,
            })?;
        let summary = train::train(&config, &self.request.run, &mut jsonl, self.cancel)?;
        if summary.cancelled {
            return Err(FlowError::Cancelled {
                stage: Stage::Train,
            });
        }
        Ok(Done {
            end: StageEnd::Done,
            note: format!(
                "{} steps{}",
                summary.steps,
                summary
                    .last_loss
                    .map(|l| format!(", last loss {:.4}", l.total))
                    .unwrap_or_default()
            ),
            continues: false,
        })
    }

    // -- summary --

    fn summary(&mut self) -> Result<Done, FlowError> {
        let s = self.build_summary()?;
        Ok(Done {
            end: StageEnd::Done,
            note: format!("{} steps on {:.1} audio minutes", s.steps, s.minutes_used),
            continues: false,
        })
    }

    fn write_summary(&mut self) -> Result<(), FlowError> {
        let s = self.build_summary()?;
        self.dir.write_summary(&s)
    }

    /// The summary, from `voice.json` and the run folder's files.
    fn build_summary(&self) -> Result<Summary, FlowError> {
        let run = RunDir::new(self.dir.run_dir());
        let reports = run.voice_reports().map_err(|e| FlowError::Read {
            path: run.metrics_path(),
            reason: e.to_string(),
        })?;
        let scores = |r: &csm_core::train::VoiceReport| Scores {
            step: r.step,
            similarity: r.summary.similarity,
            wer: r.summary.wer,
            cer: r.summary.cer,
            health_warnings: r.summary.health_warnings,
        };
        // A resumed run may score a step twice; the last record counts.
        let at = |step: usize| reports.iter().rev().find(|r| r.step == step);
        let base = at(0).map(scores);
        let best_step = run.best_adapter_step();
        let best = best_step.and_then(at).map(scores);
        let last = reports
            .iter()
            .filter(|r| r.step > 0)
            .max_by_key(|r| r.step)
            .map(scores);
        let steps = run
            .read_metrics()
            .map_err(|e| FlowError::Read {
                path: run.metrics_path(),
                reason: e.to_string(),
            })?
            .into_iter()
            .filter_map(|r| match r.event {
                csm_core::train::run_dir::RunEvent::Train(TrainEvent::Step(s)) => Some(s.step),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let rel = |p: PathBuf| -> Option<PathBuf> {
            p.is_file().then(|| {
                p.strip_prefix(self.dir.path())
                    .map(Path::to_path_buf)
                    .unwrap_or(p)
            })
        };
        let sample_step = best.as_ref().or(last.as_ref()).map(|s| s.step);
        let stage_seconds: std::collections::BTreeMap<Stage, f64> = self
            .state
            .stages
            .iter()
            .map(|(s, r)| (*s, r.seconds))
            .collect();
        let info = self.state.dataset.clone().unwrap_or_default();
        Ok(Summary {
            format: SUMMARY_FORMAT.into(),
            name: self.state.name.clone(),
            speaker_name: self.state.speaker_name.clone(),
            minutes_used: info.minutes_used,
            utterances: info.utterances,
            steps,
            total_seconds: stage_seconds.values().sum(),
            stage_seconds,
            base,
            best,
            last,
            best_adapter: best_step.and_then(|_| rel(run.best_adapter_path())),
            final_adapter: run.final_adapter().and_then(rel),
            sample_wav: sample_step.and_then(|s| rel(run.voice_sample_path(s, 1))),
        })
    }
}

fn describe(stage: Stage) -> &'static str {
    match stage {
        Stage::Download => "models named by bundle: from the cache, or downloaded",
        Stage::Transcribe => "recordings without a transcript, through Whisper",
        Stage::Dataset => "cutting the recordings into utterances and checking them",
        Stage::Train => "fine-tuning with voice scores at each checkpoint",
        Stage::Summary => "writing summary.json",
    }
}

fn bundle_names(role: Role) -> String {
    csm_hub::BUNDLES
        .iter()
        .filter(|b| b.files_for(role).next().is_some())
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A model as asked, before anything is downloaded.
enum Resolved {
    /// Its files: a path given, or a bundle in the cache.
    Ready(Files),
    /// A bundle that is not (wholly) in the cache.
    Missing(&'static Bundle),
}

/// A model or Whisper folder: a bundle's is the snapshot holding its
/// files; a path given is used as it is.
fn folder(files: &[(Role, PathBuf)], role: Role, source: &ModelSource) -> PathBuf {
    let p = of(files, role).expect("resolved with this role");
    match source {
        ModelSource::Path(_) => p,
        ModelSource::Bundle(_) => p.parent().map_or(p.clone(), Path::to_path_buf),
    }
}

fn of(files: &[(Role, PathBuf)], role: Role) -> Option<PathBuf> {
    files
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, p)| p.clone())
}

/// The paths of every model, once all are resolved.
fn model_paths(
    r: &VoiceRequest,
    model: &[(Role, PathBuf)],
    whisper: &[(Role, PathBuf)],
    encoder: &[(Role, PathBuf)],
) -> ModelPaths {
    ModelPaths {
        model: folder(model, Role::Model, &r.model),
        mimi: r.mimi.clone().or_else(|| of(model, Role::Codec)),
        tokenizer: r.tokenizer.clone().or_else(|| of(model, Role::Tokenizer)),
        whisper: folder(whisper, Role::Whisper, &r.whisper),
        speaker_encoder: of(encoder, Role::SpeakerEncoder).expect("resolved with this role"),
    }
}

/// The bundle and the file a download was at when it failed.
fn what_failed(bundle: &Bundle, item: Option<String>) -> String {
    match item {
        Some(item) => format!("{} ({item})", bundle.name),
        None => bundle.name.to_string(),
    }
}

/// The background thread's work: each bundle in turn, reporting as the
/// download stage.
fn fetch_all(
    settings: csm_hub::HubSettings,
    later: &[(Role, &'static Bundle)],
    events: &Events<'_>,
    cancel: &CancelToken,
    stop: &csm_hub::Cancel,
) -> BackgroundResult {
    let first = later.first().map_or("", |(_, b)| b.name);
    let hub = Hub::new(settings).map_err(|e| Box::new((first.to_string(), e)))?;
    let mut out = Vec::with_capacity(later.len());
    for (role, bundle) in later {
        events.emit(&FlowEvent::Message {
            stage: Stage::Download,
            text: format!("{}: {}", bundle.name, bundle.description),
        });
        let got = download_bundle(&hub, bundle, events, cancel, stop)?;
        out.push((*role, got));
    }
    Ok(out)
}

/// Downloads `bundle`, reporting each file to `events`; on failure, what
/// failed (the bundle and its file, [`what_failed`]) with the hub's error.
fn download_bundle(
    hub: &Hub,
    bundle: &Bundle,
    events: &Events<'_>,
    cancel: &CancelToken,
    stop: &csm_hub::Cancel,
) -> Result<Files, Box<(String, csm_hub::HubError)>> {
    let mut progress = DownloadProgress::new(events, cancel, stop.clone());
    let got = bundle.download(hub, &mut progress, stop);
    let item = progress.item.take();
    got.map(|got| got.into_iter().map(|(f, r)| (f.role, r.path)).collect())
        .map_err(|e| Box::new((what_failed(bundle, item), e)))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A recording with its own transcript into the dataset: the 24 kHz WAV,
/// then the text, each through a temporary file; the transcript last, so
/// a recording whose transcript exists is done.
fn copy_given(audio: &Path, text: &Path, wav_out: &Path, text_out: &Path) -> Result<(), String> {
    let transcript = std::fs::read_to_string(text)
        .map_err(|e| format!("cannot read {}: {e}", text.display()))?;
    if transcript.trim().is_empty() {
        return Err(format!(
            "{} is empty: write what is said, or delete it to have the recording transcribed",
            text.display()
        ));
    }
    let tmp = |p: &Path| {
        let mut s = p.as_os_str().to_owned();
        s.push(".partial");
        PathBuf::from(s)
    };
    let wav_tmp = tmp(wav_out);
    let result = (|| -> Result<(), String> {
        let mut sink = WavSink::create(&wav_tmp, TARGET_SAMPLE_RATE, WavEncoding::Int16)
            .map_err(|e| e.to_string())?;
        for chunk in decode::stream_mono_24k(audio).map_err(|e| e.to_string())? {
            sink.write(&chunk.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        sink.finish().map_err(|e| e.to_string())?;
        std::fs::rename(&wav_tmp, wav_out).map_err(|e| format!("{}: {e}", wav_out.display()))?;
        let text_tmp = tmp(text_out);
        std::fs::write(&text_tmp, format!("{}\n", transcript.trim()))
            .and_then(|()| std::fs::rename(&text_tmp, text_out))
            .map_err(|e| format!("{}: {e}", text_out.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&wav_tmp);
    }
    result
}

/// Download events as stage progress (per file: `item` is `repo/file`);
/// the flow's cancel token stops the transfer at its next chunk.
struct DownloadProgress<'e, 'o> {
    events: &'e Events<'o>,
    cancel: &'e CancelToken,
    hub_cancel: csm_hub::Cancel,
    start: Instant,
    resumed: u64,
    /// The file at hand (`repo/file`), for errors.
    item: Option<String>,
}

impl<'e, 'o> DownloadProgress<'e, 'o> {
    fn new(events: &'e Events<'o>, cancel: &'e CancelToken, hub_cancel: csm_hub::Cancel) -> Self {
        Self {
            events,
            cancel,
            hub_cancel,
            start: Instant::now(),
            resumed: 0,
            item: None,
        }
    }
}

impl DownloadObserver for DownloadProgress<'_, '_> {
    fn on_event(&mut self, event: &DownloadEvent<'_>) {
        if self.cancel.is_cancelled() {
            self.hub_cancel.cancel();
        }
        let message = |text: String| FlowEvent::Message {
            stage: Stage::Download,
            text,
        };
        match *event {
            DownloadEvent::Resolving { repo, file, .. } => {
                self.item = Some(format!("{repo}/{file}"));
            }
            DownloadEvent::Cached { repo, file, .. } => {
                self.events
                    .emit(&message(format!("{repo}/{file}: in the cache")));
            }
            DownloadEvent::Started {
                repo,
                file,
                resumed_from,
                ..
            } => {
                self.start = Instant::now();
                self.resumed = resumed_from;
                if resumed_from > 0 {
                    self.events.emit(&message(format!(
                        "{repo}/{file}: resuming at {}",
                        csm_hub::human_bytes(resumed_from)
                    )));
                }
            }
            DownloadEvent::Progress {
                repo,
                file,
                done,
                total,
            } => {
                let total = total.unwrap_or(0) as f64;
                // The pace of this transfer, not counting resumed bytes.
                let eta_s = eta(
                    done.saturating_sub(self.resumed) as f64,
                    (total - self.resumed as f64).max(0.0),
                    self.start.elapsed().as_secs_f64(),
                );
                self.events.emit(&FlowEvent::StageProgress {
                    stage: Stage::Download,
                    done: done as f64,
                    total,
                    unit: Unit::Bytes,
                    eta_s,
                    item: Some(format!("{repo}/{file}")),
                });
            }
            DownloadEvent::Retrying {
                repo, file, reason, ..
            } => self.events.emit(&message(format!(
                "{repo}/{file}: transfer broke ({reason}); resuming"
            ))),
            DownloadEvent::Finished {
                repo, file, size, ..
            } => self.events.emit(&message(format!(
                "{repo}/{file}: downloaded and verified ({})",
                csm_hub::human_bytes(size)
            ))),
            _ => {}
        }
    }
}

/// Trainer events to the flow's observer: forwarded whole, plus the steps
/// and the encoding as stage progress with an ETA.
struct TrainBridge<'e, 'o> {
    events: &'e Events<'o>,
    start: Instant,
    /// The step this process started from, and when.
    first_step: Option<(usize, Instant)>,
    total: usize,
}

impl TrainingObserver for TrainBridge<'_, '_> {
    fn on_event(&mut self, event: &TrainEvent) {
        self.events.emit(&FlowEvent::Train(event.clone()));
        let progress = match event {
            TrainEvent::Progress { done, total } => Some((
                *done as f64,
                *total as f64,
                Unit::Utterances,
                eta(
                    *done as f64,
                    *total as f64,
                    self.start.elapsed().as_secs_f64(),
                ),
            )),
            TrainEvent::Started {
                total_steps,
                start_step,
                ..
            } => {
                self.total = *total_steps;
                self.first_step = Some((*start_step, Instant::now()));
                Some((*start_step as f64, self.total as f64, Unit::Steps, None))
            }
            TrainEvent::Step(s) => {
                let (from, at) = self.first_step.unwrap_or((0, self.start));
                let done_here = s.step.saturating_sub(from) as f64;
                let left = self.total.saturating_sub(s.step) as f64;
                let eta_s =
                    (done_here > 0.0).then(|| at.elapsed().as_secs_f64() / done_here * left);
                Some((s.step as f64, self.total as f64, Unit::Steps, eta_s))
            }
            _ => None,
        };
        if let Some((done, total, unit, eta_s)) = progress {
            self.events.emit(&FlowEvent::StageProgress {
                stage: Stage::Train,
                done,
                total,
                unit,
                eta_s,
                item: None,
            });
        }
    }
}
