//! The Dataset screen's speakers (`scan_dataset` of a folder per speaker,
//! `dataset_speakers`, `save_speakers`, `dataset_usage` per speaker) and
//! the Parameters screen's learning-rate finder (`find_learning_rate`)
//! through Tauri's mock runtime (no display), on espeak-ng voices and the
//! demo model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use csm_app_lib::commands::lr_find::{self, LrFindEvent};
use csm_app_lib::commands::models;
use csm_app_lib::state::AllowedPaths;
use csm_core::cancel::CancelToken;
use csm_core::data::espeak::{generate_demo_dataset, DemoOptions};
use csm_core::data::speakers::{read_speakers_file, SpeakerRef, SpeakersFile};
use csm_core::train::lr_find::{LrFindOptions, LrFindReport, LrFindStop};
use csm_core::train::{RunSettings, TrainConfig};
use serde_json::{json, Value};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{get_ipc_response, mock_builder, mock_context, noop_assets, MockRuntime};
use tauri::webview::InvokeRequest;
use tauri::{App, Manager, WebviewWindow};

struct Ui {
    app: App<MockRuntime>,
    webview: WebviewWindow<MockRuntime>,
}

impl Ui {
    fn new() -> Self {
        static DATA: OnceLock<tempfile::TempDir> = OnceLock::new();
        let data = DATA.get_or_init(|| tempfile::tempdir().unwrap());
        std::env::set_var("XDG_DATA_HOME", data.path());
        let app = csm_app_lib::app_builder(mock_builder())
            .build(mock_context(noop_assets()))
            .unwrap();
        let webview = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
            .build()
            .unwrap();
        Ui { app, webview }
    }

    fn invoke(&self, cmd: &str, body: Value) -> Result<Value, Value> {
        get_ipc_response(
            &self.webview,
            InvokeRequest {
                cmd: cmd.into(),
                callback: CallbackFn(0),
                error: CallbackFn(1),
                url: "tauri://localhost".parse().unwrap(),
                body: InvokeBody::Json(body),
                headers: Default::default(),
                invoke_key: tauri::test::INVOKE_KEY.to_string(),
            },
        )
        .map(|r| r.deserialize::<Value>().unwrap())
    }

    fn ok(&self, cmd: &str, body: Value) -> Value {
        self.invoke(cmd, body)
            .unwrap_or_else(|e| panic!("{cmd} failed: {e}"))
    }

    fn err(&self, cmd: &str, body: Value) -> Value {
        match self.invoke(cmd, body) {
            Ok(v) => panic!("{cmd} should have failed, returned {v}"),
            Err(e) => e,
        }
    }

    fn allow(&self, p: &Path) {
        self.app.state::<AllowedPaths>().allow(p);
    }
}

/// `count` demo sentences spoken by espeak-ng `voice` into `dir/audio`
/// and `dir/transcripts` (`001.wav`...).
fn voice(dir: &Path, voice: &str, count: usize) {
    generate_demo_dataset(
        dir,
        &DemoOptions {
            count: Some(count),
            voice: voice.into(),
            ..DemoOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("espeak-ng dataset in {}: {e}", dir.display()));
}

fn stems(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir.join("audio"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    out.sort();
    out
}

fn speaker_rows(usage: &Value) -> Vec<(String, u64, u64, u64)> {
    usage["speakers"]
        .as_array()
        .unwrap_or_else(|| panic!("no speakers in {usage}"))
        .iter()
        .map(|s| {
            (
                s["speaker"]["name"].as_str().unwrap().to_string(),
                s["speaker"]["id"].as_u64().unwrap(),
                s["recordings"].as_u64().unwrap(),
                s["utterances"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn one_folder_gets_named_speakers_saved_as_speakers_json() {
    let ui = Ui::new();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("voices");
    voice(&root, "en-us", 3);
    ui.allow(&root);
    let scan = ui.ok("scan_dataset", json!({ "paths": [root] }));
    assert_eq!(scan["speakerFolders"], json!([]));
    assert_eq!(scan["speakersFile"], Value::Null);
    let config = TrainConfig {
        audio_dir: root.join("audio"),
        transcript_dir: root.join("transcripts"),
        val_split: 0.34,
        ..TrainConfig::default()
    };
    let view = ui.ok("dataset_speakers", json!({ "config": config }));
    assert_eq!(view["layout"], "oneSpeaker", "{view}");
    assert_eq!(view["fileExists"], false);
    assert_eq!(view["speakersFile"], json!(root.join("speakers.json")));
    assert_eq!(view["error"], Value::Null);

    let ids = stems(&root);
    let [a, b, c] = [&ids[0], &ids[1], &ids[2]];
    let name = |n: &str| SpeakerRef::Name(n.into());
    // A recording left to no one: refused, naming it, and nothing written.
    let partial = SpeakersFile {
        speakers: BTreeMap::new(),
        recordings: [(a.clone(), name("alice")), (b.clone(), name("bob"))].into(),
    };
    let err = ui.err(
        "save_speakers",
        json!({ "config": config, "file": partial }),
    );
    assert_eq!(err["kind"], "invalidInput", "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains(&format!("recordings.{c}")), "{message}");
    assert!(
        !root.join("speakers.json").exists(),
        "a refused edit writes nothing"
    );

    let file = SpeakersFile {
        speakers: [("bob".to_string(), 3)].into(),
        recordings: [
            (a.clone(), name("alice")),
            (b.clone(), name("bob")),
            (c.clone(), name("alice")),
        ]
        .into(),
    };
    let saved = ui.ok("save_speakers", json!({ "config": config, "file": file }));
    assert_eq!(saved["layout"], "speakersFile", "{saved}");
    assert_eq!(saved["fileExists"], true);
    assert_eq!(
        saved["speakers"],
        json!([{ "name": "alice", "id": 0 }, { "name": "bob", "id": 3 }])
    );
    assert_eq!(
        read_speakers_file(&root.join("speakers.json")).unwrap(),
        file,
        "the file holds what the user saved"
    );
    let who: Vec<(&str, u64)> = saved["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["speaker"].as_u64().unwrap()))
        .collect();
    assert_eq!(who, [(a.as_str(), 0), (b.as_str(), 3), (c.as_str(), 0)]);

    // A new scan finds the file; the run's config names it, and the usage
    // reports each speaker's share as training loads it.
    let scan = ui.ok("scan_dataset", json!({ "paths": [root] }));
    assert_eq!(scan["speakersFile"], json!(root.join("speakers.json")));
    let with_file = TrainConfig {
        speakers_file: Some(root.join("speakers.json")),
        ..config
    };
    let usage = ui.ok("dataset_usage", json!({ "config": with_file }));
    assert_eq!(
        speaker_rows(&usage),
        [("alice".into(), 0, 2, 2), ("bob".into(), 3, 1, 1)],
        "{usage}"
    );
}

#[test]
fn a_folder_per_speaker_is_scanned_and_measured_per_speaker() {
    let ui = Ui::new();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pair");
    voice(&root.join("alice"), "en-us", 2);
    voice(&root.join("bob"), "en-us+f3", 2);
    ui.allow(&root);
    let scan = ui.ok("scan_dataset", json!({ "paths": [root] }));
    assert_eq!(scan["speakerFolders"], json!(["alice", "bob"]), "{scan}");
    let files: Vec<&str> = scan["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["file"].as_str().unwrap())
        .collect();
    let alice = stems(&root.join("alice"));
    assert_eq!(files.len(), 4);
    assert_eq!(files[0], format!("alice/{}.wav", alice[0]));
    assert!(files[2].starts_with("bob/"), "{files:?}");
    assert_eq!(scan["totals"]["usable"], 4);

    let config = TrainConfig {
        data_dir: Some(root.clone()),
        audio_dir: PathBuf::new(),
        transcript_dir: PathBuf::new(),
        val_split: 0.5,
        ..TrainConfig::default()
    };
    let view = ui.ok("dataset_speakers", json!({ "config": config }));
    assert_eq!(view["layout"], "speakerFolders", "{view}");
    assert_eq!(
        view["speakers"],
        json!([{ "name": "alice", "id": 0 }, { "name": "bob", "id": 1 }])
    );
    let usage = ui.ok("dataset_usage", json!({ "config": config }));
    assert_eq!(
        speaker_rows(&usage),
        [("alice".into(), 0, 2, 2), ("bob".into(), 1, 2, 2)],
        "{usage}"
    );
    let recordings: Vec<&str> = usage["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["recording_id"].as_str().unwrap())
        .collect();
    assert!(
        recordings.contains(&format!("bob/{}", stems(&root.join("bob"))[1]).as_str()),
        "recording ids are SPEAKER/stem, as the scan's rows: {recordings:?}"
    );
    // Fixed ids, saved beside the speaker folders.
    let ids = SpeakersFile {
        speakers: [("alice".to_string(), 5), ("bob".to_string(), 2)].into(),
        recordings: BTreeMap::new(),
    };
    let saved = ui.ok("save_speakers", json!({ "config": config, "file": ids }));
    assert_eq!(
        saved["speakers"],
        json!([{ "name": "bob", "id": 2 }, { "name": "alice", "id": 5 }])
    );
    assert_eq!(
        read_speakers_file(&root.join("speakers.json")).unwrap(),
        ids
    );
}

/// The demo model and dataset, built once for this process.
fn demo() -> &'static models::DemoAssets {
    static DEMO: OnceLock<(tempfile::TempDir, models::DemoAssets)> = OnceLock::new();
    &DEMO
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let assets = models::demo(&dir.path().join("demo")).expect("demo builds");
            (dir, assets)
        })
        .1
}

fn demo_config(output_dir: &Path) -> TrainConfig {
    let d = demo();
    TrainConfig {
        model_path: d.model_path.clone(),
        mimi_path: Some(d.mimi_path.clone()),
        tokenizer_path: Some(d.tokenizer_path.clone()),
        audio_dir: d.audio_dir.clone(),
        transcript_dir: d.transcript_dir.clone(),
        output_dir: output_dir.to_path_buf(),
        context_turns: 0,
        lora_r: 4,
        lora_alpha: 8.0,
        decoder_fraction: 0.5,
        batch_size: 4,
        seed: 1,
        ..TrainConfig::default()
    }
}

#[test]
fn lr_find_on_the_demo_streams_points_and_writes_only_its_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    std::fs::create_dir_all(&out).unwrap();
    let config = demo_config(&out);
    let options = LrFindOptions {
        min_lr: 1e-5,
        max_lr: 1e-1,
        steps: 12,
        ..LrFindOptions::default()
    };
    let events = Mutex::new(Vec::new());
    let send = |e: LrFindEvent| events.lock().unwrap().push(e);
    let settings = RunSettings::new(tmp.path().join("codes"));
    let result = lr_find::run(&config, &options, &settings, &CancelToken::new(), &send)
        .unwrap_or_else(|e| panic!("lr-find on the demo: {e}"));
    let report = &result.report;
    assert!(
        report.points.len() >= 5 && report.points.len() <= 12,
        "{report:?}"
    );
    assert!(
        report.stop == LrFindStop::Completed || report.stop == LrFindStop::Diverged,
        "{:?}",
        report.stop
    );
    assert!(report.points.windows(2).all(|w| w[1].lr > w[0].lr));
    let events = events.into_inner().unwrap();
    assert!(
        matches!(events.first(), Some(LrFindEvent::Phase { .. })),
        "{events:?}"
    );
    let points: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            LrFindEvent::Point(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(points, report.points, "every point was streamed");
    // Its report, and nothing else, in the output folder.
    assert_eq!(result.report_path, out.join("lr_find.json"));
    let listing: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listing, ["lr_find.json"]);
    let written: LrFindReport =
        serde_json::from_slice(&std::fs::read(&result.report_path).unwrap()).unwrap();
    assert_eq!(&written, report);
}

#[test]
fn find_learning_rate_refuses_bad_settings_and_folders_not_chosen() {
    let ui = Ui::new();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    std::fs::create_dir_all(&out).unwrap();
    let config = demo_config(&out);
    let call = |options: Value| {
        ui.err(
            "find_learning_rate",
            json!({ "config": config, "options": options, "onEvent": "__CHANNEL__:1" }),
        )
    };
    let err = call(Value::Null);
    assert_eq!(err["kind"], "invalidInput", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("was not chosen in a dialog"),
        "{err}"
    );
    let d = demo();
    for p in [&d.model_path, &d.audio_dir, &d.transcript_dir, &out] {
        ui.allow(p);
    }
    ui.allow(d.mimi_path.parent().unwrap());
    ui.allow(d.tokenizer_path.parent().unwrap());
    let bad =
        json!({ "minLr": 1e-3, "maxLr": 1e-4, "steps": 3, "smoothing": 0.9, "divergeFactor": 4.0 });
    let err = call(bad);
    assert_eq!(err["kind"], "invalidInput", "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("--max-lr") && message.contains("--steps"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "a refused test writes nothing"
    );
}
