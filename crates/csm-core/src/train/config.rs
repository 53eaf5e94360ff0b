//! The run configuration: every flag of `csm finetune-lora`, as one plain
//! struct that the CLI fills from flags, the app from its forms, and both
//! read from / write to `config.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::adapter::{LayerSet, LoraSpec, TargetLayers, ALL_MODULES};
use crate::data::speakers::{self, DataSource};
use crate::data::{DataError, DatasetLayout, LoadOptions, LongUnaligned, SegmentConfig};

/// How checkpoints of the run are written at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveMode {
    /// Adapters only (mlx_lm and PEFT layouts).
    Lora,
    /// Base weights with the adapter merged in, in the input's format.
    Full,
    /// Both of the above.
    Both,
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Constant after warm-up.
    Constant,
    /// Linear decay to 0 at the last step.
    Linear,
    /// Cosine decay to 10% of the peak at the last step.
    Cosine,
}

/// What a run trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// LoRA adapters on frozen weights (`--lora-*`, `--target-*`).
    #[default]
    Lora,
    /// The weights themselves, of the parts in `train`.
    Full,
}

impl Method {
    /// Whether this is LoRA (the default, left out of `config.json`).
    pub fn is_lora(&self) -> bool {
        *self == Method::Lora
    }
}

/// A part of the model that `--method full` can train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelPart {
    /// The backbone stack and its codebook-0 head.
    Backbone,
    /// The depth decoder stack, its input projection and its heads.
    Decoder,
    /// The text and audio embeddings (shared by both stacks).
    Embeddings,
}

impl ModelPart {
    /// Every part, in `--train` order.
    pub const ALL: [ModelPart; 3] = [
        ModelPart::Backbone,
        ModelPart::Decoder,
        ModelPart::Embeddings,
    ];

    /// The name `--train` takes.
    pub fn name(self) -> &'static str {
        match self {
            ModelPart::Backbone => "backbone",
            ModelPart::Decoder => "decoder",
            ModelPart::Embeddings => "embeddings",
        }
    }

    /// Parses one `--train` name.
    ///
    /// # Errors
    /// An unknown name, with the choices.
    pub fn parse(s: &str) -> Result<Self, String> {
        ModelPart::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("--train: unknown part `{s}`; choose from backbone, decoder, embeddings")
            })
    }
}

fn default_train_parts() -> Vec<ModelPart> {
    vec![ModelPart::Backbone, ModelPart::Decoder]
}

fn is_default_train_parts(parts: &[ModelPart]) -> bool {
    parts == default_train_parts().as_slice()
}

/// The prompts voice scores speak by default, in order: `--voice-prompts K`
/// takes the first K. Sentences of everyday English with varied sounds,
/// a question among them, each short enough to say in 3-5 s.
pub const VOICE_PROMPTS: [&str; 8] = [
    "The morning train was late, so we walked along the river instead.",
    "Could you bring me the blue folder from the kitchen table?",
    "Six thousand people gathered in the square to hear the news.",
    "I honestly did not expect the weather to change so quickly.",
    "Please remember to water the plants before you leave on Friday.",
    "Her brother fixed the old bicycle with a bit of wire and patience.",
    "Why would anyone paint a lighthouse bright purple?",
    "We measured the room twice, and the sofa still did not fit.",
];

/// Prompts spoken at each scoring when not told otherwise.
pub const DEFAULT_VOICE_PROMPTS: usize = 3;

/// Voice scores of a run (see `train::voice`): at step 0 and at every
/// checkpoint the model speaks `prompts` after a clip held out of
/// training, and each sample is scored against the speaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceConfig {
    /// resemblyzer's speaker encoder, `pretrained.pt` (PyPI wheel
    /// resemblyzer==0.1.4).
    pub speaker_encoder: PathBuf,
    /// A Whisper model folder (transformers layout) to transcribe the
    /// samples for WER/CER; none: no WER/CER, and no WER gate.
    #[serde(default)]
    pub whisper_model: Option<PathBuf>,
    /// What the samples say.
    #[serde(default = "default_voice_prompts")]
    pub prompts: Vec<String>,
}

fn default_voice_prompts() -> Vec<String> {
    VoiceConfig::builtin_prompts(DEFAULT_VOICE_PROMPTS)
}

impl VoiceConfig {
    /// Scores with `speaker_encoder`, the default prompts and no Whisper.
    pub fn new(speaker_encoder: impl Into<PathBuf>) -> Self {
        VoiceConfig {
            speaker_encoder: speaker_encoder.into(),
            whisper_model: None,
            prompts: default_voice_prompts(),
        }
    }

    /// The first `k` of [`VOICE_PROMPTS`] (all of them when `k` is larger).
    pub fn builtin_prompts(k: usize) -> Vec<String> {
        VOICE_PROMPTS
            .iter()
            .take(k)
            .map(|p| p.to_string())
            .collect()
    }
}

/// Everything a fine-tuning run needs. Field names are the CLI flags in
/// snake_case; `config.json` in the output directory holds exactly this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    // -- model and data --
    /// CSM checkpoint: a file or a directory, any supported format.
    pub model_path: PathBuf,
    /// Mimi weights (default: found next to the model).
    pub mimi_path: Option<PathBuf>,
    /// Llama-3 `tokenizer.json` (default: found next to the model).
    pub tokenizer_path: Option<PathBuf>,
    /// Where checkpoints, adapters, metrics and samples go.
    pub output_dir: PathBuf,
    /// Folder of WAV files.
    pub audio_dir: PathBuf,
    /// Folder of `.txt` transcripts with the same stems as the WAVs.
    pub transcript_dir: PathBuf,
    /// Optional folder of word-timing JSON files (same stems).
    pub alignment_dir: Option<PathBuf>,
    /// A dataset folder instead of the three above: `DATA/audio` +
    /// `DATA/transcripts` (+ `alignments`, + `speakers.json`), or one
    /// folder per speaker (`DATA/SPEAKER/audio`...); see
    /// [`crate::data::speakers`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `speakers.json` saying who speaks each recording (default:
    /// `DATA/speakers.json` when there is one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speakers_file: Option<PathBuf>,
    /// Speaker names and the CSM ids they train under, for datasets with
    /// several speakers. Ids given here are kept; a run fills in the rest
    /// ([`TrainConfig::resolve_speakers`]) and writes the whole table to
    /// `config.json`. Empty (and absent from the file) for one speaker.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub speakers: BTreeMap<String, u32>,
    /// Speaker id written into the prompt (`[0]text`) when the dataset has
    /// one speaker.
    pub speaker_id: u32,
    /// Longest training sequence in frames (text + audio + EOS frames).
    pub max_seq_len: usize,
    /// Previous utterances of the same recording put before each target.
    pub context_turns: usize,
    /// Whether context turns carry loss too (default: they only condition).
    pub context_loss: bool,
    // -- segmenting (see `data::SegmentConfig`, which these fill) --
    /// Trim leading and trailing silence of unaligned recordings down to
    /// `edge_pad_secs` (aligned ones are cut at their word times).
    pub trim_silence: bool,
    /// Silence kept before the first and after the last sound (or word).
    pub edge_pad_secs: f64,
    /// Shortest utterance wanted when cutting aligned recordings.
    pub min_utterance_secs: f64,
    /// Preferred utterance length when cutting aligned recordings.
    pub target_utterance_secs: f64,
    /// Longest utterance wanted when cutting aligned recordings.
    pub max_utterance_secs: f64,
    /// Longest recording used whole when it has no alignment.
    pub max_unaligned_secs: f64,
    /// What to do with a longer recording that has no alignment.
    pub long_unaligned: LongUnaligned,
    // -- LoRA --
    /// Adapter rank.
    pub lora_r: usize,
    /// Adapter scale numerator (scale = alpha / r).
    pub lora_alpha: f32,
    /// Dropout on the adapter input.
    pub lora_dropout: f32,
    /// Projections to adapt.
    pub target_modules: Vec<String>,
    /// Layers to adapt, per stack.
    pub target_layers: TargetLayers,
    /// Train a bias on adapted projections.
    pub lora_bias: bool,
    // -- method and memory (left out of `config.json` at their defaults) --
    /// LoRA (default) or full fine-tuning.
    #[serde(skip_serializing_if = "Method::is_lora")]
    pub method: Method,
    /// What `--method full` trains (default: backbone and decoder).
    #[serde(skip_serializing_if = "is_default_train_parts")]
    pub train: Vec<ModelPart>,
    /// Quantize the frozen projections of both stacks to this many bits
    /// (4 or 8) and train LoRA on top (QLoRA); `None`: full precision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantize: Option<u8>,
    /// Recompute each block's activations in the backward pass instead of
    /// keeping them: less memory, one more forward pass per step.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub grad_checkpoint: bool,
    /// Pack several examples into each row of a micro-batch instead of
    /// padding every example to the longest (`train::batch::Layout`):
    /// block-diagonal causal attention, positions restarting at each
    /// example, the same loss; fewer padded frames when lengths differ.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub packing: bool,
    // -- optimisation --
    /// Peak learning rate (AdamW).
    pub learning_rate: f32,
    /// Weight of the codebook-0 (semantic) loss.
    pub semantic_weight: f32,
    /// Weight of the codebooks 1..31 (acoustic) loss.
    pub acoustic_weight: f32,
    /// Decoupled AdamW weight decay.
    pub weight_decay: f32,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Passes over the training set.
    pub epochs: usize,
    /// Gradient-norm clip (0 disables).
    pub max_grad_norm: f32,
    /// Fraction of audio frames the depth decoder trains on (Sesame: 1/16).
    pub decoder_fraction: f32,
    /// Learning-rate schedule.
    pub lr_schedule: LrSchedule,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Seed for data order, LoRA init, dropout and frame selection.
    pub seed: u64,
    // -- validation and saving --
    /// Fraction of utterances held out for validation.
    pub val_split: f32,
    /// Validate every N optimizer steps (0: only at the end).
    pub val_every: usize,
    /// Checkpoint every N optimizer steps (0: only at the end).
    pub save_every: usize,
    /// What to write at the end.
    pub save_mode: SaveMode,
    /// Checkpoint to continue from.
    pub resume_from: Option<PathBuf>,
    // -- samples and logging --
    /// Speak `sample_prompt` with the fine-tuned model at each save.
    pub generate_samples: bool,
    /// Text of the samples.
    pub sample_prompt: String,
    /// Log level: debug, info, warning, error, critical.
    pub log_level: String,
    /// Extra checks and logs (per-step loss components, shapes).
    pub debug: bool,
    // -- voice scores --
    /// Speak and score prompts at step 0 and every checkpoint, and keep
    /// the best checkpoint's adapter; `None` (the default): off. Absent
    /// from `config.json` when off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice: Option<VoiceConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        // The data module owns the segmenting defaults.
        let segment = SegmentConfig::default();
        TrainConfig {
            model_path: PathBuf::new(),
            mimi_path: None,
            tokenizer_path: None,
            output_dir: PathBuf::from("runs/latest"),
            audio_dir: PathBuf::new(),
            transcript_dir: PathBuf::new(),
            alignment_dir: None,
            data_dir: None,
            speakers_file: None,
            speakers: BTreeMap::new(),
            speaker_id: 0,
            max_seq_len: 2048,
            context_turns: 2,
            context_loss: false,
            trim_silence: segment.trim_silence,
            edge_pad_secs: segment.edge_pad_s,
            min_utterance_secs: segment.min_s,
            target_utterance_secs: segment.target_s,
            max_utterance_secs: segment.max_s,
            max_unaligned_secs: segment.max_unaligned_s,
            long_unaligned: segment.long_unaligned,
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            target_layers: TargetLayers::all(),
            lora_bias: false,
            method: Method::Lora,
            train: default_train_parts(),
            quantize: None,
            grad_checkpoint: false,
            packing: false,
            learning_rate: 2e-4,
            semantic_weight: 1.0,
            acoustic_weight: 1.0,
            weight_decay: 0.01,
            batch_size: 2,
            grad_accum: 1,
            epochs: 5,
            max_grad_norm: 1.0,
            decoder_fraction: 1.0 / 16.0,
            lr_schedule: LrSchedule::Cosine,
            warmup_steps: 20,
            seed: 42,
            val_split: 0.1,
            val_every: 50,
            save_every: 100,
            save_mode: SaveMode::Lora,
            resume_from: None,
            generate_samples: false,
            sample_prompt: "Hello! This is my fine-tuned voice speaking.".into(),
            log_level: "info".into(),
            debug: false,
            voice: None,
        }
    }
}

impl TrainConfig {
    /// Checks every value on its own and in combination; each problem is
    /// one line naming the flag. Model-dependent checks (layer indices)
    /// happen once the model is loaded.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                errors.push(msg);
            }
        };
        check(
            !self.model_path.as_os_str().is_empty(),
            "--model-path is required".into(),
        );
        if self.data_dir.is_some() {
            check(
                self.audio_dir.as_os_str().is_empty()
                    && self.transcript_dir.as_os_str().is_empty()
                    && self.alignment_dir.is_none(),
                "--data-dir replaces --audio-dir, --transcript-dir and --alignment-dir: give \
                 one or the others"
                    .into(),
            );
        } else {
            check(
                !self.audio_dir.as_os_str().is_empty(),
                "--audio-dir is required (or --data-dir)".into(),
            );
            check(
                !self.transcript_dir.as_os_str().is_empty(),
                "--transcript-dir is required (or --data-dir)".into(),
            );
        }
        check(
            !self.output_dir.as_os_str().is_empty(),
            "--output-dir is required".into(),
        );
        check(
            self.lora_r >= 1,
            format!("--lora-r must be at least 1 (got {})", self.lora_r),
        );
        check(
            self.lora_alpha.is_finite() && self.lora_alpha > 0.0,
            format!("--lora-alpha must be positive (got {})", self.lora_alpha),
        );
        check(
            (0.0..1.0).contains(&self.lora_dropout),
            format!(
                "--lora-dropout must be in [0, 1) (got {})",
                self.lora_dropout
            ),
        );
        check(
            !self.target_modules.is_empty(),
            "--target-modules needs at least one projection".into(),
        );
        for m in &self.target_modules {
            check(
                ALL_MODULES.contains(&m.as_str()),
                format!(
                    "--target-modules: unknown projection `{m}`; choose from {}",
                    ALL_MODULES.join(" ")
                ),
            );
        }
        check(
            self.target_layers.backbone != LayerSet::None
                || self.target_layers.decoder != LayerSet::None,
            "--target-layers selects no layer at all".into(),
        );
        check(
            self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate < 1.0,
            format!(
                "--learning-rate must be in (0, 1) (got {})",
                self.learning_rate
            ),
        );
        check(
            self.semantic_weight >= 0.0 && self.acoustic_weight >= 0.0,
            "--semantic-weight and --acoustic-weight must not be negative".into(),
        );
        check(
            self.semantic_weight + self.acoustic_weight > 0.0,
            "--semantic-weight and --acoustic-weight are both 0: nothing would be trained".into(),
        );
        check(
            self.weight_decay >= 0.0 && self.weight_decay < 1.0,
            format!(
                "--weight-decay must be in [0, 1) (got {})",
                self.weight_decay
            ),
        );
        check(
            self.batch_size >= 1,
            "--batch-size must be at least 1".into(),
        );
        check(
            self.grad_accum >= 1,
            "--grad-accum must be at least 1".into(),
        );
        check(self.epochs >= 1, "--epochs must be at least 1".into());
        check(
            self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite(),
            "--max-grad-norm must be 0 (off) or positive".into(),
        );
        check(
            self.decoder_fraction > 0.0 && self.decoder_fraction <= 1.0,
            format!(
                "--decoder-fraction must be in (0, 1] (got {})",
                self.decoder_fraction
            ),
        );
        check(
            (0.0..1.0).contains(&self.val_split),
            format!("--val-split must be in [0, 1) (got {})", self.val_split),
        );
        check(
            self.max_seq_len >= 8,
            format!(
                "--max-seq-len must be at least 8 frames (got {})",
                self.max_seq_len
            ),
        );
        let secs = |v: f64| v.is_finite() && v >= 0.0;
        check(
            secs(self.edge_pad_secs),
            format!(
                "--edge-pad-secs must be 0 or more seconds (got {})",
                self.edge_pad_secs
            ),
        );
        check(
            secs(self.min_utterance_secs)
                && secs(self.max_utterance_secs)
                && self.max_utterance_secs > 0.0
                && self.min_utterance_secs <= self.max_utterance_secs,
            format!(
                "--min-utterance-secs ({}) and --max-utterance-secs ({}) must be seconds with min <= max and max > 0",
                self.min_utterance_secs, self.max_utterance_secs
            ),
        );
        check(
            secs(self.target_utterance_secs)
                && self.min_utterance_secs <= self.target_utterance_secs
                && self.target_utterance_secs <= self.max_utterance_secs,
            format!(
                "--target-utterance-secs ({}) must lie between --min-utterance-secs ({}) and --max-utterance-secs ({})",
                self.target_utterance_secs, self.min_utterance_secs, self.max_utterance_secs
            ),
        );
        // 0 is allowed: with `--long-unaligned skip` only aligned recordings are used.
        check(
            secs(self.max_unaligned_secs),
            format!(
                "--max-unaligned-secs must be 0 or more seconds (got {})",
                self.max_unaligned_secs
            ),
        );
        check(
            ["debug", "info", "warning", "error", "critical"].contains(&self.log_level.as_str()),
            format!(
                "--log-level `{}`: use debug, info, warning, error or critical",
                self.log_level
            ),
        );
        check(
            !self.generate_samples || !self.sample_prompt.trim().is_empty(),
            "--generate-samples needs a non-empty --sample-prompt".into(),
        );
        if let Some(v) = &self.voice {
            check(
                !v.speaker_encoder.as_os_str().is_empty(),
                "voice scores need --speaker-encoder PATH".into(),
            );
            check(
                !v.prompts.is_empty(),
                "voice scores need at least one prompt (--voice-prompts 1 or more)".into(),
            );
            check(
                v.prompts.iter().all(|p| !p.trim().is_empty()),
                "--voice-prompt: a prompt is empty".into(),
            );
        }
        if let Some(bits) = self.quantize {
            if let Err(e) = crate::model::QuantSpec::new(bits) {
                errors.push(e);
            }
        }
        if self.method == Method::Full {
            if self.quantize.is_some() {
                errors.push(
                    "--quantize quantizes the frozen base under LoRA adapters (QLoRA); --method full \
                     trains the weights themselves, which must stay in full precision"
                        .into(),
                );
            }
            if self.train.is_empty() {
                errors.push(
                    "--train names no part: choose from backbone, decoder, embeddings".into(),
                );
            }
            if self.voice.is_some() {
                errors.push(
                    "voice scores keep the best checkpoint's adapter, and --method full has \
                     none: leave --speaker-encoder out (a full run's checkpoints hold the weights)"
                        .into(),
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Adapter scale `alpha / r`.
    pub fn lora_scale(&self) -> f32 {
        self.lora_alpha / self.lora_r as f32
    }

    /// Micro-batches in one epoch of `train_examples` on each of
    /// `world_size` ranks: every rank takes `batch_size` examples a
    /// micro-batch, the last one may be short.
    pub fn micro_batches_per_epoch(&self, train_examples: usize, world_size: usize) -> usize {
        train_examples.div_ceil(self.batch_size.max(1) * world_size.max(1))
    }

    /// Optimizer steps in one epoch (`grad_accum` micro-batches a step, the
    /// last one may be short). The trainer plans with this, and the app
    /// turns steps into epochs with it.
    pub fn steps_per_epoch(&self, train_examples: usize, world_size: usize) -> usize {
        self.micro_batches_per_epoch(train_examples, world_size)
            .div_ceil(self.grad_accum.max(1))
    }

    /// Where the recordings are and how they say who speaks: `data_dir`'s
    /// layout, or the explicit folders (with `speakers_file`).
    ///
    /// # Errors
    /// What [`DataSource::detect`] finds wrong with the folder.
    pub fn data_source(&self) -> Result<DataSource, DataError> {
        match &self.data_dir {
            Some(dir) => DataSource::detect(dir, self.speakers_file.as_deref()),
            None => DataSource::from_layout(
                DatasetLayout::new(
                    self.audio_dir.clone(),
                    self.transcript_dir.clone(),
                    self.alignment_dir.clone(),
                ),
                self.speakers_file.as_deref(),
            ),
        }
    }

    /// Fills [`TrainConfig::speakers`] with the dataset's whole table (ids
    /// already in it are kept; see [`crate::data::speakers`] for the rules)
    /// after checking who speaks every recording, without reading audio.
    /// A one-speaker dataset leaves it as it is. Returns the source.
    ///
    /// # Errors
    /// Those of [`TrainConfig::data_source`] and [`speakers::plan`]: a
    /// mixed layout, a `speakers.json` key naming no recording, an unknown
    /// speaker in an alignment, clashing ids.
    pub fn resolve_speakers(&mut self) -> Result<DataSource, DataError> {
        let source = self.data_source()?;
        if source.has_speakers() {
            let plan = speakers::plan(&source, &self.speakers)?;
            self.speakers = plan.speakers.into_iter().map(|s| (s.name, s.id)).collect();
        }
        Ok(source)
    }

    /// How the data module loads the dataset of this run: split and
    /// segmenting settings.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            segment: self.segment_config(),
            val_split: f64::from(self.val_split),
            seed: self.seed,
        }
    }

    /// The segmenting settings, in the form the data module takes.
    pub fn segment_config(&self) -> SegmentConfig {
        SegmentConfig {
            min_s: self.min_utterance_secs,
            max_s: self.max_utterance_secs,
            target_s: self.target_utterance_secs,
            edge_pad_s: self.edge_pad_secs,
            max_unaligned_s: self.max_unaligned_secs,
            long_unaligned: self.long_unaligned,
            trim_silence: self.trim_silence,
        }
    }

    /// What the run adapts: the LoRA part of the config.
    pub fn lora_spec(&self) -> LoraSpec {
        LoraSpec {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            modules: self.target_modules.clone(),
            layers: self.target_layers.clone(),
            bias: self.lora_bias,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_once_paths_are_given() {
        let mut c = TrainConfig::default();
        let errors = c.validate().unwrap_err();
        assert!(errors.iter().any(|e| e.contains("--model-path")));
        c.model_path = "m".into();
        c.audio_dir = "a".into();
        c.transcript_dir = "t".into();
        c.validate().unwrap();
    }

    #[test]
    fn impossible_values_are_named() {
        let mut c = TrainConfig {
            model_path: "m".into(),
            audio_dir: "a".into(),
            transcript_dir: "t".into(),
            ..Default::default()
        };
        c.lora_r = 0;
        c.lora_dropout = 1.5;
        c.target_modules = vec!["qkv".into()];
        c.semantic_weight = 0.0;
        c.acoustic_weight = 0.0;
        c.decoder_fraction = 0.0;
        let errors = c.validate().unwrap_err().join("\n");
        for flag in [
            "--lora-r",
            "--lora-dropout",
            "`qkv`",
            "both 0",
            "--decoder-fraction",
        ] {
            assert!(errors.contains(flag), "{flag} missing in:\n{errors}");
        }
    }

    #[test]
    fn steps_per_epoch_round_up_at_each_level() {
        let c = TrainConfig {
            batch_size: 4,
            grad_accum: 3,
            ..Default::default()
        };
        // 10 examples: 3 micro-batches (4+4+2), one step of 3.
        assert_eq!(c.micro_batches_per_epoch(10, 1), 3);
        assert_eq!(c.steps_per_epoch(10, 1), 1);
        // 26 examples: 7 micro-batches, 3 steps (3+3+1).
        assert_eq!(c.steps_per_epoch(26, 1), 3);
        // Two ranks take 8 examples a micro-batch together.
        assert_eq!(c.micro_batches_per_epoch(26, 2), 4);
        assert_eq!(c.steps_per_epoch(26, 2), 2);
        assert_eq!(c.steps_per_epoch(0, 1), 0);
    }

    #[test]
    fn config_json_round_trips_and_rejects_unknown_keys() {
        let c = TrainConfig {
            model_path: "m".into(),
            lora_r: 16,
            target_layers: TargetLayers::parse("backbone:0-3").unwrap(),
            ..Default::default()
        };
        let json = serde_json::to_string_pretty(&c).unwrap();
        let back: TrainConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        let partial: TrainConfig = serde_json::from_str(r#"{"lora_r": 4}"#).unwrap();
        assert_eq!(partial.lora_r, 4);
        assert_eq!(partial.batch_size, 2);
        assert!(serde_json::from_str::<TrainConfig>(r#"{"lora_rank": 4}"#).is_err());
    }

    #[test]
    fn voice_settings_are_written_only_when_on_and_checked() {
        let off = serde_json::to_value(TrainConfig::default()).unwrap();
        assert!(off.get("voice").is_none(), "off: no key in config.json");
        let on = TrainConfig {
            model_path: "m".into(),
            audio_dir: "a".into(),
            transcript_dir: "t".into(),
            voice: Some(VoiceConfig::new("enc.pt")),
            ..Default::default()
        };
        on.validate().unwrap();
        let json = serde_json::to_string(&on).unwrap();
        let back: TrainConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, on);
        assert_eq!(
            back.voice.unwrap().prompts,
            VOICE_PROMPTS[..DEFAULT_VOICE_PROMPTS]
        );
        // Prompts and Whisper take their defaults when absent.
        let short: TrainConfig =
            serde_json::from_str(r#"{"voice": {"speaker_encoder": "e.pt"}}"#).unwrap();
        assert_eq!(short.voice, Some(VoiceConfig::new("e.pt")));
        let mut bad = on.clone();
        bad.voice = Some(VoiceConfig {
            prompts: vec![],
            ..VoiceConfig::new("")
        });
        let errors = bad.validate().unwrap_err().join("\n");
        assert!(errors.contains("--speaker-encoder"), "{errors}");
        assert!(errors.contains("--voice-prompts"), "{errors}");
    }

    #[test]
    fn data_dir_and_speakers_are_written_only_when_used() {
        let json = serde_json::to_value(TrainConfig::default()).unwrap();
        for key in ["data_dir", "speakers_file", "speakers"] {
            assert!(json.get(key).is_none(), "{key} in a default config.json");
        }
        let c = TrainConfig {
            model_path: "m".into(),
            data_dir: Some("d".into()),
            ..Default::default()
        };
        c.validate().unwrap();
        let both = TrainConfig {
            audio_dir: "a".into(),
            ..c.clone()
        };
        let errors = both.validate().unwrap_err().join("\n");
        assert!(errors.contains("--data-dir replaces"), "{errors}");
        let named = TrainConfig {
            speakers: [("alice".to_string(), 0), ("bob".to_string(), 1)].into(),
            ..c
        };
        let json = serde_json::to_string(&named).unwrap();
        assert!(json.contains(r#""speakers":{"alice":0,"bob":1}"#), "{json}");
        assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), named);
    }

    #[test]
    fn segmenting_settings_default_to_the_data_modules_and_are_written() {
        let c = TrainConfig::default();
        assert_eq!(c.segment_config(), SegmentConfig::default());
        let json = serde_json::to_value(&c).unwrap();
        for key in [
            "trim_silence",
            "edge_pad_secs",
            "min_utterance_secs",
            "target_utterance_secs",
            "max_utterance_secs",
            "max_unaligned_secs",
            "long_unaligned",
        ] {
            assert!(json.get(key).is_some(), "config.json lacks {key}");
        }
        assert_eq!(json["long_unaligned"], "refuse");
        // A config.json written before these settings existed loads with
        // the old behaviour (trimming on).
        let old: TrainConfig = serde_json::from_str(r#"{"model_path": "m", "lora_r": 4}"#).unwrap();
        assert_eq!(old.segment_config(), SegmentConfig::default());
        let off: TrainConfig =
            serde_json::from_str(r#"{"trim_silence": false, "long_unaligned": "skip"}"#).unwrap();
        assert!(!off.segment_config().trim_silence);
        assert_eq!(off.long_unaligned, LongUnaligned::Skip);
    }

    #[test]
    fn bad_segmenting_settings_are_named() {
        let valid = TrainConfig {
            model_path: "m".into(),
            audio_dir: "a".into(),
            transcript_dir: "t".into(),
            ..Default::default()
        };
        type Spoil = fn(&mut TrainConfig);
        let cases: [(Spoil, &str); 5] = [
            (|c| c.edge_pad_secs = -0.1, "--edge-pad-secs"),
            (|c| c.min_utterance_secs = 20.0, "--min-utterance-secs"),
            (
                |c| c.target_utterance_secs = 30.0,
                "--target-utterance-secs",
            ),
            (|c| c.max_utterance_secs = f64::NAN, "--max-utterance-secs"),
            (|c| c.max_unaligned_secs = -1.0, "--max-unaligned-secs"),
        ];
        for (spoil, flag) in cases {
            let mut c = valid.clone();
            spoil(&mut c);
            let errors = c.validate().unwrap_err().join("\n");
            assert!(errors.contains(flag), "{flag} missing in:\n{errors}");
            assert!(c.segment_config().validate().is_err(), "{flag}");
        }
        // What TrainConfig accepts, the data module accepts.
        let mut c = valid;
        c.trim_silence = false;
        c.edge_pad_secs = 0.0;
        c.min_utterance_secs = 1.0;
        c.target_utterance_secs = 1.0;
        c.max_utterance_secs = 1.0;
        c.validate().unwrap();
        c.segment_config().validate().unwrap();
    }
}
