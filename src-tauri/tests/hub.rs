//! The Model screen's hub commands against csm-hub's mock hub on 127.0.0.1:
//! the bundle download body (events, paths for the model slots, cancel and
//! resume), the gated-repo error the UI turns into its licence/token help,
//! and the status, token, bundle list, cached list and delete over IPC.

#[path = "../../crates/csm-hub/tests/support/mock_hub.rs"]
mod mock_hub;

use std::time::Duration;

use csm_app_lib::commands::hub::{self, DownloadEvent};
use csm_hub::{Cancel, HubSettings, PackageCache, Role, Token, TokenSource};
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
    let model_path = got.model_path.clone().expect("csm-1b has model files");
    let snapshot = model_path.display().to_string();
    assert!(
        snapshot.contains("models--sesame--csm-1b/snapshots/"),
        "{snapshot}"
    );
    assert_eq!(
        std::fs::read(model_path.join("model.safetensors")).unwrap(),
        pattern(400_000, 1)
    );
    assert!(model_path.join("config.json").is_file());
    assert_eq!(
        std::fs::read(got.mimi_path.as_ref().unwrap()).unwrap(),
        pattern(50_000, 2)
    );
    assert!(got.tokenizer_path.as_ref().unwrap().is_file());
    // Every file, with its role, in the bundle's order.
    let files: Vec<(String, String)> = got
        .files
        .iter()
        .map(|f| (f.role.clone(), f.file.clone()))
        .collect();
    assert_eq!(
        files,
        [
            ("model", "model.safetensors"),
            ("model", "config.json"),
            ("codec", "tokenizer-e351c8d8-checkpoint125.safetensors"),
            ("tokenizer", "tokenizer.json"),
        ]
        .map(|(r, f)| (r.to_string(), f.to_string()))
    );
    assert_eq!(got.files[2].path, *got.mimi_path.as_ref().unwrap());
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
fn gated_repo_is_access_denied_with_the_licence_page_and_the_token_field() {
    let hub = mock();
    hub.gate("sesame/csm-1b", "hf_ok");
    let dir = tempfile::tempdir().unwrap();
    let page = format!("{}/sesame/csm-1b", hub.url);

    // No token: accept the licence, make a token, save it here.
    let err =
        hub::download(settings(&hub, dir.path()), "csm-1b", |_| {}, &Cancel::new()).unwrap_err();
    let v = serde_json::to_value(&err).unwrap();
    assert_eq!(v["kind"], "accessDenied", "{v}");
    assert_eq!(v["url"], page.as_str());
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.starts_with(
            "sesame/csm-1b is gated or private (HTTP 401: GatedRepo) and no token was sent."
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("accept its licence at {page}")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{}/settings/tokens", hub.url)),
        "{msg}"
    );
    assert!(msg.contains("token field"), "{msg}");

    // A token the hub refuses: the message names where it came from.
    let with_token = HubSettings {
        token: Some(Token::new(
            "hf_wrong",
            TokenSource::File(dir.path().join("token")),
        )),
        ..settings(&hub, dir.path())
    };
    let v = serde_json::to_value(
        hub::download(with_token, "csm-1b", |_| {}, &Cancel::new()).unwrap_err(),
    )
    .unwrap();
    assert_eq!(v["kind"], "accessDenied", "{v}");
    let msg = v["message"].as_str().unwrap();
    let file = dir.path().join("token");
    assert!(
        msg.starts_with(&format!(
            "sesame/csm-1b refused the token from the token file {} (HTTP 403: GatedRepo).",
            file.display()
        )),
        "{msg}"
    );
    // Nothing of the refused repo reached the cache.
    assert!(!dir.path().join("models--sesame--csm-1b/snapshots").exists());

    // Other errors keep the plain `{kind, message}` shape.
    let v = serde_json::to_value(
        hub::download(settings(&hub, dir.path()), "nope", |_| {}, &Cancel::new()).unwrap_err(),
    )
    .unwrap();
    assert!(v.get("url").is_none(), "{v}");
}

#[test]
fn roles_reach_the_ui_in_camel_case() {
    assert_eq!(hub::role_name(Role::Model), "model");
    assert_eq!(hub::role_name(Role::Codec), "codec");
    assert_eq!(hub::role_name(Role::Tokenizer), "tokenizer");
}

/// Calls `cmd` through Tauri's mock runtime (real IPC: argument names,
/// serde, capabilities, `{kind, message}` errors).
fn invoke(
    webview: &tauri::WebviewWindow<tauri::test::MockRuntime>,
    cmd: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, serde_json::Value> {
    use tauri::ipc::{CallbackFn, InvokeBody};
    tauri::test::get_ipc_response(
        webview,
        tauri::webview::InvokeRequest {
            cmd: cmd.into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: "tauri://localhost".parse().unwrap(),
            body: InvokeBody::Json(body),
            headers: Default::default(),
            invoke_key: tauri::test::INVOKE_KEY.to_string(),
        },
    )
    .map(|r| r.deserialize().unwrap())
}

/// The commands read the `HF_*` variables as the CLI does; this test sets
/// them for its process (no other test here reads them) and checks each
/// command on the mock hub's cache.
#[test]
fn status_token_bundles_cached_list_and_delete_over_ipc() {
    use serde_json::json;
    let hub = mock();
    hub.gate("sesame/csm-1b", "hf_ok");
    let home = tempfile::tempdir().unwrap();
    for k in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_ASSETS_CACHE",
        "HUGGINGFACE_ASSETS_CACHE",
    ] {
        std::env::remove_var(k);
    }
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_ENDPOINT", &hub.url);
    let app = csm_app_lib::app_builder(tauri::test::mock_builder())
        .build(tauri::test::mock_context(tauri::test::noop_assets()))
        .unwrap();
    let webview = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    let ok = |cmd: &str, body| invoke(&webview, cmd, body).unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let cache = home.path().join("hub");
    let token_path = home.path().join("token");

    let status = ok("hub_status", json!({}));
    assert_eq!(status["endpoint"], hub.url.as_str());
    assert_eq!(status["cacheDir"], cache.to_str().unwrap());
    assert_eq!(status["tokenPath"], token_path.to_str().unwrap());
    assert_eq!(status["tokenSource"], serde_json::Value::Null);
    assert_eq!(status["offline"], false);

    // The token: where huggingface-cli login keeps it, owner-only.
    let err = invoke(&webview, "save_hub_token", json!({ "token": "  " })).unwrap_err();
    assert_eq!(err["kind"], "invalidInput", "{err}");
    assert!(!token_path.exists());
    let saved = ok("save_hub_token", json!({ "token": " hf_ok\n" }));
    assert_eq!(saved, token_path.to_str().unwrap());
    assert_eq!(std::fs::read_to_string(&token_path).unwrap(), "hf_ok");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let status = ok("hub_status", json!({}));
    assert_eq!(
        status["tokenSource"],
        format!("the token file {}", token_path.display())
    );

    let bundles = ok("list_bundles", json!({}));
    let csm = bundles
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "csm-1b")
        .expect("csm-1b is listed");
    assert_eq!(csm["files"].as_array().unwrap().len(), 4);
    assert!(csm["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["cached"].is_null()));

    // The gated repo downloads with the saved token, which never goes to
    // the CDN.
    let got = hub::download(
        hub::settings_from_env().unwrap(),
        "csm-1b",
        |_| {},
        &Cancel::new(),
    )
    .unwrap();
    for r in hub.requests() {
        let auth = r.header("authorization");
        match r.server {
            "cdn" => assert_eq!(auth, None, "token sent to the CDN: {r:?}"),
            _ => assert_eq!(auth, Some("Bearer hf_ok"), "{r:?}"),
        }
    }
    let bundles = ok("list_bundles", json!({}));
    let model = &bundles[0]["files"][0];
    assert_eq!(model["role"], "model");
    assert_eq!(
        model["cached"],
        got.model_path
            .unwrap()
            .join("model.safetensors")
            .to_str()
            .unwrap()
    );

    // A release in the package cache (where the speaker-encoder bundle's
    // file from resemblyzer's wheel is extracted), placed at the path the
    // library names for it.
    let release = PackageCache::new(home.path().join("assets")).release_dir("resemblyzer", "0.1.4");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("pretrained.pt"), vec![7u8; 1234]).unwrap();
    let bundles = ok("list_bundles", json!({}));
    let speaker = bundles
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "speaker-encoder")
        .expect("speaker-encoder is listed");
    assert_eq!(speaker["files"][0]["role"], "speakerEncoder");
    assert_eq!(
        speaker["files"][0]["cached"],
        release.join("pretrained.pt").to_str().unwrap()
    );

    let cached = ok("list_cached_models", json!({}));
    let sizes: Vec<(String, u64)> = cached
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["repo"].as_str().unwrap().to_string(),
                c["sizeBytes"].as_u64().unwrap(),
            )
        })
        .collect();
    for (repo, size) in [
        ("sesame/csm-1b", 400_000 + 3),
        ("kyutai/moshiko-pytorch-bf16", 50_000),
        ("unsloth/Llama-3.2-1B", 9),
        ("pypi:resemblyzer==0.1.4", 1234),
    ] {
        assert!(
            sizes.contains(&(repo.to_string(), size)),
            "{repo}: {sizes:?}"
        );
    }

    let freed = ok(
        "delete_cached_model",
        json!({ "repo": "kyutai/moshiko-pytorch-bf16" }),
    );
    assert_eq!(freed, 50_000);
    assert!(!cache.join("models--kyutai--moshiko-pytorch-bf16").exists());
    assert!(cache.join("models--sesame--csm-1b").is_dir());
    let freed = ok(
        "delete_cached_model",
        json!({ "repo": "pypi:resemblyzer==0.1.4" }),
    );
    assert_eq!(freed, 1234);
    assert!(!release.exists());
    let cached = ok("list_cached_models", json!({}));
    let repos: Vec<&str> = cached
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["repo"].as_str().unwrap())
        .collect();
    assert_eq!(repos, ["sesame/csm-1b", "unsloth/Llama-3.2-1B"], "{cached}");
    let err = invoke(
        &webview,
        "delete_cached_model",
        json!({ "repo": "kyutai/moshiko-pytorch-bf16" }),
    )
    .unwrap_err();
    assert_eq!(err["kind"], "download", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("kyutai/moshiko-pytorch-bf16"),
        "{err}"
    );
}
