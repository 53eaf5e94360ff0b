//! The client against an in-process mock hub and CDN on 127.0.0.1.

#[path = "support/mock_hub.rs"]
mod mock_hub;
#[path = "support/tmpfs.rs"]
mod tmpfs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use csm_hub::{
    Cancel, DownloadEvent, Hub, HubError, HubSettings, NullObserver, Token, TokenSource,
};
use mock_hub::{commit_of, pattern, sha256_hex, MockFile, MockHub};

const REPO: &str = "org/model";
const WEIGHTS: &str = "model.safetensors";
const CONFIG: &str = "config.json";
const CONFIG_JSON: &[u8] = b"{\"model_type\": \"csm\"}\n";

fn weights() -> Vec<u8> {
    pattern(600_000, 7)
}

fn mock() -> MockHub {
    MockHub::start(vec![
        MockFile::lfs(REPO, WEIGHTS, weights()),
        MockFile::git(REPO, CONFIG, CONFIG_JSON),
        MockFile::git(REPO, "sub/dir/notes.txt", b"nested\n"),
    ])
}

fn settings(hub: &MockHub, cache: &Path) -> HubSettings {
    HubSettings {
        endpoint: hub.url.clone(),
        retries: 0,
        retry_delay: Duration::from_millis(10),
        timeout: Duration::from_secs(10),
        ..HubSettings::new(cache)
    }
}

fn client(hub: &MockHub, cache: &Path) -> Hub {
    Hub::new(settings(hub, cache)).unwrap()
}

/// Records every event as a line.
#[derive(Default)]
struct Log(Vec<String>);

impl csm_hub::DownloadObserver for Log {
    fn on_event(&mut self, e: &DownloadEvent<'_>) {
        self.0.push(match e {
            DownloadEvent::Resolving { file, .. } => format!("resolving {file}"),
            DownloadEvent::Cached { file, .. } => format!("cached {file}"),
            DownloadEvent::WaitingForLock { file, .. } => format!("waiting {file}"),
            DownloadEvent::Started {
                file,
                total,
                resumed_from,
                ..
            } => format!("started {file} {total:?} from {resumed_from}"),
            DownloadEvent::Progress {
                file, done, total, ..
            } => format!("progress {file} {done}/{}", total.unwrap_or(0)),
            DownloadEvent::Retrying { file, attempt, .. } => format!("retry {file} {attempt}"),
            DownloadEvent::Verifying { file, .. } => format!("verifying {file}"),
            DownloadEvent::Finished { file, size, .. } => format!("finished {file} {size}"),
            _ => "other".into(),
        });
    }
}

fn blobs(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.join("models--org--model/blobs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn downloads_lfs_and_git_files_into_the_shared_layout() {
    let hub = mock();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&hub, dir.path());
    let mut log = Log::default();
    let got = client
        .download(REPO, "main", WEIGHTS, &mut log, &Cancel::new())
        .unwrap();
    let commit = commit_of(REPO);
    let repo_dir = dir.path().join("models--org--model");
    assert_eq!(got.commit, commit);
    assert_eq!(
        got.path,
        repo_dir.join("snapshots").join(&commit).join(WEIGHTS)
    );
    assert_eq!(std::fs::read(&got.path).unwrap(), weights());
    assert_eq!(
        std::fs::read_link(&got.path).unwrap(),
        PathBuf::from("../../blobs").join(sha256_hex(&weights()))
    );
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        commit
    );
    assert!(dir
        .path()
        .join(".locks/models--org--model")
        .join(format!("{}.lock", sha256_hex(&weights())))
        .exists());
    assert_eq!(log.0.first().unwrap(), "resolving model.safetensors");
    assert!(log
        .0
        .contains(&"started model.safetensors Some(600000) from 0".to_string()));
    assert!(log
        .0
        .contains(&"progress model.safetensors 600000/600000".to_string()));
    assert_eq!(log.0.last().unwrap(), "finished model.safetensors 600000");

    // A git file (ETag = git blob sha1, served by the hub itself) and a
    // nested one.
    let config = client
        .download(REPO, "main", CONFIG, &mut NullObserver, &Cancel::new())
        .unwrap();
    assert_eq!(std::fs::read(&config.path).unwrap(), CONFIG_JSON);
    let nested = client
        .download(
            REPO,
            "main",
            "sub/dir/notes.txt",
            &mut NullObserver,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(std::fs::read(&nested.path).unwrap(), b"nested\n");
    assert!(std::fs::read_link(&nested.path)
        .unwrap()
        .starts_with("../../../../blobs"));

    // Second time: one HEAD, no transfer.
    hub.clear_log();
    let mut log = Log::default();
    let again = client
        .download(REPO, "main", WEIGHTS, &mut log, &Cancel::new())
        .unwrap();
    assert_eq!(again.path, got.path);
    assert_eq!(
        log.0,
        ["resolving model.safetensors", "cached model.safetensors"]
    );
    assert!(hub.served(WEIGHTS).is_empty());
    // By commit hash: no network at all.
    hub.clear_log();
    client
        .download(REPO, &commit, WEIGHTS, &mut NullObserver, &Cancel::new())
        .unwrap();
    assert!(hub.requests().is_empty());
    assert!(blobs(dir.path())
        .iter()
        .all(|b| !b.ends_with(".incomplete")));
}

#[test]
fn a_cut_connection_resumes_with_range_within_the_call() {
    let hub = mock();
    let dir = tempfile::tempdir().unwrap();
    let client = Hub::new(HubSettings {
        retries: 2,
        ..settings(&hub, dir.path())
    })
    .unwrap();
    hub.cut_next(WEIGHTS, 250_000);
    let mut log = Log::default();
    let got = client
        .download(REPO, "main", WEIGHTS, &mut log, &Cancel::new())
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), weights());
    assert_eq!(hub.served(WEIGHTS), [250_000, 350_000]);
    let ranges: Vec<Option<String>> = hub
        .requests()
        .iter()
        .filter(|r| r.server == "cdn")
        .map(|r| r.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranges, [None, Some("bytes=250000-".to_string())]);
    assert!(
        log.0.contains(&"retry model.safetensors 1".to_string()),
        "{:?}",
        log.0
    );
    assert!(log
        .0
        .contains(&"started model.safetensors Some(600000) from 250000".to_string()));
}

#[test]
fn an_interrupted_download_is_resumed_by_the_next_call() {
    let hub = mock();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&hub, dir.path());
    hub.cut_next(WEIGHTS, 100_000);
    let err = client
        .download(REPO, "main", WEIGHTS, &mut NullObserver, &Cancel::new())
        .unwrap_err();
    let HubError::Interrupted { done, partial, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*done, 100_000);
    assert!(err.to_string().contains("resume"), "{err}");
    // Only the partial file: nothing at a final path.
    assert_eq!(std::fs::metadata(partial).unwrap().len(), 100_000);
    assert_eq!(
        blobs(dir.path()),
        [format!("{}.incomplete", sha256_hex(&weights()))]
    );
    assert!(!dir
        .path()
        .join("models--org--model/snapshots")
        .join(commit_of(REPO))
        .join(WEIGHTS)
        .exists());

    // A new client (as a new process would) fetches only the rest.
    let client = self::client(&hub, dir.path());
    let got = client
        .download(REPO, "main", WEIGHTS, &mut NullObserver, &Cancel::new())
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), weights());
    assert_eq!(hub.served(WEIGHTS), [100_000, 500_000]);
}

#[test]
fn a_corrupted_body_is_deleted_and_reported() {
    let hub = mock();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&hub, dir.path());
    hub.corrupt(WEIGHTS, true);
    let err = client
        .download(REPO, "main", WEIGHTS, &mut NullObserver, &Cancel::new())
        .unwrap_err();
    assert!(
        matches!(
            err,
            HubError::ChecksumMismatch {
                algorithm: "sha256",
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("deleted"),
        "{msg}"
    );
    assert!(msg.contains(&sha256_hex(&weights())), "{msg}");
    assert!(blobs(dir.path()).is_empty(), "{:?}", blobs(dir.path()));

    // A git file is checked too (git blob sha1).
    hub.corrupt(CONFIG, true);
    let err = client
        .download(REPO, "main", CONFIG, &mut NullObserver, &Cancel::new())
        .unwrap_err();
    assert!(
        matches!(
            err,
            HubError::ChecksumMismatch {
                algorithm: "git-sha1",
                ..
            }
        ),
        "{err}"
    );

    hub.corrupt(WEIGHTS, false);
    let got = client
        .download(REPO, "main", WEIGHTS, &mut NullObserver, &Cancel::new())
        .unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), weights());
}

#[test]
fn gated_repo_names_the_licence_page_and_how_to_give_a_token() {
    let hub = mock();
    hub.gate(REPO, "hf_good");
    let dir = tempfile::tempdir().unwrap();
    let err = client(&hub, dir.path())
        .download(REPO, "main", CONFIG, &mut NullObserver, &Cancel::new())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, HubError::AccessDenied { status: 401, .. }),
        "{msg}"
    );
    assert!(msg.contains(&format!("{}/org/model", hub.url)), "{msg}");
    assert!(
        msg.contains("HF_TOKEN") && msg.contains("huggingface-cli login"),
        "{msg}"
    );

    let with = |token: &str| {
        Hub::new(HubSettings {
            token: Some(Token::new(
                token,
                TokenSource::Environment("HF_TOKEN".into()),
            )),
            ..settings(&hub, dir.path())
        })
        .unwrap()
    };
    let err = with("hf_wrong")
        .download(REPO, "main", CONFIG, &mut NullObserver, &Cancel::new())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, HubError::AccessDenied { status: 403, .. }),
        "{msg}"
    );
    assert!(msg.contains("from $HF_TOKEN"), "{msg}");
    assert!(!msg.contains("hf_wrong"), "the token leaked into: {msg}");
    with("hf_good")
        .download(REPO, "main", CONFIG, &mut NullObserver, &Cancel::new())
        .unwrap();
    // Once cached, a refusing hub still lets the cached copy serve (as
    // huggingface_hub does); a file never downloaded stays refused.
    let cached = client(&hub, dir.path())
        .download(REPO, "main", CONFIG, &mut NullObserver, &Cancel::new())
        .unwrap();
    assert_eq!(std::fs::read(cached.path).unwrap(), CONFIG_JSON);
    let err = client(&hub, dir.path())
        .download(REPO, "main", WEIGHTS, &mut NullObserver, &Cancel::new())
        .unwrap_err();
    assert!(matches!(err, HubError::AccessDenied { .. }), "{err}");
}

#[test]
fn the_token_goes_to_the_hub_only_never_to_the_cdn() {
    let hub = mock();
    hub.gate(REPO, "hf_secret");
    let dir = tempfile::tempdir().unwrap();
    let client = Hub::new(HubSettings {
        token: Some(Token::new("hf_secret", TokenSource::Explicit)),
        ..settings(&hub, dir.path())
    })
    .unwrap();
    client
        .download(REPO, "main", WEIGHTS, &mut NullObserver, &Cancel::new())
        .unwrap();
    let requests = hub.requests();
    let (hub_requests, cdn_requests): (Vec<_>, Vec<_>) =
        requests.iter().partition(|r| r.server == "hub");
    assert!(!hub_requests.is_empty() && !cdn_requests.is_empty());
    for r in &hub_requests {
        assert_eq!(r.header("authorization"), Some("Bearer hf_secret"), "{r:?}");
    }
    for r in &cdn_requests {
        assert_eq!(
            r.header("authorization"),
            None,
            "token sent to the CDN: {r:?}"
        );
    }
}

#[test]
fn missing_file_revision_and_repo_are_told_apart() {
    let hub = mock();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&hub, dir.path());
    let none = |repo: &str, rev: &str, file: &str| {
        client
            .download(repo, rev, file, &mut NullObserver, &Cancel::new())
            .unwrap_err()
    };
    let err = none(REPO, "main", "nope.bin");
    assert!(matches!(err, HubError::FileNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("org/model has no file `nope.bin`"),
        "{err}"
    );
    let err = none(REPO, "v9", CONFIG);
    assert!(matches!(err, HubError::RevisionNotFound { .. }), "{err}");
    assert!(err.to_string().contains("no revision `v9`"), "{err}");
    let err = none("org/unknown", "main", CONFIG);
    assert!(matches!(err, HubError::RepoNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("org/unknown was not found"),
        "{err}"
    );
    let err = none("not a repo", "main", CONFIG);
    assert!(matches!(err, HubError::InvalidRepoId { .. }), "{err}");
    let err = none(REPO, "main", "../escape");
    assert!(matches!(err, HubError::InvalidFileName { .. }), "{err}");
    // Nothing was created for any of them but the ref of the repo that
    // exists.
    assert!(blobs(dir.path()).is_empty());
    assert!(!dir.path().join("models--org--unknown").exists());
}

#[test]
fn two_concurrent_downloads_of_one_file_transfer_it_once() {
    let hub = mock();
    hub.throttle(Some(Duration::from_millis(15)));
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(client(&hub, dir.path()));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || {
                let mut log = Log::default();
                let got = client.download(REPO, "main", WEIGHTS, &mut log, &Cancel::new());
                (got, log.0)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (got, _) in &results {
        let got = got.as_ref().unwrap();
        assert_eq!(std::fs::read(&got.path).unwrap(), weights());
    }
    assert_eq!(hub.served(WEIGHTS), [600_000], "transferred more than once");
    let waited = results
        .iter()
        .filter(|(_, log)| log.iter().any(|l| l.starts_with("waiting")))
        .count();
    assert_eq!(waited, 1, "{results:?}");
    assert_eq!(blobs(dir.path()), [sha256_hex(&weights())]);
}

#[test]
fn offline_uses_a_warm_cache_and_names_what_a_cold_one_lacks() {
    let hub = mock();
    let dir = tempfile::tempdir().unwrap();
    client(&hub, dir.path())
        .download(REPO, "main", WEIGHTS, &mut NullObserver, &Cancel::new())
        .unwrap();
    hub.clear_log();
    let offline = Hub::new(HubSettings {
        offline: true,
        ..settings(&hub, dir.path())
    })
    .unwrap();
    let got = offline
        .download(REPO, "main", WEIGHTS, &mut NullObserver, &Cancel::new())
        .unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), weights());
    let err = offline
        .download(REPO, "main", CONFIG, &mut NullObserver, &Cancel::new())
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::NotCachedOffline { .. }), "{msg}");
    assert!(
        msg.contains("org/model/config.json") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
    let cold = tempfile::tempdir().unwrap();
    let err = Hub::new(HubSettings {
        offline: true,
        ..settings(&hub, cold.path())
    })
    .unwrap()
    .download(REPO, "main", WEIGHTS, &mut NullObserver, &Cancel::new())
    .unwrap_err();
    assert!(matches!(err, HubError::NotCachedOffline { .. }), "{err}");
    assert!(hub.requests().is_empty(), "offline mode used the network");
    assert!(std::fs::read_dir(cold.path()).unwrap().next().is_none());
}

#[test]
fn an_unreachable_hub_falls_back_to_the_cache() {
    let hub = mock();
    let dir = tempfile::tempdir().unwrap();
    client(&hub, dir.path())
        .download(REPO, "main", CONFIG, &mut NullObserver, &Cancel::new())
        .unwrap();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = Hub::new(HubSettings {
        endpoint: url.clone(),
        ..settings(&hub, dir.path())
    })
    .unwrap();
    let got = unreachable
        .download(REPO, "main", CONFIG, &mut NullObserver, &Cancel::new())
        .unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), CONFIG_JSON);
    let err = unreachable
        .download(REPO, "main", WEIGHTS, &mut NullObserver, &Cancel::new())
        .unwrap_err();
    assert!(matches!(err, HubError::Network { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}

#[test]
fn cancel_keeps_the_partial_file_for_resuming() {
    let hub = mock();
    hub.throttle(Some(Duration::from_millis(5)));
    let dir = tempfile::tempdir().unwrap();
    let client = client(&hub, dir.path());
    let cancel = Cancel::new();
    let flag = cancel.clone();
    let mut stop_midway = |e: &DownloadEvent<'_>| {
        if let DownloadEvent::Progress { done, .. } = e {
            if *done >= 100_000 {
                flag.cancel();
            }
        }
    };
    let err = client
        .download(REPO, "main", WEIGHTS, &mut stop_midway, &cancel)
        .unwrap_err();
    let HubError::Cancelled { done, .. } = err else {
        panic!("{err}")
    };
    assert!((100_000..600_000).contains(&done), "{done}");
    assert_eq!(
        blobs(dir.path()),
        [format!("{}.incomplete", sha256_hex(&weights()))]
    );
    hub.throttle(None);
    let got = client
        .download(REPO, "main", WEIGHTS, &mut NullObserver, &Cancel::new())
        .unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), weights());
    // The cancelled response may still be draining on the mock's side, so
    // look for the resumed one rather than at the order.
    assert!(
        hub.served(WEIGHTS).contains(&(600_000 - done)),
        "{:?}",
        hub.served(WEIGHTS)
    );
    let resumed = format!("bytes={done}-");
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.server == "cdn" && r.header("range") == Some(resumed.as_str())));
}

#[test]
fn repo_listing_cache_listing_and_delete() {
    let hub = mock();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&hub, dir.path());
    let files = client.repo_files(REPO, "main").unwrap();
    assert_eq!(files.commit, commit_of(REPO));
    assert_eq!(files.files, [WEIGHTS, CONFIG, "sub/dir/notes.txt"]);
    let names: Vec<&str> = files.files.iter().map(String::as_str).collect();
    let got = client
        .download_files(REPO, "main", &names, &mut NullObserver, &Cancel::new())
        .unwrap();
    assert_eq!(got.len(), 3);

    let listed = client.cache().list().unwrap();
    assert_eq!(listed.len(), 1);
    let repo = &listed[0];
    assert_eq!(repo.repo, REPO);
    assert_eq!(
        repo.size_on_disk,
        (600_000 + CONFIG_JSON.len() + b"nested\n".len()) as u64
    );
    assert_eq!(repo.revisions.len(), 1);
    assert_eq!(repo.revisions[0].refs, ["main"]);
    let listed_names: Vec<&str> = repo.revisions[0]
        .files
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(listed_names, [CONFIG, WEIGHTS, "sub/dir/notes.txt"]);

    let offline = Hub::new(HubSettings {
        offline: true,
        ..settings(&hub, dir.path())
    })
    .unwrap();
    assert_eq!(offline.repo_files(REPO, "main").unwrap().files.len(), 3);

    let deleted = client.cache().delete_repo(REPO).unwrap();
    assert_eq!(deleted.freed, repo.size_on_disk);
    assert!(!dir.path().join("models--org--model").exists());
    assert!(!dir.path().join(".locks/models--org--model").exists());
    assert!(client.cache().list().unwrap().is_empty());
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "mounts a 1 MiB tmpfs in a private mount namespace (Linux only)"
)]
fn a_full_disk_is_refused_before_anything_is_written() {
    tmpfs::run_in_tmpfs(
        "a_full_disk_is_refused_before_anything_is_written",
        "size=1m",
        |small| {
            let hub = MockHub::start(vec![MockFile::lfs(REPO, WEIGHTS, pattern(3_000_000, 3))]);
            let cache = small.join("hub");
            let err = client(&hub, &cache)
                .download(REPO, "main", WEIGHTS, &mut NullObserver, &Cancel::new())
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(
                    err,
                    HubError::NoSpace {
                        needed: 3_000_000,
                        ..
                    }
                ),
                "{msg}"
            );
            assert!(
                msg.contains("3.0 MB more needed")
                    && msg.contains(&cache.display().to_string())
                    && msg.contains("HF_HUB_CACHE"),
                "{msg}"
            );
            assert!(
                hub.served(WEIGHTS).is_empty(),
                "transferred despite the full disk"
            );
            assert!(blobs(&cache).is_empty());
            assert!(!cache
                .join("models--org--model/snapshots")
                .join(commit_of(REPO))
                .exists());
        },
    );
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "mounts a read-only tmpfs in a private mount namespace (Linux only)"
)]
fn a_read_only_cache_is_a_clear_error() {
    tmpfs::run_in_tmpfs("a_read_only_cache_is_a_clear_error", "ro,size=1m", |ro| {
        let hub = mock();
        let cache = ro.join("hub");
        let err = client(&hub, &cache)
            .download(REPO, "main", CONFIG, &mut NullObserver, &Cancel::new())
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HubError::CacheNotWritable { .. }), "{msg}");
        assert!(
            msg.contains(&cache.display().to_string()) && msg.contains("HF_HUB_CACHE"),
            "{msg}"
        );
        assert!(hub.served(CONFIG).is_empty());
    });
}

#[test]
fn a_cache_path_under_a_file_is_a_clear_error() {
    // Unwritable for root too: a folder cannot be made under a file.
    let hub = mock();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    let cache = file.join("hub");
    let err = client(&hub, &cache)
        .download(REPO, "main", CONFIG, &mut NullObserver, &Cancel::new())
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::CacheNotWritable { .. }), "{msg}");
    assert!(
        msg.contains(&cache.display().to_string()) && msg.contains("HF_HUB_CACHE"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    assert!(hub.served(CONFIG).is_empty());
}
