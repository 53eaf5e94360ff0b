//! History: `list_runs`, `run_metrics`, `export_adapter`, from the run
//! folders' `config.json` + `metrics.jsonl` + checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use csm_core::train::TrainConfig;
use serde::Serialize;
use serde_json::Value;
use tauri::{AppHandle, Runtime, State};

use super::training::{step_data, steps_per_epoch, wav_secs, RunConfig};
use crate::contract::StepData;
use crate::error::{blocking, Error, Result};
use crate::state::{AllowedPaths, RunRoots, TrainingJobs};

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
    /// The config as started.
    pub config: RunConfig,
    /// Checkpoint files, oldest first.
    pub checkpoints: Vec<Checkpoint>,
}

/// A checkpoint of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    /// Step it holds.
    pub step: u64,
    /// The file.
    pub path: PathBuf,
}

/// Mirrors `ValidationData`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationData {
    step: u64,
    loss: f32,
    semantic_loss: f32,
    acoustic_loss: f32,
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
#[derive(Debug, Clone, Serialize)]
pub struct RunMetrics {
    /// Every step.
    pub steps: Vec<StepData>,
    /// Every validation pass.
    pub validation: Vec<ValidationData>,
    /// Samples spoken during the run.
    pub samples: Vec<RunSample>,
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
        .find(|d| d.join("metrics.jsonl").is_file())
        .ok_or_else(|| {
            Error::NotFound(
                roots
                    .first()
                    .map_or_else(|| PathBuf::from(run_id), |r| r.join(run_id)),
            )
        })
}

/// Reads every run folder (with `config.json` + `metrics.jsonl`) under `roots`.
pub fn scan_runs(roots: &[PathBuf], active: Option<&Path>) -> Vec<RunRecord> {
    let mut out = Vec::new();
    for root in roots {
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let dir = entry.path();
            if dir.join("config.json").is_file() && dir.join("metrics.jsonl").is_file() {
                let is_active = active.is_some_and(|a| a == dir);
                if let Ok(rec) = read_run(&dir, is_active) {
                    out.push(rec);
                }
            }
        }
    }
    out
}

fn read_config(dir: &Path) -> Result<TrainConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))
}

fn read_events(dir: &Path) -> Result<Vec<Value>> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    // A line cut by a crash is skipped.
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Struct variants of the core's `TrainEvent` keep snake_case field names
/// (only variant names are renamed); accept both spellings.
fn either<'a>(d: &'a Value, camel: &str, snake: &str) -> &'a Value {
    if d[camel].is_null() {
        &d[snake]
    } else {
        &d[camel]
    }
}

fn f32_of(v: &Value) -> f32 {
    v.as_f64().map_or(f32::NAN, |x| x as f32)
}

/// Reads one run folder.
pub fn read_run(dir: &Path, active: bool) -> Result<RunRecord> {
    let cfg = read_config(dir)?;
    let events = read_events(dir)?;
    let times: Vec<f64> = events.iter().filter_map(|e| e["time"].as_f64()).collect();
    let first = times.first().copied().unwrap_or(0.0);
    let last = times.last().copied().unwrap_or(first);
    let (mut step, mut total_steps, mut final_loss, mut best_val) = (0u64, 0u64, None, None::<f32>);
    let (mut peak, mut status) = (None, None);
    let mut step_times = Vec::new();
    for e in &events {
        let d = &e["data"];
        match e["event"].as_str() {
            Some("started") => {
                total_steps = either(d, "totalSteps", "total_steps")
                    .as_u64()
                    .unwrap_or(total_steps)
            }
            Some("step") => {
                step = d["step"].as_u64().unwrap_or(step);
                total_steps = d["totalSteps"].as_u64().unwrap_or(total_steps);
                final_loss = Some(f32_of(&d["loss"]));
                peak = d["peakMemoryBytes"].as_u64().or(peak);
                if let Some(t) = d["elapsedSecs"].as_f64() {
                    step_times.push(t);
                }
            }
            Some("validation") => {
                let l = f32_of(&d["loss"]);
                if l.is_finite() {
                    best_val = Some(best_val.map_or(l, |b| b.min(l)));
                }
            }
            Some("finished") => {
                status = Some(if d["cancelled"].as_bool() == Some(true) {
                    "stopped"
                } else {
                    "completed"
                })
            }
            Some("failed") => status = Some("failed"),
            _ => {}
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
        std::fs::metadata(dir.join("config.json"))
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH)
    };
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
            config: RunConfig::from_train_config(&cfg),
            checkpoints: checkpoints(dir),
        },
        secs_per_step,
        peak_memory_bytes: peak,
    })
}

/// `checkpoint_step_NNNNNNN.safetensors` files, oldest first.
pub fn checkpoints(dir: &Path) -> Vec<Checkpoint> {
    let mut v: Vec<Checkpoint> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name
                .strip_prefix("checkpoint_step_")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some(Checkpoint {
                step,
                path: e.path(),
            })
        })
        .collect();
    v.sort_by_key(|c| c.step);
    v
}

/// Synchronous body of [`run_metrics`].
pub fn metrics(dir: &Path) -> Result<RunMetrics> {
    let cfg = read_config(dir)?;
    let mut spe = 1;
    let mut out = RunMetrics {
        steps: Vec::new(),
        validation: Vec::new(),
        samples: Vec::new(),
    };
    for e in read_events(dir)? {
        let d = e["data"].clone();
        match e["event"].as_str() {
            Some("started") => {
                let train = either(&d, "trainExamples", "train_examples")
                    .as_u64()
                    .unwrap_or(0);
                spe = steps_per_epoch(train, cfg.batch_size as u64, cfg.grad_accum as u64);
            }
            Some("step") => {
                // Non-finite losses were written as null; they come back as NaN.
                let mut d = d;
                for k in ["loss", "semanticLoss", "acousticLoss", "gradNorm"] {
                    if d[k].is_null() {
                        d[k] = Value::from(f64::NAN);
                    }
                }
                if let Ok(r) = serde_json::from_value::<StepReportJson>(d) {
                    out.steps.push(step_data(&r.into(), spe));
                }
            }
            Some("validation") => out.validation.push(ValidationData {
                step: d["step"].as_u64().unwrap_or(0),
                loss: f32_of(&d["loss"]),
                semantic_loss: f32_of(&d["semanticLoss"]),
                acoustic_loss: f32_of(&d["acousticLoss"]),
            }),
            Some("sample") => {
                let path = PathBuf::from(d["path"].as_str().unwrap_or_default());
                out.samples.push(RunSample {
                    step: d["step"].as_u64().unwrap_or(0),
                    duration_secs: wav_secs(&path),
                    path,
                    text: cfg.sample_prompt.clone(),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The step record as `metrics.jsonl` holds it (core `StepReport`, camelCase).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StepReportJson {
    step: usize,
    total_steps: usize,
    epoch: usize,
    #[serde(deserialize_with = "nan_f32")]
    loss: f32,
    #[serde(deserialize_with = "nan_f32")]
    semantic_loss: f32,
    #[serde(deserialize_with = "nan_f32")]
    acoustic_loss: f32,
    lr: f32,
    #[serde(deserialize_with = "nan_f32")]
    grad_norm: f32,
    frames_per_sec: f32,
    memory_bytes: u64,
    #[serde(default)]
    peak_memory_bytes: u64,
    #[serde(default)]
    comm_bytes: u64,
    #[serde(default)]
    comm_secs: f64,
    elapsed_secs: f64,
    #[serde(default)]
    eta_secs: Option<f64>,
}

fn nan_f32<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
    let v: Option<f64> = serde::Deserialize::deserialize(d)?;
    Ok(v.map_or(f32::NAN, |x| x as f32))
}

impl From<StepReportJson> for csm_core::train::StepReport {
    fn from(r: StepReportJson) -> Self {
        csm_core::train::StepReport {
            step: r.step,
            total_steps: r.total_steps,
            epoch: r.epoch,
            loss: r.loss,
            semantic_loss: r.semantic_loss,
            acoustic_loss: r.acoustic_loss,
            lr: r.lr,
            grad_norm: r.grad_norm,
            frames_per_sec: r.frames_per_sec,
            memory_bytes: r.memory_bytes,
            peak_memory_bytes: r.peak_memory_bytes,
            comm_bytes: r.comm_bytes,
            comm_secs: r.comm_secs,
            elapsed_secs: r.elapsed_secs,
            eta_secs: r.eta_secs.unwrap_or(f64::NAN),
        }
    }
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
    if checkpoint.is_none() && run_dir.join("adapters.safetensors").is_file() {
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
        None => checkpoints(run_dir)
            .pop()
            .map(|c| c.path)
            .ok_or_else(|| Error::NotFound(run_dir.join("checkpoint_latest.safetensors")))?,
    };
    if !ckpt.is_file() {
        return Err(Error::NotFound(ckpt));
    }
    Ok(AdapterSource::Checkpoint(ckpt))
}

/// Writes `adapters.safetensors` + `adapter_config.json` (and `peft/` for a
/// final adapter that has it) of `run_dir` into the existing folder `dir`.
fn write_adapter(run_dir: &Path, source: &AdapterSource, dir: &Path) -> Result<()> {
    let ckpt = match source {
        AdapterSource::Final => {
            for file in ["adapters.safetensors", "adapter_config.json"] {
                copy_atomic(&run_dir.join(file), &dir.join(file))?;
            }
            let peft = run_dir.join("peft");
            if peft.is_dir() {
                let out = dir.join("peft");
                std::fs::create_dir(&out).map_err(|e| Error::io(&out, e))?;
                for entry in std::fs::read_dir(&peft).map_err(|e| Error::io(&peft, e))? {
                    let entry = entry.map_err(|e| Error::io(&peft, e))?;
                    if entry.path().is_file() {
                        copy_atomic(&entry.path(), &out.join(entry.file_name()))?;
                    }
                }
            }
            return Ok(());
        }
        AdapterSource::Checkpoint(ckpt) => ckpt,
    };
    let loaded =
        csm_core::train::state::load(ckpt).map_err(|e| Error::UnsupportedFormat(e.to_string()))?;
    let tensors: BTreeMap<String, _> = loaded.adapters.into_iter().collect();
    let weights = dir.join("adapters.safetensors");
    csm_core::checkpoint::write::save_safetensors(&weights, &tensors, &HashMap::new()).map_err(
        |e| Error::Io {
            path: weights.clone(),
            source: std::io::Error::other(e.to_string()),
        },
    )?;
    let spec = loaded.config.lora_spec();
    let config = csm_core::adapter::MlxAdapterConfig {
        fine_tune_type: "lora".into(),
        lora_parameters: csm_core::adapter::MlxLoraParameters {
            rank: spec.r,
            scale: spec.scale(),
            dropout: spec.dropout,
            keys: spec.modules.clone(),
        },
        spec,
        base_model: Some(loaded.config.model_path.clone()),
    };
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Internal(e.to_string()))?;
    write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
}

/// Extracts the adapter of `ckpt` (a file under `run_dir`) into the existing
/// folder `dir` unless it is there already; generation uses this to load a
/// training checkpoint as an mlx_lm adapter.
pub fn extract_checkpoint_adapter(ckpt: &Path, dir: &Path) -> Result<()> {
    if dir.join("adapters.safetensors").is_file() && dir.join("adapter_config.json").is_file() {
        return Ok(());
    }
    let run_dir = ckpt.parent().unwrap_or(Path::new("."));
    write_adapter(run_dir, &AdapterSource::Checkpoint(ckpt.to_path_buf()), dir)
}

/// Copies `from` to `to` through a temporary file renamed into place.
fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = temp_beside(to);
    std::fs::copy(from, &tmp).map_err(|e| Error::io(from, e))?;
    std::fs::rename(&tmp, to).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(to, e)
    })
}

/// Writes `bytes` to `to` through a temporary file renamed into place.
fn write_atomic(to: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_beside(to);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, to).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(to, e)
    })
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// UTC time as RFC 3339 (`compact`: `YYYYMMDD-HHMMSS`, for run ids).
pub fn format_time(t: SystemTime, compact: bool) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if compact {
        format!("{y:04}{m:02}{d:02}-{h:02}{mi:02}{s:02}")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_619_503);
        assert_eq!(format_time(t, false), "2026-11-25T15:11:43Z");
        assert_eq!(format_time(t, true), "20261125-151143");
    }
}
