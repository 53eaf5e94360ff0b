//! Helpers shared by the CLI training tests: the demo dataset, running
//! `csm` with a time limit, and reading `metrics.jsonl`.
#![allow(dead_code)] // each test binary uses a subset

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use csm_core::demo::{create_demo, DemoPaths};

// Shared with csm-core's integration tests.
#[path = "../../../csm-core/tests/common/mod.rs"]
mod shared;
#[allow(unused_imports)] // each test binary uses a subset
pub use shared::{max_abs, max_abs_diff, remove_at_exit};

pub const CSM: &str = env!("CARGO_BIN_EXE_csm");

pub fn demo() -> DemoPaths {
    static ONCE: std::sync::OnceLock<DemoPaths> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        // One per process: nextest runs each test in its own process.
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cli-train-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        remove_at_exit(&root);
        create_demo(&root, 8, 3).expect("demo builds (needs espeak-ng)")
    })
    .clone()
}

pub fn run(args: &[String], cache: &Path, limit: Duration) -> (Output, Duration) {
    run_with_env(args, cache, limit, &[])
}

/// [`run`] with extra environment variables.
pub fn run_with_env(
    args: &[String],
    cache: &Path,
    limit: Duration,
    env: &[(&str, &str)],
) -> (Output, Duration) {
    let cache = cache.to_str().expect("UTF-8 cache path");
    let mut all = vec![("CSM_CACHE_DIR", cache), ("CSM_DIST_TIMEOUT_SECS", "20")];
    all.extend_from_slice(env);
    run_csm(args, limit, &all)
}

/// Runs `csm args` with `env` (and without a distributed set-up inherited
/// from the caller), killing it after `limit`; returns the output and the
/// wall time.
pub fn run_csm<S: AsRef<OsStr> + std::fmt::Debug>(
    args: &[S],
    limit: Duration,
    env: &[(&str, &str)],
) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = Command::new(CSM)
        .args(args)
        .env_remove("MLX_HOSTFILE")
        .env_remove("MLX_RANK")
        // An empty hub cache unless the test gives one: what the user's
        // cache holds (a speaker encoder turns voice scores on) stays out.
        .env("HF_HOME", empty_hf_home())
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_ASSETS_CACHE")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("csm {args:?} ran past {limit:?}:\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child.wait_with_output().unwrap(), start.elapsed())
}

/// A hub cache folder that stays empty (nothing downloads in these runs).
pub fn empty_hf_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("empty-hf-home")
}

/// The tiny random Whisper of `tests/fixtures/whisper/tiny80` as a model
/// folder (its tokenizer unpacked beside it) under `root`.
pub fn tiny_whisper(root: &Path) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/whisper");
    let dir = root.join("whisper-tiny80");
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(fixtures.join("tiny80")).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap() != "ref.safetensors" {
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
    }
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(fixtures.join("multilingual.tiktoken.zip"))
        .arg(&dir)
        .status()
        .expect("python3 unzips");
    assert!(status.success());
    dir
}

/// Waits until `ready()` holds, failing if `child` ends first or `limit`
/// passes; `what` names the moment waited for in those failures.
pub fn wait_until(child: &mut Child, what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            let read = |pipe: Option<&mut dyn std::io::Read>| {
                let mut s = String::new();
                pipe.map(|p| p.read_to_string(&mut s));
                s
            };
            let stdout = read(child.stdout.as_mut().map(|p| p as &mut dyn std::io::Read));
            let stderr = read(child.stderr.as_mut().map(|p| p as &mut dyn std::io::Read));
            panic!("it ended ({status}) before {what}:\nstdout:\n{stdout}\nstderr:\n{stderr}");
        }
        assert!(start.elapsed() < limit, "never reached {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `ready()` holds (see [`wait_until`]), then sends `child`
/// `signal` (`INT` for a Ctrl-C, `KILL`) and returns its output.
pub fn signal_when(
    mut child: Child,
    signal: &str,
    limit: Duration,
    ready: impl FnMut() -> bool,
) -> Output {
    wait_until(&mut child, &format!("SIG{signal}"), limit, ready);
    let sent = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    child.wait_with_output().unwrap()
}

pub fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn train_args(paths: &DemoPaths, out: &Path, batch: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "finetune-lora",
        "--model-path",
        paths.model.to_str().unwrap(),
        "--audio-dir",
        paths.audio_dir.to_str().unwrap(),
        "--transcript-dir",
        paths.transcript_dir.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--context-turns",
        "0",
        "--epochs",
        "3",
        "--learning-rate",
        "2e-3",
        "--warmup-steps",
        "1",
        "--val-split",
        "0",
        "--decoder-fraction",
        "1.0",
        "--save-every",
        "2",
        "--seed",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push("--batch-size".into());
    a.push(batch.to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// `(step, loss)` of every step record of `out/metrics.jsonl`, in file order
/// (read as the app's History reads it, through `run_dir`).
pub fn step_records(out: &Path) -> Vec<(u64, f64)> {
    use csm_core::train::run_dir::{RunDir, RunEvent};
    use csm_core::train::TrainEvent;
    RunDir::new(out)
        .read_metrics()
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            RunEvent::Train(TrainEvent::Step(s)) => Some((s.step as u64, f64::from(s.loss))),
            _ => None,
        })
        .collect()
}

/// The losses of the step records of `out/metrics.jsonl`, in file order.
pub fn step_losses(out: &Path) -> Vec<f64> {
    step_records(out)
        .into_iter()
        .map(|(_, loss)| loss)
        .collect()
}
