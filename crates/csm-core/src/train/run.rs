//! A training run between its set-up and its outputs: the optimizer steps,
//! validation, checkpoints, samples and voice scores (`super::voice`, at
//! step 0 and after each checkpoint). [`train`](super::train) builds a
//! [`Run`] and calls [`Run::execute`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mlx_rs::error::Exception;
use mlx_rs::module::{Module, ModuleParameters};
use mlx_rs::{random, Array, Dtype};

use super::batch::{bucket_batches, collate_as, layout_frames, Batch, Example, Layout};
use super::config::TrainConfig;
use super::modes;
use super::observer::{
    Phase, SpeakerValReport, StepReport, TrainEvent, TrainingObserver, ValReport,
};
use super::optim::AdamW;
use super::run_dir::RunDir;
use super::schedule::learning_rate;
use super::settings::RunSettings;
use super::state::{self, Progress};
use super::step::{compile_step, pack_row_len, ForwardBackward, StepOptions};
use super::trainer::{
    evaluate_as, evaluate_by_speaker_as, load_assets, mlx, prepare, save_merged, Assets,
    LossValues, Prepared, RunSummary, TrainError,
};
use super::trainer::{CheckSplit, FullPrecisionCheck};
use super::voice::{VoiceModel, VoiceScorer};
use crate::adapter::{self, LoraSpec};
use crate::cancel::CancelToken;
use crate::checkpoint::CheckpointError;
use crate::distributed::Group;
use crate::model::{Csm, LossWeights, TrainKernels};
use crate::rng::Rng;
use crate::runtime;

fn ensure_output_dir(dir: &Path) -> Result<(), TrainError> {
    let err = |source| TrainError::Output {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(".csm-write-test");
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)
}

/// `--resume-from FILE: why`: a file that cannot be resumed from.
fn unusable_checkpoint(path: &Path, e: CheckpointError) -> TrainError {
    let reason = match e {
        CheckpointError::Io { source, .. } => format!("cannot read it: {source}"),
        CheckpointError::Safetensors { message, .. }
            if message.starts_with("not a csm training checkpoint") =>
        {
            message
        }
        CheckpointError::Safetensors { message, .. } => {
            format!("not a csm training checkpoint (not even safetensors: {message})")
        }
        other => other.to_string(),
    };
    TrainError::Resume {
        path: path.to_path_buf(),
        reason,
    }
}

/// Runs a whole fine-tuning job (see the module docs) as `settings` say:
/// device, codes cache, compiled step, distributed group.
pub fn train(
    cfg: &TrainConfig,
    settings: &RunSettings,
    observer: &mut dyn TrainingObserver,
    cancel: &CancelToken,
) -> Result<RunSummary, TrainError> {
    cfg.validate().map_err(TrainError::Config)?;
    // The speakers' ids go to config.json (and checkpoints), so a later run
    // of the same data keeps them; who speaks is checked before any loading.
    let mut resolved = cfg.clone();
    resolved.resolve_speakers()?;
    let cfg = &resolved;
    // A single-process group unless launched as ranks (MLX_HOSTFILE/MLX_RANK
    // or the NCCL variables, see `csm launch`).
    let group = Group::init(&settings.distributed, None, false)?;
    let mut quiet = super::observer::NullObserver;
    // Only rank 0 reports, writes metrics, checkpoints and outputs.
    let observer: &mut dyn TrainingObserver = if group.is_main() {
        observer
    } else {
        &mut quiet
    };
    if group.is_main() {
        ensure_output_dir(&cfg.output_dir)?;
    }
    let resume = match &cfg.resume_from {
        Some(path) => Some((
            path.clone(),
            state::load(path).map_err(|e| unusable_checkpoint(path, e))?,
        )),
        None => None,
    };
    if group.is_main() {
        super::run_dir::RunDir::new(&cfg.output_dir).write_config(cfg)?;
    }

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
    // `--batch-size auto`: chosen on a prepared copy of the model and
    // written to config.json; a resumed run keeps its checkpoint's.
    let chosen;
    let cfg = match &settings.auto_batch {
        None => cfg,
        Some(auto) => {
            let batch_size = match &resume {
                Some((_, loaded)) => {
                    tracing::info!(
                        "batch size {} (auto: the checkpoint's)",
                        loaded.config.batch_size
                    );
                    loaded.config.batch_size
                }
                None => super::auto_batch::resolve(
                    &assets.loaded.model,
                    cfg,
                    &prepared.train,
                    auto,
                    &group,
                    observer,
                )?,
            };
            chosen = TrainConfig {
                batch_size,
                ..cfg.clone()
            };
            if group.is_main() {
                super::run_dir::RunDir::new(&chosen.output_dir).write_config(&chosen)?;
            }
            &chosen
        }
    };
    let mut run = Run::new(cfg, settings, assets, prepared, group)?;
    if let Some((path, loaded)) = resume {
        run.resume(&path, loaded)?;
    }
    // Rank 0 alone speaks and scores; every rank held the same clip out.
    if let (Some(voice), Some(data)) = (&cfg.voice, run.data.voice.take()) {
        if run.group.is_main() {
            run.voice = Some(VoiceScorer::new(
                voice,
                data,
                cfg.speaker_id,
                cfg.seed,
                observer,
            )?);
        }
    }
    // Where the weight products have their own threads (`kernels`),
    // OpenBLAS's idle workers would spin on their cores.
    let _blas = crate::kernels::many_row_products_are_ours().then(runtime::SingleThreadBlas::new);
    run.execute(observer, cancel)
}

/// The state of a run between steps.
pub(super) struct Run<'a> {
    cfg: &'a TrainConfig,
    settings: &'a RunSettings,
    assets: Assets,
    data: Prepared,
    optimizer: AdamW,
    spec: LoraSpec,
    progress: Progress,
    steps_per_epoch: usize,
    total_steps: usize,
    micro_batches: usize,
    last_checkpoint: Option<PathBuf>,
    trainable_params: usize,
    world_size: usize,
    group: Group,
    /// How micro-batches are laid out (`--packing`).
    layout: Layout,
    /// A QLoRA run's adapter on the full-precision model, once checked.
    full_precision: Option<FullPrecisionCheck>,
    /// Voice scores (rank 0 of a run with `cfg.voice`).
    voice: Option<VoiceScorer>,
}

/// What the micro-batches of one optimizer step add up to on this rank.
struct Accumulated {
    /// Gradients summed over the micro-batches, by name.
    grads: BTreeMap<String, Array>,
    /// `[total, semantic, acoustic]` summed over the micro-batches.
    losses: Vec<Array>,
    /// Micro-batches summed.
    micro_batches: usize,
    /// Real frames this rank trained on.
    frames: usize,
}

/// How one optimizer step went.
struct StepOutcome {
    /// The optimizer step (1-based).
    step: usize,
    /// Its epoch (0-based).
    epoch: usize,
    loss: LossValues,
    grad_norm: f32,
    lr: f32,
    /// Real frames this rank trained on.
    frames: usize,
    /// Estimated bytes sent and seconds spent in the all-reduce.
    comm: (u64, f64),
    /// Some rank was asked to stop (distributed runs: every rank agrees).
    stop: bool,
}

/// An optimizer step's graph, built by [`Run::build_step`]: the model and
/// the optimizer already hold its results, not yet evaluated.
struct BuiltStep {
    /// The optimizer step (1-based).
    step: usize,
    /// Its epoch (0-based).
    epoch: usize,
    /// `[total, semantic, acoustic]` summed over the micro-batches.
    losses: Vec<Array>,
    micro_batches: usize,
    /// The gradients' global norm before clipping `[]`.
    norm: Array,
    lr: f32,
    frames: usize,
    comm: (u64, f64),
    stop: bool,
}

/// The run's state before a step is built ([`Run::snapshot`]).
struct Snapshot {
    progress: Progress,
    adapters: BTreeMap<String, Array>,
    optimizer: AdamW,
}

/// A [`BuiltStep`] handed to the device.
struct Launched(BuiltStep);

/// Hands a built step to the device (without waiting): its losses and norm,
/// the model's new adapter values and the optimizer's state.
fn launch(step: BuiltStep, model: &Csm, optimizer: &AdamW) -> Result<Launched, TrainError> {
    let params = adapter::adapter_tensors(model);
    let mut to_eval: Vec<&Array> = params.values().collect();
    to_eval.extend(optimizer.state_arrays());
    to_eval.push(&step.norm);
    to_eval.extend(step.losses.iter());
    mlx_rs::transforms::async_eval(to_eval).map_err(mlx("the training step"))?;
    Ok(Launched(step))
}

/// Keys under which the loss sums and the stop request ride along with the
/// gradients in the all-reduce; the NUL sorts them before every name.
fn loss_key(i: usize) -> String {
    format!("\u{0}loss{i}")
}
const STOP_KEY: &str = "\u{0}stop";

fn missing(what: &str) -> TrainError {
    TrainError::Mlx {
        context: "the all-reduce".into(),
        source: Exception::custom(format!("{what} did not come back")),
    }
}

impl<'a> Run<'a> {
    /// Attaches the adapters and lays out the steps.
    pub(super) fn new(
        cfg: &'a TrainConfig,
        settings: &'a RunSettings,
        mut assets: Assets,
        data: Prepared,
        group: Group,
    ) -> Result<Self, TrainError> {
        let spec = cfg.lora_spec();
        random::seed(cfg.seed).map_err(mlx("seeding"))?;
        // Quantize (QLoRA), attach adapters or unfreeze the parts to train.
        let trainable_params =
            modes::prepare_model(&mut assets.loaded.model, cfg)?.trainable_params;
        // One micro-batch is `batch_size` examples on every rank.
        let micro_batches = cfg.micro_batches_per_epoch(data.train.len(), group.size());
        let steps_per_epoch = cfg.steps_per_epoch(data.train.len(), group.size());
        let progress = Progress {
            step: 0,
            epoch: 0,
            cursor: 0,
            best_val: None,
            model_fingerprint: assets.model_fingerprint.clone(),
            train_examples: data.train.len(),
            world_size: group.size(),
        };
        let layout = if cfg.packing {
            let longest = data.train.iter().map(Example::len).max().unwrap_or(0);
            let max = assets.loaded.model.config.backbone.max_seq_len as usize;
            Layout::Packed {
                row_len: pack_row_len(longest, max),
            }
        } else {
            Layout::Padded
        };
        Ok(Run {
            layout,
            cfg,
            settings,
            assets,
            optimizer: AdamW::new(cfg.weight_decay),
            spec,
            progress,
            steps_per_epoch,
            total_steps: steps_per_epoch * cfg.epochs,
            micro_batches,
            data,
            last_checkpoint: None,
            trainable_params,
            world_size: group.size(),
            group,
            full_precision: None,
            voice: None,
        })
    }

    /// Restores adapters, optimizer and position from a checkpoint, after
    /// checking that it belongs to this model, data and LoRA setup.
    pub(super) fn resume(&mut self, path: &Path, loaded: state::Loaded) -> Result<(), TrainError> {
        let reject = |reason: String| TrainError::Resume {
            path: path.to_path_buf(),
            reason,
        };
        if loaded.progress.model_fingerprint != self.progress.model_fingerprint {
            return Err(reject(format!(
                "it was trained on other model weights ({} vs {} here); resume with the same --model-path",
                loaded.config.model_path.display(),
                self.cfg.model_path.display()
            )));
        }
        if loaded.progress.world_size != self.world_size {
            return Err(reject(format!(
                "it was written by a run of {} rank(s), this one has {}; resume with the same number of ranks (the data order depends on it)",
                loaded.progress.world_size, self.world_size
            )));
        }
        if let Some(reason) = modes::resume_mismatch(&loaded.config, self.cfg) {
            return Err(reject(reason));
        }
        if loaded.config.voice.is_some() != self.cfg.voice.is_some() {
            let (then, now) = if self.cfg.voice.is_some() {
                ("off", "on")
            } else {
                ("on", "off")
            };
            return Err(reject(format!(
                "voice scores were {then} in that run and are {now} in this one; they hold one \
                 utterance out of training, so the data differ: resume with voice scores {then}"
            )));
        }
        if loaded.config.speakers != self.cfg.speakers {
            let list = |m: &BTreeMap<String, u32>| -> String {
                let pairs: Vec<String> = m.iter().map(|(n, id)| format!("{n}={id}")).collect();
                if pairs.is_empty() {
                    "one speaker".into()
                } else {
                    pairs.join(",")
                }
            };
            return Err(reject(format!(
                "it trained speakers {}, this run has {}; resume with the same data, or give \
                 its table with --speaker-map {}",
                list(&loaded.config.speakers),
                list(&self.cfg.speakers),
                list(&loaded.config.speakers)
            )));
        }
        if loaded.progress.train_examples != self.data.train.len() {
            return Err(reject(format!(
                "it saw {} training examples, this dataset gives {}; resume with the same data and --val-split/--seed",
                loaded.progress.train_examples,
                self.data.train.len()
            )));
        }
        let expected = adapter::adapter_tensors(&self.assets.loaded.model);
        for (k, v) in &expected {
            match loaded.adapters.get(k) {
                Some(a) if a.shape() == v.shape() => {}
                _ => {
                    return Err(reject(format!(
                        "adapter tensor `{k}` is missing or has another shape"
                    )))
                }
            }
        }
        // Each tensor keeps the dtype of the parameter it replaces (f32 LoRA
        // matrices, the model's dtype for a trained bias).
        let current = adapter::adapter_tensors(&self.assets.loaded.model);
        let mut update = std::collections::HashMap::new();
        for (k, v) in loaded.adapters {
            let dtype = current.get(&k).map_or(v.dtype(), |p| p.dtype());
            update.insert(
                std::rc::Rc::from(k.as_str()),
                v.as_dtype(dtype).map_err(mlx("restoring adapters"))?,
            );
        }
        self.assets.loaded.model.update_flattened(update);
        self.optimizer = loaded.optimizer;
        self.progress = loaded.progress;
        self.last_checkpoint = Some(path.to_path_buf());
        Ok(())
    }

    /// Micro-batches of `epoch`, in a fixed order derived from the seed.
    fn epoch_batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let lengths: Vec<usize> = self.data.train.iter().map(Example::len).collect();
        let mut rng = Rng::new(self.cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        bucket_batches(&lengths, self.cfg.batch_size * self.world_size, &mut rng)
    }

    /// Logs the layout of micro-batches and the frames the first epoch's
    /// take on this rank, padded and packed (the packed count at the row
    /// length packing would use).
    fn log_layout(&self) {
        let longest = self.data.train.iter().map(Example::len).max().unwrap_or(0);
        let max = self.assets.loaded.model.config.backbone.max_seq_len as usize;
        let row_len = match self.layout {
            Layout::Packed { row_len } => row_len,
            Layout::Padded => pack_row_len(longest, max),
        };
        let (mut real, mut padded, mut packed) = (0, 0, 0);
        for global in self.epoch_batches(0) {
            let lengths: Vec<usize> = self
                .shard(&global)
                .0
                .iter()
                .map(|&i| self.data.train[i].len())
                .collect();
            real += lengths.iter().sum::<usize>();
            padded += layout_frames(&lengths, Layout::Padded);
            packed += layout_frames(&lengths, Layout::Packed { row_len });
        }
        let share = |n: usize| 100.0 * n.saturating_sub(real) as f64 / n.max(1) as f64;
        let what = match self.layout {
            Layout::Packed { .. } => format!("packed into rows of up to {row_len} frames"),
            Layout::Padded => "one example a row, padded (--packing packs them)".into(),
        };
        tracing::info!(
            "micro-batches: {what}; an epoch is {real} frames, {padded} padded ({:.1}% \
             padding), {packed} packed ({:.1}%)",
            share(padded),
            share(packed)
        );
    }

    /// This rank's share of a global micro-batch (may be empty on the last
    /// one), and every rank's (target frames, decoder frames) for exact
    /// global normalisation.
    fn shard<'b>(&self, global: &'b [usize]) -> (&'b [usize], Vec<(usize, usize)>) {
        let per = global.len().div_ceil(self.world_size).max(1);
        let chunks: Vec<&[usize]> = (0..self.world_size)
            .map(|r| {
                let lo = (r * per).min(global.len());
                let hi = ((r + 1) * per).min(global.len());
                &global[lo..hi]
            })
            .collect();
        let counts = chunks
            .iter()
            .map(|c| {
                let targets: usize = c.iter().map(|&i| self.data.train[i].target_frames()).sum();
                let decoder = if targets == 0 {
                    0
                } else {
                    ((self.cfg.decoder_fraction * targets as f32).round() as usize).max(1)
                };
                (targets, decoder)
            })
            .collect();
        (chunks[self.group.rank()], counts)
    }

    /// The training loop: optimizer steps over the epochs' micro-batches,
    /// each followed by its report and, when due, validation and a
    /// checkpoint; then the final checkpoint and outputs.
    pub(super) fn execute(
        mut self,
        observer: &mut dyn TrainingObserver,
        cancel: &CancelToken,
    ) -> Result<RunSummary, TrainError> {
        self.voice_start(observer, cancel)?;
        self.announce(observer);
        let gpu = !runtime::default_device_is_cpu();
        let (compile, why) = compile_step(self.settings.compile, gpu, self.cfg.lora_dropout);
        tracing::info!("training step: {why}");
        let kernels = self
            .settings
            .kernels
            .unwrap_or_else(|| TrainKernels::for_device(gpu));
        tracing::info!("training kernels: {kernels:?}");
        self.log_layout();
        self.assets.loaded.model.set_train_kernels(kernels);
        let grad_keys = adapter::adapter_tensors(&self.assets.loaded.model)
            .into_keys()
            .collect();
        let options = StepOptions {
            compile,
            buckets: true,
        };
        let mut step_fn = ForwardBackward::new(grad_keys, self.loss_weights(), options);
        // The optimizer's update is compiled with the step (one fused
        // kernel a tensor instead of a launch an op).
        self.optimizer.compiled = compile;
        self.assets.loaded.model.training_mode(true);
        let started = Instant::now();
        let first_step = self.progress.step;
        let mut last_loss = None;
        let mut cancelled = false;
        // One process builds a step's graph while the device runs the step
        // before; a distributed step waits on its all-reduce anyway.
        let pipeline = self.settings.pipeline && !self.group.is_distributed();
        // The step handed to the device and not read back yet: never one
        // with validation, a checkpoint or a stop due after it (those are
        // read at once, before the model changes again).
        let mut running: Option<Launched> = None;
        // When the last step was read back (a step's time runs from there).
        let mut last_done = Instant::now();

        'epochs: while self.progress.epoch < self.cfg.epochs {
            let batches = self.epoch_batches(self.progress.epoch);
            while self.progress.cursor < batches.len() {
                // Distributed runs stop together, through the all-reduce.
                if !self.group.is_distributed() && cancel.is_cancelled() {
                    cancelled = true;
                    break 'epochs;
                }
                let group_end = (self.progress.cursor + self.cfg.grad_accum).min(batches.len());
                // A stop asked for while the step before is reported leaves
                // this one unrun: the run is put back as it was.
                let before = running.is_some().then(|| self.snapshot());
                let next = self.build_step(
                    &mut step_fn,
                    &batches[self.progress.cursor..group_end],
                    cancel,
                )?;
                self.progress.step += 1;
                self.progress.cursor = group_end;
                if let Some(prev) = running.take() {
                    let outcome = self.read_step(prev)?;
                    last_loss = Some(outcome.loss);
                    self.report(observer, &outcome, &mut last_done, started, first_step);
                    if cancel.is_cancelled() {
                        if let Some(before) = before {
                            self.restore(before);
                        }
                        cancelled = true;
                        break 'epochs;
                    }
                }
                self.planned_crash(next.step);
                let next = launch(next, &self.assets.loaded.model, &self.optimizer)?;
                if pipeline && !self.after_step_due(next.0.step) && !next.0.stop {
                    running = Some(next);
                    continue;
                }
                let outcome = self.read_step(next)?;
                last_loss = Some(outcome.loss);
                self.report(observer, &outcome, &mut last_done, started, first_step);
                self.maybe_validate(observer)?;
                self.maybe_checkpoint(observer, cancel)?;
                // Validation and checkpoints are not the next step's time.
                last_done = Instant::now();
                if outcome.stop {
                    cancelled = true;
                    break 'epochs;
                }
            }
            self.progress.epoch += 1;
            self.progress.cursor = 0;
        }
        if let Some(prev) = running.take() {
            let outcome = self.read_step(prev)?;
            last_loss = Some(outcome.loss);
            self.report(observer, &outcome, &mut last_done, started, first_step);
        }
        self.finish(observer, cancel, cancelled, last_loss)
    }

    /// The graph of the next optimizer step over the micro-batches `micro`:
    /// forward/backward on each, the all-reduce, the mean and its norm,
    /// clipping and the update. Nothing is evaluated (but a distributed
    /// step's all-reduce): the model and the optimizer hold the updated
    /// values, lazily, and [`Run::read_step`] checks that they are finite.
    fn build_step(
        &mut self,
        step_fn: &mut ForwardBackward,
        micro: &[Vec<usize>],
        cancel: &CancelToken,
    ) -> Result<BuiltStep, TrainError> {
        let step = self.progress.step + 1;
        let mut acc = self.forward_backward(step_fn, micro)?;
        let (stop, comm) = self.all_reduce_grads(&mut acc, cancel)?;
        if self.planned_nan(step) {
            poison(&mut acc.grads)?;
        }
        let norm = average(&mut acc)?;
        clip(&mut acc.grads, self.cfg.max_grad_norm, &norm)?;
        let lr = learning_rate(
            self.cfg.lr_schedule,
            self.cfg.learning_rate,
            self.cfg.warmup_steps,
            self.progress.step,
            self.total_steps,
        );
        self.apply_update(lr, &acc.grads)?;
        Ok(BuiltStep {
            step,
            epoch: self.progress.epoch,
            losses: acc.losses,
            micro_batches: acc.micro_batches,
            norm,
            lr,
            frames: acc.frames,
            comm,
            stop,
        })
    }

    /// Waits for a launched step's loss and gradient norm and stops the run
    /// when either is not finite. The non-finite update is in the model
    /// then, but the run ends with an error and saves nothing after it: the
    /// last checkpoint stays the one to resume from.
    fn read_step(&self, s: Launched) -> Result<StepOutcome, TrainError> {
        let s = s.0;
        let mut to_eval: Vec<&Array> = vec![&s.norm];
        to_eval.extend(s.losses.iter());
        mlx_rs::transforms::eval(to_eval).map_err(mlx("the training step"))?;
        let n = s.micro_batches as f32;
        let mean = |i: usize| s.losses[i].item_cast::<f32>() / n;
        let loss = LossValues {
            total: mean(0),
            semantic: mean(1),
            acoustic: mean(2),
        };
        let grad_norm = s.norm.item_cast::<f32>();
        self.check_finite(s.step, loss, grad_norm)?;
        Ok(StepOutcome {
            step: s.step,
            epoch: s.epoch,
            loss,
            grad_norm,
            lr: s.lr,
            frames: s.frames,
            comm: s.comm,
            stop: s.stop,
        })
    }

    /// What [`Run::build_step`] changes, to undo a step built but not run.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            progress: self.progress.clone(),
            adapters: adapter::adapter_tensors(&self.assets.loaded.model),
            optimizer: self.optimizer.clone(),
        }
    }

    /// Puts the run back as [`Run::snapshot`] saw it.
    fn restore(&mut self, s: Snapshot) {
        self.progress = s.progress;
        self.optimizer = s.optimizer;
        self.assets.loaded.model.update_flattened(
            s.adapters
                .into_iter()
                .map(|(k, v)| (std::rc::Rc::from(k.as_str()), v))
                .collect(),
        );
    }

    /// Whether validation or a checkpoint follows optimizer step `step`
    /// (1-based), so that it is read back before the next one is built.
    fn after_step_due(&self, step: usize) -> bool {
        self.validation_due(step) || self.checkpoint_due(step)
    }

    /// Validation follows the last step and every `--val-every`.
    fn validation_due(&self, step: usize) -> bool {
        step == self.total_steps
            || (self.cfg.val_every > 0 && step.is_multiple_of(self.cfg.val_every))
    }

    /// A checkpoint follows every `--save-every` steps but the last (whose
    /// checkpoint is [`Run::finish`]'s).
    fn checkpoint_due(&self, step: usize) -> bool {
        step != self.total_steps
            && self.cfg.save_every > 0
            && step.is_multiple_of(self.cfg.save_every)
    }

    /// Loss terms and gradients of this rank's share of each micro-batch,
    /// summed. Each term is scaled so that the sum over ranks of the
    /// scaled per-batch means is the global mean times the world size
    /// (gradients are then averaged over ranks): exact whatever the ranks'
    /// frame counts.
    fn forward_backward(
        &mut self,
        step_fn: &mut ForwardBackward,
        micro: &[Vec<usize>],
    ) -> Result<Accumulated, TrainError> {
        let cfg = self.cfg;
        let step = self.progress.step;
        let rank = self.group.rank();
        let world = self.world_size as f32;
        let mut acc = Accumulated {
            grads: BTreeMap::new(),
            losses: Vec::new(),
            micro_batches: micro.len(),
            frames: 0,
        };
        for (i, global) in micro.iter().enumerate() {
            let (mine, counts) = self.shard(global);
            let n_sem: usize = counts.iter().map(|c| c.0).sum();
            let n_dec: usize = counts.iter().map(|c| c.1).sum();
            let (my_sem, my_dec) = counts[rank];
            // A rank without examples in the last micro-batch still joins
            // the all-reduce, contributing zero.
            let (indices, scales) = if mine.is_empty() {
                (&global[..1], (0.0, 0.0))
            } else {
                (
                    mine,
                    (
                        world * my_sem as f32 / n_sem.max(1) as f32,
                        world * my_dec as f32 / n_dec.max(1) as f32,
                    ),
                )
            };
            let refs: Vec<&Example> = indices.iter().map(|&j| &self.data.train[j]).collect();
            let mut rng = Rng::new(
                cfg.seed
                    ^ (((step as u64) << 20 | i as u64) << 8 | rank as u64)
                        .wrapping_mul(0xD1B5_4A32_D192_ED03),
            );
            let batch: Batch = collate_as(&refs, cfg.decoder_fraction, &mut rng, self.layout)
                .map_err(mlx("building a batch"))?;
            if !mine.is_empty() {
                acc.frames += batch.real_frames;
            }
            if cfg.lora_dropout > 0.0 {
                random::seed(cfg.seed.wrapping_add((step as u64) << 16 | i as u64))
                    .map_err(mlx("seeding dropout"))?;
            }
            let out = step_fn.run(&mut self.assets.loaded.model, &batch, scales)?;
            for (k, v) in out.grads {
                let sum = match acc.grads.remove(&k) {
                    Some(prev) => prev.add(&v).map_err(mlx("accumulating gradients"))?,
                    None => v,
                };
                acc.grads.insert(k, sum);
            }
            acc.losses = if acc.losses.is_empty() {
                out.losses
            } else {
                acc.losses
                    .iter()
                    .zip(&out.losses)
                    .map(|(a, b)| a.add(b))
                    .collect::<Result<_, _>>()
                    .map_err(mlx("summing the losses"))?
            };
        }
        Ok(acc)
    }

    /// Averages the gradients over ranks, in place, with one all-reduce per
    /// step: the loss sums and this rank's stop request travel with them
    /// (under [`loss_key`] and [`STOP_KEY`]). Returns whether any rank asked
    /// to stop, and the bytes sent and seconds spent. Nothing on one
    /// process.
    fn all_reduce_grads(
        &self,
        acc: &mut Accumulated,
        cancel: &CancelToken,
    ) -> Result<(bool, (u64, f64)), TrainError> {
        if !self.group.is_distributed() {
            return Ok((false, (0, 0.0)));
        }
        for (i, v) in acc.losses.iter().enumerate() {
            acc.grads.insert(
                loss_key(i),
                v.as_dtype(Dtype::Float32).map_err(mlx("loss"))?,
            );
        }
        let stop = if cancel.is_cancelled() { 1.0 } else { 0.0 };
        acc.grads.insert(STOP_KEY.into(), Array::from_f32(stop));
        let stats = self.group.average_gradients(&mut acc.grads)?;
        for (i, v) in acc.losses.iter_mut().enumerate() {
            *v = acc
                .grads
                .remove(&loss_key(i))
                .ok_or_else(|| missing("a reduced loss"))?;
        }
        let stop = acc
            .grads
            .remove(STOP_KEY)
            .ok_or_else(|| missing("the reduced stop flag"))?;
        Ok((
            stop.item_cast::<f32>() > 0.0,
            (stats.bytes_sent_per_rank, stats.elapsed.as_secs_f64()),
        ))
    }

    /// Stops the run when step `step`'s loss or gradient norm is not
    /// finite.
    fn check_finite(
        &self,
        step: usize,
        loss: LossValues,
        grad_norm: f32,
    ) -> Result<(), TrainError> {
        if loss.total.is_finite() && grad_norm.is_finite() {
            return Ok(());
        }
        let (what, value) = if loss.total.is_finite() {
            ("gradient norm", grad_norm)
        } else {
            ("loss", loss.total)
        };
        Err(TrainError::NonFinite {
            step,
            what,
            value,
            last_checkpoint: self.last_checkpoint.clone(),
        })
    }

    /// One AdamW step of the adapters with `grads`, not evaluated:
    /// [`launch`] hands it to the device.
    fn apply_update(&mut self, lr: f32, grads: &BTreeMap<String, Array>) -> Result<(), TrainError> {
        let params = adapter::adapter_tensors(&self.assets.loaded.model);
        let updated = self
            .optimizer
            .update(lr, &params, grads)
            .map_err(mlx("the optimizer step"))?;
        self.assets.loaded.model.update_flattened(
            updated
                .into_iter()
                .map(|(k, v)| (std::rc::Rc::from(k.as_str()), v))
                .collect(),
        );
        Ok(())
    }

    /// Sends the step's [`StepReport`].
    /// A step's time runs from `last_done` (the step before was read back,
    /// or validation and checkpoints ended), which it moves to now.
    fn report(
        &self,
        observer: &mut dyn TrainingObserver,
        outcome: &StepOutcome,
        last_done: &mut Instant,
        started: Instant,
        first_step: usize,
    ) {
        let secs = last_done.elapsed().as_secs_f64();
        *last_done = Instant::now();
        let done_here = outcome.step - first_step;
        let per_step = started.elapsed().as_secs_f64() / done_here as f64;
        observer.on_event(&TrainEvent::Step(StepReport {
            step: outcome.step,
            total_steps: self.total_steps,
            epoch: outcome.epoch + 1,
            loss: outcome.loss.total,
            semantic_loss: outcome.loss.semantic,
            acoustic_loss: outcome.loss.acoustic,
            lr: outcome.lr,
            grad_norm: outcome.grad_norm,
            frames_per_sec: (outcome.frames as f64 * self.world_size as f64 / secs) as f32,
            comm_bytes: outcome.comm.0,
            comm_secs: outcome.comm.1,
            memory_bytes: runtime::active_memory() as u64,
            peak_memory_bytes: runtime::peak_memory() as u64,
            elapsed_secs: started.elapsed().as_secs_f64(),
            eta_secs: per_step * (self.total_steps - outcome.step) as f64,
        }));
    }

    /// Validates on rank 0 after the last step and every `--val-every`.
    fn maybe_validate(&mut self, observer: &mut dyn TrainingObserver) -> Result<(), TrainError> {
        let due = self.validation_due(self.progress.step);
        if self.group.is_main() && !self.data.val.is_empty() && due {
            self.validate(observer)?;
        }
        Ok(())
    }

    /// Checkpoints every `--save-every` steps, then scores the voice (the
    /// last step's checkpoint is [`Run::finish`]'s).
    fn maybe_checkpoint(
        &mut self,
        observer: &mut dyn TrainingObserver,
        cancel: &CancelToken,
    ) -> Result<(), TrainError> {
        if self.checkpoint_due(self.progress.step) {
            self.checkpoint(observer)?;
            self.score_voice(observer, cancel)?;
        }
        Ok(())
    }

    /// Before step 1: the base model's voice scores on a fresh run; on a
    /// resumed one, the scores so far read back from `metrics.jsonl`.
    fn voice_start(
        &mut self,
        observer: &mut dyn TrainingObserver,
        cancel: &CancelToken,
    ) -> Result<(), TrainError> {
        let step = self.progress.step;
        let Some(voice) = self.voice.as_mut() else {
            return Ok(());
        };
        if step == 0 {
            observer.on_event(&TrainEvent::Phase {
                phase: Phase::Loading,
                detail: format!(
                    "voice scores: the base model speaks {} prompt(s)",
                    voice.setup().prompts.len()
                ),
            });
            return self.score_voice(observer, cancel);
        }
        let run = RunDir::new(&self.cfg.output_dir);
        for message in voice.restore(&run, step)? {
            observer.on_event(&TrainEvent::Warning { message });
        }
        Ok(())
    }

    /// Speaks and scores the prompts with the weights as they are (the
    /// base model at step 0, else the newest checkpoint's).
    fn score_voice(
        &mut self,
        observer: &mut dyn TrainingObserver,
        cancel: &CancelToken,
    ) -> Result<(), TrainError> {
        let Some(voice) = self.voice.as_mut() else {
            return Ok(());
        };
        // The scorer speaks with a copy in inference mode (shared weights).
        voice.score(
            &VoiceModel {
                csm: &self.assets.loaded.model,
                mimi: &self.assets.mimi.mimi,
                tokenizer: &self.assets.tokenizer,
                spec: &self.spec,
                base_model: &self.cfg.model_path,
            },
            self.progress.step,
            self.last_checkpoint
                .as_deref()
                .filter(|_| self.progress.step > 0),
            &RunDir::new(&self.cfg.output_dir),
            observer,
            cancel,
        )?;
        Ok(())
    }

    /// The run's start: its size and shape.
    fn announce(&self, observer: &mut dyn TrainingObserver) {
        observer.on_event(&TrainEvent::Started {
            total_steps: self.total_steps,
            start_step: self.progress.step,
            train_examples: self.data.train.len(),
            val_examples: self.data.val.len(),
            trainable_params: self.trainable_params,
        });
        observer.on_event(&TrainEvent::Phase {
            phase: Phase::Training,
            detail: format!(
                "{} steps ({} per epoch, {} micro-batches of {} per epoch, {} per step)",
                self.total_steps,
                self.steps_per_epoch,
                self.micro_batches,
                self.cfg.batch_size,
                self.cfg.grad_accum
            ),
        });
    }

    /// The last checkpoint, then (unless cancelled) the outputs.
    fn finish(
        mut self,
        observer: &mut dyn TrainingObserver,
        cancel: &CancelToken,
        cancelled: bool,
        last_loss: Option<LossValues>,
    ) -> Result<RunSummary, TrainError> {
        let cfg = self.cfg;
        self.assets.loaded.model.training_mode(false);
        observer.on_event(&TrainEvent::Phase {
            phase: Phase::Saving,
            detail: format!("writing outputs to {}", cfg.output_dir.display()),
        });
        self.checkpoint(observer)?;
        if !cancelled {
            self.score_voice(observer, cancel)?;
            self.save_outputs(observer)?;
        }
        observer.on_event(&TrainEvent::Finished {
            step: self.progress.step,
            cancelled,
            output_dir: cfg.output_dir.clone(),
        });
        Ok(RunSummary {
            steps: self.progress.step,
            last_loss,
            best_val: self.progress.best_val,
            cancelled,
            output_dir: cfg.output_dir.clone(),
            checkpoint: self.last_checkpoint,
            full_precision: self.full_precision,
            voice: self.voice.as_ref().map(VoiceScorer::outcome),
        })
    }

    fn loss_weights(&self) -> LossWeights {
        LossWeights {
            semantic: self.cfg.semantic_weight,
            acoustic: self.cfg.acoustic_weight,
        }
    }

    /// Runs the crash planned for optimizer step `step` (1-based), before
    /// the device runs it and after the step before was reported. Never
    /// anything without the `fault-injection` feature.
    fn planned_crash(&self, step: usize) {
        #[cfg(feature = "fault-injection")]
        self.settings
            .faults
            .crash_at_step_start(self.group.rank(), step);
        #[cfg(not(feature = "fault-injection"))]
        let _ = step;
    }

    /// Whether optimizer step `step`'s gradients are to become NaN (the
    /// `fault-injection` feature's tests).
    fn planned_nan(&self, step: usize) -> bool {
        #[cfg(feature = "fault-injection")]
        return self.settings.faults.nan_at_step(step);
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = step;
            false
        }
    }

    fn validate(&mut self, observer: &mut dyn TrainingObserver) -> Result<(), TrainError> {
        let weights = self.loss_weights();
        let model = &mut self.assets.loaded.model;
        model.training_mode(false);
        let (v, speakers) = if self.data.speakers.is_empty() {
            let v = evaluate_as(
                model,
                &self.data.val,
                self.cfg.batch_size,
                weights,
                self.layout,
            )?;
            (v, Vec::new())
        } else {
            let (v, each) = evaluate_by_speaker_as(
                model,
                &self.data.val,
                &self.data.val_speakers,
                self.cfg.batch_size,
                weights,
                self.layout,
            )?;
            let name = |id: u32| {
                let s = self.data.speakers.iter().find(|s| s.id == id);
                s.map_or_else(|| id.to_string(), |s| s.name.clone())
            };
            let each = each
                .into_iter()
                .map(|l| SpeakerValReport {
                    speaker: name(l.speaker),
                    id: l.speaker,
                    loss: l.loss.total,
                    semantic_loss: l.loss.semantic,
                    acoustic_loss: l.loss.acoustic,
                    examples: l.examples,
                })
                .collect();
            (v, each)
        };
        model.training_mode(true);
        self.progress.best_val = Some(self.progress.best_val.map_or(v.total, |b| b.min(v.total)));
        observer.on_event(&TrainEvent::Validation(ValReport {
            step: self.progress.step,
            loss: v.total,
            semantic_loss: v.semantic,
            acoustic_loss: v.acoustic,
            examples: self.data.val.len(),
            speakers,
        }));
        Ok(())
    }

    fn checkpoint(&mut self, observer: &mut dyn TrainingObserver) -> Result<(), TrainError> {
        if !self.group.is_main() {
            return Ok(());
        }
        let adapters = adapter::adapter_tensors(&self.assets.loaded.model);
        let path = state::save(
            &self.cfg.output_dir,
            &self.progress,
            self.cfg,
            &adapters,
            &self.optimizer,
        )?;
        observer.on_event(&TrainEvent::Checkpoint {
            step: self.progress.step,
            path: path.clone(),
        });
        self.last_checkpoint = Some(path);
        if self.cfg.generate_samples {
            self.sample(observer)?;
        }
        Ok(())
    }

    /// Speaks `--sample-prompt` with the current weights, after a training
    /// utterance as context, into `OUTPUT/samples/step_NNNNNNN.wav`; with
    /// several speakers, once for each, after one of its utterances, into
    /// `step_NNNNNNN_speakerID.wav` ([`RunDir::sample_path`]).
    fn sample(&mut self, observer: &mut dyn TrainingObserver) -> Result<(), TrainError> {
        if self.data.speakers.is_empty() {
            let context: Vec<_> = self.data.sample_context.iter().cloned().collect();
            return self.sample_as(observer, context, self.cfg.speaker_id, None);
        }
        for id in self.data.speakers.iter().map(|s| s.id).collect::<Vec<_>>() {
            let context: Vec<_> = (self.data.speaker_contexts.iter())
                .filter(|c| c.speaker == id)
                .cloned()
                .collect();
            self.sample_as(observer, context, id, Some(id))?;
        }
        Ok(())
    }

    /// One sample of speaker `speaker_id` after `context`, named for
    /// `speaker` in a run with several.
    fn sample_as(
        &mut self,
        observer: &mut dyn TrainingObserver,
        context: Vec<crate::generate::Segment>,
        speaker_id: u32,
        speaker: Option<u32>,
    ) -> Result<(), TrainError> {
        use crate::generate::{Generator, SamplingConfig};
        // Clones share the weight buffers; nothing is copied.
        let mut generator = Generator::new(
            self.assets.loaded.model.clone(),
            self.assets.mimi.mimi.clone(),
            self.assets.tokenizer.clone(),
        )?;
        generator.csm.training_mode(false);
        let sampling = SamplingConfig {
            seed: self.cfg.seed,
            max_audio_ms: 6_000,
            ..SamplingConfig::default()
        };
        let out = generator.generate(&context, &self.cfg.sample_prompt, speaker_id, &sampling)?;
        let path = RunDir::new(&self.cfg.output_dir).sample_path(self.progress.step, speaker);
        let dir = path.parent().unwrap_or(&self.cfg.output_dir).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| TrainError::Output {
            path: dir.clone(),
            source,
        })?;
        crate::data::audio::write_wav(
            &path,
            &out.audio,
            crate::data::TARGET_SAMPLE_RATE,
            crate::data::audio::WavEncoding::Int16,
        )?;
        if !out.stop_reason.is_healthy() {
            observer.on_event(&TrainEvent::Warning {
                message: format!(
                    "sample at step {}: the model did not end the sample itself ({:?} stopped it \
                     after {:.1} s); {}",
                    self.progress.step,
                    out.stop_reason,
                    out.audio_seconds(),
                    path.display()
                ),
            });
        }
        observer.on_event(&TrainEvent::Sample {
            step: self.progress.step,
            path,
        });
        Ok(())
    }

    /// A full fine-tune's model in the input's format (`model/`); else the
    /// adapters (mlx_lm + PEFT layouts) and/or the merged model, per
    /// `--save-mode`. A QLoRA run then evaluates its adapter on the
    /// full-precision model and merges into that.
    fn save_outputs(&mut self, observer: &mut dyn TrainingObserver) -> Result<(), TrainError> {
        if !self.group.is_main() {
            return Ok(());
        }
        use super::config::{Method, SaveMode};
        let cfg = self.cfg;
        if cfg.method == Method::Full {
            super::full::save_model(&self.assets.loaded, &cfg.output_dir)?;
            return Ok(());
        }
        let model = &self.assets.loaded.model;
        if matches!(cfg.save_mode, SaveMode::Lora | SaveMode::Both) {
            adapter::save_mlx(&cfg.output_dir, model, &self.spec, Some(&cfg.model_path))?;
            adapter::save_peft(
                &cfg.output_dir.join("peft"),
                model,
                &self.spec,
                &model.config,
                Some(&cfg.model_path),
            )?;
        }
        let merged = matches!(cfg.save_mode, SaveMode::Full | SaveMode::Both)
            .then(|| cfg.output_dir.join("merged"));
        if cfg.quantize.is_none() {
            if let Some(dir) = merged {
                save_merged(&self.assets.loaded, &dir)?;
            }
            return Ok(());
        }
        let examples = if self.data.val.is_empty() {
            (&self.data.train[..], CheckSplit::Training)
        } else {
            (&self.data.val[..], CheckSplit::Validation)
        };
        observer.on_event(&TrainEvent::Phase {
            phase: Phase::Saving,
            detail: "evaluating the adapter on the full-precision model".into(),
        });
        let check = modes::full_precision_check(
            &mut self.assets,
            cfg,
            &self.spec,
            examples,
            merged.as_deref(),
        )?;
        if let Some(c) = &check {
            let detail = format!(
                "adapter on the full-precision model: {:?} loss {:.4} (c0 {:.4}, c1+ {:.4}) on {} \
                 examples; on the {}-bit model it was trained on: {:.4}",
                c.split,
                c.full_precision.total,
                c.full_precision.semantic,
                c.full_precision.acoustic,
                c.examples,
                c.bits,
                c.quantized.total
            );
            tracing::info!("{detail}");
            observer.on_event(&TrainEvent::Phase {
                phase: Phase::Saving,
                detail,
            });
        }
        self.full_precision = check;
        Ok(())
    }
}

/// Makes the step's gradients NaN (an injected fault: the non-finite stop
/// must catch it).
fn poison(grads: &mut BTreeMap<String, Array>) -> Result<(), TrainError> {
    if let Some(g) = grads.values_mut().next() {
        *g = g
            .multiply(Array::from_f32(f32::NAN))
            .map_err(mlx("injecting a NaN gradient"))?;
    }
    Ok(())
}

/// Divides the summed gradients by the number of micro-batches and returns
/// their global norm, not evaluated (the losses are divided when read back,
/// [`Run::read_step`]).
fn average(acc: &mut Accumulated) -> Result<Array, TrainError> {
    let n = acc.micro_batches as f32;
    let mut sq = Array::from_f32(0.0);
    for g in acc.grads.values_mut() {
        if n > 1.0 {
            *g = g
                .divide(Array::from_f32(n))
                .map_err(mlx("averaging gradients"))?;
        }
        sq = sq
            .add(
                g.as_dtype(Dtype::Float32)
                    .and_then(|x| x.square())
                    .and_then(|x| x.sum(None))
                    .map_err(mlx("gradient norm"))?,
            )
            .map_err(mlx("gradient norm"))?;
    }
    sq.sqrt().map_err(mlx("gradient norm"))
}

/// Scales the gradients down to a global norm of `max_norm` when `norm` is
/// above it (`max_norm` 0: never), on the device: `max_norm / (norm +
/// 1e-6)` where the norm is larger, else exactly 1, so that a step within
/// the limit keeps its gradients bit for bit.
fn clip(
    grads: &mut BTreeMap<String, Array>,
    max_norm: f32,
    norm: &Array,
) -> Result<(), TrainError> {
    if max_norm <= 0.0 {
        return Ok(());
    }
    let limit = Array::from_f32(max_norm);
    let scale = mlx_rs::ops::select(
        &norm.gt(&limit).map_err(mlx("clipping gradients"))?,
        &limit
            .divide(
                norm.add(Array::from_f32(1e-6))
                    .map_err(mlx("clipping gradients"))?,
            )
            .map_err(mlx("clipping gradients"))?,
        Array::from_f32(1.0),
    )
    .map_err(mlx("clipping gradients"))?; // []
    for g in grads.values_mut() {
        // In the gradient's own dtype: an f32 scale would turn a bf16
        // gradient (a full fine-tune on a GPU) into an f32 copy every step.
        let s = scale
            .as_dtype(g.dtype())
            .map_err(mlx("clipping gradients"))?;
        *g = g.multiply(&s).map_err(mlx("clipping gradients"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grads(scale: f32) -> BTreeMap<String, Array> {
        let a: Vec<f32> = (0..6).map(|i| (i as f32 - 2.5) * scale).collect();
        BTreeMap::from([
            ("a".to_string(), Array::from_slice(&a, &[2, 3])),
            ("b".to_string(), Array::from_slice(&[0.25f32 * scale], &[1])),
        ])
    }

    fn values(g: &BTreeMap<String, Array>) -> Vec<f32> {
        g.values()
            .flat_map(|x| x.as_slice::<f32>().to_vec())
            .collect()
    }

    #[test]
    fn clip_on_the_device_follows_the_host_rule() {
        for (scale, max_norm) in [(1.0f32, 2.0f32), (1.0, 100.0), (3.0, 0.0)] {
            let mut acc = Accumulated {
                grads: grads(scale),
                losses: Vec::new(),
                micro_batches: 1,
                frames: 0,
            };
            let original = values(&acc.grads);
            let norm = average(&mut acc).unwrap();
            let host_norm = original.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm.item_cast::<f32>() - host_norm).abs() <= 1e-6 * host_norm);
            clip(&mut acc.grads, max_norm, &norm).unwrap();
            let n = norm.item_cast::<f32>();
            let want: Vec<f32> = if max_norm > 0.0 && n > max_norm {
                let s = max_norm / (n + 1e-6);
                original.iter().map(|x| x * s).collect()
            } else {
                original.clone()
            };
            // Bit for bit: within the limit nothing moves.
            assert_eq!(values(&acc.grads), want, "scale {scale}, limit {max_norm}");
        }
    }
}
