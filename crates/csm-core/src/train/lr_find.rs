//! The learning-rate range test behind `csm lr-find` (Smith, "Cyclical
//! Learning Rates for Training Neural Networks", 2017, section 3.3; the
//! form fastai's `lr_find` and Lightning's `Tuner.lr_find` use): starting
//! from the run's initial adapters (or weights, or those of
//! `--resume-from`), take optimizer steps with a learning rate that grows
//! exponentially from `min_lr` to `max_lr`, smooth the losses with a
//! bias-corrected moving average, stop once the smoothed loss is several
//! times its best, and suggest the learning rate where it falls fastest
//! (the steepest descent against log LR).
//!
//! The steps are the run's own: the same model set-up
//! ([`super::modes::prepare_model`]), batches, forward/backward pass,
//! clipping and AdamW. Nothing is written but the report the caller asks
//! for; the run's output directory stays as it is.

use std::path::Path;

use mlx_rs::module::{Module, ModuleParameters};
use mlx_rs::{random, Array, Dtype};
use serde::{Deserialize, Serialize};

use super::batch::{bucket_batches, collate, Example};
use super::config::TrainConfig;
use super::modes;
use super::observer::{Phase, TrainEvent, TrainingObserver};
use super::optim::AdamW;
use super::settings::RunSettings;
use super::state;
use super::step::{ForwardBackward, StepOptions};
use super::trainer::{load_assets, mlx, prepare, TrainError};
use crate::adapter;
use crate::cancel::CancelToken;
use crate::checkpoint::write::write_atomic;
use crate::model::LossWeights;
use crate::rng::Rng;
use crate::runtime;

/// File name of the report in the output directory, by default.
pub const REPORT_FILE: &str = "lr_find.json";

/// How the range test runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LrFindOptions {
    /// Learning rate of the first step.
    pub min_lr: f32,
    /// Learning rate of the last step.
    pub max_lr: f32,
    /// Optimizer steps (at most; the test stops early when the loss
    /// diverges).
    pub steps: usize,
    /// Weight of the past in the moving average of the loss (0: none).
    pub smoothing: f32,
    /// Stop when the smoothed loss exceeds this multiple of its best.
    pub diverge_factor: f32,
}

impl Default for LrFindOptions {
    /// 1e-7 to 1 in 100 steps, stop at 4x the best loss (Lightning's
    /// defaults, its lower bound raised from 1e-8), smoothing 0.9.
    ///
    /// fastai and Lightning smooth with 0.98, whose average lags about 50
    /// steps behind the loss: over 100 steps spanning 7 decades that is 3.5
    /// decades, and the steepest descent of the average lands late. On the
    /// demo (README, "Learning-rate finder") 0.98 suggested 3.4e-3 where
    /// the raw loss fell fastest near 1e-3; 0.9 (a 10-step lag) suggested
    /// 1.7e-3.
    fn default() -> Self {
        LrFindOptions {
            min_lr: 1e-7,
            max_lr: 1.0,
            steps: 100,
            smoothing: 0.9,
            diverge_factor: 4.0,
        }
    }
}

impl LrFindOptions {
    /// Every problem, one line each, in the flags' words.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if !(self.min_lr.is_finite() && self.min_lr > 0.0) {
            errors.push(format!("--min-lr must be positive (got {})", self.min_lr));
        }
        if !(self.max_lr.is_finite() && self.max_lr > self.min_lr) {
            errors.push(format!(
                "--max-lr must be above --min-lr (got {} and {})",
                self.max_lr, self.min_lr
            ));
        }
        if self.steps < 10 {
            errors.push(format!(
                "--steps must be at least 10 for a slope to be found (got {})",
                self.steps
            ));
        }
        if !(0.0..1.0).contains(&self.smoothing) {
            errors.push(format!(
                "--smoothing must be in [0, 1) (got {})",
                self.smoothing
            ));
        }
        if !(self.diverge_factor.is_finite() && self.diverge_factor > 1.0) {
            errors.push(format!(
                "--diverge-factor must be above 1 (got {})",
                self.diverge_factor
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The learning rate of step `i` (0-based): `min_lr * (max_lr /
    /// min_lr)^(i / (steps - 1))`.
    pub fn lr_at(&self, i: usize) -> f32 {
        let t = i as f64 / (self.steps.max(2) - 1) as f64;
        (f64::from(self.min_lr) * (f64::from(self.max_lr) / f64::from(self.min_lr)).powf(t)) as f32
    }
}

/// One step of the test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LrPoint {
    /// Step, 1-based.
    pub step: usize,
    /// Learning rate of the step.
    pub lr: f32,
    /// Training loss of the step's batch, before the update.
    pub loss: f32,
    /// Bias-corrected moving average of the losses so far.
    pub smoothed: f32,
}

/// Why the test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LrFindStop {
    /// Every step ran.
    Completed,
    /// The smoothed loss passed `diverge_factor` times its best (or stopped
    /// being finite).
    Diverged,
    /// The caller cancelled.
    Cancelled,
}

/// What `csm lr-find` found; its JSON report (and what the app draws).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LrFindReport {
    /// The learning rate where the smoothed loss falls fastest against log
    /// LR: the suggestion. `None` when too few steps ran to tell.
    pub suggested_lr: Option<f32>,
    /// The learning rate of the lowest smoothed loss (training at it is
    /// usually too fast; a tenth of it is fastai's other suggestion).
    pub min_loss_lr: Option<f32>,
    /// Every step.
    pub points: Vec<LrPoint>,
    /// Why it ended.
    pub stop: LrFindStop,
    /// The settings of the test.
    pub options: LrFindOptions,
    /// The learning rate of the run's config (`--learning-rate`), for
    /// comparison.
    pub config_lr: f32,
    /// Values trained.
    pub trainable_params: usize,
}

/// Smoothed losses: `avg_i = beta avg_{i-1} + (1 - beta) loss_i`, divided
/// by `1 - beta^i` (so the first values are not pulled towards 0).
pub fn smooth(losses: &[f32], beta: f32) -> Vec<f32> {
    let beta = f64::from(beta);
    let mut avg = 0f64;
    losses
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            avg = beta * avg + (1.0 - beta) * f64::from(l);
            (avg / (1.0 - beta.powi(i as i32 + 1))) as f32
        })
        .collect()
}

/// The index of the steepest descent of `smoothed` against `log(lrs)`:
/// central differences inside, one-sided at the ends, the first tenth of
/// the points (at least one) left out as the average settles. `None` with
/// fewer than 5 points left.
pub fn steepest(lrs: &[f32], smoothed: &[f32]) -> Option<usize> {
    let n = smoothed.len().min(lrs.len());
    let skip = (n / 10).max(1);
    if n < skip + 5 {
        return None;
    }
    let x: Vec<f64> = lrs[..n].iter().map(|&l| f64::from(l).ln()).collect();
    let y: Vec<f64> = smoothed[..n].iter().map(|&l| f64::from(l)).collect();
    let slope = |i: usize| {
        let (a, b) = match i {
            0 => (0, 1),
            i if i == n - 1 => (n - 2, n - 1),
            i => (i - 1, i + 1),
        };
        (y[b] - y[a]) / (x[b] - x[a])
    };
    (skip..n)
        .filter(|&i| slope(i).is_finite())
        .min_by(|&a, &b| slope(a).total_cmp(&slope(b)))
}

/// Runs the range test for `cfg` (its model, data, method and optimizer
/// settings; its schedule and epochs are not used) and returns the report;
/// writes nothing. Events go to `observer` (loading, encoding) and each
/// point to `on_point`; `cancel` stops it at a step boundary with the
/// points so far.
///
/// # Errors
/// Invalid settings, the set-up of the model or data (as
/// [`train`](super::train)), or MLX failures.
pub fn lr_find(
    cfg: &TrainConfig,
    options: &LrFindOptions,
    settings: &RunSettings,
    observer: &mut dyn TrainingObserver,
    on_point: &mut dyn FnMut(&LrPoint),
    cancel: &CancelToken,
) -> Result<LrFindReport, TrainError> {
    cfg.validate().map_err(TrainError::Config)?;
    options.validate().map_err(TrainError::Config)?;
    observer.on_event(&TrainEvent::Phase {
        phase: Phase::Loading,
        detail: format!("model {}", cfg.model_path.display()),
    });
    let backend = runtime::use_device(settings.device);
    let mut assets = load_assets(
        &cfg.model_path,
        cfg.mimi_path.as_deref(),
        cfg.tokenizer_path.as_deref(),
        backend.default_dtype(),
    )?;
    let prepared = prepare(&mut assets, cfg, &settings.codes_cache, observer)?;
    for w in &prepared.warnings {
        observer.on_event(&TrainEvent::Warning { message: w.clone() });
    }
    if prepared.train.is_empty() {
        return Err(TrainError::NoExamples {
            reason: "every example was skipped or the dataset is empty; see the warnings above"
                .into(),
        });
    }
    let model = &mut assets.loaded.model;
    random::seed(cfg.seed).map_err(mlx("seeding"))?;
    let set_up = modes::prepare_model(model, cfg)?;
    if let Some(path) = &cfg.resume_from {
        start_from_checkpoint(model, cfg, path)?;
    }
    let grad_keys: Vec<String> = adapter::adapter_tensors(model).into_keys().collect();
    let weights = LossWeights {
        semantic: cfg.semantic_weight,
        acoustic: cfg.acoustic_weight,
    };
    let plain = StepOptions {
        compile: false,
        buckets: false,
    };
    let mut step_fn = ForwardBackward::new(grad_keys, weights, plain);
    let mut optimizer = AdamW::new(cfg.weight_decay);
    let _blas = crate::kernels::many_row_products_are_ours().then(runtime::SingleThreadBlas::new);
    observer.on_event(&TrainEvent::Phase {
        phase: Phase::Training,
        detail: format!(
            "learning-rate range test: {} steps from {:.1e} to {:.1e}",
            options.steps, options.min_lr, options.max_lr
        ),
    });
    model.training_mode(true);
    let train = &prepared.train;
    let mut batches = Vec::new();
    let mut epoch = 0u64;
    let mut points: Vec<LrPoint> = Vec::new();
    let mut losses = Vec::new();
    let mut best = f32::INFINITY;
    let mut stop = LrFindStop::Completed;
    for i in 0..options.steps {
        if cancel.is_cancelled() {
            stop = LrFindStop::Cancelled;
            break;
        }
        let mut micro = Vec::new();
        for _ in 0..cfg.grad_accum {
            if batches.is_empty() {
                // A new epoch's order, as the trainer draws it.
                let lengths: Vec<usize> = train.iter().map(Example::len).collect();
                let mut rng = Rng::new(cfg.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                batches = bucket_batches(&lengths, cfg.batch_size, &mut rng);
                batches.reverse();
                epoch += 1;
            }
            micro.extend(batches.pop());
        }
        let lr = options.lr_at(i);
        let loss = step(
            model,
            &mut step_fn,
            &mut optimizer,
            train,
            &micro,
            (cfg, i, lr),
        )?;
        losses.push(loss);
        let smoothed = *smooth(&losses, options.smoothing)
            .last()
            .unwrap_or(&f32::NAN);
        let point = LrPoint {
            step: i + 1,
            lr,
            loss,
            smoothed,
        };
        on_point(&point);
        points.push(point);
        best = best.min(smoothed);
        if !smoothed.is_finite() || smoothed > options.diverge_factor * best {
            stop = LrFindStop::Diverged;
            break;
        }
    }
    model.training_mode(false);
    Ok(report(
        points,
        stop,
        *options,
        cfg.learning_rate,
        set_up.trainable_params,
    ))
}

/// The report of `points`: the suggestion (steepest descent) and the
/// lowest smoothed loss, over the points before the loss stopped being
/// finite.
pub fn report(
    points: Vec<LrPoint>,
    stop: LrFindStop,
    options: LrFindOptions,
    config_lr: f32,
    trainable_params: usize,
) -> LrFindReport {
    let finite = points.iter().take_while(|p| p.smoothed.is_finite()).count();
    let lrs: Vec<f32> = points[..finite].iter().map(|p| p.lr).collect();
    let smoothed: Vec<f32> = points[..finite].iter().map(|p| p.smoothed).collect();
    let suggested_lr = steepest(&lrs, &smoothed).map(|i| lrs[i]);
    let min_loss_lr = points[..finite]
        .iter()
        .min_by(|a, b| a.smoothed.total_cmp(&b.smoothed))
        .map(|p| p.lr);
    LrFindReport {
        suggested_lr,
        min_loss_lr,
        points,
        stop,
        options,
        config_lr,
        trainable_params,
    }
}

/// Writes `report` as pretty JSON to `path` (atomically, its folder
/// created).
///
/// # Errors
/// The folder or the file cannot be written.
pub fn write_report(report: &LrFindReport, path: &Path) -> Result<(), TrainError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| TrainError::Output {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    // The trainer's one `expect`: a struct of numbers always serialises.
    let json = serde_json::to_string_pretty(report).expect("the report serialises");
    write_atomic(path, json.as_bytes())?;
    Ok(())
}

/// One optimizer step at `lr` over the micro-batches `micro` (examples of
/// `train`): forward/backward on each, the mean, clipping at
/// `--max-grad-norm`, AdamW. Returns the mean loss.
fn step(
    model: &mut crate::model::Csm,
    step_fn: &mut ForwardBackward,
    optimizer: &mut AdamW,
    train: &[Example],
    micro: &[Vec<usize>],
    (cfg, i, lr): (&TrainConfig, usize, f32),
) -> Result<f32, TrainError> {
    let mut grads: std::collections::BTreeMap<String, Array> = Default::default();
    let mut total = Array::from_f32(0.0);
    for (j, indices) in micro.iter().enumerate() {
        let refs: Vec<&Example> = indices.iter().map(|&k| &train[k]).collect();
        let mut rng = Rng::new(cfg.seed ^ ((i as u64) << 20 | j as u64));
        let batch =
            collate(&refs, cfg.decoder_fraction, &mut rng).map_err(mlx("building a batch"))?;
        if cfg.lora_dropout > 0.0 {
            random::seed(cfg.seed.wrapping_add((i as u64) << 16 | j as u64))
                .map_err(mlx("seeding dropout"))?;
        }
        let out = step_fn.run(model, &batch, (1.0, 1.0))?;
        total = total
            .add(&out.losses[0])
            .map_err(mlx("summing the losses"))?;
        for (k, g) in out.grads {
            let sum = match grads.remove(&k) {
                Some(prev) => prev.add(&g).map_err(mlx("accumulating gradients"))?,
                None => g,
            };
            grads.insert(k, sum);
        }
    }
    let n = Array::from_f32(micro.len() as f32);
    let mut sq = Array::from_f32(0.0);
    for g in grads.values_mut() {
        *g = g.divide(&n).map_err(mlx("averaging gradients"))?;
        let s = g
            .as_dtype(Dtype::Float32)
            .and_then(|x| x.square())
            .and_then(|x| x.sum(None))
            .map_err(mlx("gradient norm"))?;
        sq = sq.add(s).map_err(mlx("gradient norm"))?;
    }
    let norm = sq.sqrt().map_err(mlx("gradient norm"))?;
    let loss = total.divide(&n).map_err(mlx("the loss"))?;
    mlx_rs::transforms::eval([&norm, &loss]).map_err(mlx("the training step"))?;
    let (loss, norm) = (loss.item_cast::<f32>(), norm.item_cast::<f32>());
    if !loss.is_finite() || !norm.is_finite() {
        // No update: the test reports a diverged loss and stops.
        return Ok(f32::NAN);
    }
    if cfg.max_grad_norm > 0.0 && norm > cfg.max_grad_norm {
        let scale = Array::from_f32(cfg.max_grad_norm / (norm + 1e-6));
        for g in grads.values_mut() {
            *g = g.multiply(&scale).map_err(mlx("clipping gradients"))?;
        }
    }
    let params = adapter::adapter_tensors(model);
    let updated = optimizer
        .update(lr, &params, &grads)
        .map_err(mlx("the optimizer step"))?;
    let mut to_eval: Vec<&Array> = updated.values().collect();
    to_eval.extend(optimizer.state_arrays());
    mlx_rs::transforms::eval(to_eval).map_err(mlx("the optimizer step"))?;
    model.update_flattened(
        updated
            .into_iter()
            .map(|(k, v)| (std::rc::Rc::from(k.as_str()), v))
            .collect(),
    );
    Ok(loss)
}

/// Puts the trained tensors of the checkpoint at `path` on `model` (set up
/// for `cfg`), after checking that they belong to this set-up. The
/// optimizer starts fresh: the test measures LRs, not the old run's state.
fn start_from_checkpoint(
    model: &mut crate::model::Csm,
    cfg: &TrainConfig,
    path: &Path,
) -> Result<(), TrainError> {
    let reject = |reason: String| TrainError::Resume {
        path: path.to_path_buf(),
        reason,
    };
    let loaded = state::load(path).map_err(|e| reject(e.to_string()))?;
    if let Some(reason) = modes::resume_mismatch(&loaded.config, cfg) {
        return Err(reject(reason));
    }
    let current = adapter::adapter_tensors(model);
    let mut update = std::collections::HashMap::new();
    for (k, v) in &current {
        match loaded.adapters.get(k) {
            Some(a) if a.shape() == v.shape() => {
                update.insert(
                    std::rc::Rc::from(k.as_str()),
                    a.as_dtype(v.dtype())
                        .map_err(mlx("restoring the checkpoint"))?,
                );
            }
            _ => {
                return Err(reject(format!(
                    "tensor `{k}` is missing or has another shape"
                )))
            }
        }
    }
    model.update_flattened(update);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lrs_grow_exponentially_from_min_to_max() {
        let o = LrFindOptions {
            min_lr: 1e-6,
            max_lr: 1e-2,
            steps: 5,
            ..LrFindOptions::default()
        };
        let lrs: Vec<f32> = (0..5).map(|i| o.lr_at(i)).collect();
        for (got, want) in lrs.iter().zip([1e-6f32, 1e-5, 1e-4, 1e-3, 1e-2]) {
            assert!((got / want - 1.0).abs() < 1e-5, "{got} vs {want}");
        }
        assert!(LrFindOptions::default().validate().is_ok());
        let bad = LrFindOptions {
            min_lr: 1e-2,
            max_lr: 1e-3,
            steps: 3,
            smoothing: 1.0,
            diverge_factor: 1.0,
        };
        let e = bad.validate().unwrap_err().join("\n");
        for flag in ["--max-lr", "--steps", "--smoothing", "--diverge-factor"] {
            assert!(e.contains(flag), "{flag} in {e}");
        }
    }

    #[test]
    fn smoothing_is_bias_corrected() {
        // A constant is its own average from the first step.
        for v in smooth(&[2.0; 5], 0.98) {
            assert!((v - 2.0).abs() < 1e-5, "{v}");
        }
        // beta 0: no smoothing.
        assert_eq!(smooth(&[1.0, 3.0], 0.0), vec![1.0, 3.0]);
        // By hand: avg1 = 0.5, avg2 = 0.25 + 0.5 * 3 = 1.75; / (1 - 0.25).
        let s = smooth(&[1.0, 3.0], 0.5);
        assert!((s[1] - 1.75 / 0.75).abs() < 1e-6);
    }

    /// A loss that is flat, then falls along a sigmoid of log LR, then
    /// blows up: the steepest point is the sigmoid's centre.
    #[test]
    fn steepest_descent_finds_the_middle_of_the_fall() {
        let o = LrFindOptions {
            min_lr: 1e-6,
            max_lr: 1.0,
            steps: 61,
            ..LrFindOptions::default()
        };
        let lrs: Vec<f32> = (0..61).map(|i| o.lr_at(i)).collect();
        let centre = 1e-3f32.ln();
        let loss: Vec<f32> = lrs
            .iter()
            .map(|l| {
                let x = l.ln() - centre;
                5.0 - 3.0 / (1.0 + (-2.0 * x).exp()) + if *l > 0.1 { 50.0 * l } else { 0.0 }
            })
            .collect();
        let i = steepest(&lrs, &loss).unwrap();
        assert!((lrs[i] / 1e-3 - 1.0).abs() < 0.3, "{}", lrs[i]);
        let points = lrs
            .iter()
            .zip(&loss)
            .enumerate()
            .map(|(k, (&lr, &l))| LrPoint {
                step: k + 1,
                lr,
                loss: l,
                smoothed: l,
            })
            .collect();
        let r = report(points, LrFindStop::Completed, o, 2e-4, 10);
        assert_eq!(r.suggested_lr, Some(lrs[i]));
        let m = r.min_loss_lr.unwrap();
        assert!(m > 1e-2 && m <= 0.1, "{m}");
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["suggestedLr"].is_number() && json["points"][0]["smoothed"].is_number());
        let back: LrFindReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        // Too few points to tell.
        assert_eq!(steepest(&lrs[..4], &loss[..4]), None);
    }
}
