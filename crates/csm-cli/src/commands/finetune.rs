//! `csm finetune-lora`, `csm prepare`, `csm evaluate`: the CLI side of the
//! training engine (progress bar, `metrics.jsonl`, Ctrl-C, the voice-score
//! table).

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use csm_core::cancel::CancelToken;
use csm_core::train::metrics::JsonlObserver;
use csm_core::train::voice::VoiceOutcome;
use csm_core::train::{self, Phase, TrainEvent, TrainingObserver, VoiceSummary};
use indicatif::{ProgressBar, ProgressStyle};

use super::train_args::{TrainArgs, VoiceArgs};

/// Flags of `csm finetune-lora`.
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    train: TrainArgs,
    #[command(flatten)]
    voice: VoiceArgs,
}

/// Shows the run on the terminal: a bar for encoding and one for steps.
#[derive(Default)]
pub struct TerminalObserver {
    bar: Option<ProgressBar>,
}

impl TerminalObserver {
    fn bar(&mut self, len: u64, template: &str) -> &ProgressBar {
        if let Some(old) = self.bar.take() {
            old.finish_and_clear();
        }
        let bar = ProgressBar::new(len).with_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bar.insert(bar)
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => say!("{line}"),
        }
    }
}

impl TrainingObserver for TerminalObserver {
    fn on_event(&mut self, event: &TrainEvent) {
        match event {
            TrainEvent::Phase { phase, detail } => {
                if *phase != Phase::Training {
                    if let Some(bar) = self.bar.take() {
                        bar.finish_and_clear();
                    }
                }
                self.println(format!("[{phase:?}] {detail}"));
            }
            TrainEvent::Progress { done, total } => {
                if self.bar.as_ref().map(|b| b.length()) != Some(Some(*total as u64)) {
                    self.bar(
                        *total as u64,
                        "encoding audio {bar:30} {pos}/{len} [{elapsed_precise} < {eta}]",
                    );
                }
                if let Some(bar) = &self.bar {
                    bar.set_position(*done as u64);
                }
            }
            TrainEvent::Started {
                total_steps,
                start_step,
                train_examples,
                val_examples,
                trainable_params,
            } => {
                self.println(format!(
                    "training {train_examples} examples ({val_examples} for validation), {trainable_params} trainable parameters"
                ));
                let bar = self.bar(
                    *total_steps as u64,
                    "{bar:30} step {pos}/{len} {msg} [{elapsed_precise} < {eta}]",
                );
                bar.set_position(*start_step as u64);
            }
            TrainEvent::Step(s) => {
                if let Some(bar) = &self.bar {
                    bar.set_position(s.step as u64);
                    bar.set_message(format!(
                        "loss {:.4} (c0 {:.4}, c1+ {:.4}) lr {:.2e} |g| {:.3} {:.0} frames/s",
                        s.loss,
                        s.semantic_loss,
                        s.acoustic_loss,
                        s.lr,
                        s.grad_norm,
                        s.frames_per_sec
                    ));
                }
                tracing::debug!(?s, "step");
            }
            TrainEvent::Validation(v) => {
                self.println(format!(
                    "step {}: validation loss {:.4} (c0 {:.4}, c1+ {:.4}) on {} examples",
                    v.step, v.loss, v.semantic_loss, v.acoustic_loss, v.examples
                ));
                for s in &v.speakers {
                    self.println(format!(
                        "  speaker {} (id {}): {:.4} (c0 {:.4}, c1+ {:.4}) on {} examples",
                        s.speaker, s.id, s.loss, s.semantic_loss, s.acoustic_loss, s.examples
                    ));
                }
            }
            TrainEvent::Checkpoint { step, path } => {
                self.println(format!("step {step}: checkpoint {}", path.display()))
            }
            TrainEvent::Sample { step, path } => {
                self.println(format!("step {step}: sample {}", path.display()))
            }
            TrainEvent::VoiceSetup(v) => self.println(format!(
                "voice scores: {} prompt(s) after {} ({:.1} s, held out of training); the speaker \
                 from {} training recording(s){}{}",
                v.prompts.len(),
                v.held_out_recording,
                v.held_out_secs,
                v.reference_recordings,
                v.reference_chars_per_sec
                    .map(|r| format!(", {r:.1} characters/s"))
                    .unwrap_or_default(),
                if v.transcribed {
                    "; samples transcribed by Whisper"
                } else {
                    ""
                }
            )),
            TrainEvent::VoiceScores(r) => {
                let s = &r.summary;
                self.println(format!(
                    "step {}: voice similarity {}, WER {}, {} health warning(s){}",
                    r.step,
                    number(s.similarity, |v| format!("{v:.3}")),
                    number(s.wer, percent),
                    s.health_warnings,
                    if r.new_best { " (best so far)" } else { "" }
                ))
            }
            TrainEvent::Warning { message } => self.println(format!("warning: {message}")),
            TrainEvent::Finished {
                step,
                cancelled,
                output_dir,
            } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                let how = if *cancelled {
                    "stopped on request"
                } else {
                    "finished"
                };
                say!(
                    "{how} after step {step}; outputs in {}",
                    output_dir.display()
                );
            }
        }
    }
}

/// What a finished run wrote, and for QLoRA what its adapter gives on the
/// full-precision model.
fn print_outputs(config: &csm_core::train::TrainConfig, summary: &train::RunSummary) {
    use csm_core::train::{full::MODEL_DIR, Method};
    if config.method == Method::Full {
        tell!("model: {}", summary.output_dir.join(MODEL_DIR).display());
        return;
    }
    tell!(
        "adapters: {}",
        summary.output_dir.join("adapters.safetensors").display()
    );
    if let Some(c) = &summary.full_precision {
        tell!(
            "adapter on the full-precision model: {:?} loss {:.4} (c0 {:.4}, c1+ {:.4}) on {} \
             examples; {:.4} on the {}-bit model it was trained on",
            c.split,
            c.full_precision.total,
            c.full_precision.semantic,
            c.full_precision.acoustic,
            c.examples,
            c.quantized.total,
            c.bits
        );
    }
}

/// Ctrl-C sets the token; the loop saves a checkpoint and exits.
pub fn cancel_on_ctrl_c() -> Result<CancelToken> {
    let token = CancelToken::new();
    let handler = token.clone();
    ctrlc::set_handler(move || {
        if handler.is_cancelled() {
            say!("\nsecond Ctrl-C: exiting without saving");
            std::process::exit(130);
        }
        say!("\nCtrl-C: saving a checkpoint, then stopping (press again to abort)");
        handler.cancel();
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(token)
}

/// `v` formatted, or `-`.
fn number(v: Option<f32>, format: impl Fn(f32) -> String) -> String {
    v.map_or_else(|| "-".into(), format)
}

fn percent(v: f32) -> String {
    format!("{:.1}%", 100.0 * v)
}

/// The end-of-run table: base model, best and last checkpoint.
pub fn voice_table(outcome: &VoiceOutcome) -> String {
    let mut out = format!(
        "voice scores   {:>6}  {:>10}  {:>7}  {:>7}  {:>15}\n",
        "step", "similarity", "WER", "CER", "health warnings"
    );
    let rows: [(&str, Option<(usize, &VoiceSummary)>); 3] = [
        ("base", outcome.base.as_ref().map(|s| (0, s))),
        ("best", outcome.best.as_ref().map(|(n, s)| (*n, s))),
        ("last", outcome.last.as_ref().map(|(n, s)| (*n, s))),
    ];
    for (name, row) in rows {
        let line = match row {
            Some((step, s)) => format!(
                "{name:<14} {step:>6}  {:>10}  {:>7}  {:>7}  {:>15}",
                number(s.similarity, |v| format!("{v:.3}")),
                number(s.wer, percent),
                number(s.cer, percent),
                s.health_warnings
            ),
            None => format!("{name:<14} {:>6}  (no checkpoint scored)", "-"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Runs `csm finetune-lora`.
pub fn run(args: FinetuneArgs, log_level: &str) -> Result<()> {
    let (mut config, auto_batch) = args.train.to_config_and_auto_batch(log_level)?;
    args.voice.apply(&mut config)?;
    let mut settings = crate::env::run_settings()?;
    settings.auto_batch = auto_batch;
    let cancel = cancel_on_ctrl_c()?;
    let mut terminal = TerminalObserver::default();
    let mut observer =
        JsonlObserver::new(&config.output_dir, &mut terminal).with_context(|| {
            format!(
                "cannot write metrics.jsonl in --output-dir {}",
                config.output_dir.display()
            )
        })?;
    let summary = train::train(&config, &settings, &mut observer, &cancel)?;
    if let Some(l) = summary.last_loss {
        tell!(
            "last loss {:.4} (c0 {:.4}, c1+ {:.4}){}",
            l.total,
            l.semantic,
            l.acoustic,
            summary
                .best_val
                .map(|v| format!(", best validation {v:.4}"))
                .unwrap_or_default()
        );
    }
    if let Some(c) = &summary.checkpoint {
        tell!("checkpoint: {}", c.display());
    }
    if !summary.cancelled {
        print_outputs(&config, &summary);
    }
    if let Some(voice) = &summary.voice {
        tell_raw!("{}", voice_table(voice));
        if let Some((step, _)) = voice.best {
            tell!(
                "best adapter (step {step}): {}",
                train::run_dir::RunDir::new(&summary.output_dir)
                    .best_adapter_path()
                    .display()
            );
        }
    }
    Ok(())
}
