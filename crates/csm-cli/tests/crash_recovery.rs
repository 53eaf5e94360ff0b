//! Crash recovery of `csm finetune-lora` on the demo model: a run killed
//! with SIGKILL resumes from its last checkpoint and follows the same loss
//! sequence as an uninterrupted run; a non-finite step stops the run before
//! the update and leaves the last good checkpoint as it was; Ctrl-C with
//! stderr a pipe nobody reads any more still saves and stops.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    demo, empty_hf_home, run, run_with_env, signal_when, step_losses, step_records, text,
    train_args, CSM,
};

const LIMIT: Duration = Duration::from_secs(600);

/// The step the checkpoint `checkpoint_latest.safetensors` in `dir` holds.
fn latest_step(dir: &Path) -> usize {
    let latest = dir.join("checkpoint_latest.safetensors");
    csm_core::train::state::load(&latest)
        .expect("checkpoint_latest loads")
        .progress
        .step
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_the_same_losses() {
    let paths = demo();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let straight = tmp.path().join("straight");
    let (out, _) = run(&train_args(&paths, &straight, 2, &[]), &cache, LIMIT);
    assert!(out.status.success(), "{}", text(&out));
    let reference = step_losses(&straight);
    assert!(reference.len() >= 8, "only {} steps", reference.len());

    // Killed when step 6 starts: checkpoints 2 and 4 exist, step 5 is lost.
    let killed = tmp.path().join("killed");
    let (out, _) = run_with_env(
        &train_args(&paths, &killed, 2, &[]),
        &cache,
        LIMIT,
        &[("CSM_DEBUG_KILL_AT_STEP", "0:6")],
    );
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    assert_eq!(latest_step(&killed), 4);
    assert!(
        !killed.join("adapters.safetensors").exists(),
        "a killed run wrote final adapters"
    );

    let latest = killed.join("checkpoint_latest.safetensors");
    let (out, _) = run(
        &train_args(
            &paths,
            &killed,
            2,
            &["--resume-from", latest.to_str().unwrap()],
        ),
        &cache,
        LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out));

    // metrics.jsonl is appended to: steps 1-5 of the killed run, then 5..
    // of the resumed one. Step 5 ran twice and must agree with itself.
    let records = step_records(&killed);
    let fives: Vec<f64> = records
        .iter()
        .filter(|(s, _)| *s == 5)
        .map(|r| r.1)
        .collect();
    assert_eq!(fives.len(), 2, "{records:?}");
    assert!((fives[0] - fives[1]).abs() <= 1e-5 * fives[0].abs().max(1.0));
    let mut resumed = vec![f64::NAN; reference.len()];
    for (step, loss) in records {
        resumed[step as usize - 1] = loss;
    }
    for (i, (a, b)) in resumed.iter().zip(&reference).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "step {}: resumed {a} vs uninterrupted {b}",
            i + 1
        );
    }
}

#[test]
fn a_non_finite_step_stops_the_run_and_keeps_the_last_checkpoint() {
    let paths = demo();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let outdir = tmp.path().join("run");
    let (out, _) = run_with_env(
        &train_args(&paths, &outdir, 2, &[]),
        &cache,
        LIMIT,
        &[("CSM_DEBUG_NAN_AT_STEP", "5")],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("the gradient norm became NaN at step 5"),
        "no clear message:\n{t}"
    );
    let good = outdir.join("checkpoint_step_0000004.safetensors");
    assert!(good.is_file(), "{t}");
    assert!(
        t.contains(good.to_str().unwrap()),
        "checkpoint not named:\n{t}"
    );
    assert_eq!(
        step_losses(&outdir).len(),
        4,
        "a step past the NaN was logged"
    );
    assert!(!outdir.join("adapters.safetensors").exists());

    // The last good checkpoint is untouched, finite, and resumable.
    assert_eq!(latest_step(&outdir), 4);
    let state = csm_core::train::state::load(&good).unwrap();
    for (k, v) in &state.adapters {
        let finite = v
            .abs()
            .unwrap()
            .max(None)
            .unwrap()
            .item_cast::<f32>()
            .is_finite();
        assert!(finite, "{k} is not finite in the kept checkpoint");
    }
    let (out, _) = run(
        &train_args(
            &paths,
            &outdir,
            2,
            &["--resume-from", good.to_str().unwrap()],
        ),
        &cache,
        LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// Ctrl-C while stderr is a pipe whose reader has gone (`csm ... 2>&1 | tee
/// log`, `tee` stopped by the same Ctrl-C): the run saves its checkpoint
/// and stops as a stopped run does. A status line that panicked on the
/// closed pipe would end it before the save, with its state unwritten.
#[test]
fn ctrl_c_with_stderr_closed_still_saves_and_stops() {
    let paths = demo();
    let tmp = tempfile::tempdir().unwrap();
    let outdir = tmp.path().join("run");
    let mut args = train_args(&paths, &outdir, 2, &[]);
    // Long enough that Ctrl-C comes while it trains.
    let epochs = args.iter().position(|a| a == "--epochs").unwrap() + 1;
    args[epochs] = "200".into();
    let mut child = Command::new(CSM)
        .args(&args)
        .env("CSM_CACHE_DIR", tmp.path().join("cache"))
        .env("HF_HOME", empty_hf_home())
        .env_remove("MLX_HOSTFILE")
        .env_remove("MLX_RANK")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader of stderr is gone before the first line.
    drop(child.stderr.take());
    let metrics = outdir.join("metrics.jsonl");
    let out = signal_when(child, "INT", LIMIT, || {
        metrics.exists() && step_records(&outdir).len() >= 3
    });
    assert!(out.status.success(), "{:?}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("checkpoint: "), "{stdout}");
    let saved = latest_step(&outdir);
    let logged = step_records(&outdir).last().unwrap().0 as usize;
    assert!(
        saved >= 3 && saved == logged,
        "saved {saved}, logged {logged}"
    );
    assert!(saved < 200, "it ran to the end instead of stopping");
}
