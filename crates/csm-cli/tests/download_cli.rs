//! `csm download`, `csm models` and hub ids in path flags, against csm-hub's
//! mock hub on 127.0.0.1 (HF_ENDPOINT points the binary at it).

#[path = "../../csm-hub/tests/support/mock_hub.rs"]
mod mock_hub;
#[path = "../../csm-hub/tests/support/tmpfs.rs"]
mod tmpfs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mock_hub::{pattern, wheel, MockFile, MockHub};

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

/// Gives `cmd` a clean hub environment: caches under `home`, the mock as
/// hub and package index, plus `env`.
fn hub_env(cmd: &mut Command, hub: &MockHub, home: &Path, env: &[(&str, &str)]) {
    for (k, _) in std::env::vars() {
        if k.starts_with("HF_")
            || k.starts_with("HUGGING")
            || k.starts_with("CSM_PYPI")
            || k.to_ascii_lowercase().ends_with("_proxy")
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home)
        .env("HF_HOME", home.join("hf"))
        .env("HF_ENDPOINT", &hub.url)
        .env("CSM_PYPI_URL", &hub.pypi_url)
        .envs(env.iter().copied());
}

/// Runs `csm` with [`hub_env`].
fn csm(hub: &MockHub, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(CSM);
    cmd.args(args);
    hub_env(&mut cmd, hub, home, env);
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

/// Files of a whisper-tiny stand-in (bytes only: enough to test which files
/// are fetched and where they go).
fn whisper_stand_in(hub_files: &mut Vec<MockFile>, repo: &str) {
    hub_files.extend([
        MockFile::git(repo, "config.json", b"{\"model_type\": \"whisper\"}\n"),
        MockFile::git(repo, "generation_config.json", b"{}\n"),
        MockFile::lfs(repo, "model.safetensors", pattern(120_000, 9)),
        MockFile::git(repo, "tokenizer.json", b"{\"t\": 2}\n"),
        MockFile::lfs(repo, "pytorch_model.bin", pattern(90_000, 10)),
    ]);
}

#[test]
fn whisper_bundles_download_list_resolve_and_remove() {
    let mut files = Vec::new();
    whisper_stand_in(&mut files, "openai/whisper-tiny");
    let hub = MockHub::start(files);
    let home = tempfile::tempdir().unwrap();
    let raw = home.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let transcribe = |env: &[(&str, &str)]| {
        let raw = raw.display().to_string();
        let out = home.path().join("data").display().to_string();
        csm(
            &hub,
            home.path(),
            &[
                "transcribe",
                "--audio-dir",
                &raw,
                "--output-dir",
                &out,
                "--whisper-model",
                "whisper-tiny",
            ],
            env,
        )
    };
    // Offline with nothing cached: the flag, the file and the way out.
    let err = fails(transcribe(&[("HF_HUB_OFFLINE", "1")]));
    assert!(
        err.contains("--whisper-model whisper-tiny")
            && err.contains("openai/whisper-tiny/config.json")
            && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    assert!(hub.requests().is_empty());

    let stdout = ok(csm(&hub, home.path(), &["download", "whisper-tiny"], &[]));
    let paths: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    let names: Vec<&str> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json"
        ]
    );
    let snapshot = paths[0].parent().unwrap();
    assert!(paths.iter().all(|p| p.parent().unwrap() == snapshot));
    assert!(snapshot.starts_with(home.path().join("hf/hub/models--openai--whisper-tiny")));
    assert!(hub.served("pytorch_model.bin").is_empty());

    // Cached: resolved offline, and the folder handed to the loader (the
    // stand-in weights then fail to load, naming it).
    let err = fails(transcribe(&[("HF_HUB_OFFLINE", "1")]));
    assert!(
        err.contains("loading Whisper from") && err.contains(&snapshot.display().to_string()),
        "{err}"
    );

    let listed = ok(csm(&hub, home.path(), &["models"], &[]));
    let row = listed
        .lines()
        .find(|l| l.starts_with("whisper-tiny "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(row.contains(" yes ") && row.contains("120.0 kB"), "{row}");
    assert!(listed.contains("openai/whisper-tiny"), "{listed}");

    let removed = ok(csm(
        &hub,
        home.path(),
        &["models", "rm", "whisper-tiny"],
        &[],
    ));
    assert!(removed.contains("removed bundle whisper-tiny"), "{removed}");
    assert!(!home
        .path()
        .join("hf/hub/models--openai--whisper-tiny")
        .exists());
    let err = fails(csm(
        &hub,
        home.path(),
        &["models", "rm", "whisper-tiny"],
        &[],
    ));
    assert!(
        err.contains("bundle whisper-tiny is not in the cache"),
        "{err}"
    );
}

#[test]
fn a_whisper_hub_id_fetches_only_what_the_loader_reads_and_transcribes() {
    // The tiny random Whisper of the fixtures, published as a hub repo no
    // bundle knows, with openai-whisper's vocabulary as its tokenizer.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/whisper");
    let home = tempfile::tempdir().unwrap();
    let unzip = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(fixtures.join("multilingual.tiktoken.zip"))
        .arg(home.path())
        .status()
        .expect("python3 unzips");
    assert!(unzip.success());
    let repo = "org/whisper-test";
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let hub = MockHub::start(vec![
        MockFile::git(
            repo,
            "config.json",
            &read(fixtures.join("tiny80/config.json")),
        ),
        MockFile::git(
            repo,
            "generation_config.json",
            &read(fixtures.join("tiny80/generation_config.json")),
        ),
        MockFile::lfs(
            repo,
            "model.safetensors",
            read(fixtures.join("tiny80/model.safetensors")),
        ),
        MockFile::git(
            repo,
            "multilingual.tiktoken",
            &read(home.path().join("multilingual.tiktoken")),
        ),
        MockFile::git(
            repo,
            "preprocessor_config.json",
            &read(fixtures.join("tiny80/preprocessor_config.json")),
        ),
        MockFile::lfs(repo, "pytorch_model.bin", pattern(50_000, 4)),
    ]);
    let raw = home.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::copy(fixtures.join("clip1.wav"), raw.join("clip1.wav")).unwrap();
    let data = home.path().join("data");
    let (raw_s, data_s) = (raw.display().to_string(), data.display().to_string());
    let args = [
        "transcribe",
        "--audio-dir",
        &raw_s,
        "--output-dir",
        &data_s,
        "--whisper-model",
        repo,
        "--language",
        "en",
        "--temperature",
        "0",
    ];
    ok(csm(&hub, home.path(), &args, &[]));
    assert!(data.join("transcripts/clip1.txt").is_file());
    for skipped in ["preprocessor_config.json", "pytorch_model.bin"] {
        assert!(hub.served(skipped).is_empty(), "{skipped} was downloaded");
    }
    let snapshot = home
        .path()
        .join("hf/hub/models--org--whisper-test/snapshots")
        .join(mock_hub::commit_of(repo));
    let mut cached: Vec<String> = std::fs::read_dir(&snapshot)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cached.sort();
    assert_eq!(
        cached,
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "multilingual.tiktoken"
        ]
    );
    // `csm score` takes the same values.
    let sample = raw.join("clip1.wav").display().to_string();
    let out = ok(csm(
        &hub,
        home.path(),
        &["score", "--text", "hello", "--whisper-model", repo, &sample],
        &[("HF_HUB_OFFLINE", "1")],
    ));
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(line["wer"].is_object(), "{line}");
}

#[test]
fn a_speaker_encoder_wheel_with_other_weights_is_refused() {
    // The speaker-encoder bundle pins pretrained.pt's sha256: a wheel with
    // other bytes in its place is refused and deleted, nothing is kept.
    let hub = MockHub::start(vec![]);
    hub.publish(
        "resemblyzer",
        "0.1.4",
        Some((
            "Resemblyzer-0.1.4-py3-none-any.whl",
            wheel(&[("resemblyzer/pretrained.pt", &pattern(4_000, 1))]),
        )),
    );
    let home = tempfile::tempdir().unwrap();
    let err = fails(csm(
        &hub,
        home.path(),
        &["download", "speaker-encoder"],
        &[],
    ));
    assert!(
        err.contains("Resemblyzer-0.1.4-py3-none-any.whl")
            && err.contains("39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e")
            && err.contains("deleted"),
        "{err}"
    );
    let release = home.path().join("hf/assets/csm/pypi--resemblyzer/0.1.4");
    assert_eq!(std::fs::read_dir(&release).unwrap().count(), 0);
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.server == "pypi" && r.path == "/pypi/resemblyzer/0.1.4/json"));
}

#[test]
fn bad_repo_and_revision_are_clear_errors_that_write_nothing() {
    let hub = mock();
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hf/hub");
    let err = fails(csm(&hub, home.path(), &["download", "org/unknown"], &[]));
    assert!(
        err.contains("org/unknown was not found") && err.contains(&hub.url),
        "{err}"
    );
    let err = fails(csm(
        &hub,
        home.path(),
        &["download", "org/model", "config.json", "--revision", "v9"],
        &[],
    ));
    assert!(
        err.contains("org/model has no revision `v9`") && err.contains("/resolve/v9/config.json"),
        "{err}"
    );
    let err = fails(csm(&hub, home.path(), &["download", "not a repo!"], &[]));
    assert!(err.contains("neither a repo id nor a bundle"), "{err}");
    assert!(
        !cache.exists() || std::fs::read_dir(&cache).unwrap().next().is_none(),
        "{:?}",
        std::fs::read_dir(&cache).map(|d| d.count())
    );
}

#[test]
fn a_cache_under_a_file_is_a_clear_error() {
    let hub = mock();
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("plain-file");
    std::fs::write(&file, b"keep me").unwrap();
    let cache = file.join("hub");
    let cache_s = cache.display().to_string();
    let err = fails(csm(
        &hub,
        home.path(),
        &["download", "org/model", "config.json"],
        &[("HF_HUB_CACHE", &cache_s)],
    ));
    assert!(
        err.contains(&cache_s) && err.contains("HF_HUB_CACHE"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "mounts tmpfs file systems in a private mount namespace (Linux only)"
)]
fn a_full_disk_or_read_only_cache_stops_with_nothing_half_written() {
    let hub = mock();
    let home = tempfile::tempdir().unwrap();
    let mount = home.path().join("mnt");
    std::fs::create_dir_all(&mount).unwrap();
    let cache = mount.join("hub");
    let cache_s = cache.display().to_string();
    // The cache and the listing of what is left are both inside the
    // namespace: the mount is gone once the command ends.
    let run = |options: &str| {
        let script = format!(
            "{CSM} download org/model model.safetensors config.json; code=$?; \
             find {cache_s} -type f -o -type l; exit $code"
        );
        let mut cmd = tmpfs::on_tmpfs(&mount, options, Path::new("sh"));
        cmd.args(["-c", &script]);
        hub_env(&mut cmd, &hub, home.path(), &[("HF_HUB_CACHE", &cache_s)]);
        cmd.output().expect("runs unshare")
    };
    // A 64 kB disk for 80 kB of weights.
    let out = run("size=64k");
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{err}");
    assert!(
        err.contains("not enough disk space for org/model/model.safetensors")
            && err.contains("80.0 kB more needed")
            && err.contains(&cache_s),
        "{err}"
    );
    assert!(hub.served("model.safetensors").is_empty());
    // Only the ref and the lock: no blob, no partial file, no snapshot.
    let left: Vec<&str> = stdout.lines().collect();
    assert!(
        left.iter()
            .all(|p| p.contains("/refs/") || p.contains("/.locks/")),
        "{left:?}"
    );

    let out = run("ro,size=1m");
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{err}");
    assert!(
        err.contains("cannot create")
            && err.contains(&cache_s)
            && err.contains("Read-only file system")
            && err.contains("HF_HUB_CACHE"),
        "{err}"
    );
    assert!(stdout.trim().is_empty(), "{stdout}");
    assert!(hub.served("config.json").is_empty());
}

#[test]
#[cfg_attr(
    not(csm_test_speaker_encoder),
    ignore = "needs target/test-data/resemblyzer-pretrained.pt: run scripts/fetch-test-speaker-encoder.sh"
)]
fn the_speaker_encoder_bundle_from_a_mock_index_scores_offline() {
    // A wheel holding the real weights (the bundle pins their sha256),
    // published on the mock index.
    let real = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/test-data/resemblyzer-pretrained.pt"),
    )
    .unwrap();
    let hub = MockHub::start(vec![]);
    hub.publish(
        "resemblyzer",
        "0.1.4",
        Some((
            "Resemblyzer-0.1.4-py3-none-any.whl",
            wheel(&[
                ("resemblyzer/__init__.py", b""),
                ("resemblyzer/pretrained.pt", &real),
            ]),
        )),
    );
    let home = tempfile::tempdir().unwrap();
    let stdout = ok(csm(
        &hub,
        home.path(),
        &["download", "speaker-encoder"],
        &[],
    ));
    let path = PathBuf::from(stdout.trim());
    assert_eq!(
        path,
        home.path()
            .join("hf/assets/csm/pypi--resemblyzer/0.1.4/pretrained.pt")
    );
    assert!(
        std::fs::read(&path).unwrap() == real,
        "extracted bytes differ"
    );
    assert!(!home.path().join("hf/hub").exists());

    let listed = ok(csm(&hub, home.path(), &["models"], &[]));
    let row = listed
        .lines()
        .find(|l| l.starts_with("speaker-encoder "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(row.contains(" yes ") && row.contains("17.1 MB"), "{row}");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("pypi:resemblyzer") && l.contains("0.1.4")),
        "{listed}"
    );

    // csm score finds it without the flag, with no network.
    let reference = home.path().join("ref/audio");
    std::fs::create_dir_all(&reference).unwrap();
    let voice: Vec<f32> = (0..48_000)
        .map(|i| {
            let t = i as f32 / 24_000.0;
            0.2 * (2.0 * std::f32::consts::PI * 180.0 * t).sin()
                + 0.1 * (2.0 * std::f32::consts::PI * 360.0 * t).sin()
        })
        .collect();
    let sample = home.path().join("sample.wav");
    for p in [reference.join("a.wav"), sample.clone()] {
        csm_core::data::audio::write_wav(
            &p,
            &voice,
            24_000,
            csm_core::data::audio::WavEncoding::Int16,
        )
        .unwrap();
    }
    hub.clear_log();
    let out = ok(csm(
        &hub,
        home.path(),
        &[
            "score",
            "--reference-dir",
            reference.to_str().unwrap(),
            sample.to_str().unwrap(),
        ],
        &[("HF_HUB_OFFLINE", "1")],
    ));
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let similarity = line["similarity"]
        .as_f64()
        .unwrap_or_else(|| panic!("{line}"));
    assert!(similarity > 0.99, "{line}");
    assert!(hub.requests().is_empty());

    let removed = ok(csm(
        &hub,
        home.path(),
        &["models", "rm", "speaker-encoder"],
        &[],
    ));
    assert!(
        removed.contains("removed bundle speaker-encoder"),
        "{removed}"
    );
    assert!(!path.exists());
}
