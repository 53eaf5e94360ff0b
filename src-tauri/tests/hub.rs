//! The Model screen's hub commands against csm-hub's mock hub on 127.0.0.1:
//! the bundle download body (events, paths for the model slots, cancel and
//! resume) and the cached list and delete over IPC.

#[path = "../../crates/csm-hub/tests/support/mock_hub.rs"]
mod mock_hub;

use std::time::Duration;

use csm_app_lib::commands::hub::{self, DownloadEvent};
use csm_hub::{Cancel, HubSettings};
use mock_hub::{pattern, MockFile, MockHub};

fn mock() -> MockHub {
    MockHub::start(vec![
        MockFile::lfs("sesame/csm-1b", "model.safetensors", pattern(400_000, 1)),
        MockFile::git("sesame/csm-1b", "config.json", b"{}\n"),
        MockFile::lfs(
            "kyutai/moshiko-pytorch-bf16",
            "tokenizer-e351c8d8-checkpoint125.safetensors",
            pattern(50_000, 2),
        ),
        MockFile::git("unsloth/Llama-3.2-1B", "tokenizer.json", b"{\"t\": 1}\n"),
    ])
}

fn settings(hub: &MockHub, cache: &std::path::Path) -> HubSettings {
    HubSettings {
        endpoint: hub.url.clone(),
        retry_delay: Duration::from_millis(10),
        ..HubSettings::new(cache)
    }
}

#[test]
fn a_bundle_download_fills_the_model_slots_and_resumes_after_cancel() {
    let hub = mock();
    hub.throttle(Some(Duration::from_millis(5)));
    let dir = tempfile::tempdir().unwrap();
    let cancel = Cancel::new();
    let flag = cancel.clone();
    let err = hub::download(
        settings(&hub, dir.path()),
        "csm-1b",
        move |e| {
            if matches!(e, DownloadEvent::Progress { done, .. } if done >= 100_000) {
                flag.cancel();
            }
        },
        &cancel,
    )
    .unwrap_err();
    assert_eq!(
        serde_json::to_value(&err).unwrap()["kind"],
        "cancelled",
        "{err}"
    );

    hub.throttle(None);
    let mut events = Vec::new();
    let got = hub::download(
        settings(&hub, dir.path()),
        "csm-1b",
        |e| events.push(e),
        &Cancel::new(),
    )
    .unwrap();
    let snapshot = got.model_path.display().to_string();
    assert!(
        snapshot.contains("models--sesame--csm-1b/snapshots/"),
        "{snapshot}"
    );
    assert!(got.model_path.join("model.safetensors").is_file());
    assert!(got.model_path.join("config.json").is_file());
    assert!(got.mimi_path.unwrap().is_file());
    assert!(got.tokenizer_path.unwrap().is_file());
    // Resumed, not restarted: the first progress of the weights starts past 0.
    let first = events
        .iter()
        .find_map(|e| match e {
            DownloadEvent::Progress { file, done, .. } if file == "model.safetensors" => {
                Some(*done)
            }
            _ => None,
        })
        .unwrap();
    assert!(first >= 100_000, "{events:?}");
    let json = serde_json::to_value(events.last().unwrap()).unwrap();
    assert_eq!(json["event"], "finished");
    assert_eq!(json["data"]["repo"], "unsloth/Llama-3.2-1B");

    let err =
        hub::download(settings(&hub, dir.path()), "nope", |_| {}, &Cancel::new()).unwrap_err();
    assert_eq!(serde_json::to_value(&err).unwrap()["kind"], "invalidInput");
}

#[test]
fn gated_repo_is_a_download_error_naming_the_licence_page() {
    let hub = mock();
    hub.gate("sesame/csm-1b", "hf_ok");
    let dir = tempfile::tempdir().unwrap();
    let err =
        hub::download(settings(&hub, dir.path()), "csm-1b", |_| {}, &Cancel::new()).unwrap_err();
    let v = serde_json::to_value(&err).unwrap();
    assert_eq!(v["kind"], "download");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains(&format!("{}/sesame/csm-1b", hub.url)), "{msg}");
    assert!(msg.contains("HF_TOKEN"), "{msg}");
}
