//! `csm finetune-lora` with voice scores: the end-of-run table of the base
//! model, the best and the last checkpoint, and the flags' errors.

mod common;

use std::time::Duration;

use common::{demo, run, run_csm, text, tiny_whisper, train_args};
use csm_core::train::run_dir::RunDir;

#[test]
fn asking_for_voice_scores_without_an_encoder_names_the_flag() {
    // The run folder goes to a temporary directory: the default
    // (`runs/latest`) would land in the crate's source tree.
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("run");
    let base = [
        "finetune-lora",
        "--model-path",
        "no-such-model",
        "--audio-dir",
        "a",
        "--transcript-dir",
        "t",
        "--output-dir",
        out_dir.to_str().unwrap(),
    ];
    let (out, _) = run_csm(
        &[&base[..], &["--voice-scores"]].concat(),
        Duration::from_secs(60),
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--voice-scores needs --speaker-encoder PATH"),
        "{}",
        text(&out)
    );
    // Not asked for and no encoder: off, said in one line, before the run
    // fails on the missing model.
    let (out, _) = run_csm(&base, Duration::from_secs(60), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("voice scores are off: give --speaker-encoder PATH")
            .count(),
        1,
        "{}",
        text(&out)
    );
}

#[test]
#[cfg_attr(
    not(csm_test_speaker_encoder),
    ignore = "needs target/test-data/resemblyzer-pretrained.pt: run scripts/fetch-test-speaker-encoder.sh"
)]
fn the_run_ends_with_base_best_and_last_voice_scores() {
    let paths = demo();
    let encoder = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-data/resemblyzer-pretrained.pt");
    let work = tempfile::tempdir().unwrap();
    let whisper = tiny_whisper(work.path());
    let out_dir = work.path().join("run");
    // Eight recordings, one held out: 7 examples, one step an epoch, 3
    // steps, checkpoints at 2 and 3 (the last).
    let args = train_args(
        &paths,
        &out_dir,
        8,
        &[
            "--speaker-encoder",
            encoder.to_str().unwrap(),
            "--voice-prompt",
            "Hi.",
            "--whisper-model",
            whisper.to_str().unwrap(),
        ],
    );
    let (out, _) = run(&args, &work.path().join("cache"), Duration::from_secs(900));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("held out of training"),
        "the set-up is shown:\n{}",
        text(&out)
    );

    let reports = RunDir::new(&out_dir).voice_reports().unwrap();
    let steps: Vec<usize> = reports.iter().map(|r| r.step).collect();
    assert_eq!(steps, [0, 2, 3]);
    // The random Whisper hears something: every report has WER and CER,
    // and the best checkpoint follows the WER gate, computed here from the
    // records: passing max(20%, base + 10 points) beats failing; then the
    // higher similarity among those that pass, the lower WER among those
    // that fail; the earlier step on a tie.
    for r in &reports {
        let (wer, cer) = (r.summary.wer.unwrap(), r.summary.cer.unwrap());
        assert!(wer.is_finite() && wer >= 0.0 && cer >= 0.0, "{r:?}");
    }
    let gate = (reports[0].summary.wer.unwrap() + 0.10).max(0.20);
    let rank = |r: &csm_core::train::VoiceReport| {
        let (wer, sim) = (r.summary.wer.unwrap(), r.summary.similarity.unwrap());
        if wer <= gate {
            (0, -sim, 0.0)
        } else {
            (1, wer, -sim)
        }
    };
    let expected = reports[1..]
        .iter()
        .min_by(|a, b| rank(a).partial_cmp(&rank(b)).unwrap())
        .unwrap()
        .step;
    let best = reports.last().unwrap().best_step.unwrap();
    assert_eq!(best, expected, "gate {gate}: {reports:?}");
    let percent = |v: Option<f32>| format!("{:.1}%", 100.0 * v.unwrap());
    let row = |name: &str, step: usize| {
        let r = reports.iter().find(|r| r.step == step).unwrap();
        format!(
            "{name:<14} {step:>6}  {:>10.3}  {:>7}  {:>7}  {:>15}",
            r.summary.similarity.unwrap(),
            percent(r.summary.wer),
            percent(r.summary.cer),
            r.summary.health_warnings
        )
    };
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("voice scores"))
        .collect();
    assert!(table.len() >= 5, "no table in:\n{}", text(&out));
    assert!(table[0].contains("similarity") && table[0].contains("WER"));
    assert_eq!(table[1], row("base", 0));
    assert_eq!(table[2], row("best", best));
    assert_eq!(table[3], row("last", 3));
    assert!(
        table[4].starts_with(&format!("best adapter (step {best}): "))
            && table[4].ends_with("adapters_best.safetensors"),
        "{}",
        table[4]
    );
}
