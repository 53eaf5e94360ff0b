//! The LoRA training loop.
//!
//! [`train`] runs a whole job from a [`TrainConfig`]: load model, codec and
//! tokenizer ([`load_assets`]); load the dataset and Mimi-encode it through
//! the codes cache ([`prepare`]); attach adapters; then optimizer steps with
//! gradient accumulation, clipping, the LR schedule, validation and atomic
//! checkpoints, reporting through a [`TrainingObserver`] and stopping at a
//! [`CancelToken`]. It never prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mlx_rs::error::Exception;
use mlx_rs::module::{Module, ModuleParameters};
use mlx_rs::{nn, ops, random, Array, Dtype};

use super::batch::{bucket_batches, build_example, collate, Batch, BatchError, Example, Turn};
use super::codes::{fingerprint_files, CodesCache, EncodeStats};
use super::config::TrainConfig;
use super::observer::{CancelToken, Phase, StepReport, TrainEvent, TrainingObserver, ValReport};
use super::optim::AdamW;
use super::rng::Rng;
use super::schedule::learning_rate;
use super::state::{self, Progress};
use crate::adapter::{self, AdapterError, LoraSpec};
use crate::assets::{self, AssetError, LoadedMimi};
use crate::checkpoint::write::write_atomic;
use crate::checkpoint::CheckpointError;
use crate::codec::CodecError;
use crate::data::{self, DataError, DatasetLayout, Split};
use crate::model::load::{canonical_weights, load_csm, to_format, LoadOptions, LoadedCsm};
use crate::model::{ArrayLossBatch, AttentionMask, Csm, LossBatch, LossWeights, ModelError};
use crate::runtime;
use crate::tokenizer::{TextTokenizer, TokenizerError};

/// Everything that can stop a run; each message names the file, flag or
/// value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Invalid settings, one line per problem.
    #[error("invalid settings:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    /// The model could not be loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The codec could not be loaded or failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A companion file was not found.
    #[error(transparent)]
    Asset(#[from] AssetError),
    /// The dataset is unusable.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Adapters could not be attached, saved or loaded.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The output directory is not writable.
    #[error("cannot write to the output directory {path}: {source}")]
    Output {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Nothing left to train on.
    #[error("no training examples: {reason}")]
    NoExamples {
        /// Why.
        reason: String,
    },
    /// The tokenizer produced ids the model has no embedding for.
    #[error("the tokenizer gives id {id} for `{text}`, but the model has {vocab} text embeddings: tokenizer and model do not belong together (check --tokenizer-path)")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// The text.
        text: String,
        /// Model's text vocabulary.
        vocab: i32,
    },
    /// The loss or gradients stopped being finite.
    #[error("the {what} became {value} at step {step}; training stopped before applying the update. {}", match .last_checkpoint { Some(p) => format!("The last good checkpoint is {} (resume with --resume-from, e.g. with a lower --learning-rate).", p.display()), None => "No checkpoint had been written yet.".to_string() })]
    NonFinite {
        /// Optimizer step.
        step: usize,
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The value seen.
        value: f32,
        /// Newest checkpoint on disk.
        last_checkpoint: Option<PathBuf>,
    },
    /// `--resume-from` does not fit this run.
    #[error("--resume-from {path}: {reason}")]
    Resume {
        /// The checkpoint.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// Speaking a sample failed.
    #[error(transparent)]
    Generate(#[from] crate::generate::GenerateError),
    /// A distributed collective failed.
    #[error(transparent)]
    Distributed(#[from] crate::distributed::DistError),
    /// An MLX operation failed.
    #[error("MLX error while {context}: {source}")]
    Mlx {
        /// What was being done.
        context: String,
        /// MLX's message.
        #[source]
        source: Exception,
    },
}

fn mlx(context: &str) -> impl FnOnce(Exception) -> TrainError + '_ {
    move |source| TrainError::Mlx {
        context: context.to_string(),
        source,
    }
}

/// Model, codec and tokenizer of a run.
#[derive(Debug)]
pub struct Assets {
    /// The loaded model and what was detected about it.
    pub loaded: LoadedCsm,
    /// The codec.
    pub mimi: LoadedMimi,
    /// The text tokenizer.
    pub tokenizer: TextTokenizer,
    /// Fingerprint of the model's weight files (checked on resume).
    pub model_fingerprint: String,
}

/// Loads model (in `dtype`), codec and tokenizer, finding the latter two
/// next to the model when not given.
pub fn load_assets(
    model_path: &Path,
    mimi_path: Option<&Path>,
    tokenizer_path: Option<&Path>,
    dtype: Dtype,
) -> Result<Assets, TrainError> {
    let loaded = load_csm(
        model_path,
        &LoadOptions {
            dtype,
            config: None,
        },
    )?;
    let model_fingerprint = fingerprint_files(&loaded.detected.weight_files)?;
    let n = loaded.model.config.audio_num_codebooks as usize;
    let mimi = assets::load_mimi(model_path, mimi_path, n)?;
    assets::check_codec_fits(
        &mimi.mimi,
        &mimi.origin,
        loaded.model.config.audio_vocab_size,
    )?;
    let tokenizer = TextTokenizer::from_file(&assets::find_tokenizer(model_path, tokenizer_path)?)?;
    Ok(Assets {
        loaded,
        mimi,
        tokenizer,
        model_fingerprint,
    })
}

/// Training and validation examples, ready to batch.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Training sequences.
    pub train: Vec<Example>,
    /// Validation sequences.
    pub val: Vec<Example>,
    /// Things the user should know (skipped files or examples).
    pub warnings: Vec<String>,
    /// Codes-cache statistics.
    pub cache: EncodeStats,
    /// Seconds of audio in the dataset.
    pub audio_seconds: f64,
    /// A training utterance used as context for `--generate-samples`.
    pub sample_context: Option<crate::generate::Segment>,
}

/// Loads the dataset, Mimi-encodes every utterance through the codes cache
/// (`cache_root`), and lays out the examples.
pub fn prepare(
    assets: &mut Assets,
    cfg: &TrainConfig,
    cache_root: &Path,
    observer: &mut dyn TrainingObserver,
) -> Result<Prepared, TrainError> {
    let layout = DatasetLayout::new(
        cfg.audio_dir.clone(),
        cfg.transcript_dir.clone(),
        cfg.alignment_dir.clone(),
    );
    let dataset = data::load_dataset(
        &layout,
        &data::LoadOptions {
            val_split: cfg.val_split as f64,
            seed: cfg.seed,
            ..Default::default()
        },
    )?;
    let utterances: Vec<&data::Utterance> = dataset
        .conversations
        .iter()
        .flat_map(|c| c.utterances.iter())
        .collect();
    let n_cb = assets.loaded.model.config.audio_num_codebooks as usize;
    let fingerprint = fingerprint_files(&assets.mimi.files)?;
    let cache = CodesCache::new(cache_root.join(&fingerprint), &fingerprint, n_cb);
    observer.on_event(&TrainEvent::Phase {
        phase: Phase::EncodingAudio,
        detail: format!(
            "{} utterances ({:.1} min of audio), codes cache {}",
            utterances.len(),
            dataset.duration_s() / 60.0,
            cache_root.display()
        ),
    });
    let mimi = &mut assets.mimi.mimi;
    let (codes, stats) = cache.encode_all(
        &utterances,
        |samples| encode_codes(mimi, samples),
        |done, total| observer.on_event(&TrainEvent::Progress { done, total }),
    )?;
    let codes_of: BTreeMap<(String, usize), &Vec<Vec<u32>>> = utterances
        .iter()
        .zip(&codes)
        .map(|(u, c)| ((u.recording_id.clone(), u.index), c))
        .collect();

    let vocab = assets.loaded.model.config.text_vocab_size;
    let mut warnings = dataset.warnings.clone();
    let mut build = |split: Split| -> Result<Vec<Example>, TrainError> {
        let mut out = Vec::new();
        for ex in dataset.examples(split, cfg.context_turns) {
            let turn = |u: &data::Utterance, has_loss: bool| -> Result<Turn, TrainError> {
                let text_tokens = assets.tokenizer.encode_segment(cfg.speaker_id, &u.text)?;
                if let Some(&id) = text_tokens.iter().find(|&&id| id as i64 >= vocab as i64) {
                    return Err(TrainError::TokenOutOfRange {
                        id,
                        text: u.text.clone(),
                        vocab,
                    });
                }
                Ok(Turn {
                    text_tokens,
                    codes: codes_of[&(u.recording_id.clone(), u.index)].clone(),
                    has_loss,
                })
            };
            let context = ex
                .context
                .iter()
                .map(|u| turn(u, cfg.context_loss))
                .collect::<Result<Vec<_>, _>>()?;
            let target = turn(ex.target, true)?;
            match build_example(&context, &target, n_cb, cfg.max_seq_len) {
                Ok(e) => out.push(e),
                Err(BatchError::TooLong { needed, max }) => warnings.push(format!(
                    "skipped {} #{}: it needs {needed} frames, --max-seq-len is {max}",
                    ex.target.recording_id, ex.target.index
                )),
                Err(e) => {
                    return Err(TrainError::NoExamples {
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(out)
    };
    let train = build(Split::Train)?;
    let val = build(Split::Validation)?;
    let sample_context =
        dataset
            .examples(Split::Train, 0)
            .first()
            .map(|ex| crate::generate::Segment {
                speaker: cfg.speaker_id,
                text: ex.target.text.clone(),
                audio: Some(ex.target.samples().to_vec()),
            });
    Ok(Prepared {
        train,
        val,
        warnings,
        cache: stats,
        audio_seconds: dataset.duration_s(),
        sample_context,
    })
}

/// Mimi codes of 24 kHz mono samples, frame-major `[T][K]`.
pub fn encode_codes(
    mimi: &mut crate::codec::Mimi,
    samples: &[f32],
) -> Result<Vec<Vec<u32>>, TrainError> {
    let wav = Array::from_slice(samples, &[1, 1, samples.len() as i32]); // [1, 1, N]
    let codes = mimi.encode(&wav)?; // [1, K, T]
    let codes = codes
        .squeeze_axes(&[0])
        .and_then(|c| c.transpose())
        .and_then(|c| c.as_dtype(Dtype::Int32))
        .and_then(|c| c.contiguous())
        .map_err(mlx("reading Mimi codes"))?; // [T, K]
    codes.eval().map_err(mlx("encoding audio"))?;
    let k = codes.shape()[1] as usize;
    Ok(codes
        .as_slice::<i32>()
        .chunks(k)
        .map(|row| row.iter().map(|&c| c as u32).collect())
        .collect())
}

/// Loss terms as numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossValues {
    /// Weighted total.
    pub total: f32,
    /// Codebook 0.
    pub semantic: f32,
    /// Codebooks 1..N-1.
    pub acoustic: f32,
}

fn loss_batch(batch: &Batch) -> LossBatch<'_> {
    LossBatch {
        tokens: &batch.frames,
        mask: &batch.mask,
        loss_mask: &batch.c0_targets,
        decoder_frames: &batch.decoder_frames,
        // Right padding: causal attention never lets a real frame see padding.
        attention: AttentionMask::Causal,
    }
}

/// Mean loss over `examples` without gradients, every frame through the
/// depth decoder (deterministic). Terms are weighted by their target counts.
pub fn evaluate(
    model: &mut Csm,
    examples: &[Example],
    batch_size: usize,
    weights: LossWeights,
) -> Result<LossValues, TrainError> {
    let mut rng = Rng::new(0);
    let (mut sem, mut aco, mut n_sem, mut n_aco) = (0f64, 0f64, 0f64, 0f64);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].len());
    for chunk in order.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
        let batch = collate(&refs, 1.0, &mut rng).map_err(mlx("building a validation batch"))?;
        let loss = model
            .loss(&loss_batch(&batch), weights)
            .map_err(mlx("validation"))?;
        mlx_rs::transforms::eval([&loss.semantic, &loss.acoustic]).map_err(mlx("validation"))?;
        let t = batch.target_frames as f64;
        let d = batch.decoder_frames.len() as f64;
        sem += loss.semantic.item_cast::<f32>() as f64 * t;
        aco += loss.acoustic.item_cast::<f32>() as f64 * d;
        n_sem += t;
        n_aco += d;
    }
    let semantic = (sem / n_sem.max(1.0)) as f32;
    let acoustic = (aco / n_aco.max(1.0)) as f32;
    Ok(LossValues {
        total: weights.semantic * semantic + weights.acoustic * acoustic,
        semantic,
        acoustic,
    })
}

/// How a finished run went.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Optimizer steps done in total.
    pub steps: usize,
    /// Loss of the last step.
    pub last_loss: Option<LossValues>,
    /// Best validation loss.
    pub best_val: Option<f32>,
    /// Whether the run stopped on request.
    pub cancelled: bool,
    /// The output directory.
    pub output_dir: PathBuf,
    /// Newest checkpoint.
    pub checkpoint: Option<PathBuf>,
}

/// The LoRA spec of a config.
pub fn lora_spec(cfg: &TrainConfig) -> LoraSpec {
    LoraSpec {
        r: cfg.lora_r,
        alpha: cfg.lora_alpha,
        dropout: cfg.lora_dropout,
        modules: cfg.target_modules.clone(),
        layers: cfg.target_layers.clone(),
        bias: cfg.lora_bias,
    }
}

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

/// Runs a whole fine-tuning job. See the module docs.
pub fn train(
    cfg: &TrainConfig,
    observer: &mut dyn TrainingObserver,
    cancel: &CancelToken,
) -> Result<RunSummary, TrainError> {
    cfg.validate().map_err(TrainError::Config)?;
    // A single-process group unless launched as ranks (MLX_HOSTFILE/MLX_RANK
    // or the NCCL variables, see `csm launch`).
    let group = crate::distributed::Group::init(None, false)?;
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
        Some(path) => Some((path.clone(), state::load(path)?)),
        None => None,
    };
    if group.is_main() {
        let config_json = serde_json::to_string_pretty(cfg).expect("config serialises");
        write_atomic(&cfg.output_dir.join("config.json"), config_json.as_bytes())?;
    }

    observer.on_event(&TrainEvent::Phase {
        phase: Phase::Loading,
        detail: format!("model {}", cfg.model_path.display()),
    });
    let backend = runtime::use_best_device();
    let mut assets = load_assets(
        &cfg.model_path,
        cfg.mimi_path.as_deref(),
        cfg.tokenizer_path.as_deref(),
        backend.default_dtype(),
    )?;
    let cache_root = CodesCache::default_dir();
    let prepared = prepare(&mut assets, cfg, &cache_root, observer)?;
    for w in &prepared.warnings {
        observer.on_event(&TrainEvent::Warning { message: w.clone() });
    }
    if prepared.train.is_empty() {
        return Err(TrainError::NoExamples {
            reason: "every example was skipped or the dataset is empty; see the warnings above"
                .into(),
        });
    }
    let mut run = Run::new(cfg, assets, prepared, group)?;
    if let Some((path, loaded)) = resume {
        run.resume(&path, loaded)?;
    }
    // Where the weight products have their own threads (`model::fused`),
    // OpenBLAS's idle workers would spin on their cores.
    let _blas =
        crate::model::fused::many_row_products_are_ours().then(runtime::SingleThreadBlas::new);
    run.execute(observer, cancel)
}

/// The state of a run between steps.
struct Run<'a> {
    cfg: &'a TrainConfig,
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
    group: crate::distributed::Group,
}

impl<'a> Run<'a> {
    fn new(
        cfg: &'a TrainConfig,
        mut assets: Assets,
        data: Prepared,
        group: crate::distributed::Group,
    ) -> Result<Self, TrainError> {
        let spec = lora_spec(cfg);
        random::seed(cfg.seed).map_err(mlx("seeding"))?;
        let adapted = adapter::attach(&mut assets.loaded.model, &spec)?;
        if adapted == 0 {
            return Err(TrainError::Config(vec![format!(
                "--target-modules {} with --target-layers {} selects no projection of this model",
                cfg.target_modules.join(","),
                cfg.target_layers.to_arg()
            )]));
        }
        let trainable_params = adapter::adapter_tensors(&assets.loaded.model)
            .values()
            .map(|a| a.size())
            .sum();
        // One micro-batch is `batch_size` examples on every rank.
        let micro_batches = data.train.len().div_ceil(cfg.batch_size * group.size());
        let steps_per_epoch = micro_batches.div_ceil(cfg.grad_accum);
        let progress = Progress {
            step: 0,
            epoch: 0,
            cursor: 0,
            best_val: None,
            model_fingerprint: assets.model_fingerprint.clone(),
            train_examples: data.train.len(),
            world_size: group.size(),
        };
        Ok(Run {
            cfg,
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
        })
    }

    /// Restores adapters, optimizer and position from a checkpoint, after
    /// checking that it belongs to this model, data and LoRA setup.
    fn resume(&mut self, path: &Path, loaded: state::Loaded) -> Result<(), TrainError> {
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
        if lora_spec(&loaded.config) != self.spec {
            return Err(reject(
                "its LoRA settings (--lora-r/--lora-alpha/--target-modules/--target-layers/--lora-bias) differ from this run's".into(),
            ));
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

    fn execute(
        mut self,
        observer: &mut dyn TrainingObserver,
        cancel: &CancelToken,
    ) -> Result<RunSummary, TrainError> {
        let cfg = self.cfg;
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
                cfg.batch_size,
                cfg.grad_accum
            ),
        });
        let weights = LossWeights {
            semantic: cfg.semantic_weight,
            acoustic: cfg.acoustic_weight,
        };
        // `scales` turn this rank's per-batch means into its share of the
        // global means (times the world size, because gradients are then
        // averaged over ranks): exact whatever the ranks' frame counts.
        let loss_fn = |model: &mut Csm,
                       (batch, scales): (&Batch, (f32, f32))|
         -> Result<Vec<Array>, Exception> {
            let l = model.loss(&loss_batch(batch), weights)?;
            scaled_terms(
                l,
                &Array::from_f32(scales.0),
                &Array::from_f32(scales.1),
                weights,
            )
        };
        let mut value_and_grad = nn::value_and_grad(loss_fn);
        // The same step for `mx.compile`: every batch value is an input
        // array (see `compiled_inputs`), the gradients come back in the
        // order of `grad_keys`.
        let compile = compile_step(cfg.lora_dropout);
        tracing::info!("training step: {}", compile.1);
        let grad_keys: Vec<String> = adapter::adapter_tensors(&self.assets.loaded.model)
            .into_keys()
            .collect();
        let step_fn = move |model: &mut Csm, x: &[Array]| -> Result<Vec<Array>, Exception> {
            let f = move |model: &mut Csm, x: &[Array]| -> Result<Vec<Array>, Exception> {
                let l = model.loss_arrays(
                    &ArrayLossBatch {
                        tokens: &x[0],
                        mask: &x[1],
                        loss_mask: &x[2],
                        decoder_frames: &x[3],
                        decoder_weights: Some(&x[4]),
                        attention: AttentionMask::Causal,
                    },
                    weights,
                )?;
                scaled_terms(l, &x[5], &x[6], weights)
            };
            let (values, grads) = nn::value_and_grad(f)(model, x)?;
            let mut grads: Vec<(String, Array)> =
                grads.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            grads.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(values
                .into_iter()
                .chain(grads.into_iter().map(|g| g.1))
                .collect())
        };
        let mut compiled = compile
            .0
            .then(|| mlx_rs::transforms::compile::compile_with_state(step_fn, false));
        self.assets.loaded.model.training_mode(true);
        let started = Instant::now();
        let first_step = self.progress.step;
        let mut last_loss = None;
        let mut cancelled = false;
        let distributed = self.group.is_distributed();
        let world = self.world_size as f32;

        'epochs: while self.progress.epoch < cfg.epochs {
            let batches = self.epoch_batches(self.progress.epoch);
            while self.progress.cursor < batches.len() {
                if !distributed && cancel.is_cancelled() {
                    cancelled = true;
                    break 'epochs;
                }
                let step_start = Instant::now();
                let step = self.progress.step;
                let fault = debug_fault(self.group.rank(), step + 1);
                let group_end = (self.progress.cursor + cfg.grad_accum).min(batches.len());
                let group = &batches[self.progress.cursor..group_end];
                let mut grads: BTreeMap<String, Array> = BTreeMap::new();
                let (mut losses, mut frames) = (Vec::new(), 0usize);
                for (micro, global) in group.iter().enumerate() {
                    let (mine, counts) = self.shard(global);
                    let n_sem: usize = counts.iter().map(|c| c.0).sum();
                    let n_dec: usize = counts.iter().map(|c| c.1).sum();
                    let (my_sem, my_dec) = counts[self.group.rank()];
                    // A rank without examples in the last micro-batch still
                    // joins the all-reduce, contributing zero.
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
                    let refs: Vec<&Example> =
                        indices.iter().map(|&i| &self.data.train[i]).collect();
                    let mut rng = Rng::new(
                        cfg.seed
                            ^ (((step as u64) << 20 | micro as u64) << 8
                                | self.group.rank() as u64)
                                .wrapping_mul(0xD1B5_4A32_D192_ED03),
                    );
                    let batch = collate(&refs, cfg.decoder_fraction, &mut rng)
                        .map_err(mlx("building a batch"))?;
                    if !mine.is_empty() {
                        frames += batch.real_frames;
                    }
                    if cfg.lora_dropout > 0.0 {
                        random::seed(cfg.seed.wrapping_add((step as u64) << 16 | micro as u64))
                            .map_err(mlx("seeding dropout"))?;
                    }
                    let (values, g): (Vec<Array>, Vec<(String, Array)>) = match compiled.as_mut() {
                        Some(step) => {
                            let inputs = compiled_inputs(&batch, scales)
                                .map_err(mlx("padding a batch for the compiled step"))?;
                            let mut out = step(&mut self.assets.loaded.model, &inputs)
                                .map_err(mlx("the compiled forward/backward pass"))?;
                            if out.len() != 3 + grad_keys.len() {
                                return Err(TrainError::Mlx {
                                    context: "the compiled forward/backward pass".into(),
                                    source: Exception::custom(format!(
                                        "{} gradients for {} adapter tensors",
                                        out.len().saturating_sub(3),
                                        grad_keys.len()
                                    )),
                                });
                            }
                            let g = out.split_off(3);
                            (out, grad_keys.iter().cloned().zip(g).collect())
                        }
                        None => {
                            let (values, g) =
                                value_and_grad(&mut self.assets.loaded.model, (&batch, scales))
                                    .map_err(mlx("the forward/backward pass"))?;
                            (
                                values,
                                g.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                            )
                        }
                    };
                    for (k, v) in g {
                        let sum = match grads.remove(&k) {
                            Some(prev) => prev.add(&v).map_err(mlx("accumulating gradients"))?,
                            None => v,
                        };
                        grads.insert(k, sum);
                    }
                    losses.push(values);
                }
                let n = group.len() as f32;
                // Loss values (and the stop request) travel with the
                // gradients: one all-reduce per step.
                let mut reduced_values = Vec::new();
                for i in 0..3 {
                    let sum = losses
                        .iter()
                        .map(|l| l[i].clone())
                        .reduce(|a, b| a.add(&b).expect("scalar add"))
                        .expect("at least one micro-batch");
                    reduced_values.push(sum);
                }
                let mut comm = (0u64, 0f64);
                if distributed {
                    for (i, v) in reduced_values.iter().enumerate() {
                        grads.insert(
                            format!("\u{0}loss{i}"),
                            v.as_dtype(Dtype::Float32).map_err(mlx("loss"))?,
                        );
                    }
                    let stop = if cancel.is_cancelled() { 1.0 } else { 0.0 };
                    grads.insert("\u{0}stop".into(), Array::from_f32(stop));
                    let stats = self.group.average_gradients(&mut grads)?;
                    comm = (stats.bytes_sent_per_rank, stats.elapsed.as_secs_f64());
                    for (i, v) in reduced_values.iter_mut().enumerate() {
                        *v = grads
                            .remove(&format!("\u{0}loss{i}"))
                            .expect("reduced loss");
                    }
                    let stop = grads.remove("\u{0}stop").expect("reduced stop flag");
                    if stop.item_cast::<f32>() > 0.0 {
                        cancelled = true;
                    }
                }
                if fault == Some(Fault::Nan) {
                    if let Some(g) = grads.values_mut().next() {
                        *g = g
                            .multiply(Array::from_f32(f32::NAN))
                            .map_err(mlx("CSM_DEBUG_NAN_AT_STEP"))?;
                    }
                }
                let mut sq = Array::from_f32(0.0);
                for g in grads.values_mut() {
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
                let norm = sq.sqrt().map_err(mlx("gradient norm"))?;
                let mut to_eval: Vec<&Array> = vec![&norm];
                to_eval.extend(reduced_values.iter());
                mlx_rs::transforms::eval(to_eval).map_err(mlx("the training step"))?;
                // Each rank's value is its world-scaled share; their mean
                // over ranks (the all-reduce) is the global loss.
                let mean = |i: usize| reduced_values[i].item_cast::<f32>() / n;
                let loss = LossValues {
                    total: mean(0),
                    semantic: mean(1),
                    acoustic: mean(2),
                };
                let grad_norm = norm.item_cast::<f32>();
                if !loss.total.is_finite() || !grad_norm.is_finite() {
                    let (what, value) = if loss.total.is_finite() {
                        ("gradient norm", grad_norm)
                    } else {
                        ("loss", loss.total)
                    };
                    return Err(TrainError::NonFinite {
                        step: step + 1,
                        what,
                        value,
                        last_checkpoint: self.last_checkpoint.clone(),
                    });
                }
                if cfg.max_grad_norm > 0.0 && grad_norm > cfg.max_grad_norm {
                    let scale = Array::from_f32(cfg.max_grad_norm / (grad_norm + 1e-6));
                    for g in grads.values_mut() {
                        *g = g.multiply(&scale).map_err(mlx("clipping gradients"))?;
                    }
                }
                let lr = learning_rate(
                    cfg.lr_schedule,
                    cfg.learning_rate,
                    cfg.warmup_steps,
                    step,
                    self.total_steps,
                );
                let params = adapter::adapter_tensors(&self.assets.loaded.model);
                let updated = self
                    .optimizer
                    .update(lr, &params, &grads)
                    .map_err(mlx("the optimizer step"))?;
                let mut to_eval: Vec<&Array> = updated.values().collect();
                to_eval.extend(self.optimizer.state_arrays());
                mlx_rs::transforms::eval(to_eval).map_err(mlx("the optimizer step"))?;
                self.assets.loaded.model.update_flattened(
                    updated
                        .into_iter()
                        .map(|(k, v)| (std::rc::Rc::from(k.as_str()), v))
                        .collect(),
                );

                self.progress.step += 1;
                self.progress.cursor = group_end;
                last_loss = Some(loss);
                let secs = step_start.elapsed().as_secs_f64();
                let done_here = self.progress.step - first_step;
                let per_step = started.elapsed().as_secs_f64() / done_here as f64;
                observer.on_event(&TrainEvent::Step(StepReport {
                    step: self.progress.step,
                    total_steps: self.total_steps,
                    epoch: self.progress.epoch + 1,
                    loss: loss.total,
                    semantic_loss: loss.semantic,
                    acoustic_loss: loss.acoustic,
                    lr,
                    grad_norm,
                    frames_per_sec: (frames as f64 * world as f64 / secs) as f32,
                    comm_bytes: comm.0,
                    comm_secs: comm.1,
                    memory_bytes: runtime::active_memory() as u64,
                    peak_memory_bytes: runtime::peak_memory() as u64,
                    elapsed_secs: started.elapsed().as_secs_f64(),
                    eta_secs: per_step * (self.total_steps - self.progress.step) as f64,
                }));
                let last = self.progress.step == self.total_steps;
                if self.group.is_main()
                    && !self.data.val.is_empty()
                    && (last
                        || (cfg.val_every > 0 && self.progress.step.is_multiple_of(cfg.val_every)))
                {
                    self.validate(observer, weights)?;
                }
                if !last && cfg.save_every > 0 && self.progress.step.is_multiple_of(cfg.save_every)
                {
                    self.checkpoint(observer)?;
                }
                if cancelled {
                    // Every rank saw the same reduced stop flag.
                    break 'epochs;
                }
            }
            self.progress.epoch += 1;
            self.progress.cursor = 0;
        }
        self.assets.loaded.model.training_mode(false);
        observer.on_event(&TrainEvent::Phase {
            phase: Phase::Saving,
            detail: format!("writing outputs to {}", cfg.output_dir.display()),
        });
        self.checkpoint(observer)?;
        if !cancelled {
            self.save_outputs()?;
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
        })
    }

    fn validate(
        &mut self,
        observer: &mut dyn TrainingObserver,
        weights: LossWeights,
    ) -> Result<(), TrainError> {
        let model = &mut self.assets.loaded.model;
        model.training_mode(false);
        let v = evaluate(model, &self.data.val, self.cfg.batch_size, weights)?;
        model.training_mode(true);
        self.progress.best_val = Some(self.progress.best_val.map_or(v.total, |b| b.min(v.total)));
        observer.on_event(&TrainEvent::Validation(ValReport {
            step: self.progress.step,
            loss: v.total,
            semantic_loss: v.semantic,
            acoustic_loss: v.acoustic,
            examples: self.data.val.len(),
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
    /// utterance as context, into `OUTPUT/samples/step_NNNNNNN.wav`.
    fn sample(&mut self, observer: &mut dyn TrainingObserver) -> Result<(), TrainError> {
        use crate::generate::{Generator, SamplingConfig};
        let context: Vec<_> = self.data.sample_context.iter().cloned().collect();
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
        let out = generator.generate(
            &context,
            &self.cfg.sample_prompt,
            self.cfg.speaker_id,
            &sampling,
        )?;
        let dir = self.cfg.output_dir.join("samples");
        std::fs::create_dir_all(&dir).map_err(|source| TrainError::Output {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("step_{:07}.wav", self.progress.step));
        crate::data::audio::write_wav(
            &path,
            &out.audio,
            crate::data::TARGET_SAMPLE_RATE,
            crate::data::audio::WavEncoding::Int16,
        )?;
        observer.on_event(&TrainEvent::Sample {
            step: self.progress.step,
            path,
        });
        Ok(())
    }

    /// Adapters (mlx_lm + PEFT layouts) and/or the merged model, per
    /// `--save-mode`.
    fn save_outputs(&mut self) -> Result<(), TrainError> {
        if !self.group.is_main() {
            return Ok(());
        }
        use super::config::SaveMode;
        let cfg = self.cfg;
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
        if matches!(cfg.save_mode, SaveMode::Full | SaveMode::Both) {
            save_merged(&self.assets.loaded, &cfg.output_dir.join("merged"))?;
        }
        Ok(())
    }
}

/// Writes the base model with its adapters merged, in the format it was
/// loaded from: `model.safetensors` (+ the `config.json` it came with).
pub fn save_merged(loaded: &LoadedCsm, dir: &Path) -> Result<PathBuf, TrainError> {
    let mut merged = loaded.model.clone();
    adapter::merge(&mut merged)?;
    let canonical = canonical_weights(&merged);
    let mut out = to_format(&canonical, loaded.format, &merged.config)?;
    if let Some(codec) = &loaded.codec {
        crate::model::load::add_codec(&mut out, codec);
    }
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Output {
        path: dir.to_path_buf(),
        source,
    })?;
    let file = dir.join("model.safetensors");
    crate::checkpoint::write::save_safetensors(&file, &out.tensors, &Default::default())?;
    let config_json = match &loaded.detected.config {
        Some((path, _, _)) => std::fs::read(path).map_err(|source| {
            TrainError::Checkpoint(CheckpointError::Io {
                path: path.clone(),
                source,
            })
        })?,
        None => serde_json::to_vec_pretty(&merged.config.to_sesame_json()).expect("serialisable"),
    };
    write_atomic(&dir.join("config.json"), &config_json)?;
    Ok(file)
}

/// `[total, semantic, acoustic]` of one micro-batch, each term scaled to
/// this rank's share of the global mean (see `Run::execute`), the total
/// weighted by `--semantic-weight` / `--acoustic-weight`.
fn scaled_terms(
    l: crate::model::CsmLoss,
    semantic_scale: &Array,
    acoustic_scale: &Array,
    weights: LossWeights,
) -> Result<Vec<Array>, Exception> {
    let sem = l.semantic.multiply(semantic_scale)?;
    let aco = l.acoustic.multiply(acoustic_scale)?;
    let total = sem
        .multiply(Array::from_f32(weights.semantic))?
        .add(aco.multiply(Array::from_f32(weights.acoustic))?)?;
    Ok(vec![total, sem, aco])
}

/// Whether the training step goes through `mx.compile`, and why.
///
/// Off unless `CSM_COMPILE=1`: measured, it did not pay. On this CPU the
/// compiled CSM-1B step took 4.39 s against 4.26 s; on an H100 (bf16) it
/// was within run-to-run noise with 12% less peak memory at every frame,
/// while the demo run spent 5.1 s instead of 1.2 s on its first 30 steps
/// tracing and JIT-compiling a kernel set per new batch shape, and the same
/// 0.015 s per step afterwards (docs/benchmarks.md). Never with LoRA
/// dropout: the random mask would be frozen into the trace.
fn compile_step(lora_dropout: f32) -> (bool, &'static str) {
    let asked = std::env::var("CSM_COMPILE").as_deref() == Ok("1");
    match (asked, lora_dropout > 0.0) {
        (true, true) => (
            false,
            "not compiled: CSM_COMPILE=1 ignored, LoRA dropout draws a new mask every step",
        ),
        (true, false) => (true, "compiled (CSM_COMPILE=1)"),
        (false, _) => (false, "not compiled (CSM_COMPILE=1 compiles it)"),
    }
}

/// Frames per shape step of the compiled path: batch lengths and decoder
/// frame counts are rounded up to a multiple of this, so a run traces a few
/// shapes instead of one per batch.
const COMPILE_PAD: usize = 8;

/// The inputs of the compiled step: frames, mask and codebook-0 targets
/// padded to a multiple of [`COMPILE_PAD`] frames (padding is masked and,
/// with causal attention at the end, invisible to real frames), the
/// depth-decoder indices re-based on the padded length and padded to a
/// multiple of [`COMPILE_PAD`] with weight 0, and the two loss scales.
///
/// # Shapes
/// -> `[frames [B, S', K+1], mask [B, S', K+1], c0 [B, S'], idx [N'],
/// weights [N'], scale_sem [], scale_dec []]`
fn compiled_inputs(batch: &Batch, scales: (f32, f32)) -> Result<Vec<Array>, Exception> {
    let shape = batch.frames.shape();
    let s = shape[1] as usize;
    let s_pad = s.div_ceil(COMPILE_PAD) * COMPILE_PAD;
    let extra = (s_pad - s) as i32;
    let pad3 = [(0, 0), (0, extra), (0, 0)];
    let frames = ops::pad(&batch.frames, &pad3[..], None, None)?; // [B, S', K+1]
    let mask = ops::pad(&batch.mask, &pad3[..], None, None)?; // [B, S', K+1]
    let c0 = ops::pad(&batch.c0_targets, &pad3[..2], None, None)?; // [B, S']
    let mut idx: Vec<i32> = batch
        .decoder_frames
        .iter()
        .map(|&f| (f as usize / s * s_pad + f as usize % s) as i32)
        .collect();
    let n = idx.len();
    let n_pad = n.div_ceil(COMPILE_PAD) * COMPILE_PAD;
    let mut w = vec![1f32; n];
    idx.resize(n_pad, idx[0]);
    w.resize(n_pad, 0.0);
    Ok(vec![
        frames,
        mask,
        c0,
        Array::from_slice(&idx, &[n_pad as i32]),
        Array::from_slice(&w, &[n_pad as i32]),
        Array::from_f32(scales.0),
        Array::from_f32(scales.1),
    ])
}

/// Faults injected by the crash-recovery tests (see [`debug_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The step's gradients become NaN (the non-finite stop must catch it).
    Nan,
}

/// Fault injection for the crash-recovery tests, read when rank `rank`
/// starts optimizer step `step` (1-based):
/// - `CSM_DEBUG_ABORT_AT_STEP=R:S`: rank `R` aborts (SIGABRT);
/// - `CSM_DEBUG_KILL_AT_STEP=R:S`: rank `R` sends itself SIGKILL, so nothing
///   at all runs after it (no destructor, no handler, no flush);
/// - `CSM_DEBUG_NAN_AT_STEP=S`: returns [`Fault::Nan`] at step `S`.
fn debug_fault(rank: usize, step: usize) -> Option<Fault> {
    let here = format!("{rank}:{step}");
    if std::env::var("CSM_DEBUG_ABORT_AT_STEP").is_ok_and(|v| v == here) {
        tracing::error!("CSM_DEBUG_ABORT_AT_STEP: rank {rank} aborting at step {step}");
        std::process::abort();
    }
    if std::env::var("CSM_DEBUG_KILL_AT_STEP").is_ok_and(|v| v == here) {
        tracing::error!("CSM_DEBUG_KILL_AT_STEP: rank {rank} killing itself at step {step}");
        #[cfg(unix)]
        // SAFETY: getpid and kill have no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
    std::env::var("CSM_DEBUG_NAN_AT_STEP")
        .is_ok_and(|v| v == step.to_string())
        .then_some(Fault::Nan)
}
