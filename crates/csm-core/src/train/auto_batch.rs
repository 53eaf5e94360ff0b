//! `--batch-size auto`: the largest micro-batch whose training step fits a
//! memory budget, found by probe steps before training.
//!
//! A probe is one forward/backward pass and one (discarded) AdamW update of
//! `B` copies of the longest training example, padded to the length the
//! compiled step pads it to ([`super::step::bucket_len`]), with the run's
//! decoder fraction; its cost is MLX's peak memory over what was held
//! before it. Memory grows about linearly with `B`, so two probes (1 and 2)
//! give a first guess, and the search then probes around it until it holds
//! the largest `B` that fits next to a `B + 1` that does not (or the
//! number of training examples, above which a batch cannot grow): usually
//! four or five probe steps. The probes run the plain (uncompiled) step,
//! whose peak is at least the compiled one's, on a copy of the model
//! prepared as the run prepares it (adapters, quantization or trainable
//! weights), so the prediction counts the weights the run will hold.
//!
//! The budget is [`DEFAULT_MEMORY_FRACTION`] of the device's memory unless
//! given: a GPU's own memory (on Apple silicon the recommended working set
//! of the shared memory), or the machine's RAM on the CPU
//! ([`crate::runtime::device_memory`]).

use std::collections::{BTreeMap, HashMap};

use mlx_rs::module::ModuleParameters;
use mlx_rs::Array;

use super::batch::{collate, Example};
use super::config::TrainConfig;
use super::modes;
use super::observer::{Phase, TrainEvent, TrainingObserver};
use super::optim::AdamW;
use super::step::{bucket_len, ForwardBackward, StepOptions};
use super::trainer::{mlx, TrainError};
use crate::distributed::Group;
use crate::model::{Csm, LossWeights};
use crate::rng::Rng;
use crate::runtime;

/// Share of the device's memory the default budget allows: room is left
/// for the allocator's fragmentation, the codec and whatever else the
/// machine runs.
pub const DEFAULT_MEMORY_FRACTION: f64 = 0.8;

/// Most probe steps one search runs.
const MAX_PROBES: usize = 10;

/// How `--batch-size auto` is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AutoBatch {
    /// The most memory the training step may use at its peak, weights
    /// included.
    pub budget: MemoryBudget,
}

/// A memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum MemoryBudget {
    /// [`DEFAULT_MEMORY_FRACTION`] of the device's memory.
    #[default]
    Default,
    /// This many bytes.
    Bytes(u64),
    /// This share (0..=1) of the device's memory.
    Fraction(f64),
}

/// One probe: a batch size and the peak it predicts for training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Probe {
    /// Examples in the probe batch.
    pub batch_size: usize,
    /// Peak bytes the run would reach with this batch size.
    pub peak_bytes: u64,
}

/// What the search found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BatchChoice {
    /// The batch size chosen.
    pub batch_size: usize,
    /// The budget, in bytes.
    pub budget_bytes: u64,
    /// Where the budget comes from.
    pub budget_source: String,
    /// Frames of the probe rows (the longest example, padded).
    pub probe_frames: usize,
    /// Every probe, in the order run.
    pub probes: Vec<Probe>,
    /// Why the search stopped where it did.
    pub limit: String,
}

impl BatchChoice {
    /// One line for the log and the observer.
    pub fn describe(&self) -> String {
        let gb = |b: u64| b as f64 / 1e9;
        let at = self
            .probes
            .iter()
            .find(|p| p.batch_size == self.batch_size)
            .map(|p| format!(", {:.2} GB at its peak", gb(p.peak_bytes)))
            .unwrap_or_default();
        format!(
            "batch size {} (auto{at}; budget {:.2} GB, {}; rows of {} frames; {})",
            self.batch_size,
            gb(self.budget_bytes),
            self.budget_source,
            self.probe_frames,
            self.limit
        )
    }
}

/// The budget in bytes and where it comes from.
///
/// # Errors
/// No budget given and MLX reports no memory size for the device.
pub fn budget_bytes(auto: &AutoBatch) -> Result<(u64, String), TrainError> {
    let fraction = match auto.budget {
        MemoryBudget::Bytes(b) => return Ok((b, "--memory-budget".into())),
        MemoryBudget::Fraction(f) => f,
        MemoryBudget::Default => DEFAULT_MEMORY_FRACTION,
    };
    let (total, what) = runtime::device_memory().ok_or_else(|| {
        TrainError::Config(vec![
            "--batch-size auto: MLX reports no memory size for this device; give --memory-budget \
             in bytes (e.g. 40GB)"
                .into(),
        ])
    })?;
    let budget = (total as f64 * fraction) as u64;
    Ok((
        budget,
        format!(
            "{:.0}% of {:.2} GB of {what}",
            fraction * 100.0,
            total as f64 / 1e9
        ),
    ))
}

/// Finds the largest batch size of `cfg`'s run whose step fits `auto`'s
/// budget on `model` (the loaded, not yet prepared model: a copy is
/// prepared for the probes), for the training examples `train`.
///
/// # Errors
/// Even one example does not fit the budget (the error says how much it
/// needs), or MLX fails.
pub fn choose_batch_size(
    model: &Csm,
    cfg: &TrainConfig,
    train: &[Example],
    auto: &AutoBatch,
) -> Result<BatchChoice, TrainError> {
    let (budget, budget_source) = budget_bytes(auto)?;
    let longest = train
        .iter()
        .max_by_key(|e| e.len())
        .ok_or_else(|| TrainError::NoExamples {
            reason: "--batch-size auto needs at least one training example".into(),
        })?;
    let row = padded(longest, bucket_len(longest.len()));
    let mut prober = Prober::new(model, cfg, budget)?;
    let choice = search(
        |b| prober.probe(&row, b, cfg.decoder_fraction),
        budget,
        train.len(),
    )?;
    Ok(BatchChoice {
        batch_size: choice.0,
        budget_bytes: budget,
        budget_source,
        probe_frames: row.len(),
        probes: choice.1,
        limit: choice.2,
    })
}

/// The batch size of a run with `--batch-size auto` on `model` (loaded,
/// not yet prepared) for `train`, this rank's share of `group`'s data:
/// every rank probes, and all take the smallest choice. The choice is
/// logged and reported to `observer`.
///
/// # Errors
/// As [`choose_batch_size`], or a failed all-reduce.
pub fn resolve(
    model: &Csm,
    cfg: &TrainConfig,
    train: &[Example],
    auto: &AutoBatch,
    group: &Group,
    observer: &mut dyn TrainingObserver,
) -> Result<usize, TrainError> {
    observer.on_event(&TrainEvent::Phase {
        phase: Phase::Loading,
        detail: "choosing the batch size by memory (--batch-size auto)".into(),
    });
    let per_rank = train.len().div_ceil(group.size().max(1));
    let mut choice = choose_batch_size(model, cfg, train, auto)?;
    choice.batch_size = choice.batch_size.min(per_rank.max(1));
    let mine = choice.batch_size;
    let agreed = smallest_over_ranks(group, mine)?;
    if agreed != mine {
        choice.limit = format!("{}; another rank fits only {agreed}", choice.limit);
        choice.batch_size = agreed;
    }
    let line = choice.describe();
    tracing::info!("{line}");
    observer.on_event(&TrainEvent::Phase {
        phase: Phase::Loading,
        detail: line,
    });
    Ok(choice.batch_size)
}

/// The smallest of every rank's `mine` (through one all-reduce: each rank
/// puts its value in its own slot of a vector the others leave at 0).
fn smallest_over_ranks(group: &Group, mine: usize) -> Result<usize, TrainError> {
    if !group.is_distributed() {
        return Ok(mine);
    }
    let n = group.size();
    let mut slots = vec![0f32; n];
    slots[group.rank()] = mine as f32;
    let key = "\u{0}batch_size".to_string();
    let mut map = BTreeMap::from([(key.clone(), Array::from_slice(&slots, &[n as i32]))]);
    group.average_gradients(&mut map)?;
    let mean = map.remove(&key).ok_or_else(|| TrainError::Mlx {
        context: "agreeing on the batch size".into(),
        source: mlx_rs::error::Exception::custom("the reduced batch sizes did not come back"),
    })?;
    // The mean of one-hot slots, times the rank count, gives every rank's
    // value back (small integers, exact in f32).
    let all: Vec<f32> = mean.as_slice::<f32>().to_vec();
    Ok(all
        .iter()
        .map(|v| (v * n as f32).round() as usize)
        .min()
        .unwrap_or(mine)
        .max(1))
}

/// The search over batch sizes given a probe (see the module docs):
/// `(chosen, probes, why it stopped)`.
fn search(
    mut probe: impl FnMut(usize) -> Result<u64, TrainError>,
    budget: u64,
    max_batch: usize,
) -> Result<(usize, Vec<Probe>, String), TrainError> {
    let max_batch = max_batch.max(1);
    let mut probes: Vec<Probe> = Vec::new();
    let mut run = |b: usize, probes: &mut Vec<Probe>| -> Result<u64, TrainError> {
        if let Some(p) = probes.iter().find(|p| p.batch_size == b) {
            return Ok(p.peak_bytes);
        }
        let peak = probe(b)?;
        probes.push(Probe {
            batch_size: b,
            peak_bytes: peak,
        });
        Ok(peak)
    };
    let p1 = run(1, &mut probes)?;
    if p1 > budget {
        return Err(TrainError::Config(vec![format!(
            "--batch-size auto: one example of the longest length needs {:.2} GB at the step's \
             peak, over the memory budget of {:.2} GB; raise --memory-budget, lower \
             --max-seq-len or --decoder-fraction, or train with --grad-checkpoint",
            p1 as f64 / 1e9,
            budget as f64 / 1e9
        )]));
    }
    // `lo` fits; `hi` does not (or is one past the largest useful size).
    let (mut lo, mut hi) = (1usize, max_batch + 1);
    let mut same_side = 0;
    let mut last_fit = None;
    while hi - lo > 1 && probes.len() < MAX_PROBES {
        let peak_at = |b: usize| {
            probes
                .iter()
                .find(|p| p.batch_size == b)
                .map(|p| p.peak_bytes)
        };
        let p_lo = peak_at(lo).unwrap_or(p1) as f64;
        // Interpolate between the sizes either side of the boundary; with
        // no failing probe yet, extrapolate from the two largest that fit.
        let guess = match peak_at(hi) {
            Some(p_hi) if p_hi as f64 > p_lo => {
                lo as f64 + (budget as f64 - p_lo) * (hi - lo) as f64 / (p_hi as f64 - p_lo)
            }
            _ => {
                let below = probes
                    .iter()
                    .filter(|p| p.batch_size < lo)
                    .max_by_key(|p| p.batch_size);
                match below {
                    Some(a) if p_lo > a.peak_bytes as f64 => {
                        let per = (p_lo - a.peak_bytes as f64) / (lo - a.batch_size) as f64;
                        lo as f64 + (budget as f64 - p_lo) / per
                    }
                    _ => (lo + 1) as f64,
                }
            }
        };
        // Bisect when the guesses keep landing on one side, once a size
        // that does not fit bounds the gap (never a blind jump upwards:
        // a probe far over the budget could exhaust the device).
        let b = if same_side >= 2 && hi <= max_batch {
            lo + (hi - lo) / 2
        } else {
            (guess.floor() as usize).clamp(lo + 1, hi - 1)
        };
        let fits = run(b, &mut probes)? <= budget;
        same_side = if last_fit == Some(fits) {
            same_side + 1
        } else {
            0
        };
        last_fit = Some(fits);
        if fits {
            lo = b;
        } else {
            hi = b;
        }
    }
    let limit = if lo == max_batch {
        format!("{max_batch} training examples")
    } else if hi - lo == 1 {
        format!("{hi} would need more")
    } else {
        format!("search stopped after {MAX_PROBES} probes")
    };
    Ok((lo, probes, limit))
}

/// `example` right-padded with empty frames to `len` frames (no columns,
/// no targets), as the compiled step pads a batch.
fn padded(example: &Example, len: usize) -> Example {
    let mut e = example.clone();
    let extra = len.saturating_sub(e.len());
    let width = e.num_codebooks + 1;
    e.frames.extend(std::iter::repeat_n(0, extra * width));
    e.mask.extend(std::iter::repeat_n(0.0, extra * width));
    e.targets.extend(std::iter::repeat_n(false, extra));
    e
}

/// Runs probe steps on a prepared copy of the model.
struct Prober {
    model: Csm,
    step: ForwardBackward,
    /// Bytes the run will hold besides what the copy adds to memory:
    /// `resident - (original + new in the copy) + copy` (see
    /// [`Prober::new`]).
    offset: i64,
}

impl Prober {
    /// A copy of `model` prepared as `cfg`'s run prepares it. The copy
    /// shares the original's unchanged weights; what it adds (adapters,
    /// quantized weights) is evaluated now, so that the probes measure
    /// only the step.
    fn new(model: &Csm, cfg: &TrainConfig, _budget: u64) -> Result<Self, TrainError> {
        let mut copy = model.clone();
        modes::prepare_model(&mut copy, cfg)?;
        let all = copy.parameters().flatten();
        mlx_rs::transforms::eval(all.values().copied()).map_err(mlx("preparing the probe"))?;
        let original: HashMap<String, (Vec<i32>, mlx_rs::Dtype, usize)> = model
            .parameters()
            .flatten()
            .into_iter()
            .map(|(k, v)| (k.to_string(), (v.shape().to_vec(), v.dtype(), v.nbytes())))
            .collect();
        let orig_bytes: usize = original.values().map(|v| v.2).sum();
        let copy_bytes: usize = all.values().map(|a| a.nbytes()).sum();
        // Arrays of the copy the original does not hold (adapters,
        // quantized weights and their scales).
        let new_bytes: usize = all
            .iter()
            .filter(|(k, a)| {
                original
                    .get(&k.to_string())
                    .is_none_or(|o| o.0 != a.shape() || o.1 != a.dtype())
            })
            .map(|(_, a)| a.nbytes())
            .sum();
        let offset = copy_bytes as i64 - orig_bytes as i64 - new_bytes as i64;
        let keys: Vec<String> = crate::adapter::adapter_tensors(&copy).into_keys().collect();
        let weights = LossWeights {
            semantic: cfg.semantic_weight,
            acoustic: cfg.acoustic_weight,
        };
        let plain = StepOptions {
            compile: false,
            buckets: false,
        };
        Ok(Prober {
            model: copy,
            step: ForwardBackward::new(keys, weights, plain),
            offset,
        })
    }

    /// The peak bytes a run with batches of `b` rows like `row` would reach.
    fn probe(&mut self, row: &Example, b: usize, fraction: f32) -> Result<u64, TrainError> {
        let refs = vec![row; b];
        let batch =
            collate(&refs, fraction, &mut Rng::new(0)).map_err(mlx("building a probe batch"))?;
        runtime::clear_mlx_cache();
        let resident = runtime::active_memory();
        runtime::reset_peak_memory();
        {
            let out = self.step.run(&mut self.model, &batch, (1.0, 1.0))?;
            let grads: BTreeMap<String, Array> = out.grads.into_iter().collect();
            let params = crate::adapter::adapter_tensors(&self.model);
            // The optimizer's state is part of the peak; the update is
            // not applied.
            let mut opt = AdamW::new(0.0);
            let updated = opt
                .update(0.0, &params, &grads)
                .map_err(mlx("the probe's optimizer step"))?;
            let mut to_eval: Vec<&Array> = updated.values().collect();
            to_eval.extend(out.losses.iter());
            to_eval.extend(opt.state_arrays());
            mlx_rs::transforms::eval(to_eval).map_err(mlx("a probe step"))?;
        }
        let transient = runtime::peak_memory().saturating_sub(resident);
        runtime::clear_mlx_cache();
        let peak = resident as i64 + self.offset + transient as i64;
        let peak = peak.max(0) as u64;
        tracing::debug!(
            "batch-size probe: {b} x {} frames -> {:.3} GB",
            row.len(),
            peak as f64 / 1e9
        );
        Ok(peak)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{load_csm, LoadOptions};
    use crate::train::batch::{build_example, Turn};

    /// On the tiny fixture model (CPU), with a budget between the peaks of
    /// 4 and 5 examples: the search picks 4, which fits, and 5, measured
    /// again, does not.
    ///
    /// MLX's CPU stream lets the graph run ahead of the worker by a few
    /// tasks, so how many intermediates are alive at the peak depends on
    /// thread timing: in CI a probe of 5 once came out 1.85
    /// MB (17%) under its usual 11 MB, below the 4-5 midpoint. A memory
    /// limit under what is resident makes MLX wait for each task before
    /// the next, and then peaks repeat to within 0.3 MB (AMD EPYC, 2
    /// cores, five busy loops beside), against a 1.1 MB step per example.
    ///
    /// MLX's peak and its limit are the process's: the test runs in a
    /// process of its own (this binary again, filtered to it), so that
    /// other tests running beside it in `cargo test`'s threads neither add
    /// to the peaks nor wait on the limit.
    #[test]
    fn chosen_batch_fits_and_the_next_does_not() {
        const NAME: &str = "train::auto_batch::tests::chosen_batch_fits_and_the_next_does_not";
        if std::env::var_os("CSM_TEST_OWN_PROCESS").is_none() {
            let exe = std::env::current_exe().unwrap();
            let out = std::process::Command::new(exe)
                .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
                .env("CSM_TEST_OWN_PROCESS", "1")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "the test did not run:\n{text}");
            return;
        }
        let _serial = crate::runtime::MemoryLimit::set(1);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/csm_tiny_hf");
        let model = load_csm(&dir, &LoadOptions::default()).unwrap().model;
        let cfg = TrainConfig::default();
        let k = model.config.audio_num_codebooks as usize;
        let mut rng = Rng::new(3);
        let train: Vec<Example> = [40, 90, 60]
            .iter()
            .map(|&audio| {
                let turn = Turn {
                    text_tokens: (0..12).map(|_| 5 + rng.below(200) as u32).collect(),
                    codes: (0..audio)
                        .map(|_| (0..k).map(|_| 1 + rng.below(60) as u32).collect())
                        .collect(),
                    has_loss: true,
                };
                build_example(&[], &turn, k, 2048).unwrap()
            })
            .collect::<Vec<_>>();
        let train: Vec<Example> = train.iter().cycle().take(30).cloned().collect();
        let row = padded(&train[1], bucket_len(train[1].len()));
        let mut prober = Prober::new(&model, &cfg, 0).unwrap();
        let peak = |p: &mut Prober, b| p.probe(&row, b, cfg.decoder_fraction).unwrap();
        let p4 = peak(&mut prober, 4).max(peak(&mut prober, 4));
        let p5 = peak(&mut prober, 5).min(peak(&mut prober, 5));
        assert!(p5 > p4, "{p4} {p5}");
        let auto = AutoBatch {
            budget: MemoryBudget::Bytes((p4 + p5) / 2),
        };
        let choice = choose_batch_size(&model, &cfg, &train, &auto).unwrap();
        assert_eq!(choice.batch_size, 4, "{choice:?}");
        assert!(choice.probes.len() <= 6, "{choice:?}");
        assert!(peak(&mut prober, 4) <= choice.budget_bytes);
        assert!(peak(&mut prober, 5) > choice.budget_bytes);
        assert!(
            choice.describe().starts_with("batch size 4 (auto"),
            "{}",
            choice.describe()
        );
        // A budget under one example's need is an error that says so.
        let tight = AutoBatch {
            budget: MemoryBudget::Bytes(1_000_000),
        };
        let err = choose_batch_size(&model, &cfg, &train, &tight).unwrap_err();
        assert!(err.to_string().contains("--memory-budget"), "{err}");
    }

    /// A made-up linear memory model: the search ends on the largest size
    /// that fits next to one that does not, in a few probes.
    #[test]
    fn search_finds_the_boundary_in_few_probes() {
        for (base, per, budget, max) in [
            (1000u64, 300u64, 10_000u64, 1000usize),
            (5000, 7, 5100, 1000),
            (100, 50, 10_000, 12),
            (100, 1, 100_000, 1),
        ] {
            let f = |b: usize| Ok(base + per * b as u64 + (b as u64 % 3) * per / 4);
            let (chosen, probes, _) = search(f, budget, max).unwrap();
            let fits = |b: usize| f(b).unwrap() <= budget;
            assert!(fits(chosen), "{chosen} must fit");
            assert!(
                chosen == max || !fits(chosen + 1),
                "{} must not fit",
                chosen + 1
            );
            assert!(probes.len() <= 6, "{} probes", probes.len());
        }
        let err = search(|_| Ok(200), 100, 8).unwrap_err();
        assert!(err.to_string().contains("--memory-budget"), "{err}");
    }
}
