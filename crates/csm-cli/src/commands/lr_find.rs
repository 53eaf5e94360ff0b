//! `csm lr-find`: the learning-rate range test (`csm_core::train::lr_find`)
//! as a table and a JSON report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use csm_core::train::lr_find::{self, LrFindOptions, LrFindReport, LrFindStop, LrPoint};
use indicatif::{ProgressBar, ProgressStyle};

use super::finetune::{cancel_on_ctrl_c, TerminalObserver};
use super::train_args::TrainArgs;

/// Flags of `csm lr-find`: those of `finetune-lora` (the run to find a
/// learning rate for) and the test's own.
#[derive(Debug, Args)]
pub struct LrFindArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Learning rate of the first step.
    #[arg(long, default_value_t = LrFindOptions::default().min_lr, help_heading = "Range test")]
    min_lr: f32,
    /// Learning rate of the last step (the test stops earlier when the loss
    /// diverges).
    #[arg(long, default_value_t = LrFindOptions::default().max_lr, help_heading = "Range test")]
    max_lr: f32,
    /// Optimizer steps, the learning rate growing by the same factor each.
    #[arg(long, default_value_t = LrFindOptions::default().steps, help_heading = "Range test")]
    steps: usize,
    /// Weight of the past in the moving average of the loss (fastai and
    /// Lightning use 0.98, which lags about 50 steps behind).
    #[arg(long, default_value_t = LrFindOptions::default().smoothing, help_heading = "Range test")]
    smoothing: f32,
    /// Stop once the smoothed loss exceeds its best by this factor.
    #[arg(long, default_value_t = LrFindOptions::default().diverge_factor, help_heading = "Range test")]
    diverge_factor: f32,
    /// Where to write the JSON report [default: OUTPUT/lr_find.json]; the
    /// test writes nothing else.
    #[arg(long, value_name = "FILE", help_heading = "Range test")]
    report: Option<PathBuf>,
}

/// Runs `csm lr-find`.
pub fn run(args: LrFindArgs, log_level: &str) -> Result<()> {
    let config = args.train.to_config(log_level)?;
    let options = LrFindOptions {
        min_lr: args.min_lr,
        max_lr: args.max_lr,
        steps: args.steps,
        smoothing: args.smoothing,
        diverge_factor: args.diverge_factor,
    };
    options
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid settings:\n  {}", e.join("\n  ")))?;
    let report_path = args
        .report
        .unwrap_or_else(|| config.output_dir.join(lr_find::REPORT_FILE));
    let settings = crate::env::run_settings()?;
    let cancel = cancel_on_ctrl_c()?;
    let mut terminal = TerminalObserver::default();
    let mut bar: Option<ProgressBar> = None;
    let mut on_point = |p: &LrPoint| {
        let bar = bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(options.steps as u64).with_style(
                ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} [{elapsed_precise}]")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        bar.set_position(p.step as u64);
        bar.set_message(format!(
            "lr {:.2e} loss {:.4} smoothed {:.4}",
            p.lr, p.loss, p.smoothed
        ));
    };
    let report = lr_find::lr_find(
        &config,
        &options,
        &settings,
        &mut terminal,
        &mut on_point,
        &cancel,
    )?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    tell_raw!("{}", table(&report));
    lr_find::write_report(&report, &report_path)
        .with_context(|| format!("cannot write the report {}", report_path.display()))?;
    tell!("report: {}", report_path.display());
    Ok(())
}

/// The points as a table (about 25 rows, the suggested and lowest rows
/// always among them), then the verdict.
fn table(report: &LrFindReport) -> String {
    let every = report.points.len().div_ceil(25).max(1);
    let mut out = format!(
        "{:>5}  {:>10}  {:>8}  {:>8}\n",
        "step", "lr", "loss", "smoothed"
    );
    for (i, p) in report.points.iter().enumerate() {
        let suggested = report.suggested_lr == Some(p.lr);
        let lowest = report.min_loss_lr == Some(p.lr);
        if !(i % every == 0 || i + 1 == report.points.len() || suggested || lowest) {
            continue;
        }
        let mark = match (suggested, lowest) {
            (true, true) => "  <- suggested, lowest loss",
            (true, false) => "  <- suggested (steepest descent)",
            (false, true) => "  <- lowest loss",
            (false, false) => "",
        };
        out.push_str(&format!(
            "{:>5}  {:>10.3e}  {:>8.4}  {:>8.4}{mark}\n",
            p.step, p.lr, p.loss, p.smoothed
        ));
    }
    out.push_str(match report.stop {
        LrFindStop::Completed => "all steps ran\n",
        LrFindStop::Diverged => "stopped: the loss diverged\n",
        LrFindStop::Cancelled => "stopped on request\n",
    });
    match report.suggested_lr {
        Some(lr) => out.push_str(&format!(
            "suggested learning rate: {lr:.2e} (where the smoothed loss falls fastest); \
             --learning-rate is {:.2e}\n",
            report.config_lr
        )),
        None => out.push_str("no suggestion: too few steps ran to find a slope\n"),
    }
    out
}
