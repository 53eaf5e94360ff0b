//! `csm download`, `csm models` and hub ids in path flags, against csm-hub's
//! mock hub on 127.0.0.1 (HF_ENDPOINT points the binary at it).

#[path = "../../csm-hub/tests/support/mock_hub.rs"]
mod mock_hub;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mock_hub::{pattern, MockFile, MockHub};

const CSM: &str = env!("CARGO_BIN_EXE_csm");

/// The three repos of the `csm-1b` bundle (tiny stand-ins) and another.
fn mock() -> MockHub {
    MockHub::start(vec![
        MockFile::lfs("sesame/csm-1b", "model.safetensors", pattern(200_000, 1)),
        MockFile::git("sesame/csm-1b", "config.json", b"{}\n"),
        MockFile::lfs(
            "kyutai/moshiko-pytorch-bf16",
            "tokenizer-e351c8d8-checkpoint125.safetensors",
            pattern(50_000, 2),
        ),
        MockFile::git("unsloth/Llama-3.2-1B", "tokenizer.json", b"{\"t\": 1}\n"),
        MockFile::lfs("org/model", "model.safetensors", pattern(80_000, 3)),
        MockFile::git("org/model", "config.json", b"{\"m\": 1}\n"),
    ])
}

/// Runs `csm` with a clean hub environment: cache under `home`, the mock
/// as endpoint, plus `env`.
fn csm(hub: &MockHub, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(CSM);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("HF_")
            || k.starts_with("HUGGING")
            || k.to_ascii_lowercase().ends_with("_proxy")
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home)
        .env("HF_HOME", home.join("hf"))
        .env("HF_ENDPOINT", &hub.url)
        .envs(env.iter().copied());
    cmd.output().expect("runs the csm binary")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(out: Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    stdout
}

fn fails(out: Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "succeeded:\n{stdout}\n{stderr}");
    stderr
}

#[test]
fn download_prints_paths_and_models_lists_and_removes() {
    let hub = mock();
    let home = tempfile::tempdir().unwrap();
    let stdout = ok(csm(
        &hub,
        home.path(),
        &["download", "org/model", "model.safetensors", "config.json"],
        &[],
    ));
    let paths: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    assert_eq!(paths.len(), 2, "{stdout}");
    let cache = home.path().join("hf/hub");
    assert!(paths[0].starts_with(cache.join("models--org--model/snapshots")));
    assert_eq!(std::fs::read(&paths[0]).unwrap(), pattern(80_000, 3));
    assert_eq!(std::fs::read(&paths[1]).unwrap(), b"{\"m\": 1}\n");

    // No file names: the repo's listing.
    let again = ok(csm(&hub, home.path(), &["download", "org/model"], &[]));
    assert_eq!(again, stdout);

    let listed = ok(csm(&hub, home.path(), &["models"], &[]));
    assert!(listed.contains("org/model"), "{listed}");
    assert!(listed.contains("main ("), "{listed}");
    assert!(listed.contains("80.0 kB"), "{listed}");
    assert!(
        listed.contains("config.json, model.safetensors"),
        "{listed}"
    );

    let removed = ok(csm(&hub, home.path(), &["models", "rm", "org/model"], &[]));
    assert!(removed.contains("removed org/model"), "{removed}");
    assert!(!cache.join("models--org--model").exists());
    let err = fails(csm(&hub, home.path(), &["models", "rm", "org/model"], &[]));
    assert!(err.contains("org/model is not in the cache"), "{err}");
    let listed = ok(csm(&hub, home.path(), &["models"], &[]));
    assert!(listed.contains("no models in"), "{listed}");
}

#[test]
fn the_csm_1b_bundle_downloads_three_repos() {
    let hub = mock();
    let home = tempfile::tempdir().unwrap();
    let stdout = ok(csm(&hub, home.path(), &["download", "csm-1b"], &[]));
    let paths: Vec<&str> = stdout.lines().collect();
    assert_eq!(paths.len(), 4, "{stdout}");
    for (path, folder) in paths.iter().zip([
        "models--sesame--csm-1b",
        "models--sesame--csm-1b",
        "models--kyutai--moshiko-pytorch-bf16",
        "models--unsloth--Llama-3.2-1B",
    ]) {
        assert!(path.contains(folder), "{path}");
        assert!(Path::new(path).is_file(), "{path}");
    }
}

#[test]
fn gated_and_offline_errors_say_what_to_do() {
    let hub = mock();
    hub.gate("sesame/csm-1b", "hf_ok");
    let home = tempfile::tempdir().unwrap();
    let err = fails(csm(&hub, home.path(), &["download", "sesame/csm-1b"], &[]));
    assert!(err.contains(&format!("{}/sesame/csm-1b", hub.url)), "{err}");
    assert!(
        err.contains("HF_TOKEN") && err.contains("huggingface-cli login"),
        "{err}"
    );

    // The token file `huggingface-cli login` writes is used, and never sent
    // to the CDN.
    std::fs::create_dir_all(home.path().join("hf")).unwrap();
    std::fs::write(home.path().join("hf/token"), "hf_ok\n").unwrap();
    ok(csm(&hub, home.path(), &["download", "sesame/csm-1b"], &[]));
    assert!(hub
        .requests()
        .iter()
        .filter(|r| r.server == "cdn")
        .all(|r| r.header("authorization").is_none()));

    let err = fails(csm(
        &hub,
        home.path(),
        &["download", "org/model", "config.json"],
        &[("HF_HUB_OFFLINE", "1")],
    ));
    assert!(
        err.contains("org/model/config.json") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    let err = fails(csm(
        &hub,
        home.path(),
        &["download", "org/model", "nope.bin"],
        &[],
    ));
    assert!(err.contains("has no file `nope.bin`"), "{err}");
}

#[test]
fn hub_ids_are_accepted_where_a_model_path_is() {
    let hub = mock();
    let home = tempfile::tempdir().unwrap();
    // Offline with nothing cached: the flag is named with the reason.
    let args = [
        "merge",
        "--model-path",
        "org/model",
        "--adapter",
        "none",
        "--output-dir",
        "out",
    ];
    let err = fails(csm(&hub, home.path(), &args, &[("HF_HUB_OFFLINE", "1")]));
    assert!(
        err.contains("--model-path org/model") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    assert!(hub.requests().is_empty());

    // Online: the files are fetched into the cache and the loader is given
    // the snapshot folder (the stand-in weights then fail to load).
    let err = fails(csm(&hub, home.path(), &args, &[]));
    assert!(err.contains("models--org--model/snapshots/"), "{err}");
    assert!(home
        .path()
        .join("hf/hub/models--org--model/refs/main")
        .is_file());

    // The bundle name brings the codec and tokenizer of other repos along.
    let gen = [
        "generate",
        "--model-path",
        "csm-1b",
        "--text",
        "hi",
        "--output",
        "x.wav",
    ];
    let err = fails(csm(&hub, home.path(), &gen, &[]));
    assert!(err.contains("models--sesame--csm-1b/snapshots/"), "{err}");
    let cache = home.path().join("hf/hub");
    for folder in [
        "models--kyutai--moshiko-pytorch-bf16",
        "models--unsloth--Llama-3.2-1B",
    ] {
        assert!(cache.join(folder).join("refs/main").is_file(), "{folder}");
    }
}
