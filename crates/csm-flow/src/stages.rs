//! The stages of [`run_voice`], in order, and the bookkeeping that lets a
//! second run continue where the first stopped (see the crate docs and
//! `docs/voice.md`, "Stopping and running again").

use std::path::{Path, PathBuf};
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
/// # Errors
/// [`FlowError`]: a bad request, a download, transcription, dataset or
/// training failure (the stage is marked `failed` in `voice.json` with the
/// reason), or [`FlowError::Cancelled`] naming the stage (marked
/// `cancelled`; running again continues).
pub fn run_voice(
    request: &VoiceRequest,
    observer: &mut dyn FlowObserver,
    cancel: &CancelToken,
) -> Result<FlowOutcome, FlowError> {
    let dir = VoiceDir::new(&request.voice_dir);
    let mut flow = Flow {
        request,
        state: open_state(request, &dir)?,
        dir,
        observer,
        cancel,
    };
    runtime::use_device(request.run.device);
    for stage in Stage::ALL {
        let finished = flow.state.status(stage).is_finished();
        let skip_done = finished
            && match stage {
                // Paths are resolved every run (cheap, no network when cached).
                Stage::Download => false,
                Stage::Summary => flow.dir.read_summary()?.is_some(),
                _ => true,
            };
        if skip_done {
            flow.observer.on_event(&FlowEvent::StageFinished {
                stage,
                end: StageEnd::Skipped,
                seconds: 0.0,
                note: "done by an earlier run".into(),
            });
        } else {
            flow.run_stage(stage)?;
        }
        if request.stop_after == Some(stage) && stage != Stage::Summary {
            return Ok(FlowOutcome::StoppedAfter(stage));
        }
    }
    let summary = flow.dir.read_summary()?.ok_or_else(|| FlowError::Read {
        path: flow.dir.summary_file(),
        reason: "the summary stage is done but its file is missing".into(),
    })?;
    flow.observer.on_event(&FlowEvent::Finished {
        summary: Box::new(summary.clone()),
    });
    Ok(FlowOutcome::Finished(Box::new(summary)))
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

struct Flow<'a> {
    request: &'a VoiceRequest,
    state: VoiceState,
    dir: VoiceDir,
    observer: &'a mut dyn FlowObserver,
    cancel: &'a CancelToken,
}

/// What a stage's own work reports back.
struct Done {
    end: StageEnd,
    note: String,
}

impl Flow<'_> {
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
        self.observer.on_event(&FlowEvent::StageStarted {
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
                self.observer.on_event(&FlowEvent::StageFinished {
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

    fn message(&mut self, stage: Stage, text: String) {
        self.observer.on_event(&FlowEvent::Message { stage, text });
    }

    // -- download --

    fn download(&mut self) -> Result<Done, FlowError> {
        let r = self.request;
        let mut fetched = Vec::new();
        let mut hub: Option<Hub> = None;
        let mut resolve = |flow: &mut Self,
                           source: &ModelSource,
                           role: Role,
                           what: &str|
         -> Result<Vec<(Role, PathBuf)>, FlowError> {
            let name = match source {
                ModelSource::Path(p) => {
                    if !p.exists() {
                        return Err(FlowError::Request(format!(
                            "the {what} {}: no such file or folder",
                            p.display()
                        )));
                    }
                    return Ok(vec![(role, p.clone())]);
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
                let settings = r.hub.clone().ok_or_else(|| {
                    FlowError::Request(format!(
                        "the {what} is the bundle `{name}`, but no hub settings were given to \
                         find or download it"
                    ))
                })?;
                hub = Some(Hub::new(settings).map_err(|source| FlowError::Download {
                    what: name.clone(),
                    source: Box::new(source),
                })?);
            }
            let hub = hub.as_ref().expect("set above");
            let files = match bundle.cached(hub) {
                Some(files) => files,
                None => {
                    flow.message(
                        Stage::Download,
                        format!("{}: {}", bundle.name, bundle.description),
                    );
                    fetched.push(bundle.name);
                    flow.fetch(hub, bundle)?
                }
            };
            Ok(files.into_iter().map(|(f, p)| (f.role, p)).collect())
        };
        let model = resolve(self, &r.model, Role::Model, "model")?;
        let whisper = resolve(self, &r.whisper, Role::Whisper, "Whisper model")?;
        let encoder = resolve(
            self,
            &r.speaker_encoder,
            Role::SpeakerEncoder,
            "speaker encoder",
        )?;
        let of = |files: &[(Role, PathBuf)], role: Role| {
            files
                .iter()
                .find(|(r, _)| *r == role)
                .map(|(_, p)| p.clone())
        };
        // A bundle's model and Whisper are folders: the snapshot holding
        // their files; a path given is used as it is.
        let folder = |files: &[(Role, PathBuf)], role: Role, source: &ModelSource| {
            let p = of(files, role).expect("resolved above");
            match source {
                ModelSource::Path(_) => p,
                ModelSource::Bundle(_) => p.parent().map_or(p.clone(), Path::to_path_buf),
            }
        };
        let paths = ModelPaths {
            model: folder(&model, Role::Model, &r.model),
            mimi: r.mimi.clone().or_else(|| of(&model, Role::Codec)),
            tokenizer: r.tokenizer.clone().or_else(|| of(&model, Role::Tokenizer)),
            whisper: folder(&whisper, Role::Whisper, &r.whisper),
            speaker_encoder: of(&encoder, Role::SpeakerEncoder).expect("resolved above"),
        };
        self.state.models = Some(paths);
        let bundles: Vec<&str> = [&r.model, &r.whisper, &r.speaker_encoder]
            .iter()
            .filter_map(|s| match s {
                ModelSource::Bundle(b) => Some(b.as_str()),
                ModelSource::Path(_) => None,
            })
            .collect();
        Ok(if !fetched.is_empty() {
            Done {
                end: StageEnd::Done,
                note: format!("downloaded {}", fetched.join(", ")),
            }
        } else if bundles.is_empty() {
            Done {
                end: StageEnd::Skipped,
                note: "every model given as a path".into(),
            }
        } else {
            Done {
                end: StageEnd::Skipped,
                note: format!("already in the cache: {}", bundles.join(", ")),
            }
        })
    }

    fn fetch(
        &mut self,
        hub: &Hub,
        bundle: &Bundle,
    ) -> Result<Vec<(csm_hub::BundleFile, PathBuf)>, FlowError> {
        let hub_cancel = csm_hub::Cancel::new();
        let mut progress = DownloadProgress {
            observer: &mut *self.observer,
            cancel: self.cancel,
            hub_cancel: hub_cancel.clone(),
            start: Instant::now(),
            resumed: 0,
        };
        let got =
            bundle
                .download(hub, &mut progress, &hub_cancel)
                .map_err(|source| match source {
                    csm_hub::HubError::Cancelled { .. } if self.cancel.is_cancelled() => {
                        FlowError::Cancelled {
                            stage: Stage::Download,
                        }
                    }
                    source => FlowError::Download {
                        what: bundle.name.into(),
                        source: Box::new(source),
                    },
                })?;
        Ok(got.into_iter().map(|(f, r)| (f, r.path)).collect())
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
            let whisper_dir = self.models()?.whisper.clone();
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
            let observer = &mut *self.observer;
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
                        observer.on_event(&progress(0.0, total, None));
                    }
                    FolderEvent::FileStart { name, duration_s } => {
                        current = duration_s;
                        observer.on_event(&progress(before, total, Some(name)));
                    }
                    FolderEvent::Progress { done_s } => {
                        observer.on_event(&progress(before + done_s.min(current), total, None));
                    }
                    FolderEvent::FileDone { name, text: t } => {
                        before += std::mem::take(&mut current);
                        let preview: String = t.chars().take(70).collect();
                        observer.on_event(&text(format!("{name}: {preview}")));
                    }
                    FolderEvent::FileFailed { name, error } => {
                        before += std::mem::take(&mut current);
                        observer.on_event(&text(format!("{name}: FAILED: {error}")));
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
        })
    }

    fn models(&self) -> Result<&ModelPaths, FlowError> {
        self.state.models.as_ref().ok_or_else(|| {
            FlowError::Request("the models are not resolved: the download stage did not run".into())
        })
    }

    // -- dataset --

    /// The run's config: the caller's base with the flow's folders,
    /// models and voice scores (settings not applied yet).
    fn base_config(&self) -> Result<TrainConfig, FlowError> {
        let m = self.models()?;
        let mut c = self.request.base.clone();
        c.model_path = m.model.clone();
        c.mimi_path = m.mimi.clone();
        c.tokenizer_path = m.tokenizer.clone();
        c.output_dir = self.dir.run_dir();
        c.data_dir = Some(self.dir.dataset_dir());
        c.audio_dir = PathBuf::new();
        c.transcript_dir = PathBuf::new();
        c.alignment_dir = None;
        // A recording with its own transcript has no word timings: one
        // longer than max_unaligned_secs cannot be cut and is left out with
        // a warning instead of stopping the run.
        c.long_unaligned = LongUnaligned::Skip;
        let mut voice = c
            .voice
            .take()
            .unwrap_or_else(|| VoiceConfig::new(&m.speaker_encoder));
        voice.speaker_encoder = m.speaker_encoder.clone();
        voice.whisper_model = Some(m.whisper.clone());
        c.voice = Some(voice);
        c.resume_from = None;
        Ok(c)
    }

    fn dataset(&mut self) -> Result<Done, FlowError> {
        let config = self.base_config()?;
        let layout = DatasetLayout::from_root(&self.dir.dataset_dir());
        let start = Instant::now();
        let observer = &mut *self.observer;
        let cancel = self.cancel;
        let mut on_progress = |p: LoadProgress| {
            if !cancel.is_cancelled() {
                observer.on_event(&FlowEvent::StageProgress {
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
        self.observer.on_event(&FlowEvent::Settings { choices });
        Ok(config)
    }

    fn train(&mut self) -> Result<Done, FlowError> {
        let mut config = self.train_config()?;
        let run = RunDir::new(self.dir.run_dir());
        let latest = run.latest_checkpoint_path();
        if latest.exists() {
            self.message(Stage::Train, format!("resuming from {}", latest.display()));
            config.resume_from = Some(latest);
        }
        let start = Instant::now();
        let mut bridge = TrainBridge {
            observer: &mut *self.observer,
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
        })
    }

    // -- summary --

    fn summary(&mut self) -> Result<Done, FlowError> {
        let s = self.build_summary()?;
        Ok(Done {
            end: StageEnd::Done,
            note: format!("{} steps on {:.1} audio minutes", s.steps, s.minutes_used),
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

/// Download events as stage progress; the flow's cancel token stops the
/// transfer at its next chunk.
struct DownloadProgress<'a> {
    observer: &'a mut dyn FlowObserver,
    cancel: &'a CancelToken,
    hub_cancel: csm_hub::Cancel,
    start: Instant,
    resumed: u64,
}

impl DownloadObserver for DownloadProgress<'_> {
    fn on_event(&mut self, event: &DownloadEvent<'_>) {
        if self.cancel.is_cancelled() {
            self.hub_cancel.cancel();
        }
        let message = |text: String| FlowEvent::Message {
            stage: Stage::Download,
            text,
        };
        match *event {
            DownloadEvent::Cached { repo, file, .. } => {
                self.observer
                    .on_event(&message(format!("{repo}/{file}: in the cache")));
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
                    self.observer.on_event(&message(format!(
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
                self.observer.on_event(&FlowEvent::StageProgress {
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
            } => self.observer.on_event(&message(format!(
                "{repo}/{file}: transfer broke ({reason}); resuming"
            ))),
            DownloadEvent::Finished {
                repo, file, size, ..
            } => self.observer.on_event(&message(format!(
                "{repo}/{file}: downloaded and verified ({})",
                csm_hub::human_bytes(size)
            ))),
            _ => {}
        }
    }
}

/// Trainer events to the flow's observer: forwarded whole, plus the steps
/// and the encoding as stage progress with an ETA.
struct TrainBridge<'a> {
    observer: &'a mut dyn FlowObserver,
    start: Instant,
    /// The step this process started from, and when.
    first_step: Option<(usize, Instant)>,
    total: usize,
}

impl TrainingObserver for TrainBridge<'_> {
    fn on_event(&mut self, event: &TrainEvent) {
        self.observer.on_event(&FlowEvent::Train(event.clone()));
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
            self.observer.on_event(&FlowEvent::StageProgress {
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
