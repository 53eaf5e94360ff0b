//! `metrics.jsonl`: one JSON object per event, appended as the run goes,
//! so the app's history view and plotting scripts can read any run.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::observer::{TrainEvent, TrainingObserver};

/// Appends every event to `OUTPUT/metrics.jsonl` (with a wall-clock
/// timestamp), then forwards it to an inner observer.
pub struct JsonlObserver<'a> {
    file: Option<File>,
    path: PathBuf,
    inner: &'a mut dyn TrainingObserver,
}

impl<'a> JsonlObserver<'a> {
    /// Opens (appending) `dir/metrics.jsonl`.
    pub fn new(dir: &Path, inner: &'a mut dyn TrainingObserver) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("metrics.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(JsonlObserver {
            file: Some(file),
            path,
            inner,
        })
    }
}

impl TrainingObserver for JsonlObserver<'_> {
    fn on_event(&mut self, event: &TrainEvent) {
        if let Some(file) = &mut self.file {
            let mut value = serde_json::to_value(event).expect("events serialise");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            value["time"] = serde_json::json!(now);
            if let Err(e) = writeln!(file, "{value}") {
                // Report once, then keep training without the file.
                self.file = None;
                self.inner.on_event(&TrainEvent::Warning {
                    message: format!("stopped writing {}: {e}", self.path.display()),
                });
            }
        }
        self.inner.on_event(event);
    }
}
