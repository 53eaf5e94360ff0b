//! Files from wheels on a package index, against the mock hub's index and
//! CDN on 127.0.0.1: looked up in the JSON API, transferred with resume and
//! sha256, extracted and checked against the pinned sha256.

#[path = "support/mock_hub.rs"]
mod mock_hub;
#[path = "support/tmpfs.rs"]
mod tmpfs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use csm_hub::{
    Bundle, BundleFile, Cancel, DownloadEvent, Hub, HubError, HubSettings, NullObserver, Role,
    Source, Token, TokenSource, WheelFile,
};
use mock_hub::{pattern, sha256_hex, wheel, MockHub};

const WHEEL: &str = "voicepkg-1.0-py3-none-any.whl";

fn weights() -> Vec<u8> {
    pattern(700_000, 5)
}

/// A release like resemblyzer's: the file we want among others.
fn published(hub: &MockHub) -> Vec<u8> {
    let w = wheel(&[
        ("voicepkg/__init__.py", b"# voice\n"),
        ("voicepkg/weights.pt", &weights()),
        ("voicepkg-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\n"),
    ]);
    hub.publish("voicepkg", "1.0", Some((WHEEL, w.clone())));
    w
}

/// The file wanted, pinned like `RESEMBLYZER_PRETRAINED`. Leaked: the
/// library takes `&'static` bundle data.
fn wanted() -> &'static WheelFile {
    Box::leak(Box::new(WheelFile {
        project: "voicepkg",
        version: "1.0",
        member: "voicepkg/weights.pt",
        sha256: Box::leak(sha256_hex(&weights()).into_boxed_str()),
        size: weights().len() as u64,
    }))
}

fn settings(hub: &MockHub, home: &Path) -> HubSettings {
    HubSettings {
        endpoint: hub.url.clone(),
        pypi_url: hub.pypi_url.clone(),
        retries: 0,
        retry_delay: Duration::from_millis(10),
        timeout: Duration::from_secs(10),
        ..HubSettings::new(home.join("hub"))
    }
}

fn client(hub: &MockHub, home: &Path) -> Hub {
    Hub::new(settings(hub, home)).unwrap()
}

fn release_dir(home: &Path) -> PathBuf {
    home.join("assets/csm/pypi--voicepkg/1.0")
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
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
fn a_wheel_file_is_fetched_verified_and_extracted_without_the_token() {
    let hub = MockHub::start(vec![]);
    let wheel_bytes = published(&hub);
    let home = tempfile::tempdir().unwrap();
    // The index on the hub's own origin: the token must still not go there.
    let client = Hub::new(HubSettings {
        token: Some(Token::new("hf_secret", TokenSource::Explicit)),
        pypi_url: hub.url.clone(),
        ..settings(&hub, home.path())
    })
    .unwrap();
    let mut events = Vec::new();
    let mut log = |e: &DownloadEvent<'_>| {
        events.push(match e {
            DownloadEvent::Resolving { repo, file } => format!("resolving {repo} {file}"),
            DownloadEvent::Started { file, total, .. } => format!("started {file} {total:?}"),
            DownloadEvent::Finished { file, size, .. } => format!("finished {file} {size}"),
            DownloadEvent::Cached { file, .. } => format!("cached {file}"),
            _ => String::new(),
        })
    };
    let got = client
        .download_wheel_file(wanted(), &mut log, &Cancel::new())
        .unwrap();
    let dir = release_dir(home.path());
    assert_eq!(got.path, dir.join("weights.pt"));
    assert_eq!(got.commit, "1.0");
    assert_eq!(std::fs::read(&got.path).unwrap(), weights());
    // The wheel and partial files are gone; nothing inside the hub cache.
    assert_eq!(listing(&dir), ["weights.pt"]);
    assert!(!home.path().join("hub").exists());
    events.retain(|e| !e.is_empty());
    assert_eq!(
        events,
        [
            "resolving pypi:voicepkg==1.0 voicepkg/weights.pt".to_string(),
            format!("started {WHEEL} Some({})", wheel_bytes.len()),
            "finished voicepkg/weights.pt 700000".to_string(),
        ]
    );
    let requests = hub.requests();
    assert_eq!(requests[0].server, "hub");
    assert_eq!(requests[0].path, "/pypi/voicepkg/1.0/json");
    assert_eq!(requests[1].server, "cdn");
    assert_eq!(requests[1].path, format!("/packages/{WHEEL}"));
    assert!(
        requests.iter().all(|r| r.header("authorization").is_none()),
        "the token left the hub: {requests:?}"
    );

    // Cached: no network at all.
    hub.clear_log();
    let again = client
        .download_wheel_file(wanted(), &mut NullObserver, &Cancel::new())
        .unwrap();
    assert_eq!(again.path, got.path);
    assert!(hub.requests().is_empty());
    let listed = client.packages().list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].label(), "pypi:voicepkg==1.0");
    assert_eq!(listed[0].size_on_disk, 700_000);

    // Through a bundle, as `csm download speaker-encoder` does.
    let bundle = Bundle {
        name: "voice",
        description: "test",
        files: Box::leak(Box::new([BundleFile {
            role: Role::SpeakerEncoder,
            repo: "pypi:voicepkg==1.0",
            file: "voicepkg/weights.pt",
            source: Source::Wheel(wanted()),
        }])),
    };
    let files = bundle
        .download(&client, &mut NullObserver, &Cancel::new())
        .unwrap();
    assert_eq!(files[0].1.path, got.path);
    assert_eq!(bundle.cached(&client).unwrap()[0].1, got.path);
    assert_eq!(bundle.cached_size(&client), (700_000, 1));
    let removed = bundle.delete(&client).unwrap();
    assert_eq!(removed[0].freed, 700_000);
    assert!(!dir.exists());
    assert!(bundle.cached(&client).is_none());
    let err = bundle.delete(&client).unwrap_err();
    assert!(err.to_string().contains("bundle voice"), "{err}");
}

#[test]
fn a_corrupted_wheel_is_deleted_and_a_cut_one_resumed() {
    let hub = MockHub::start(vec![]);
    let wheel_bytes = published(&hub);
    let home = tempfile::tempdir().unwrap();
    let client = client(&hub, home.path());
    let dir = release_dir(home.path());

    hub.corrupt(WHEEL, true);
    let err = client
        .download_wheel_file(wanted(), &mut NullObserver, &Cancel::new())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            HubError::ChecksumMismatch {
                algorithm: "sha256",
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains(WHEEL) && msg.contains(&sha256_hex(&wheel_bytes)) && msg.contains("deleted"),
        "{msg}"
    );
    assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));
    hub.corrupt(WHEEL, false);

    // Cut halfway: the partial wheel stays, and the next call asks only
    // for the rest.
    let half = wheel_bytes.len() / 2;
    hub.cut_next(WHEEL, half);
    hub.clear_log();
    let err = client
        .download_wheel_file(wanted(), &mut NullObserver, &Cancel::new())
        .unwrap_err();
    assert!(matches!(err, HubError::Interrupted { .. }), "{err}");
    assert!(err.to_string().contains("resume"), "{err}");
    let partial = format!("{}.incomplete", sha256_hex(&wheel_bytes));
    assert_eq!(listing(&dir), std::slice::from_ref(&partial));
    assert_eq!(
        std::fs::metadata(dir.join(&partial)).unwrap().len(),
        half as u64
    );
    let got = client
        .download_wheel_file(wanted(), &mut NullObserver, &Cancel::new())
        .unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), weights());
    assert_eq!(
        hub.served(WHEEL),
        [half as u64, (wheel_bytes.len() - half) as u64]
    );
    let range = format!("bytes={half}-");
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.server == "cdn" && r.header("range") == Some(range.as_str())));
    assert_eq!(listing(&dir), ["weights.pt"]);
}

#[test]
fn offline_uses_a_warm_cache_and_names_what_a_cold_one_lacks() {
    let hub = MockHub::start(vec![]);
    published(&hub);
    let home = tempfile::tempdir().unwrap();
    let offline = Hub::new(HubSettings {
        offline: true,
        ..settings(&hub, home.path())
    })
    .unwrap();
    let err = offline
        .download_wheel_file(wanted(), &mut NullObserver, &Cancel::new())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, HubError::PackageNotCachedOffline { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("voicepkg/weights.pt")
            && msg.contains("HF_HUB_OFFLINE")
            && msg.contains(&release_dir(home.path()).display().to_string()),
        "{msg}"
    );
    assert!(hub.requests().is_empty(), "offline mode used the network");
    assert!(!home.path().join("assets").exists());

    client(&hub, home.path())
        .download_wheel_file(wanted(), &mut NullObserver, &Cancel::new())
        .unwrap();
    hub.clear_log();
    let got = offline
        .download_wheel_file(wanted(), &mut NullObserver, &Cancel::new())
        .unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), weights());
    assert!(hub.requests().is_empty());
}

#[test]
fn wrong_or_missing_releases_and_files_are_refused() {
    let hub = MockHub::start(vec![]);
    let home = tempfile::tempdir().unwrap();
    let client = client(&hub, home.path());
    let dir = release_dir(home.path());
    let fetch_err = || {
        client
            .download_wheel_file(wanted(), &mut NullObserver, &Cancel::new())
            .unwrap_err()
    };

    let err = fetch_err();
    assert!(matches!(err, HubError::PackageNotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("{}/pypi/voicepkg/1.0/json", hub.pypi_url)),
        "{err}"
    );

    // Only an sdist.
    hub.publish("voicepkg", "1.0", None);
    let err = fetch_err();
    assert!(matches!(err, HubError::NoWheel { .. }), "{err}");

    // A wheel without the file, then one with other bytes in its place:
    // refused, the wheel deleted, nothing at the final path.
    let hub = MockHub::start(vec![]);
    let client = self::client(&hub, home.path());
    hub.publish(
        "voicepkg",
        "1.0",
        Some((WHEEL, wheel(&[("voicepkg/__init__.py", b"")]))),
    );
    let err = client
        .download_wheel_file(wanted(), &mut NullObserver, &Cancel::new())
        .unwrap_err();
    assert!(matches!(err, HubError::BadWheel { .. }), "{err}");
    assert!(
        err.to_string().contains("has no voicepkg/weights.pt"),
        "{err}"
    );
    assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));

    let hub = MockHub::start(vec![]);
    let client = self::client(&hub, home.path());
    let other = pattern(700_000, 6);
    hub.publish(
        "voicepkg",
        "1.0",
        Some((WHEEL, wheel(&[("voicepkg/weights.pt", &other)]))),
    );
    let err = client
        .download_wheel_file(wanted(), &mut NullObserver, &Cancel::new())
        .unwrap_err();
    assert!(matches!(err, HubError::BadWheel { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&sha256_hex(&other)) && msg.contains(wanted().sha256),
        "{msg}"
    );
    assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "mounts a 1 MiB tmpfs in a private mount namespace (Linux only)"
)]
fn a_full_disk_stops_the_wheel_before_it_is_fetched_or_unpacked() {
    tmpfs::run_in_tmpfs(
        "a_full_disk_stops_the_wheel_before_it_is_fetched_or_unpacked",
        "size=1m",
        |small| {
            // A wheel larger than the disk: refused before any transfer.
            let hub = MockHub::start(vec![]);
            let big = pattern(1_500_000, 8);
            hub.publish(
                "voicepkg",
                "1.0",
                Some((WHEEL, wheel(&[("voicepkg/weights.pt", &big)]))),
            );
            let home = small.join("a");
            let err = client(&hub, &home)
                .download_wheel_file(wanted(), &mut NullObserver, &Cancel::new())
                .unwrap_err();
            assert!(matches!(err, HubError::NoSpace { .. }), "{err}");
            assert!(hub.served(WHEEL).is_empty());
            assert!(listing(&release_dir(&home)).is_empty());

            // A small wheel whose file does not fit once unpacked: refused
            // before unpacking, the verified wheel kept for the next try.
            let hub = MockHub::start(vec![]);
            let zeros = vec![0u8; 1_500_000];
            let zipped = wheel(&[("voicepkg/weights.pt", &zeros)]);
            hub.publish("voicepkg", "1.0", Some((WHEEL, zipped)));
            let unpacked: &'static WheelFile = Box::leak(Box::new(WheelFile {
                sha256: Box::leak(sha256_hex(&zeros).into_boxed_str()),
                size: zeros.len() as u64,
                ..*wanted()
            }));
            let home = small.join("b");
            let err = client(&hub, &home)
                .download_wheel_file(unpacked, &mut NullObserver, &Cancel::new())
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(
                    err,
                    HubError::NoSpace {
                        needed: 1_500_000,
                        ..
                    }
                ),
                "{msg}"
            );
            assert!(msg.contains("HF_ASSETS_CACHE"), "{msg}");
            assert_eq!(listing(&release_dir(&home)), [WHEEL]);
        },
    );
}
