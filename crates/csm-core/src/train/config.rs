//! The run configuration: every flag of `csm finetune-lora`, as one plain
//! struct that the CLI fills from flags, the app from its forms, and both
//! read from / write to `config.json`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The seven projections LoRA can adapt.
pub const ALL_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

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

/// Which layers of each stack get adapters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetLayers {
    /// Backbone layer indices (`None` = all).
    pub backbone: LayerSet,
    /// Depth-decoder layer indices (`None` = all).
    pub decoder: LayerSet,
}

/// A set of layer indices of one stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerSet {
    /// Every layer of the stack.
    All,
    /// No layer of the stack.
    None,
    /// These indices.
    Some(Vec<usize>),
}

impl LayerSet {
    /// Whether layer `i` (of a stack with `n` layers) is selected.
    pub fn contains(&self, i: usize) -> bool {
        match self {
            LayerSet::All => true,
            LayerSet::None => false,
            LayerSet::Some(v) => v.contains(&i),
        }
    }

    /// The highest index named, if any (checked against the model's depth).
    pub fn max_index(&self) -> Option<usize> {
        match self {
            LayerSet::Some(v) => v.iter().copied().max(),
            _ => None,
        }
    }
}

impl TargetLayers {
    /// Every layer of both stacks.
    pub fn all() -> Self {
        TargetLayers {
            backbone: LayerSet::All,
            decoder: LayerSet::All,
        }
    }

    /// Parses `--target-layers`: `all`, or a comma list of `STACK:SPEC`
    /// where STACK is `backbone` or `decoder` and SPEC is `all`, `none`, an
    /// index `3`, a range `8-15`, or several joined by `+` (`0-3+12-15`).
    /// A stack not named gets no adapters. Bare indices are refused, because
    /// they would be ambiguous between the two stacks.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(TargetLayers::all());
        }
        let mut out = TargetLayers {
            backbone: LayerSet::None,
            decoder: LayerSet::None,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (stack, spec) = part.split_once(':').ok_or_else(|| {
                format!(
                    "`{part}`: name the stack, e.g. `backbone:{part}` or `decoder:{part}` (backbone layers 0-15 and decoder layers 0-3 are different layers)"
                )
            })?;
            let set = parse_layer_spec(spec.trim()).map_err(|e| format!("`{part}`: {e}"))?;
            match stack.trim().to_ascii_lowercase().as_str() {
                "backbone" => out.backbone = set,
                "decoder" => out.decoder = set,
                other => {
                    return Err(format!(
                        "`{other}` is not a stack; use `backbone` or `decoder`"
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Inverse of [`TargetLayers::parse`].
    pub fn to_arg(&self) -> String {
        if *self == TargetLayers::all() {
            return "all".into();
        }
        let spec = |set: &LayerSet| match set {
            LayerSet::All => "all".to_string(),
            LayerSet::None => "none".to_string(),
            LayerSet::Some(v) => v
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("+"),
        };
        format!(
            "backbone:{},decoder:{}",
            spec(&self.backbone),
            spec(&self.decoder)
        )
    }
}

fn parse_layer_spec(spec: &str) -> Result<LayerSet, String> {
    match spec.to_ascii_lowercase().as_str() {
        "all" => return Ok(LayerSet::All),
        "none" => return Ok(LayerSet::None),
        _ => {}
    }
    let mut v = Vec::new();
    for item in spec.split('+') {
        let item = item.trim();
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{t}` is not a layer index"))
        };
        if let Some((a, b)) = item.split_once('-') {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("range `{item}` is empty"));
            }
            v.extend(a..=b);
        } else {
            v.push(num(item)?);
        }
    }
    v.sort_unstable();
    v.dedup();
    Ok(LayerSet::Some(v))
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
    /// Speaker id written into the prompt (`[0]text`).
    pub speaker_id: u32,
    /// Longest training sequence in frames (text + audio + EOS frames).
    pub max_seq_len: usize,
    /// Previous utterances of the same recording put before each target.
    pub context_turns: usize,
    /// Whether context turns carry loss too (default: they only condition).
    pub context_loss: bool,
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
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model_path: PathBuf::new(),
            mimi_path: None,
            tokenizer_path: None,
            output_dir: PathBuf::from("runs/latest"),
            audio_dir: PathBuf::new(),
            transcript_dir: PathBuf::new(),
            alignment_dir: None,
            speaker_id: 0,
            max_seq_len: 2048,
            context_turns: 2,
            context_loss: false,
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            target_layers: TargetLayers::all(),
            lora_bias: false,
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
        check(
            !self.audio_dir.as_os_str().is_empty(),
            "--audio-dir is required".into(),
        );
        check(
            !self.transcript_dir.as_os_str().is_empty(),
            "--transcript-dir is required".into(),
        );
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_layers_parse_and_print() {
        assert_eq!(TargetLayers::parse("all").unwrap(), TargetLayers::all());
        let t = TargetLayers::parse("backbone:8-10+15, decoder:none").unwrap();
        assert_eq!(t.backbone, LayerSet::Some(vec![8, 9, 10, 15]));
        assert_eq!(t.decoder, LayerSet::None);
        assert_eq!(TargetLayers::parse(&t.to_arg()).unwrap(), t);
        // A stack that is not named gets nothing.
        let d = TargetLayers::parse("decoder:all").unwrap();
        assert_eq!(d.backbone, LayerSet::None);
        assert!(TargetLayers::parse("0-3")
            .unwrap_err()
            .contains("name the stack"));
        assert!(TargetLayers::parse("backbone:3-1").is_err());
        assert!(TargetLayers::parse("head:1").is_err());
    }

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
}
