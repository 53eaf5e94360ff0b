//! The flags of `csm finetune-lora`, mapped onto `csm_core::train::TrainConfig`.
//!
//! Precedence: built-in defaults, then `--config FILE` (the `config.json`
//! format the app exports and every run writes), then flags given here.
//! The voice-score flags ([`VoiceArgs`]) are `finetune-lora`'s alone; where
//! the speaker encoder and the Whisper model come from is decided in one
//! place, [`VoicePaths`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use csm_core::adapter::TargetLayers;
use csm_core::data::LongUnaligned;
use csm_core::speaker::{RESEMBLYZER_WEIGHTS_FILE, RESEMBLYZER_WHEEL};
use csm_core::train::auto_batch::{AutoBatch, MemoryBudget};
use csm_core::train::{LrSchedule, SaveMode, TrainConfig, VoiceConfig, VOICE_PROMPTS};

/// `--batch-size`: a number of examples, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSizeArg {
    /// This many examples.
    Fixed(usize),
    /// Chosen by memory ([`csm_core::train::auto_batch`]).
    Auto,
}

impl std::str::FromStr for BatchSizeArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(BatchSizeArg::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(BatchSizeArg::Fixed(n)),
            _ => Err(format!(
                "{s:?} is neither a batch size of at least 1 nor `auto`"
            )),
        }
    }
}

/// `--memory-budget`: bytes with a unit, or a percentage of the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryBudgetArg(pub MemoryBudget);

impl std::str::FromStr for MemoryBudgetArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad =
            || format!("{s:?}: give a size such as 40GB, 36GiB or 900MB, or a share such as 70%");
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!(
                    "{s:?}: a share of the device's memory must be in (0, 100]%"
                ));
            }
            return Ok(MemoryBudgetArg(MemoryBudget::Fraction(p / 100.0)));
        }
        let split = t.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(bad)?;
        let (number, unit) = t.split_at(split);
        let number: f64 = number.trim().parse().map_err(|_| bad())?;
        let scale = match unit.to_ascii_lowercase().as_str() {
            "gb" | "g" => 1e9,
            "gib" => (1u64 << 30) as f64,
            "mb" | "m" => 1e6,
            "mib" => (1u64 << 20) as f64,
            "tb" => 1e12,
            _ => return Err(bad()),
        };
        let bytes = number * scale;
        if !bytes.is_finite() {
            return Err(bad());
        }
        if bytes < 1e6 {
            return Err(format!(
                "{s:?}: a memory budget under 1 MB cannot hold a model"
            ));
        }
        Ok(MemoryBudgetArg(MemoryBudget::Bytes(bytes as u64)))
    }
}

/// `--save-mode` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SaveModeArg {
    /// Adapters only (mlx_lm + PEFT layouts).
    Lora,
    /// Merged weights in the input checkpoint's format.
    Full,
    /// Both.
    Both,
}

/// `--long-unaligned` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LongUnalignedArg {
    /// Stop with an error naming the recording.
    Refuse,
    /// Leave the recording out, with a warning.
    Skip,
}

/// `--lr-schedule` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScheduleArg {
    /// Constant after warm-up.
    Constant,
    /// Linear decay to zero.
    Linear,
    /// Cosine decay to 10% of the peak.
    Cosine,
}

/// `--method` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MethodArg {
    /// LoRA adapters on the frozen model.
    Lora,
    /// The weights of the --train parts themselves.
    Full,
}

/// Every flag of the user guide plus the engine's extras.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Model and data")]
pub struct TrainArgs {
    /// Read settings from a run config JSON (as written to OUTPUT/config.json
    /// or exported by the app); flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// CSM checkpoint: a file or a directory (Sesame safetensors or .pt,
    /// transformers, csm-mlx, mlx-audio).
    #[arg(long, value_name = "PATH")]
    pub model_path: Option<PathBuf>,
    /// Mimi codec weights [default: found next to the model].
    #[arg(long, value_name = "PATH")]
    pub mimi_path: Option<PathBuf>,
    /// Llama-3 tokenizer.json [default: found next to the model].
    #[arg(long, value_name = "FILE")]
    pub tokenizer_path: Option<PathBuf>,
    /// Where checkpoints, adapters, metrics.jsonl and samples are written.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// A dataset folder, in one of three layouts, told apart by what is in
    /// it (instead of --audio-dir, --transcript-dir, --alignment-dir):
    ///
    ///   DATA/audio, DATA/transcripts [, DATA/alignments]
    ///       one speaker, trained as --speaker-id;
    ///   the same with DATA/speakers.json
    ///       several speakers: the file says who speaks each recording,
    ///       {"recordings": {"001": "alice", "002": "bob"}};
    ///   DATA/alice/audio, DATA/alice/transcripts, DATA/bob/audio, ...
    ///       one folder per speaker, named after it.
    ///
    /// With several speakers each utterance trains under its own speaker
    /// id ([ID]text), validation loss is reported per speaker, each speaker
    /// keeps its share of held-out recordings, and --generate-samples
    /// speaks once per speaker. A recording whose alignment names a
    /// speaker per word or segment ("speaker": "alice", as WhisperX writes
    /// it) is a conversation: each turn trains as its speaker, with the
    /// turns before it, the other voice's among them, as context. Mixing
    /// DATA/audio with speaker folders is an error.
    #[arg(long, value_name = "DIR", verbatim_doc_comment)]
    pub data_dir: Option<PathBuf>,
    /// Who speaks each recording of one audio folder, as JSON:
    /// {"speakers": {"alice": 0, "bob": 1}, "recordings": {"001": "alice",
    /// "002": 1}}. "recordings" names each recording's speaker (by name or
    /// id; every key must be a recording); "speakers" fixes ids and
    /// declares the names alignments use. [default: DATA/speakers.json when
    /// it exists]
    #[arg(long, value_name = "FILE")]
    pub speakers: Option<PathBuf>,
    /// Speaker ids of names, e.g. alice=0,bob=1. CSM knows speakers by
    /// number; names get ids in this order: ids given here (or by a
    /// --config's "speakers"), then speakers.json's, then a name that is a
    /// number has that id, then the other names take the smallest free ids
    /// in byte order of their names. The whole table is written to
    /// OUTPUT/config.json, so `--config OUTPUT/config.json` keeps the ids
    /// when speakers are added.
    #[arg(long, value_name = "NAME=ID,...", value_delimiter = ',')]
    pub speaker_map: Option<Vec<String>>,
    /// Folder of WAV recordings.
    #[arg(long, value_name = "DIR")]
    pub audio_dir: Option<PathBuf>,
    /// Folder of transcripts (`NAME.txt` for `NAME.wav`).
    #[arg(long, value_name = "DIR")]
    pub transcript_dir: Option<PathBuf>,
    /// Optional folder of word timings (`NAME.json`) used to cut long
    /// recordings into utterances at word boundaries.
    #[arg(long, value_name = "DIR")]
    pub alignment_dir: Option<PathBuf>,
    /// Speaker id in the prompt (`[0]text`) of a one-speaker dataset
    /// [default: 0]. Datasets with several speakers use --speaker-map.
    #[arg(long)]
    pub speaker_id: Option<u32>,
    /// Longest training sequence in frames (text + audio + EOS) [default: 2048].
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Previous utterances of the same recording used as context [default: 2].
    #[arg(long)]
    pub context_turns: Option<usize>,
    /// Let context turns carry loss too (by default they only condition).
    #[arg(long)]
    pub context_loss: bool,

    /// Use recordings without a word alignment as they are, silence
    /// included. By default their leading and trailing silence is trimmed
    /// to --edge-pad-secs, so the model does not learn to open and close
    /// turns with long pauses. Turn trimming off to compare `csm evaluate`
    /// with a tool that reads the file as is (e.g. transformers).
    #[arg(long, help_heading = "Segmenting")]
    pub no_trim_silence: bool,
    /// Silence kept before the first and after the last sound of a trimmed
    /// recording, or the first and last word of a cut one [default: 0.2].
    #[arg(long, value_name = "SECS", help_heading = "Segmenting")]
    pub edge_pad_secs: Option<f64>,
    /// Recordings with a word alignment are cut at pauses into utterances
    /// of about --target-utterance-secs; none shorter than this unless the
    /// speech between two usable pauses is [default: 3].
    #[arg(long, value_name = "SECS", help_heading = "Segmenting")]
    pub min_utterance_secs: Option<f64>,
    /// Preferred utterance length when cutting aligned recordings; CSM
    /// trains best on clips of about 10 s [default: 10].
    #[arg(long, value_name = "SECS", help_heading = "Segmenting")]
    pub target_utterance_secs: Option<f64>,
    /// Longest utterance wanted when cutting aligned recordings; exceeded
    /// (with a warning) only where speech has no pause [default: 12].
    #[arg(long, value_name = "SECS", help_heading = "Segmenting")]
    pub max_utterance_secs: Option<f64>,
    /// Longest recording used whole when it has no word alignment: without
    /// word times it cannot be cut safely [default: 12].
    #[arg(long, value_name = "SECS", help_heading = "Segmenting")]
    pub max_unaligned_secs: Option<f64>,
    /// What to do with a longer recording that has no alignment: refuse
    /// (stop with an error naming it) or skip it with a warning
    /// [default: refuse].
    #[arg(long, value_enum, help_heading = "Segmenting")]
    pub long_unaligned: Option<LongUnalignedArg>,

    /// LoRA rank [default: 8].
    #[arg(long, help_heading = "LoRA")]
    pub lora_r: Option<usize>,
    /// LoRA alpha; the update is scaled by alpha / r [default: 16].
    #[arg(long, help_heading = "LoRA")]
    pub lora_alpha: Option<f32>,
    /// Dropout on the adapter input [default: 0.0].
    #[arg(long, help_heading = "LoRA")]
    pub lora_dropout: Option<f32>,
    /// Projections to adapt: any of q_proj k_proj v_proj o_proj gate_proj
    /// up_proj down_proj [default: q_proj v_proj].
    #[arg(long, num_args = 1.., value_delimiter = ',', help_heading = "LoRA")]
    pub target_modules: Option<Vec<String>>,
    /// Layers to adapt: `all`, or per stack, e.g. `backbone:8-15,decoder:all`
    /// (backbone has 16 layers, the depth decoder 4; a stack not named gets
    /// none) [default: all].
    #[arg(long, help_heading = "LoRA")]
    pub target_layers: Option<String>,
    /// Also train a bias on each adapted projection.
    #[arg(long, help_heading = "LoRA")]
    pub lora_bias: bool,

    /// What to train: lora (adapters on the frozen model, small outputs)
    /// or full (the weights of the --train parts: more memory, a whole
    /// model written to OUTPUT/model in the input's format; for new
    /// languages or large changes) [default: lora].
    #[arg(long, value_enum, help_heading = "Method and memory")]
    pub method: Option<MethodArg>,
    /// With --method full: the parts to train, any of backbone (the
    /// backbone stack and its codebook-0 head), decoder (the depth
    /// decoder, its input projection and heads) and embeddings (text and
    /// audio, shared by both) [default: backbone,decoder].
    #[arg(
        long,
        value_name = "PARTS",
        value_delimiter = ',',
        help_heading = "Method and memory"
    )]
    pub train: Option<Vec<String>>,
    /// QLoRA: quantize the frozen projections of both stacks to 4 or 8
    /// bits (MLX affine, groups of 64) and train the adapters on top. Less
    /// memory; the adapter applies to the full-precision model, where it is
    /// evaluated at the end (the README has the measured cost in loss).
    #[arg(long, value_name = "BITS", help_heading = "Method and memory")]
    pub quantize: Option<u8>,
    /// Recompute each transformer block's activations in the backward
    /// pass instead of keeping them: less memory on long sequences and
    /// large batches, about one more forward pass of time per step.
    #[arg(long, help_heading = "Method and memory")]
    pub grad_checkpoint: bool,
    /// Pack several utterances into each row of a micro-batch instead of
    /// padding every one to the longest: rows of up to the longest
    /// utterance's length (rounded to a shape bucket), attention kept
    /// within each utterance and its positions restarting, so the loss is
    /// the same; fewer padded frames when lengths differ. The log says how
    /// many frames an epoch takes either way.
    #[arg(long, help_heading = "Method and memory")]
    pub packing: bool,

    /// Peak learning rate of AdamW [default: 2e-4].
    #[arg(long, help_heading = "Optimisation")]
    pub learning_rate: Option<f32>,
    /// Weight of the codebook-0 (semantic) loss [default: 1.0].
    #[arg(long, help_heading = "Optimisation")]
    pub semantic_weight: Option<f32>,
    /// Weight of the codebooks 1-31 (acoustic) loss [default: 1.0].
    #[arg(long, help_heading = "Optimisation")]
    pub acoustic_weight: Option<f32>,
    /// Decoupled AdamW weight decay [default: 0.01].
    #[arg(long, help_heading = "Optimisation")]
    pub weight_decay: Option<f32>,
    /// Examples per micro-batch, or `auto`: the largest batch whose step
    /// fits --memory-budget, found by a few probe steps before training
    /// and written to config.json [default: 2].
    #[arg(long, help_heading = "Optimisation", value_name = "N|auto")]
    pub batch_size: Option<BatchSizeArg>,
    /// With --batch-size auto: the most memory the training step may use
    /// at its peak, weights included: a size (40GB, 36GiB, 900MB) or a
    /// share of the device's memory (70%) [default: 80% of the device's
    /// memory: a GPU's own, the recommended working set on Apple silicon,
    /// the machine's RAM on the CPU].
    #[arg(long, help_heading = "Optimisation", value_name = "SIZE|PERCENT")]
    pub memory_budget: Option<MemoryBudgetArg>,
    /// Micro-batches accumulated per optimizer step [default: 1].
    #[arg(long, help_heading = "Optimisation")]
    pub grad_accum: Option<usize>,
    /// Passes over the training set [default: 5].
    #[arg(long, help_heading = "Optimisation")]
    pub epochs: Option<usize>,
    /// Clip the gradient norm to this value; 0 disables [default: 1.0].
    #[arg(long, help_heading = "Optimisation")]
    pub max_grad_norm: Option<f32>,
    /// Fraction of audio frames the depth decoder trains on; Sesame's
    /// compute amortization uses 1/16, 1.0 trains on every frame
    /// [default: 0.0625].
    #[arg(long, help_heading = "Optimisation")]
    pub decoder_fraction: Option<f32>,
    /// Learning-rate schedule after warm-up [default: cosine].
    #[arg(long, value_enum, help_heading = "Optimisation")]
    pub lr_schedule: Option<ScheduleArg>,
    /// Linear warm-up steps [default: 20].
    #[arg(long, help_heading = "Optimisation")]
    pub warmup_steps: Option<usize>,
    /// Seed for data order, LoRA init, dropout and frame selection [default: 42].
    #[arg(long, help_heading = "Optimisation")]
    pub seed: Option<u64>,

    /// Fraction of utterances held out for validation [default: 0.1].
    #[arg(long, help_heading = "Validation and saving")]
    pub val_split: Option<f32>,
    /// Validate every N optimizer steps; 0 = only at the end [default: 50].
    #[arg(long, help_heading = "Validation and saving")]
    pub val_every: Option<usize>,
    /// Write a checkpoint every N optimizer steps; 0 = only at the end [default: 100].
    #[arg(long, help_heading = "Validation and saving")]
    pub save_every: Option<usize>,
    /// What to write at the end: lora (adapters), full (merged model in the
    /// input's format) or both [default: lora].
    #[arg(long, value_enum, help_heading = "Validation and saving")]
    pub save_mode: Option<SaveModeArg>,
    /// Continue a run from a checkpoint, e.g. OUTPUT/checkpoint_latest.safetensors.
    #[arg(long, value_name = "FILE", help_heading = "Validation and saving")]
    pub resume_from: Option<PathBuf>,

    /// Speak --sample-prompt with the fine-tuned model at each checkpoint.
    #[arg(long, help_heading = "Samples and logging")]
    pub generate_samples: bool,
    /// Text of the samples.
    #[arg(long, help_heading = "Samples and logging")]
    pub sample_prompt: Option<String>,
    /// Extra checks and per-step debug logs.
    #[arg(long, help_heading = "Samples and logging")]
    pub debug: bool,
}

impl TrainArgs {
    /// Builds the run config: defaults, then `--config`, then flags.
    pub fn to_config(&self, log_level: &str) -> Result<TrainConfig> {
        let (config, auto) = self.to_config_and_auto_batch(log_level)?;
        if auto.is_some() {
            bail!("--batch-size auto is for finetune-lora; give a number of examples here");
        }
        Ok(config)
    }

    /// [`TrainArgs::to_config`] for `finetune-lora`, which also takes
    /// `--batch-size auto` (and `--memory-budget`): the config (its
    /// `batch_size` then stays the default or `--config`'s, replaced at
    /// the start of training) and how to choose the batch.
    pub fn to_config_and_auto_batch(
        &self,
        log_level: &str,
    ) -> Result<(TrainConfig, Option<AutoBatch>)> {
        let auto = match (self.batch_size, self.memory_budget) {
            (Some(BatchSizeArg::Auto), budget) => Some(AutoBatch {
                budget: budget.map_or(MemoryBudget::Default, |b| b.0),
            }),
            (_, Some(_)) => bail!("--memory-budget is for --batch-size auto"),
            _ => None,
        };
        let c = self.build_config(log_level)?;
        Ok((c, auto))
    }

    fn build_config(&self, log_level: &str) -> Result<TrainConfig> {
        let mut c = match &self.config {
            // The run folder's reader: a run's config.json or an app export.
            Some(path) => csm_core::train::run_dir::read_config_file(path).context("--config")?,
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { c.$field = v.clone(); } )* };
        }
        macro_rules! set_some {
            ($($field:ident),*) => { $( if self.$field.is_some() { c.$field = self.$field.clone(); } )* };
        }
        set!(
            model_path,
            output_dir,
            audio_dir,
            transcript_dir,
            speaker_id,
            max_seq_len,
            context_turns,
            edge_pad_secs,
            min_utterance_secs,
            target_utterance_secs,
            max_utterance_secs,
            max_unaligned_secs,
            lora_r,
            lora_alpha,
            lora_dropout,
            target_modules,
            learning_rate,
            semantic_weight,
            acoustic_weight,
            weight_decay,
            grad_accum,
            epochs,
            max_grad_norm,
            decoder_fraction,
            warmup_steps,
            seed,
            val_split,
            val_every,
            save_every,
            sample_prompt
        );
        set_some!(mimi_path, tokenizer_path, alignment_dir, resume_from);
        if let Some(BatchSizeArg::Fixed(n)) = self.batch_size {
            c.batch_size = n;
        }
        if let Some(t) = &self.target_layers {
            c.target_layers =
                TargetLayers::parse(t).map_err(|e| anyhow::anyhow!("--target-layers: {e}"))?;
        }
        if let Some(m) = self.save_mode {
            c.save_mode = match m {
                SaveModeArg::Lora => SaveMode::Lora,
                SaveModeArg::Full => SaveMode::Full,
                SaveModeArg::Both => SaveMode::Both,
            };
        }
        if let Some(l) = self.long_unaligned {
            c.long_unaligned = match l {
                LongUnalignedArg::Refuse => LongUnaligned::Refuse,
                LongUnalignedArg::Skip => LongUnaligned::Skip,
            };
        }
        if self.no_trim_silence {
            c.trim_silence = false;
        }
        if let Some(s) = self.lr_schedule {
            c.lr_schedule = match s {
                ScheduleArg::Constant => LrSchedule::Constant,
                ScheduleArg::Linear => LrSchedule::Linear,
                ScheduleArg::Cosine => LrSchedule::Cosine,
            };
        }
        c.context_loss |= self.context_loss;
        c.lora_bias |= self.lora_bias;
        c.generate_samples |= self.generate_samples;
        c.debug |= self.debug;
        self.set_method(&mut c)?;
        c.log_level = log_level.to_string();
        self.set_data(&mut c)?;
        c.validate()
            .map_err(|errors| anyhow::anyhow!("invalid settings:\n  {}", errors.join("\n  ")))?;
        // Who speaks is checked (and the ids settled) before any model loads.
        let source = c.resolve_speakers().context("the dataset")?;
        if source.has_speakers() && self.speaker_id.is_some() {
            bail!(
                "--speaker-id is for a one-speaker dataset; this one has several speakers \
                 ({}): give their ids with --speaker-map NAME=ID,...",
                speaker_list(&c)
            );
        }
        super::hub_paths::resolve(&mut c.model_path, &mut c.mimi_path, &mut c.tokenizer_path)?;
        Ok(c)
    }

    /// `--data-dir` replaces the folders of a `--config` and the folders
    /// replace its `--data-dir`; `--speakers` and `--speaker-map` are added.
    fn set_data(&self, c: &mut TrainConfig) -> Result<()> {
        if self.data_dir.is_some() {
            c.data_dir.clone_from(&self.data_dir);
            if self.audio_dir.is_none() && self.transcript_dir.is_none() {
                c.audio_dir = PathBuf::new();
                c.transcript_dir = PathBuf::new();
            }
            if self.alignment_dir.is_none() {
                c.alignment_dir = None;
            }
        } else if self.audio_dir.is_some() || self.transcript_dir.is_some() {
            c.data_dir = None;
        }
        if self.speakers.is_some() {
            c.speakers_file.clone_from(&self.speakers);
        }
        for pair in self.speaker_map.iter().flatten() {
            let (name, id) = pair
                .split_once('=')
                .map(|(n, id)| (n.trim(), id.trim()))
                .filter(|(n, _)| !n.is_empty())
                .with_context(|| format!("--speaker-map `{pair}`: write NAME=ID, e.g. alice=0"))?;
            let id: u32 = id.parse().with_context(|| {
                format!("--speaker-map `{pair}`: the id `{id}` is not a whole number")
            })?;
            c.speakers.insert(name.to_string(), id);
        }
        Ok(())
    }
}

/// `alice=0, bob=1`: the run's speaker table.
pub fn speaker_list(c: &TrainConfig) -> String {
    c.speakers
        .iter()
        .map(|(name, id)| format!("{name}={id}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The voice-score flags of `csm finetune-lora`.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Voice scores")]
pub struct VoiceArgs {
    /// resemblyzer's speaker encoder: its `pretrained.pt` (PyPI wheel
    /// resemblyzer==0.1.4), or `speaker-encoder`, the bundle `csm download`
    /// fetches. Voice scores are on with it, and also without this flag once
    /// that bundle is in the cache (--no-voice-scores turns them off).
    ///
    /// At step 0 (the base model) and at every checkpoint the model speaks
    /// the voice prompts after a clip of the speaker held out of training
    /// (the last utterance of one recording, said at the start), with
    /// generation's guards on. Each sample is written to
    /// OUTPUT/samples/step_NNNNNNN/prompt_K.wav and scored: similarity to
    /// the speaker (their training recordings), WER/CER with
    /// --whisper-model, health (did it end by itself, silences, pauses,
    /// clipping, pace against the speaker's). Scores go to metrics.jsonl;
    /// a table of base, best and last closes the run.
    ///
    /// The best checkpoint, kept as OUTPUT/adapters_best.safetensors (mlx_lm
    /// layout, beside adapters.safetensors): a checkpoint passes the WER gate
    /// when its WER is at most max(20%, base model's WER + 10 points), and
    /// every checkpoint passes without --whisper-model; one that passes beats
    /// one that does not; among those that pass the higher mean similarity
    /// wins; among those that fail the lower WER; ties go to the earlier
    /// step. The base model is the reference, never the best.
    #[arg(long, value_name = "FILE")]
    pub speaker_encoder: Option<PathBuf>,
    /// The Whisper model that transcribes the samples, adding WER/CER and
    /// the WER gate of the best checkpoint: a folder (transformers layout),
    /// a bundle (whisper-tiny, whisper-large-v3-turbo, ...) or a hub id
    /// (downloaded when missing unless HF_HUB_OFFLINE=1).
    #[arg(long, value_name = "DIR|BUNDLE|REPO")]
    pub whisper_model: Option<PathBuf>,
    /// Built-in prompts to speak at each scoring, 1 to 8 [default: 3].
    #[arg(long, value_name = "K")]
    pub voice_prompts: Option<usize>,
    /// A prompt of your own; repeat for several. Replaces the built-in ones.
    #[arg(long, value_name = "TEXT", conflicts_with = "voice_prompts")]
    pub voice_prompt: Vec<String>,
    /// Voice scores must run: an error when there is no speaker encoder.
    #[arg(long, conflicts_with = "no_voice_scores")]
    pub voice_scores: bool,
    /// No voice scores, even with a speaker encoder: the held-out clip
    /// stays in training and no samples are spoken.
    #[arg(long, conflicts_with_all = ["voice_prompts", "voice_prompt", "whisper_model"])]
    pub no_voice_scores: bool,
}

/// How [`VoiceArgs::apply`] turns flag values into files: the hub cache
/// for the CLI ([`VoicePaths::hub`]); tests pass their own.
pub struct VoicePaths<'a> {
    /// A `--speaker-encoder` value (a path or the bundle name) to its file.
    pub speaker_encoder: &'a dyn Fn(&Path) -> Result<PathBuf>,
    /// A `--whisper-model` value (a folder, a bundle or a hub id) to its folder.
    pub whisper: &'a dyn Fn(&Path) -> Result<PathBuf>,
    /// The encoder used when neither the flag nor `--config` names one.
    pub default_encoder: &'a dyn Fn() -> Result<Option<PathBuf>>,
}

impl VoicePaths<'static> {
    /// Bundle names and hub ids through the hub cache (downloading what is
    /// missing); the default encoder is the `speaker-encoder` bundle when it
    /// is already cached, so voice scores are on once it has been
    /// downloaded (`csm download speaker-encoder`), and nothing is fetched
    /// unasked.
    pub fn hub() -> Self {
        VoicePaths {
            speaker_encoder: &super::hub_paths::resolve_speaker_encoder,
            whisper: &super::hub_paths::resolve_whisper,
            default_encoder: &super::hub_paths::default_speaker_encoder,
        }
    }
}

impl VoiceArgs {
    /// Sets `config.voice` from these flags over what `--config` gave: on
    /// with a speaker encoder, off otherwise (said in one info line). Asking
    /// for voice scores without an encoder is an error naming the flag.
    pub fn apply(&self, config: &mut TrainConfig) -> Result<()> {
        self.apply_with(config, &VoicePaths::hub())
    }

    /// [`Self::apply`] with the flags' values resolved by `paths`.
    pub fn apply_with(&self, config: &mut TrainConfig, paths: &VoicePaths) -> Result<()> {
        if self.no_voice_scores {
            config.voice = None;
            return Ok(());
        }
        let encoder = match (&self.speaker_encoder, &config.voice) {
            (Some(given), _) => Some((paths.speaker_encoder)(given)?),
            (None, Some(v)) => Some(v.speaker_encoder.clone()),
            (None, None) => {
                let cached = (paths.default_encoder)()?;
                if let Some(p) = &cached {
                    tracing::info!(
                        "voice scores are on with the cached speaker encoder {} \
                         (--no-voice-scores turns them off)",
                        p.display()
                    );
                }
                cached
            }
        };
        let Some(encoder) = encoder else {
            let asked = [
                (self.voice_scores, "--voice-scores"),
                (self.whisper_model.is_some(), "--whisper-model"),
                (self.voice_prompts.is_some(), "--voice-prompts"),
                (!self.voice_prompt.is_empty(), "--voice-prompt"),
            ];
            if let Some((_, flag)) = asked.iter().find(|(given, _)| *given) {
                bail!(
                    "{flag} needs --speaker-encoder PATH: {RESEMBLYZER_WEIGHTS_FILE} from the PyPI \
                     wheel {RESEMBLYZER_WHEEL} (pip download --no-deps {RESEMBLYZER_WHEEL}, then \
                     unzip it)"
                );
            }
            tracing::info!(
                "voice scores are off: give --speaker-encoder PATH ({RESEMBLYZER_WEIGHTS_FILE} of \
                 {RESEMBLYZER_WHEEL}) to score the voice at every checkpoint and keep the best \
                 one as adapters_best.safetensors"
            );
            return Ok(());
        };
        let mut voice = config
            .voice
            .take()
            .unwrap_or_else(|| VoiceConfig::new(&encoder));
        voice.speaker_encoder = encoder;
        if let Some(dir) = &self.whisper_model {
            voice.whisper_model = Some((paths.whisper)(dir)?);
        }
        if let Some(k) = self.voice_prompts {
            if !(1..=VOICE_PROMPTS.len()).contains(&k) {
                bail!(
                    "--voice-prompts {k}: choose 1 to {} (--voice-prompt TEXT gives your own, \
                     --no-voice-scores none)",
                    VOICE_PROMPTS.len()
                );
            }
            voice.prompts = VoiceConfig::builtin_prompts(k);
        }
        if !self.voice_prompt.is_empty() {
            voice.prompts = self.voice_prompt.clone();
        }
        config.voice = Some(voice);
        config
            .validate()
            .map_err(|errors| anyhow::anyhow!("invalid settings:\n  {}", errors.join("\n  ")))
    }
}

impl TrainArgs {
    /// `--method`, `--train`, `--quantize`, `--grad-checkpoint`; LoRA's own
    /// flags given with `--method full`, or `--train` with LoRA, are errors
    /// (they would be silently ignored).
    fn set_method(&self, c: &mut TrainConfig) -> Result<()> {
        use csm_core::train::{Method, ModelPart};
        if let Some(m) = self.method {
            c.method = match m {
                MethodArg::Lora => Method::Lora,
                MethodArg::Full => Method::Full,
            };
        }
        if let Some(parts) = &self.train {
            c.train = parts
                .iter()
                .map(|p| ModelPart::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
        }
        if self.quantize.is_some() {
            c.quantize = self.quantize;
        }
        c.grad_checkpoint |= self.grad_checkpoint;
        c.packing |= self.packing;
        let lora_only: Vec<&str> = [
            (self.lora_r.is_some(), "--lora-r"),
            (self.lora_alpha.is_some(), "--lora-alpha"),
            (self.lora_dropout.is_some(), "--lora-dropout"),
            (self.target_modules.is_some(), "--target-modules"),
            (self.target_layers.is_some(), "--target-layers"),
            (self.lora_bias, "--lora-bias"),
            (self.save_mode.is_some(), "--save-mode"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect();
        if c.method == Method::Full && !lora_only.is_empty() {
            anyhow::bail!(
                "{} {}; --method full trains the weights of --train ({}) and writes the whole \
                 model to OUTPUT/model: leave {} out",
                lora_only.join(", "),
                if lora_only.len() == 1 {
                    "is a LoRA setting"
                } else {
                    "are LoRA settings"
                },
                c.train
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(","),
                if lora_only.len() == 1 { "it" } else { "them" }
            );
        }
        if c.method == Method::Lora && self.train.is_some() {
            anyhow::bail!(
                "--train chooses what --method full trains; LoRA adapts what --target-modules \
                 and --target-layers choose (add --method full to train weights)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
        #[command(flatten)]
        voice: VoiceArgs,
    }

    fn config(extra: &[&str]) -> Result<TrainConfig> {
        config_with(extra, None)
    }

    /// [`config`] with `cached` as the speaker encoder found in the cache;
    /// flag values are taken as paths.
    fn config_with(extra: &[&str], cached: Option<&str>) -> Result<TrainConfig> {
        let mut args = vec![
            "csm",
            "--model-path",
            "m",
            "--audio-dir",
            "a",
            "--transcript-dir",
            "t",
        ];
        args.extend_from_slice(extra);
        let cli = Cli::try_parse_from(args)?;
        let mut config = cli.train.to_config("info")?;
        let cached = cached.map(PathBuf::from);
        let paths = VoicePaths {
            speaker_encoder: &|p| Ok(p.to_path_buf()),
            whisper: &|p| Ok(p.to_path_buf()),
            default_encoder: &move || Ok(cached.clone()),
        };
        cli.voice.apply_with(&mut config, &paths)?;
        Ok(config)
    }

    /// `--batch-size auto` and `--memory-budget` reach finetune-lora's
    /// settings; other commands and a budget without auto are refused.
    #[test]
    fn batch_size_auto_and_memory_budget() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["csm", "--model-path", "m", "--audio-dir", "a"];
            args.extend_from_slice(&["--transcript-dir", "t"]);
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
        };
        let cli = parse(&["--batch-size", "auto", "--memory-budget", "40GB"]).unwrap();
        let (c, auto) = cli.train.to_config_and_auto_batch("info").unwrap();
        assert_eq!(c.batch_size, TrainConfig::default().batch_size);
        assert_eq!(
            auto,
            Some(AutoBatch {
                budget: MemoryBudget::Bytes(40_000_000_000)
            })
        );
        let err = cli.train.to_config("info").unwrap_err();
        assert!(err.to_string().contains("finetune-lora"), "{err}");
        let cli = parse(&["--batch-size", "AUTO", "--memory-budget", "70%"]).unwrap();
        let (_, auto) = cli.train.to_config_and_auto_batch("info").unwrap();
        assert_eq!(auto.unwrap().budget, MemoryBudget::Fraction(0.7));
        let cli = parse(&["--batch-size", "auto", "--memory-budget", "2GiB"]).unwrap();
        let (_, auto) = cli.train.to_config_and_auto_batch("info").unwrap();
        assert_eq!(auto.unwrap().budget, MemoryBudget::Bytes(2 << 30));
        let cli = parse(&["--batch-size", "6"]).unwrap();
        let (c, auto) = cli.train.to_config_and_auto_batch("info").unwrap();
        assert_eq!((c.batch_size, auto), (6, None));
        let cli = parse(&["--memory-budget", "40GB"]).unwrap();
        let err = cli.train.to_config_and_auto_batch("info").unwrap_err();
        assert!(err.to_string().contains("--batch-size auto"), "{err}");
        for bad in [["--batch-size", "0"], ["--memory-budget", "40 parsecs"]] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["--batch-size", "auto", "--memory-budget", "150%"]).is_err());
    }

    #[test]
    fn voice_scores_are_on_with_an_encoder_and_off_without() {
        assert_eq!(config(&[]).unwrap().voice, None, "off by default");
        let c = config(&["--speaker-encoder", "enc.pt"]).unwrap();
        assert_eq!(c.voice, Some(VoiceConfig::new("enc.pt")));
        let c = config(&[
            "--speaker-encoder",
            "enc.pt",
            "--voice-prompts",
            "5",
            "--whisper-model",
            "w",
        ])
        .unwrap();
        let v = c.voice.unwrap();
        assert_eq!(v.prompts, VOICE_PROMPTS[..5]);
        assert_eq!(v.whisper_model, Some("w".into()));
        let c = config(&[
            "--speaker-encoder",
            "enc.pt",
            "--voice-prompt",
            "Hi.",
            "--voice-prompt",
            "Bye.",
        ])
        .unwrap();
        assert_eq!(c.voice.unwrap().prompts, ["Hi.", "Bye."]);
        let c = config(&["--speaker-encoder", "enc.pt", "--no-voice-scores"]).unwrap();
        assert_eq!(c.voice, None);
    }

    /// The cached speaker-encoder bundle turns voice scores on without
    /// the flag; the flag and a `--config` file's encoder come first, and
    /// `--no-voice-scores` still turns them off.
    #[test]
    fn the_cached_speaker_encoder_is_the_default() {
        let on = |extra: &[&str]| config_with(extra, Some("cached.pt")).unwrap().voice;
        assert_eq!(on(&[]), Some(VoiceConfig::new("cached.pt")));
        assert_eq!(
            on(&["--speaker-encoder", "given.pt"]),
            Some(VoiceConfig::new("given.pt"))
        );
        assert_eq!(on(&["--no-voice-scores"]), None);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, r#"{"voice": {"speaker_encoder": "from-config.pt"}}"#).unwrap();
        let v = on(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(v.speaker_encoder, PathBuf::from("from-config.pt"));
    }

    #[test]
    fn asking_for_voice_scores_without_an_encoder_names_the_flag() {
        for (flags, named) in [
            (&["--voice-scores"][..], "--voice-scores"),
            (&["--voice-prompts", "2"][..], "--voice-prompts"),
            (&["--whisper-model", "w"][..], "--whisper-model"),
            (&["--voice-prompt", "Hi."][..], "--voice-prompt"),
        ] {
            let err = config(flags).unwrap_err().to_string();
            assert!(
                err.starts_with(named) && err.contains("needs --speaker-encoder PATH"),
                "{err}"
            );
        }
        let err = config(&["--speaker-encoder", "e.pt", "--voice-prompts", "9"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--voice-prompts 9: choose 1 to 8"), "{err}");
    }

    #[test]
    fn a_config_file_with_voice_scores_keeps_them_and_flags_adjust_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(
            &file,
            r#"{"voice": {"speaker_encoder": "from-config.pt", "prompts": ["One."]}}"#,
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let v = config(&["--config", path]).unwrap().voice.unwrap();
        assert_eq!(
            (v.speaker_encoder.to_str(), &v.prompts[..]),
            (Some("from-config.pt"), &["One.".to_string()][..])
        );
        let v = config(&["--config", path, "--voice-prompts", "2"])
            .unwrap()
            .voice
            .unwrap();
        assert_eq!(v.prompts, VOICE_PROMPTS[..2]);
        assert_eq!(
            config(&["--config", path, "--no-voice-scores"])
                .unwrap()
                .voice,
            None
        );
    }

    #[test]
    fn segmenting_flags_reach_the_config() {
        let default = config(&[]).unwrap();
        assert_eq!(
            default.segment_config(),
            csm_core::data::SegmentConfig::default()
        );
        let c = config(&[
            "--no-trim-silence",
            "--edge-pad-secs",
            "0.05",
            "--min-utterance-secs",
            "2",
            "--target-utterance-secs",
            "8",
            "--max-utterance-secs",
            "15",
            "--max-unaligned-secs",
            "20",
            "--long-unaligned",
            "skip",
        ])
        .unwrap();
        let s = c.segment_config();
        assert!(!s.trim_silence);
        assert_eq!(
            (
                s.edge_pad_s,
                s.min_s,
                s.target_s,
                s.max_s,
                s.max_unaligned_s
            ),
            (0.05, 2.0, 8.0, 15.0, 20.0)
        );
        assert_eq!(s.long_unaligned, LongUnaligned::Skip);
    }

    #[test]
    fn data_dir_replaces_a_configs_folders_and_speaker_map_adds_ids() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["audio", "transcripts"] {
            std::fs::create_dir_all(dir.path().join("data").join(d)).unwrap();
        }
        let file = dir.path().join("config.json");
        std::fs::write(
            &file,
            r#"{"audio_dir": "old/audio", "transcript_dir": "old/t", "speakers": {"bob": 4}}"#,
        )
        .unwrap();
        let data = dir.path().join("data");
        let args = [
            "csm",
            "--model-path",
            "m",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--speaker-map",
            "alice=1, carol = 2",
        ];
        let c = Cli::try_parse_from(args)
            .unwrap()
            .train
            .to_config("info")
            .unwrap();
        assert_eq!(c.data_dir.as_deref(), Some(data.as_path()));
        assert!(c.audio_dir.as_os_str().is_empty() && c.transcript_dir.as_os_str().is_empty());
        let ids: Vec<(&str, u32)> = c.speakers.iter().map(|(n, i)| (n.as_str(), *i)).collect();
        assert_eq!(ids, [("alice", 1), ("bob", 4), ("carol", 2)]);
        for bad in ["alice", "=3", "alice=-1"] {
            let err = config(&["--speaker-map", bad]).unwrap_err().to_string();
            assert!(err.contains("--speaker-map"), "{bad}: {err}");
        }
    }

    #[test]
    fn segmenting_flags_override_a_config_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(
            &file,
            r#"{"trim_silence": false, "max_utterance_secs": 14}"#,
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let c = config(&["--config", path]).unwrap();
        assert!(!c.trim_silence);
        assert_eq!(c.max_utterance_secs, 14.0);
        let c = config(&["--config", path, "--max-utterance-secs", "11"]).unwrap();
        assert_eq!(c.max_utterance_secs, 11.0);

        let err = config(&["--min-utterance-secs", "13"]).unwrap_err();
        assert!(err.to_string().contains("--min-utterance-secs"), "{err}");
    }
}
