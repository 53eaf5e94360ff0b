//! Interop with PyPI `huggingface_hub`: files it puts in a cache (from the
//! mock hub) are found by ours offline, and files ours downloads are found
//! by it with `HF_HUB_OFFLINE=1` and pass its `scan_cache_dir`.
//!
//! Installs huggingface_hub with scripts/fetch-test-huggingface-hub.sh and
//! fails, saying why, when Python or pip are missing.

#[path = "support/mock_hub.rs"]
mod mock_hub;

use std::path::{Path, PathBuf};
use std::process::Command;

use csm_hub::{Cancel, Hub, HubSettings, NullObserver};
use mock_hub::{commit_of, pattern, sha256_hex, MockFile, MockHub};

const REPO: &str = "org/model";
const WEIGHTS: &str = "model.safetensors";
const CONFIG: &str = "config.json";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The folder holding huggingface_hub, installed on first use.
fn huggingface_hub() -> PathBuf {
    let script = root().join("scripts/fetch-test-huggingface-hub.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed (this test needs python3 with pip and PyPI):\n{}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    root().join("target/test-data/huggingface_hub")
}

/// Runs `code` with huggingface_hub importable; returns stdout.
fn python(code: &str, hf_home: &Path, offline: bool) -> String {
    let mut cmd = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    cmd.arg("-c").arg(code);
    for (k, _) in std::env::vars() {
        if k.starts_with("HF_")
            || k.starts_with("HUGGING")
            || k.to_ascii_lowercase().ends_with("_proxy")
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("PYTHONPATH", huggingface_hub())
        .env("HF_HOME", hf_home)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1");
    if offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    }
    let out = cmd
        .output()
        .expect("python3 must be installed for this test");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mock() -> MockHub {
    MockHub::start(vec![
        MockFile::lfs(REPO, WEIGHTS, pattern(300_000, 11)),
        MockFile::git(REPO, CONFIG, b"{\"a\": 1}\n"),
    ])
}

#[test]
fn files_downloaded_by_huggingface_hub_are_found_by_ours_offline() {
    let hub = mock();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let code = format!(
        "from huggingface_hub import hf_hub_download\n\
         for f in ['{WEIGHTS}', '{CONFIG}']:\n\
         \x20   print(hf_hub_download('{REPO}', f, cache_dir=r'{}', endpoint='{}', token=False))\n",
        cache.display(),
        hub.url
    );
    let printed = python(&code, dir.path(), false);
    let python_paths: Vec<PathBuf> = printed.lines().map(PathBuf::from).collect();
    assert_eq!(python_paths.len(), 2, "{printed}");

    hub.clear_log();
    let ours = Hub::new(HubSettings {
        endpoint: hub.url.clone(),
        offline: true,
        ..HubSettings::new(&cache)
    })
    .unwrap();
    for (file, python_path) in [WEIGHTS, CONFIG].iter().zip(&python_paths) {
        let got = ours
            .download(REPO, "main", file, &mut NullObserver, &Cancel::new())
            .unwrap();
        assert_eq!(&got.path, python_path);
        assert_eq!(got.commit, commit_of(REPO));
    }
    assert_eq!(
        std::fs::read(&python_paths[0]).unwrap(),
        pattern(300_000, 11)
    );
    assert!(
        hub.requests().is_empty(),
        "offline lookups used the network"
    );
    let listed = ours.cache().list().unwrap();
    assert_eq!(listed[0].repo, REPO);
    assert_eq!(listed[0].revisions[0].files.len(), 2);
}

#[test]
fn files_downloaded_by_ours_are_found_by_huggingface_hub_offline() {
    let hub = mock();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let ours = Hub::new(HubSettings {
        endpoint: hub.url.clone(),
        ..HubSettings::new(&cache)
    })
    .unwrap();
    let got = ours
        .download_files(
            REPO,
            "main",
            &[WEIGHTS, CONFIG],
            &mut NullObserver,
            &Cancel::new(),
        )
        .unwrap();
    hub.clear_log();
    let code = format!(
        "import json\n\
         from huggingface_hub import hf_hub_download, scan_cache_dir\n\
         paths = [hf_hub_download('{REPO}', f, cache_dir=r'{c}') for f in ['{WEIGHTS}', '{CONFIG}']]\n\
         info = scan_cache_dir(r'{c}')\n\
         repo = [r for r in info.repos if r.repo_id == '{REPO}'][0]\n\
         print(json.dumps({{'paths': paths, 'warnings': [str(w) for w in info.warnings],\n\
         \x20   'size': repo.size_on_disk, 'refs': sorted(r for rev in repo.revisions for r in rev.refs),\n\
         \x20   'commits': [rev.commit_hash for rev in repo.revisions],\n\
         \x20   'files': sorted(f.file_name for rev in repo.revisions for f in rev.files)}}))\n",
        c = cache.display()
    );
    let printed = python(&code, dir.path(), true);
    let v: serde_json::Value = serde_json::from_str(printed.trim()).unwrap();
    let paths: Vec<PathBuf> = v["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    assert_eq!(paths, [got[0].path.clone(), got[1].path.clone()]);
    assert_eq!(
        v["warnings"],
        serde_json::json!([]),
        "scan_cache_dir complained"
    );
    assert_eq!(v["size"], serde_json::json!(300_000 + 9));
    assert_eq!(v["refs"], serde_json::json!(["main"]));
    assert_eq!(v["commits"], serde_json::json!([commit_of(REPO)]));
    assert_eq!(v["files"], serde_json::json!([CONFIG, WEIGHTS]));
    assert!(hub.requests().is_empty(), "huggingface_hub went online");
    assert!(cache
        .join("models--org--model/blobs")
        .join(sha256_hex(&pattern(300_000, 11)))
        .is_file());
}
