//! `metrics.jsonl`: one JSON object per event, appended as the run goes,
//! so the app's history view and plotting scripts can read any run (the
//! format and the reader are [`super::run_dir`]'s).

use std::path::Path;

use super::observer::{TrainEvent, TrainingObserver};
use super::run_dir::{MetricsLog, RunDir};

/// Appends every event to `OUTPUT/metrics.jsonl` (with a wall-clock
/// timestamp), then forwards it to an inner observer.
pub struct JsonlObserver<'a> {
    log: Option<MetricsLog>,
    inner: &'a mut dyn TrainingObserver,
}

impl<'a> JsonlObserver<'a> {
    /// Opens (appending) `dir/metrics.jsonl`.
    pub fn new(dir: &Path, inner: &'a mut dyn TrainingObserver) -> std::io::Result<Self> {
        Ok(JsonlObserver {
            log: Some(RunDir::new(dir).open_metrics()?),
            inner,
        })
    }
}

impl TrainingObserver for JsonlObserver<'_> {
    fn on_event(&mut self, event: &TrainEvent) {
        if let Some(log) = &mut self.log {
            if let Err(e) = log.append(event) {
                // Report once, then keep training without the file.
                let message = format!("stopped writing {}: {e}", log.path().display());
                self.log = None;
                self.inner.on_event(&TrainEvent::Warning { message });
            }
        }
        self.inner.on_event(event);
    }
}
