//! `csm bench-train` on the tiny fixture: the pipelined timing loop (each
//! step built while the one before runs) trains the same steps as the
//! sequential one, and the JSON carries the host figures the GPU tables
//! read and the commit the binary was built from.

use std::path::Path;
use std::process::Command;

fn bench(dir: &Path, pipeline: bool) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_csm"))
        .args([
            "bench-train",
            "--size",
            "tiny",
            "--cases",
            "3x20",
            "--modes",
            "plain,compiled",
            "--warmup",
            "1",
            "--steps",
            "3",
            "--pipeline",
            if pipeline { "true" } else { "false" },
            "--json-dir",
        ])
        .arg(dir)
        .output()
        .expect("runs the csm binary");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ["plain", "compiled"]
        .iter()
        .map(|mode| {
            let path = dir.join(format!("csm_{mode}_3x20_0.0625.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::from_str(&text).unwrap()
        })
        .collect()
}

#[test]
fn pipelined_and_sequential_steps_train_the_same() {
    let root = tempfile::tempdir().unwrap();
    let (seq_dir, pipe_dir) = (root.path().join("seq"), root.path().join("pipe"));
    let sequential = bench(&seq_dir, false);
    let pipelined = bench(&pipe_dir, true);
    let version = expected_version();
    for (s, p) in sequential.iter().zip(&pipelined) {
        let mode = &s["mode"];
        assert_eq!(s["pipeline"], false);
        assert_eq!(p["pipeline"], true);
        // Four optimizer steps each: the same first and last loss, bit for
        // bit, whichever way the host waits.
        assert_eq!(s["first_loss"], p["first_loss"], "{mode}");
        assert_eq!(s["final_loss"], p["final_loss"], "{mode}");
        assert_ne!(s["first_loss"], s["final_loss"], "{mode}: no step trained");
        assert_eq!(p["step_times_s"].as_array().unwrap().len(), 3);
        let host = p["host_s_per_step"].as_f64().unwrap();
        let launch = p["launch_s_per_step"].as_f64().unwrap();
        assert!(host > 0.0 && launch > 0.0, "{mode}: {host} {launch}");
        // Without the pipeline there is no separate launch to time.
        assert!(s["launch_s_per_step"].is_null(), "{mode}");
        assert_eq!(s["csm_version"], version, "{mode}");
    }
}

/// What `--version` and the JSON name: the package version and the commit
/// checked out at build time, as git reports it now (`unknown` outside a
/// checkout).
fn expected_version() -> String {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    format!("{} (commit {commit})", env!("CARGO_PKG_VERSION"))
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_csm"))
        .arg("--version")
        .output()
        .expect("runs the csm binary");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("csm {}", expected_version())
    );
}

/// `--mlp-pieces` below 1 is refused with the flag named, before any work.
#[test]
fn mlp_pieces_below_one_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_csm"))
        .args(["bench-train", "--size", "tiny", "--mlp-pieces", "0"])
        .output()
        .expect("runs the csm binary");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--mlp-pieces 0"), "{err}");
}
