//! `csm demo`: the embedded default. Builds a small CSM, a Mimi codec and a
//! spoken dataset locally (no download), fine-tunes, and shows the loss
//! falling.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use csm_core::demo::create_demo;
use csm_core::train::metrics::JsonlObserver;
use csm_core::train::{self, SaveMode, TrainConfig, TrainEvent, TrainingObserver};

use super::finetune::{cancel_on_ctrl_c, TerminalObserver};

/// Flags of `csm demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the demo model, dataset and run.
    #[arg(long, default_value = "csm-demo")]
    dir: PathBuf,
    /// Sentences espeak-ng speaks for the dataset.
    #[arg(long, default_value_t = 24)]
    sentences: usize,
    /// Passes over the dataset.
    #[arg(long, default_value_t = 25)]
    epochs: usize,
}

/// Records step losses while showing progress.
struct LossTrace<'a> {
    inner: &'a mut dyn TrainingObserver,
    losses: Vec<f32>,
}

impl TrainingObserver for LossTrace<'_> {
    fn on_event(&mut self, event: &TrainEvent) {
        if let TrainEvent::Step(s) = event {
            self.losses.push(s.loss);
        }
        self.inner.on_event(event);
    }
}

/// Runs the demo.
pub fn run(args: DemoArgs, log_level: &str) -> Result<()> {
    say!(
        "building the demo model, codec and dataset in {}",
        args.dir.display()
    );
    let paths = create_demo(&args.dir, args.sentences, 1)
        .with_context(|| format!("cannot build the demo in {}", args.dir.display()))?;
    let config = TrainConfig {
        model_path: paths.model.clone(),
        audio_dir: paths.audio_dir.clone(),
        transcript_dir: paths.transcript_dir.clone(),
        output_dir: args.dir.join("run"),
        context_turns: 0,
        batch_size: 4,
        epochs: args.epochs,
        learning_rate: 2e-3,
        warmup_steps: 10,
        target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"]
            .map(String::from)
            .to_vec(),
        decoder_fraction: 0.25,
        val_split: 0.1,
        val_every: 25,
        save_every: 75,
        save_mode: SaveMode::Both,
        generate_samples: true,
        sample_prompt: "The quick brown fox jumps over the lazy dog.".into(),
        log_level: log_level.to_string(),
        ..TrainConfig::default()
    };
    let settings = crate::env::run_settings()?;
    let cancel = cancel_on_ctrl_c()?;
    let mut terminal = TerminalObserver::default();
    let mut trace = LossTrace {
        inner: &mut terminal,
        losses: Vec::new(),
    };
    let mut observer = JsonlObserver::new(&config.output_dir, &mut trace)?;
    let summary = train::train(&config, &settings, &mut observer, &cancel)?;
    drop(observer);
    let l = &trace.losses;
    if l.len() >= 10 {
        let avg = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
        tell!(
            "loss: first 5 steps {:.3} -> last 5 steps {:.3} over {} steps",
            avg(&l[..5]),
            avg(&l[l.len() - 5..]),
            l.len()
        );
    }
    if let Some(v) = summary.best_val {
        tell!("best validation loss {v:.3}");
    }
    tell!(
        "outputs in {}: adapters.safetensors (+ peft/, merged/), samples/, checkpoints, metrics.jsonl",
        summary.output_dir.display()
    );
    tell!(
        "The demo model has random weights: it learns the demo data's codes, it cannot speak.\n\
         For a real voice use the released sesame/csm-1b, the Mimi codec and the Llama 3.2 tokenizer (see README)."
    );
    Ok(())
}
