//! History: `list_runs`, `run_metrics`, `export_adapter`, over the run
//! folders as `csm_core::train::run_dir` reads them.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use csm_core::adapter::{AdapterError, ADAPTER_CONFIG_FILE, ADAPTER_FILE};
use csm_core::train::run_dir::{CheckpointFile, RunDir, RunEvent};
use csm_core::train::{TrainConfig, TrainEvent, ValReport, VoiceReport, VoiceSetupReport};
use serde::Serialize;
use tauri::{AppHandle, Runtime, State};

use super::audio::audio_secs;
use crate::contract::StepData;
use crate::error::{blocking, Error, Result};
use crate::state::{AllowedPaths, RunRoots, TrainingJobs};
use crate::time::format_time;

/// Mirrors `RunSummary` in `ui/src/lib/api.ts`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Folder name.
    pub id: String,
    /// Display name (the folder name).
    pub name: String,
    /// Run folder.
    pub dir: PathBuf,
    /// running | completed | stopped | failed.
    pub status: &'static str,
    /// RFC 3339 (UTC).
    pub started_at: String,
    /// First to last event.
    pub duration_secs: f64,
    /// Last step done.
    pub step: u64,
    /// Steps planned.
    pub total_steps: u64,
    /// Lowest validation loss.
    pub best_val_loss: Option<f32>,
    /// Loss of the last step.
    pub final_loss: Option<f32>,
    /// The config as started, with `output_dir` the folder that holds the
    /// run folder (as the Parameters form has it).
    pub config: TrainConfig,
    /// Checkpoint files, oldest first.
    pub checkpoints: Vec<CheckpointFile>,
}

/// Mirrors `RunSample`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSample {
    step: u64,
    path: PathBuf,
    text: String,
    duration_secs: f32,
}

/// Mirrors `RunMetrics`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunMetrics {
    /// Every step.
    pub steps: Vec<StepData>,
    /// Every validation pass (the core's records).
    pub validation: Vec<ValReport>,
    /// Samples spoken during the run.
    pub samples: Vec<RunSample>,
    /// What voice scores were measured against (the last `voiceSetup`
    /// record), when the run had them on.
    pub voice_setup: Option<VoiceSetupReport>,
    /// Voice scores, one per step, by step: a step scored twice (a run
    /// resumed from an earlier checkpoint) keeps its later record.
    pub voice: Vec<VoiceReport>,
}

/// A run folder read back, plus what `estimate_run` needs.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// What History shows.
    pub summary: RunSummary,
    /// Median seconds per step, when at least two steps ran.
    pub secs_per_step: Option<f64>,
    /// Peak MLX memory reported.
    pub peak_memory_bytes: Option<u64>,
}

/// Lists runs in the known runs folders, newest first.
///
/// # Errors
/// `io` never in practice: unreadable folders are skipped.
#[tauri::command]
pub async fn list_runs<R: Runtime>(
    app: AppHandle<R>,
    roots: State<'_, RunRoots>,
    jobs: State<'_, TrainingJobs>,
) -> Result<Vec<RunSummary>> {
    let roots = roots.all(&app)?;
    let active = jobs.running().map(|j| j.run_dir);
    blocking("list_runs", move || {
        let mut runs: Vec<RunSummary> = scan_runs(&roots, active.as_deref())
            .into_iter()
            .map(|r| r.summary)
            .collect();
        runs.sort_by(|a, b| b.started_at.cmp(&a.started_at));
        Ok(runs)
    })
    .await
}

/// Steps, validation passes and samples of one run.
///
/// # Errors
/// `notFound` when no known runs folder has `run_id`, `io` for an unreadable file.
#[tauri::command]
pub async fn run_metrics<R: Runtime>(
    app: AppHandle<R>,
    roots: State<'_, RunRoots>,
    run_id: String,
) -> Result<RunMetrics> {
    let roots = roots.all(&app)?;
    blocking("run_metrics", move || metrics(&find_run(&roots, &run_id)?)).await
}

/// Exports a run's adapter (final, or from `checkpoint`) into a new folder
/// inside `dest` (see [`export`]); returns that folder.
///
/// # Errors
/// `notFound` (run or adapter), `alreadyExists` when the export folder is
/// there already (nothing is touched), `io`, `invalidInput` for a `dest` the
/// user did not choose.
#[tauri::command]
pub async fn export_adapter<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    roots: State<'_, RunRoots>,
    run_id: String,
    checkpoint: Option<PathBuf>,
    dest: PathBuf,
) -> Result<PathBuf> {
    allowed.check(&app, &dest)?;
    let roots = roots.all(&app)?;
    blocking("export_adapter", move || {
        export(
            &find_run(&roots, &run_id)?,
            &run_id,
            checkpoint.as_deref(),
            &dest,
        )
    })
    .await
}

/// Finds `run_id` in the roots.
pub fn find_run(roots: &[PathBuf], run_id: &str) -> Result<PathBuf> {
    if run_id.is_empty() || run_id.contains(['/', '\\']) || run_id == ".." || run_id == "." {
        return Err(Error::InvalidInput(format!("`{run_id}` is not a run id")));
    }
    roots
        .iter()
        .map(|r| r.join(run_id))
        .find(|d| RunDir::new(d).is_run())
        .ok_or_else(|| {
            Error::NotFound(
                roots
                    .first()
                    .map_or_else(|| PathBuf::from(run_id), |r| r.join(run_id)),
            )
        })
}

/// Reads every run folder under `roots` (unreadable ones are skipped).
pub fn scan_runs(roots: &[PathBuf], active: Option<&Path>) -> Vec<RunRecord> {
    let mut out = Vec::new();
    for root in roots {
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let dir = entry.path();
            if RunDir::new(&dir).is_run() {
                let is_active = active.is_some_and(|a| a == dir);
                if let Ok(rec) = read_run(&dir, is_active) {
                    out.push(rec);
                }
            }
        }
    }
    out
}

/// Reads one run folder.
pub fn read_run(dir: &Path, active: bool) -> Result<RunRecord> {
    let run = RunDir::new(dir);
    let mut config = run.read_config()?;
    let records = run.read_metrics()?;
    let times: Vec<f64> = records.iter().filter_map(|r| r.time).collect();
    let first = times.first().copied().unwrap_or(0.0);
    let last = times.last().copied().unwrap_or(first);
    let (mut step, mut total_steps, mut final_loss, mut best_val) = (0u64, 0u64, None, None::<f32>);
    let (mut peak, mut status) = (None, None);
    let mut step_times = Vec::new();
    for record in &records {
        match &record.event {
            RunEvent::Train(TrainEvent::Started { total_steps: t, .. }) => total_steps = *t as u64,
            RunEvent::Train(TrainEvent::Step(r)) => {
                step = r.step as u64;
                total_steps = r.total_steps as u64;
                final_loss = Some(r.loss);
                // 0: a file written before peak memory was reported.
                peak = Some(r.peak_memory_bytes).filter(|&b| b > 0).or(peak);
                if r.elapsed_secs.is_finite() {
                    step_times.push(r.elapsed_secs);
                }
            }
            RunEvent::Train(TrainEvent::Validation(v)) if v.loss.is_finite() => {
                best_val = Some(best_val.map_or(v.loss, |b| b.min(v.loss)));
            }
            RunEvent::Train(TrainEvent::Finished { cancelled, .. }) => {
                status = Some(if *cancelled { "stopped" } else { "completed" });
            }
            RunEvent::Failed { .. } => status = Some("failed"),
            RunEvent::Train(_) => {}
        }
    }
    let status = status.unwrap_or(if active { "running" } else { "failed" });
    let mut deltas: Vec<f64> = step_times
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|d| *d > 0.0)
        .collect();
    deltas.sort_by(f64::total_cmp);
    let secs_per_step = (!deltas.is_empty()).then(|| deltas[deltas.len() / 2]);
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let started = if first > 0.0 {
        UNIX_EPOCH + Duration::from_secs_f64(first)
    } else {
        std::fs::metadata(run.config_path())
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH)
    };
    // `config.json` names the run folder itself; the form names its parent.
    if let Some(parent) = config.output_dir.parent() {
        config.output_dir = parent.to_path_buf();
    }
    Ok(RunRecord {
        summary: RunSummary {
            name: id.clone(),
            id,
            dir: dir.to_path_buf(),
            status,
            started_at: format_time(started, false),
            duration_secs: last - first,
            step,
            total_steps,
            best_val_loss: best_val,
            final_loss,
            config,
            checkpoints: run.checkpoints(),
        },
        secs_per_step,
        peak_memory_bytes: peak,
    })
}

/// Synchronous body of [`run_metrics`].
pub fn metrics(dir: &Path) -> Result<RunMetrics> {
    let run = RunDir::new(dir);
    let config = run.read_config()?;
    let mut steps_per_epoch = 1;
    let mut out = RunMetrics::default();
    for record in run.read_metrics()? {
        let RunEvent::Train(event) = record.event else {
            continue;
        };
        match event {
            TrainEvent::Started { train_examples, .. } => {
                // The app trains on one process.
                steps_per_epoch = config.steps_per_epoch(train_examples, 1) as u64;
            }
            TrainEvent::Step(r) => out.steps.push(StepData::from_report(&r, steps_per_epoch)),
            TrainEvent::Validation(v) => out.validation.push(v),
            TrainEvent::VoiceSetup(v) => out.voice_setup = Some(v),
            TrainEvent::VoiceScores(v) => {
                out.voice.retain(|r| r.step != v.step);
                out.voice.push(v);
            }
            TrainEvent::Sample { step, path } => out.samples.push(RunSample {
                step: step as u64,
                duration_secs: audio_secs(&path),
                path,
                text: config.sample_prompt.clone(),
            }),
            _ => {}
        }
    }
    out.voice.sort_by_key(|r| r.step);
    Ok(out)
}

/// Synchronous body of [`export_adapter`]: writes the adapter into the new
/// folder `<dest_dir>/<run id>` (final adapter) or
/// `<dest_dir>/<run id>-<checkpoint stem>` and returns it. The folder holds
/// `adapters.safetensors` + `adapter_config.json` (mlx_lm layout, loadable by
/// `csm` and `adapter::load_mlx`) and, for a final adapter the run saved in
/// PEFT layout too, `peft/`. Never overwrites: an existing folder of that
/// name is an `alreadyExists` error. Everything is written into a hidden
/// temporary folder beside it, which is renamed into place at the end, so a
/// failed export leaves nothing behind.
pub fn export(
    run_dir: &Path,
    run_id: &str,
    checkpoint: Option<&Path>,
    dest_dir: &Path,
) -> Result<PathBuf> {
    if !dest_dir.is_dir() {
        return Err(Error::NotFound(dest_dir.to_path_buf()));
    }
    let source = adapter_source(run_dir, checkpoint)?;
    let name = match &source {
        AdapterSource::Final => run_id.to_string(),
        AdapterSource::Checkpoint(c) => format!(
            "{run_id}-{}",
            c.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
    };
    let target = dest_dir.join(&name);
    if target.symlink_metadata().is_ok() {
        return Err(Error::AlreadyExists(target));
    }
    let staging = dest_dir.join(format!(".{name}.export-{}", std::process::id()));
    std::fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
    let written = write_adapter(run_dir, &source, &staging).and_then(|()| {
        // Checked again right before the rename: on Linux, renaming a folder
        // onto an existing empty folder would replace it.
        if target.symlink_metadata().is_ok() {
            return Err(Error::AlreadyExists(target.clone()));
        }
        std::fs::rename(&staging, &target).map_err(|e| Error::io(&target, e))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    Ok(target)
}

/// Which adapter of a run to export.
enum AdapterSource {
    /// The run's final `adapters.safetensors` (+ `peft/` when saved).
    Final,
    /// The adapter tensors of this training checkpoint.
    Checkpoint(PathBuf),
}

/// The final adapter when `checkpoint` is `None` and the run saved one, else
/// the given (or newest) `checkpoint_step_*.safetensors` of `run_dir`.
fn adapter_source(run_dir: &Path, checkpoint: Option<&Path>) -> Result<AdapterSource> {
    let run = RunDir::new(run_dir);
    if checkpoint.is_none() && run.final_adapter().is_some() {
        return Ok(AdapterSource::Final);
    }
    let ckpt = match checkpoint {
        Some(c) => {
            if !c.starts_with(run_dir) {
                return Err(Error::InvalidInput(format!(
                    "{} is not a checkpoint of {}",
                    c.display(),
                    run_dir.display()
                )));
            }
            c.to_path_buf()
        }
        None => run
            .checkpoints()
            .pop()
            .map(|c| c.path)
            .ok_or_else(|| Error::NotFound(run.latest_checkpoint_path()))?,
    };
    if !ckpt.is_file() {
        return Err(Error::NotFound(ckpt));
    }
    Ok(AdapterSource::Checkpoint(ckpt))
}

/// Writes `adapters.safetensors` + `adapter_config.json` (and `peft/` for a
/// final adapter that has it) of `run_dir` into the new, empty folder `dir`.
/// Plain copies are enough: [`export`] renames the whole folder into place.
fn write_adapter(run_dir: &Path, source: &AdapterSource, dir: &Path) -> Result<()> {
    let ckpt = match source {
        AdapterSource::Final => {
            for file in [ADAPTER_FILE, ADAPTER_CONFIG_FILE] {
                copy(&run_dir.join(file), &dir.join(file))?;
            }
            let peft = run_dir.join("peft");
            if peft.is_dir() {
                let out = dir.join("peft");
                std::fs::create_dir(&out).map_err(|e| Error::io(&out, e))?;
                for entry in std::fs::read_dir(&peft).map_err(|e| Error::io(&peft, e))? {
                    let entry = entry.map_err(|e| Error::io(&peft, e))?;
                    if entry.path().is_file() {
                        copy(&entry.path(), &out.join(entry.file_name()))?;
                    }
                }
            }
            return Ok(());
        }
        AdapterSource::Checkpoint(ckpt) => ckpt,
    };
    extract(ckpt, dir)
}

/// Writes the adapter of the training checkpoint `ckpt` in mlx_lm layout
/// into `dir` (each file atomically).
fn extract(ckpt: &Path, dir: &Path) -> Result<()> {
    let adapter = csm_core::train::state::read_adapter(ckpt)
        .map_err(|e| Error::UnsupportedFormat(e.to_string()))?;
    adapter.save_mlx(dir).map_err(|e| match e {
        AdapterError::Checkpoint(e) => e.into(),
        e => Error::Internal(e.to_string()),
    })
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map_err(|e| Error::io(from, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use csm_core::generate::StopReason;
    use csm_core::train::{VoiceSample, VoiceSummary};

    use super::*;

    fn report(step: usize, similarity: f32) -> VoiceReport {
        VoiceReport {
            step,
            checkpoint: None,
            summary: VoiceSummary {
                similarity: Some(similarity),
                wer: None,
                cer: None,
                health_warnings: 0,
                samples: 1,
            },
            samples: vec![VoiceSample {
                prompt: 1,
                text: "Hi.".into(),
                path: format!("/r/samples/step_{step:07}/prompt_1.wav").into(),
                transcript: None,
                similarity: Some(similarity),
                wer: None,
                cer: None,
                stop_reason: StopReason::Eos,
                duration_secs: 1.0,
                leading_silence_secs: 0.0,
                trailing_silence_secs: 0.0,
                longest_pause_secs: 0.0,
                clipped_fraction: 0.0,
                chars_per_sec: None,
                rate_ratio: None,
                warnings: Vec::new(),
            }],
            best_step: None,
            new_best: false,
        }
    }

    #[test]
    fn run_metrics_has_one_voice_report_per_step_the_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        std::fs::create_dir_all(run.path()).unwrap();
        run.write_config(&TrainConfig {
            output_dir: run.path().to_path_buf(),
            ..TrainConfig::default()
        })
        .unwrap();
        let setup = VoiceSetupReport {
            held_out_recording: "a".into(),
            held_out_utterance: 0,
            held_out_secs: 3.0,
            context_text: "Hello.".into(),
            prompts: vec!["Hi.".into()],
            reference_recordings: 2,
            reference_chars_per_sec: None,
            transcribed: false,
        };
        let mut log = run.open_metrics().unwrap();
        // A run scored 0, 10, 20, then resumed from step 10 and scored 20 again.
        for event in [
            TrainEvent::VoiceSetup(setup.clone()),
            TrainEvent::VoiceScores(report(0, 0.5)),
            TrainEvent::VoiceScores(report(10, 0.6)),
            TrainEvent::VoiceScores(report(20, 0.7)),
            TrainEvent::VoiceSetup(setup.clone()),
            TrainEvent::VoiceScores(report(20, 0.8)),
        ] {
            log.append(&event).unwrap();
        }
        drop(log);
        let m = metrics(run.path()).unwrap();
        assert_eq!(m.voice_setup, Some(setup));
        let got: Vec<_> = m
            .voice
            .iter()
            .map(|r| (r.step, r.summary.similarity))
            .collect();
        assert_eq!(got, [(0, Some(0.5)), (10, Some(0.6)), (20, Some(0.8))]);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["voice"][2]["samples"][0]["stopReason"], "eos");
        assert_eq!(json["voiceSetup"]["heldOutRecording"], "a");
    }
}
