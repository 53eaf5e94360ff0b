//! Setting up a fine-tuning job: loading the model, codec and tokenizer
//! ([`load_assets`]), loading the dataset and Mimi-encoding it through the
//! codes cache ([`prepare`]), the loss of a dataset ([`evaluate`]), the
//! merged model ([`save_merged`]) and the errors of training
//! ([`TrainError`]). It never prints.
//!
//! [`train`](super::train) (in `run.rs`) runs a whole job on top of these:
//! attach adapters, then optimizer steps (`Run::execute`, one named step
//! after the other) with gradient accumulation, clipping, the LR schedule,
//! validation and atomic checkpoints, reporting through a
//! [`TrainingObserver`](super::TrainingObserver) and stopping at a
//! [`CancelToken`](crate::cancel::CancelToken); the forward/backward pass
//! of a micro-batch, plain or compiled, is `step.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

use super::batch::{build_example, collate_as, Batch, BatchError, Example, Layout, Turn};
use super::codes::{fingerprint_files, CodesCache, EncodeStats};
use super::config::TrainConfig;
use super::observer::{Phase, TrainEvent, TrainingObserver};
use super::voice::{self, VoiceData, VoiceError, VoiceOutcome};
use crate::adapter::{self, AdapterError};
use crate::assets::{self, AssetError, LoadedMimi};
use crate::checkpoint::write::write_atomic;
use crate::checkpoint::CheckpointError;
use crate::codec::CodecError;
use crate::data::{self, DataError, Split};
use crate::model::load::{canonical_weights, load_csm, to_format, LoadOptions, LoadedCsm};
use crate::model::{packed_causal_mask, AttentionMask, Csm, LossBatch, LossWeights, ModelError};
use crate::rng::Rng;
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
    /// The voice scores failed (a model, the held-out clip, a sample);
    /// boxed, as its sources are large.
    #[error(transparent)]
    Voice(Box<VoiceError>),
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

impl From<VoiceError> for TrainError {
    fn from(e: VoiceError) -> Self {
        TrainError::Voice(Box::new(e))
    }
}

pub(super) fn mlx(context: &str) -> impl FnOnce(Exception) -> TrainError + '_ {
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
    /// The audio read and the audio used (after trimming and cutting).
    pub usage: data::AudioUsage,
    /// A training utterance used as context for `--generate-samples`.
    pub sample_context: Option<crate::generate::Segment>,
    /// The speakers, by id, when the dataset has several (empty: one, the
    /// run's `--speaker-id`).
    pub speakers: Vec<data::Speaker>,
    /// The speaker id of each training example's target turn.
    pub train_speakers: Vec<u32>,
    /// The speaker id of each validation example's target turn.
    pub val_speakers: Vec<u32>,
    /// With several speakers: one training utterance of each (in
    /// [`Prepared::speakers`]' order, where it has one) as the context of
    /// its `--generate-samples` sample.
    pub speaker_contexts: Vec<crate::generate::Segment>,
    /// With voice scores: the clip held out of training (not in `train`,
    /// `val` or the training figures of `usage`) and the speaker's
    /// training utterances.
    pub voice: Option<VoiceData>,
}

/// Loads the dataset (one speaker, or several: see
/// [`crate::data::speakers`]), holds the voice scores' clip out of
/// training (when `cfg.voice` is set), Mimi-encodes every utterance through
/// the codes cache (`cache_root`), and lays out the examples: each turn's
/// prompt is `[id]text` with its own speaker's id (`cfg.speaker_id` for a
/// one-speaker dataset).
pub fn prepare(
    assets: &mut Assets,
    cfg: &TrainConfig,
    cache_root: &Path,
    observer: &mut dyn TrainingObserver,
) -> Result<Prepared, TrainError> {
    let source = cfg.data_source()?;
    let mut dataset =
        data::speakers::load_source(&source, &cfg.speakers, &cfg.load_options(), &mut |_| {})?;
    if dataset.speakers.len() > 1 && cfg.voice.is_some() {
        return Err(TrainError::Config(vec![format!(
            "voice scores compare samples with one speaker's voice; this dataset has {} \
             speakers ({}): train without voice scores, or score one speaker's folder alone",
            dataset.speakers.len(),
            dataset
                .speakers
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )]));
    }
    let voice = match &cfg.voice {
        Some(_) => Some(voice::hold_out(&mut dataset, cfg.seed)?),
        None => None,
    };
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
    let speaker_of = |u: &data::Utterance| u.speaker.unwrap_or(cfg.speaker_id);
    let mut build = |split: Split| -> Result<(Vec<Example>, Vec<u32>), TrainError> {
        let mut out = Vec::new();
        let mut speakers = Vec::new();
        for ex in dataset.examples(split, cfg.context_turns) {
            let turn = |u: &data::Utterance, has_loss: bool| -> Result<Turn, TrainError> {
                let text_tokens = assets.tokenizer.encode_segment(speaker_of(u), &u.text)?;
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
                Ok(e) => {
                    out.push(e);
                    speakers.push(speaker_of(ex.target));
                }
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
        Ok((out, speakers))
    };
    let (train, train_speakers) = build(Split::Train)?;
    let (val, val_speakers) = build(Split::Validation)?;
    let segment = |u: &data::Utterance| crate::generate::Segment {
        speaker: speaker_of(u),
        text: u.text.clone(),
        audio: Some(u.samples().to_vec()),
    };
    let train_examples = dataset.examples(Split::Train, 0);
    let sample_context = train_examples.first().map(|ex| segment(ex.target));
    let speaker_contexts = dataset
        .speakers
        .iter()
        .filter_map(|s| {
            train_examples
                .iter()
                .find(|ex| ex.target.speaker == Some(s.id))
                .map(|ex| segment(ex.target))
        })
        .collect();
    Ok(Prepared {
        train,
        val,
        warnings,
        cache: stats,
        usage: dataset.usage(),
        sample_context,
        speakers: dataset.speakers.clone(),
        train_speakers,
        val_speakers,
        speaker_contexts,
        voice,
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

/// The loss's view of `batch`, with `attention` its pattern.
fn loss_batch<'a>(batch: &'a Batch, attention: AttentionMask<'a>) -> LossBatch<'a> {
    LossBatch {
        tokens: &batch.frames,
        mask: &batch.mask,
        loss_mask: &batch.c0_targets,
        decoder_frames: &batch.decoder_frames,
        attention,
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
    evaluate_as(model, examples, batch_size, weights, Layout::Padded)
}

/// [`evaluate`] with the batches laid out as `layout` says (the same loss
/// either way; the run validates in its training layout).
pub fn evaluate_as(
    model: &mut Csm,
    examples: &[Example],
    batch_size: usize,
    weights: LossWeights,
    layout: Layout,
) -> Result<LossValues, TrainError> {
    let all: Vec<&Example> = examples.iter().collect();
    Ok(loss_sums(model, &all, batch_size, weights, layout)?.values(weights))
}

/// One speaker's validation loss ([`evaluate_by_speaker`]).
#[derive(Debug, Clone, Copy)]
pub struct SpeakerLoss {
    /// The speaker id of the examples' target turns.
    pub speaker: u32,
    /// Their mean loss.
    pub loss: LossValues,
    /// How many examples.
    pub examples: usize,
}

/// [`evaluate`] over each speaker's examples (`speakers[i]` is the speaker
/// of `examples[i]`'s target turn), batched within each speaker; returns
/// the loss of all of them (the speakers' terms pooled by their target
/// counts) and each speaker's, by id.
pub fn evaluate_by_speaker(
    model: &mut Csm,
    examples: &[Example],
    speakers: &[u32],
    batch_size: usize,
    weights: LossWeights,
) -> Result<(LossValues, Vec<SpeakerLoss>), TrainError> {
    evaluate_by_speaker_as(
        model,
        examples,
        speakers,
        batch_size,
        weights,
        Layout::Padded,
    )
}

/// [`evaluate_by_speaker`] with the batches laid out as `layout` says.
pub fn evaluate_by_speaker_as(
    model: &mut Csm,
    examples: &[Example],
    speakers: &[u32],
    batch_size: usize,
    weights: LossWeights,
    layout: Layout,
) -> Result<(LossValues, Vec<SpeakerLoss>), TrainError> {
    let mut ids: Vec<u32> = speakers.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut total = LossSums::default();
    let mut each = Vec::with_capacity(ids.len());
    for id in ids {
        let mine: Vec<&Example> = examples
            .iter()
            .zip(speakers)
            .filter(|(_, &s)| s == id)
            .map(|(e, _)| e)
            .collect();
        let sums = loss_sums(model, &mine, batch_size, weights, layout)?;
        total.add(&sums);
        each.push(SpeakerLoss {
            speaker: id,
            loss: sums.values(weights),
            examples: mine.len(),
        });
    }
    Ok((total.values(weights), each))
}

/// Loss sums weighted by target counts, so subsets pool exactly.
#[derive(Debug, Clone, Copy, Default)]
struct LossSums {
    semantic: f64,
    acoustic: f64,
    semantic_targets: f64,
    acoustic_targets: f64,
}

impl LossSums {
    fn add(&mut self, other: &LossSums) {
        self.semantic += other.semantic;
        self.acoustic += other.acoustic;
        self.semantic_targets += other.semantic_targets;
        self.acoustic_targets += other.acoustic_targets;
    }

    fn values(&self, weights: LossWeights) -> LossValues {
        let semantic = (self.semantic / self.semantic_targets.max(1.0)) as f32;
        let acoustic = (self.acoustic / self.acoustic_targets.max(1.0)) as f32;
        LossValues {
            total: weights.semantic * semantic + weights.acoustic * acoustic,
            semantic,
            acoustic,
        }
    }
}

/// The loss sums of `examples`, shortest first in batches of `batch_size`
/// laid out as `layout` says.
fn loss_sums(
    model: &mut Csm,
    examples: &[&Example],
    batch_size: usize,
    weights: LossWeights,
    layout: Layout,
) -> Result<LossSums, TrainError> {
    let mut rng = Rng::new(0);
    let mut sums = LossSums::default();
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].len());
    for chunk in order.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().map(|&i| examples[i]).collect();
        let batch =
            collate_as(&refs, 1.0, &mut rng, layout).map_err(mlx("building a validation batch"))?;
        let packed_mask = match &batch.packed {
            Some(p) => Some(packed_causal_mask(&p.segments).map_err(mlx("validation"))?),
            None => None,
        };
        let attention = match (&packed_mask, &batch.packed) {
            (Some(mask), Some(p)) => AttentionMask::Packed {
                mask,
                positions: &p.positions,
            },
            // Right padding: causal attention never lets a real frame see it.
            _ => AttentionMask::Causal,
        };
        let loss = model
            .loss(&loss_batch(&batch, attention), weights)
            .map_err(mlx("validation"))?;
        mlx_rs::transforms::eval([&loss.semantic, &loss.acoustic]).map_err(mlx("validation"))?;
        let t = batch.target_frames as f64;
        let d = batch.decoder_frames.len() as f64;
        sums.semantic += loss.semantic.item_cast::<f32>() as f64 * t;
        sums.acoustic += loss.acoustic.item_cast::<f32>() as f64 * d;
        sums.semantic_targets += t;
        sums.acoustic_targets += d;
    }
    Ok(sums)
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
    /// A QLoRA run's adapter on the full-precision model (finished runs).
    pub full_precision: Option<FullPrecisionCheck>,
    /// With voice scores: the base model's, the best and the last
    /// checkpoint's (resumed runs included).
    pub voice: Option<VoiceOutcome>,
}

/// Which examples a [`FullPrecisionCheck`] was computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckSplit {
    /// The validation examples.
    Validation,
    /// The training examples (the run had no validation split).
    Training,
}

/// The loss of a QLoRA run's adapter on the full-precision base model,
/// next to the same adapter on the quantized base it was trained on (see
/// `modes::full_precision_check`).
#[derive(Debug, Clone, Copy)]
pub struct FullPrecisionCheck {
    /// Bits the base was quantized to.
    pub bits: u8,
    /// On the full-precision model.
    pub full_precision: LossValues,
    /// On the quantized model (the run's own weights).
    pub quantized: LossValues,
    /// Which examples.
    pub split: CheckSplit,
    /// How many.
    pub examples: usize,
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
        // The trainer's one `expect`: a `serde_json::Value` always serialises.
        None => serde_json::to_vec_pretty(&merged.config.to_sesame_json())
            .expect("a JSON value serialises"),
    };
    write_atomic(&dir.join("config.json"), &config_json)?;
    Ok(file)
}
