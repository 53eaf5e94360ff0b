//! The settings rules: from the dataset's size and the device to the
//! training settings `csm voice` uses, each with a one-line reason. A pure
//! function ([`choose`]); [`apply`] lays the caller's overrides over it and
//! writes the result into a `TrainConfig`. The rules are documented in
//! `docs/voice.md` ("How settings are chosen"); keep the two in step.

use serde::{Deserialize, Serialize};

use csm_core::train::TrainConfig;

use crate::layout::{Chooser, SettingChoice};

/// The kind of device training runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// The CPU (f32, slow: small batches).
    Cpu,
    /// A GPU (CUDA, or Metal on Apple silicon).
    Gpu,
}

/// What the rules look at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecipeInput {
    /// Minutes of audio in the utterances (after trimming and cutting).
    pub minutes: f64,
    /// Utterances in the training split (those the trainer steps over).
    pub train_utterances: usize,
    /// The device's memory in bytes (a GPU's own, the RAM for the CPU).
    pub memory_bytes: u64,
    /// The device.
    pub device: DeviceKind,
}

/// A value and why it was chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice<T> {
    /// The value.
    pub value: T,
    /// One line on why.
    pub reason: String,
}

fn choice<T>(value: T, reason: impl Into<String>) -> Choice<T> {
    Choice {
        value,
        reason: reason.into(),
    }
}

/// The settings the rules choose.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// LoRA rank.
    pub lora_r: Choice<usize>,
    /// LoRA alpha (the update is scaled by alpha / r).
    pub lora_alpha: Choice<f32>,
    /// Examples per micro-batch.
    pub batch_size: Choice<usize>,
    /// Passes over the training set.
    pub epochs: Choice<usize>,
    /// Fraction of frames the depth decoder trains on.
    pub decoder_fraction: Choice<f32>,
    /// Peak learning rate.
    pub learning_rate: Choice<f32>,
    /// Warm-up steps.
    pub warmup_steps: Choice<usize>,
    /// Steps between checkpoints (each one is scored).
    pub save_every: Choice<usize>,
    /// Steps between validations.
    pub val_every: Choice<usize>,
}

/// The caller's choices, each replacing the rule's. `steps` is turned into
/// whole epochs (rounded up); it and `epochs` are exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Overrides {
    /// `--lora-r`.
    pub lora_r: Option<usize>,
    /// `--lora-alpha`.
    pub lora_alpha: Option<f32>,
    /// `--batch-size`.
    pub batch_size: Option<usize>,
    /// `--epochs`.
    pub epochs: Option<usize>,
    /// `--steps`: at least this many optimizer steps, in whole epochs.
    pub steps: Option<usize>,
    /// `--decoder-fraction`.
    pub decoder_fraction: Option<f32>,
    /// `--learning-rate`.
    pub learning_rate: Option<f32>,
    /// `--warmup-steps`.
    pub warmup_steps: Option<usize>,
    /// `--save-every`.
    pub save_every: Option<usize>,
    /// `--val-every`.
    pub val_every: Option<usize>,
}

const GB: u64 = 1_000_000_000;

/// The most optimizer steps the rules plan; more data trains fewer epochs.
pub const MAX_STEPS: usize = 2000;
/// Scorings (checkpoints) the rules aim for over a run.
pub const SCORINGS: usize = 5;

/// Optimizer steps of `epochs` over `train` utterances at `batch`.
pub fn steps_for(train: usize, batch: usize, epochs: usize) -> usize {
    train.max(1).div_ceil(batch.max(1)) * epochs
}

/// The rules (see `docs/voice.md`).
pub fn choose(input: &RecipeInput) -> Recipe {
    let min = input.minutes;
    let (r, why_r) = if min < 5.0 {
        (8, "under 5 minutes of audio: a small adapter overfits less")
    } else if min < 30.0 {
        (16, "5 to 30 minutes of audio")
    } else {
        (32, "30 minutes of audio or more: room for a larger adapter")
    };
    let lora_r = choice(r, format!("{why_r} ({min:.1} min)"));
    let lora_alpha = choice(
        2.0 * r as f32,
        "twice the rank: the update keeps the scale alpha/r = 2 at every rank",
    );

    let gb = input.memory_bytes as f64 / GB as f64;
    let (by_memory, why_b) = match input.device {
        DeviceKind::Cpu => (2, format!("the CPU: small batches ({gb:.0} GB RAM)")),
        DeviceKind::Gpu if input.memory_bytes >= 60 * GB => (
            8,
            format!("{gb:.0} GB of GPU memory: 8 fit with room to spare"),
        ),
        DeviceKind::Gpu if input.memory_bytes >= 24 * GB => {
            (4, format!("{gb:.0} GB of GPU memory (24 to 60 GB)"))
        }
        DeviceKind::Gpu => (2, format!("{gb:.0} GB of GPU memory (under 24 GB)")),
    };
    let train = input.train_utterances.max(1);
    let batch_size = if by_memory > train {
        choice(
            train,
            format!("{why_b}, cut to the {train} training utterance(s)"),
        )
    } else {
        choice(by_memory, why_b)
    };
    let b = batch_size.value;

    let (passes, why_e) = if min < 10.0 {
        (20, "under 10 minutes: 20 passes over the few utterances")
    } else if min < 60.0 {
        (10, "10 to 60 minutes: 10 passes")
    } else {
        (5, "an hour or more: 5 passes")
    };
    let per_epoch = steps_for(train, b, 1);
    let epochs = if per_epoch * passes > MAX_STEPS {
        let e = (MAX_STEPS / per_epoch).max(1);
        choice(
            e,
            format!(
                "{why_e}, cut to {e} to stay near {MAX_STEPS} steps ({per_epoch} steps an epoch)"
            ),
        )
    } else {
        choice(
            passes,
            format!("{why_e} ({} steps in all)", per_epoch * passes),
        )
    };

    let decoder_fraction = if min < 10.0 && (input.device == DeviceKind::Cpu || gb >= 24.0) {
        choice(
            0.125,
            "under 10 minutes: the depth decoder trains on 1/8 of the frames (twice Sesame's \
             1/16) to see enough of the few there are",
        )
    } else {
        choice(
            0.0625,
            "Sesame's compute amortization: the depth decoder trains on 1/16 of the frames",
        )
    };
    let learning_rate = if min < 5.0 {
        choice(1e-4, "under 5 minutes: a lower rate overfits less")
    } else {
        choice(2e-4, "the usual LoRA rate for CSM")
    };
    let total = steps_for(train, b, epochs.value);
    Recipe {
        lora_r,
        lora_alpha,
        batch_size,
        epochs,
        decoder_fraction,
        learning_rate,
        warmup_steps: warmup(total),
        save_every: save_every(total),
        val_every: val_every(total),
    }
}

fn warmup(total: usize) -> Choice<usize> {
    let w = (total / 10).clamp(1, 20);
    choice(w, format!("a tenth of the {total} steps, at most 20"))
}

fn save_every(total: usize) -> Choice<usize> {
    let every = total.div_ceil(SCORINGS).max(1);
    choice(
        every,
        format!("about {SCORINGS} checkpoints over {total} steps, each one scored"),
    )
}

fn val_every(total: usize) -> Choice<usize> {
    let every = total.div_ceil(SCORINGS).max(1);
    choice(every, "with each checkpoint".to_string())
}

/// Lays `overrides` over `recipe` and writes the settings into `config`;
/// returns every choice for printing and `voice.json`. Steps-dependent
/// settings (warm-up, checkpoint and validation intervals) follow the
/// step count the overrides give, unless overridden themselves.
///
/// # Errors
/// `steps` and `epochs` both given, or a value of 0 where at least 1 is
/// needed (a message naming the flag).
pub fn apply(
    recipe: &Recipe,
    overrides: &Overrides,
    train_utterances: usize,
    config: &mut TrainConfig,
) -> Result<Vec<SettingChoice>, String> {
    let mut out = Vec::new();
    fn pick<T: Copy + PartialEq + std::fmt::Display>(
        out: &mut Vec<SettingChoice>,
        name: &str,
        rule: &Choice<T>,
        given: Option<T>,
    ) -> T {
        let (value, chosen_by, reason) = match given {
            Some(v) => (
                v,
                Chooser::Override,
                format!(
                    "given (the rules would choose {}: {})",
                    rule.value, rule.reason
                ),
            ),
            None => (rule.value, Chooser::Recipe, rule.reason.clone()),
        };
        out.push(SettingChoice {
            name: name.into(),
            // Through Display: an f32 such as 1e-4 is written 0.0001, not
            // as its f64 widening (0.00009999999747378752).
            value: serde_json::from_str(&value.to_string())
                .unwrap_or_else(|_| serde_json::Value::String(value.to_string())),
            chosen_by,
            reason,
        });
        value
    }
    for (flag, v) in [
        ("--lora-r", overrides.lora_r),
        ("--batch-size", overrides.batch_size),
        ("--epochs", overrides.epochs),
        ("--steps", overrides.steps),
        ("--save-every", overrides.save_every),
    ] {
        if v == Some(0) {
            return Err(format!("{flag} must be at least 1"));
        }
    }
    if overrides.steps.is_some() && overrides.epochs.is_some() {
        return Err("--steps and --epochs both set the length of training: give one".into());
    }
    config.lora_r = pick(&mut out, "lora_r", &recipe.lora_r, overrides.lora_r);
    config.lora_alpha = pick(
        &mut out,
        "lora_alpha",
        &recipe.lora_alpha,
        overrides.lora_alpha,
    );
    config.batch_size = pick(
        &mut out,
        "batch_size",
        &recipe.batch_size,
        overrides.batch_size,
    );
    let train = train_utterances.max(1);
    let per_epoch = steps_for(train, config.batch_size, 1);
    let epochs_given = overrides
        .epochs
        .or_else(|| overrides.steps.map(|s| s.div_ceil(per_epoch)));
    let epochs_rule = match overrides.steps {
        Some(s) => Choice {
            value: recipe.epochs.value,
            reason: format!(
                "{} (--steps {s}: {} epoch(s) of {per_epoch} steps)",
                recipe.epochs.reason,
                s.div_ceil(per_epoch)
            ),
        },
        None => recipe.epochs.clone(),
    };
    config.epochs = pick(&mut out, "epochs", &epochs_rule, epochs_given);
    let total = steps_for(train, config.batch_size, config.epochs);
    config.decoder_fraction = pick(
        &mut out,
        "decoder_fraction",
        &recipe.decoder_fraction,
        overrides.decoder_fraction,
    );
    config.learning_rate = pick(
        &mut out,
        "learning_rate",
        &recipe.learning_rate,
        overrides.learning_rate,
    );
    config.warmup_steps = pick(
        &mut out,
        "warmup_steps",
        &warmup(total),
        overrides.warmup_steps,
    );
    config.save_every = pick(
        &mut out,
        "save_every",
        &save_every(total),
        overrides.save_every,
    );
    config.val_every = pick(
        &mut out,
        "val_every",
        &val_every(total),
        overrides.val_every,
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(minutes: f64, train: usize, gb: u64, device: DeviceKind) -> RecipeInput {
        RecipeInput {
            minutes,
            train_utterances: train,
            memory_bytes: gb * GB,
            device,
        }
    }

    #[test]
    fn rank_batch_and_epochs_follow_the_documented_rules() {
        let small = choose(&input(3.0, 18, 16, DeviceKind::Gpu));
        assert_eq!(
            (
                small.lora_r.value,
                small.lora_alpha.value,
                small.batch_size.value
            ),
            (8, 16.0, 2)
        );
        assert_eq!((small.epochs.value, small.learning_rate.value), (20, 1e-4));
        // 16 GB is under 24: the decoder keeps Sesame's 1/16.
        assert_eq!(small.decoder_fraction.value, 0.0625);

        // 10 minutes on an 80 GB GPU: rank 16, batch 8, 10 epochs.
        let h100 = choose(&input(10.0, 54, 80, DeviceKind::Gpu));
        assert_eq!(
            (h100.lora_r.value, h100.batch_size.value, h100.epochs.value),
            (16, 8, 10)
        );
        assert_eq!(h100.save_every.value, 14, "70 steps / 5 scorings");

        // Two hours: rank 32, 5 epochs, unless that passes MAX_STEPS.
        let long = choose(&input(120.0, 700, 40, DeviceKind::Gpu));
        assert_eq!((long.lora_r.value, long.batch_size.value), (32, 4));
        assert_eq!(long.epochs.value, 5, "{:?}", long.epochs);
        let huge = choose(&input(1200.0, 7000, 40, DeviceKind::Gpu));
        assert_eq!(huge.epochs.value, 1, "{:?}", huge.epochs);
        assert!(
            huge.epochs.reason.contains("2000"),
            "{}",
            huge.epochs.reason
        );

        // A batch never exceeds the training utterances.
        let tiny = choose(&input(1.0, 3, 80, DeviceKind::Gpu));
        assert_eq!(tiny.batch_size.value, 3);
        assert_eq!(
            choose(&input(1.0, 3, 64, DeviceKind::Cpu)).batch_size.value,
            2
        );
    }

    #[test]
    fn overrides_win_and_say_what_the_rules_chose() {
        let recipe = choose(&input(10.0, 54, 80, DeviceKind::Gpu));
        let mut config = TrainConfig::default();
        let o = Overrides {
            steps: Some(500),
            lora_r: Some(4),
            ..Overrides::default()
        };
        let choices = apply(&recipe, &o, 54, &mut config).unwrap();
        // 54 utterances at batch 8: 7 steps an epoch, 72 epochs = 504 steps.
        assert_eq!(
            (config.lora_r, config.batch_size, config.epochs),
            (4, 8, 72)
        );
        assert_eq!(config.save_every, 101);
        let r = choices.iter().find(|c| c.name == "lora_r").unwrap();
        assert_eq!(r.chosen_by, Chooser::Override);
        assert!(r.reason.contains("would choose 16"), "{}", r.reason);
        let e = choices.iter().find(|c| c.name == "epochs").unwrap();
        assert_eq!(e.chosen_by, Chooser::Override);
        let b = choices.iter().find(|c| c.name == "batch_size").unwrap();
        assert_eq!(b.chosen_by, Chooser::Recipe);

        let both = Overrides {
            steps: Some(5),
            epochs: Some(2),
            ..Overrides::default()
        };
        let err = apply(&recipe, &both, 54, &mut config).unwrap_err();
        assert!(err.contains("--steps and --epochs"), "{err}");
        let zero = Overrides {
            batch_size: Some(0),
            ..Overrides::default()
        };
        assert!(apply(&recipe, &zero, 54, &mut config)
            .unwrap_err()
            .contains("--batch-size"));
    }
}
