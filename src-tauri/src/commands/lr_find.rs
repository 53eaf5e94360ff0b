//! `find_learning_rate`, `cancel_lr_find`: the Parameters screen's
//! learning-rate finder over `csm_core::train::lr_find` (the range test of
//! `csm lr-find`). It trains a copy of the adapters in memory and writes
//! nothing but its report, `lr_find.json` in the form's output folder (the
//! folder that receives the run folders); no run folder is made.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use csm_core::cancel::CancelToken;
use csm_core::train::lr_find::{self, LrFindOptions, LrFindReport, LrPoint};
use csm_core::train::{TrainConfig, TrainEvent, TrainingObserver};
use serde::Serialize;
use tauri::ipc::Channel;
use tauri::{AppHandle, Runtime, State};

use super::training::{input_paths, phase, train_error_kind};
use crate::contract::Phase;
use crate::error::{blocking, Error, Result};
use crate::state::{AllowedPaths, TrainingJobs};

/// One range test at a time: its cancel token while it runs.
#[derive(Debug, Default)]
pub struct LrFindJobs(Mutex<Option<CancelToken>>);

impl LrFindJobs {
    /// Registers a test; `None` when one runs already.
    pub fn start(&self) -> Option<CancelToken> {
        let mut slot = self.0.lock().expect("lr-find lock");
        if slot.is_some() {
            return None;
        }
        let token = CancelToken::new();
        *slot = Some(token.clone());
        Some(token)
    }

    /// Forgets the finished test.
    pub fn finish(&self) {
        *self.0.lock().expect("lr-find lock") = None;
    }

    /// Stops the test in progress at its next step; returns whether one ran.
    pub fn cancel(&self) -> bool {
        match &*self.0.lock().expect("lr-find lock") {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// Progress of [`find_learning_rate`], on its channel (docs/ipc.md).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "event",
    content = "data"
)]
pub enum LrFindEvent {
    /// Loading the model, encoding the audio, the test itself.
    Phase {
        /// The phase.
        phase: Phase,
        /// What it does, in words.
        message: Option<String>,
        /// Items done (encoding), if counted.
        done: Option<u64>,
        /// Items in all, if counted.
        total: Option<u64>,
    },
    /// One step of the test: the core's `LrPoint` (camelCase).
    Point(LrPoint),
    /// A warning of the data set-up (a skipped recording...).
    Warning {
        /// The core's sentence.
        message: String,
    },
}

/// What [`find_learning_rate`] returns.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LrFindResult {
    /// The core's report (camelCase), as `lr_find.json` holds it.
    pub report: LrFindReport,
    /// Where the report was written.
    pub report_path: PathBuf,
}

/// Runs the learning-rate range test for the form's `config` (its model,
/// data, method and optimizer settings) with `options` (null: the core's
/// defaults); each step arrives on `on_event`. Resolves with the report,
/// also when cancelled (with the steps so far); writes only
/// `<output_dir>/lr_find.json`.
///
/// # Errors
/// `alreadyRunning` (a test or a training run is in progress),
/// `notFound`/`invalidInput` for paths and settings, `modelLoad`,
/// `training`, `io` (the report).
#[tauri::command]
pub async fn find_learning_rate<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    jobs: State<'_, LrFindJobs>,
    training: State<'_, TrainingJobs>,
    config: TrainConfig,
    options: Option<LrFindOptions>,
    on_event: Channel<LrFindEvent>,
) -> Result<LrFindResult> {
    for p in input_paths(&config) {
        if !p.exists() {
            return Err(Error::NotFound(p.clone()));
        }
        allowed.check(&app, p)?;
    }
    if config.output_dir.as_os_str().is_empty() {
        return Err(Error::InvalidInput(
            "output_dir is required: the report lr_find.json is written there".into(),
        ));
    }
    allowed.check(&app, &config.output_dir)?;
    if let Some(run) = training.running() {
        return Err(Error::AlreadyRunning(format!(
            "run {} is training; find the learning rate before starting a run, or stop it",
            run.run_id
        )));
    }
    let Some(cancel) = jobs.start() else {
        return Err(Error::AlreadyRunning(
            "the learning-rate finder is running; wait for it or stop it first".into(),
        ));
    };
    let send = move |e: LrFindEvent| {
        // Best effort: a closed window never fails the test.
        let _ = on_event.send(e);
    };
    let options = options.unwrap_or_default();
    let result = blocking("find_learning_rate", move || {
        let settings = csm_core::train::RunSettings::from_env(|k| std::env::var_os(k))
            .map_err(Error::InvalidInput)?;
        let result = run(&config, &options, &settings, &cancel, &send);
        csm_core::runtime::release_free_memory();
        result
    })
    .await;
    jobs.finish();
    result
}

/// Stops the range test in progress after its current step; it then
/// resolves with the steps so far. Does nothing when none runs.
///
/// # Errors
/// None in practice.
#[tauri::command]
pub async fn cancel_lr_find(jobs: State<'_, LrFindJobs>) -> Result<()> {
    jobs.cancel();
    Ok(())
}

/// The report's path for the form's `output_dir` (the runs folder).
pub fn report_path(output_dir: &Path) -> PathBuf {
    output_dir.join(lr_find::REPORT_FILE)
}

/// Synchronous body of [`find_learning_rate`]: the test, then its report.
pub fn run(
    config: &TrainConfig,
    options: &LrFindOptions,
    settings: &csm_core::train::RunSettings,
    cancel: &CancelToken,
    send: &dyn Fn(LrFindEvent),
) -> Result<LrFindResult> {
    options
        .validate()
        .map_err(|e| Error::InvalidInput(e.join("\n")))?;
    let mut events = Events {
        send,
        phase: Phase::Loading,
        message: None,
    };
    let mut on_point = |p: &LrPoint| send(LrFindEvent::Point(*p));
    let report = lr_find::lr_find(
        config,
        options,
        settings,
        &mut events,
        &mut on_point,
        cancel,
    )
    .map_err(|e| match train_error_kind(&e) {
        "invalidInput" => Error::InvalidInput(e.to_string()),
        "modelLoad" => Error::ModelLoad(e.to_string()),
        _ => Error::Training(e.to_string()),
    })?;
    let report_path = report_path(&config.output_dir);
    lr_find::write_report(&report, &report_path).map_err(|e| match e {
        csm_core::train::TrainError::Output { path, source } => Error::io(&path, source),
        other => Error::Training(format!(
            "cannot write the report {}: {other}",
            report_path.display()
        )),
    })?;
    Ok(LrFindResult {
        report,
        report_path,
    })
}

/// The core's set-up events as [`LrFindEvent`]s.
struct Events<'a> {
    send: &'a dyn Fn(LrFindEvent),
    phase: Phase,
    message: Option<String>,
}

impl TrainingObserver for Events<'_> {
    fn on_event(&mut self, event: &TrainEvent) {
        let out = match event {
            TrainEvent::Phase { phase: p, detail } => {
                self.phase = phase(*p);
                self.message = Some(detail.clone());
                LrFindEvent::Phase {
                    phase: self.phase,
                    message: self.message.clone(),
                    done: None,
                    total: None,
                }
            }
            TrainEvent::Progress { done, total } => LrFindEvent::Phase {
                phase: self.phase,
                message: self.message.clone(),
                done: Some(*done as u64),
                total: Some(*total as u64),
            },
            TrainEvent::Warning { message } => LrFindEvent::Warning {
                message: message.clone(),
            },
            // The test sends no steps, validations or checkpoints.
            _ => return,
        };
        (self.send)(out);
    }
}
