//! The commands through Tauri's mock runtime (no display): real IPC
//! (argument names, serde, capabilities, `{kind, message}` errors) over the
//! real engine, on the demo model and dataset. MLX work runs in one test,
//! in sequence.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csm_app_lib::commands::generate::{self, GenerateRequest, GenerationEvent};
use csm_app_lib::commands::training::{self, RunConfig};
use csm_app_lib::contract::TrainingEvent;
use csm_app_lib::state::{AllowedPaths, GenerationJobs, RunRoots, TrainingJobs};
use csm_core::cancel::CancelToken;
use serde_json::{json, Value};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{
    get_ipc_response, mock_builder, mock_context, noop_assets, MockRuntime, INVOKE_KEY,
};
use tauri::webview::InvokeRequest;
use tauri::{App, Manager, WebviewWindow};

struct Ui {
    app: App<MockRuntime>,
    webview: WebviewWindow<MockRuntime>,
}

impl Ui {
    fn new(data_home: &Path) -> Self {
        // app_data_dir() follows XDG_DATA_HOME; every test uses the same one.
        std::env::set_var("XDG_DATA_HOME", data_home);
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
                invoke_key: INVOKE_KEY.to_string(),
            },
        )
        .map(|r| r.deserialize::<Value>().unwrap())
    }

    fn allow(&self, p: &Path) {
        self.app.state::<AllowedPaths>().allow(p);
    }
}

fn data_home() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .to_path_buf()
}

fn config(demo: &Value, output_dir: &Path, epochs: u32) -> RunConfig {
    serde_json::from_value(json!({
        "model_path": demo["modelPath"], "output_dir": output_dir, "audio_dir": demo["audioDir"],
        "transcript_dir": demo["transcriptDir"], "alignment_dir": null,
        "mimi_path": demo["mimiPath"], "tokenizer_path": demo["tokenizerPath"],
        "speaker_id": 0, "max_seq_len": 2048, "context_turns": 0, "context_loss": false,
        "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "target_layers": "all", "lora_bias": false,
        "learning_rate": 0.001, "lr_schedule": "constant", "warmup_steps": 0,
        "semantic_weight": 1.0, "acoustic_weight": 1.0, "decoder_fraction": 0.5,
        "weight_decay": 0.0, "batch_size": 4, "grad_accum": 1, "epochs": epochs, "max_grad_norm": 1.0,
        "val_split": 0.2, "val_every": 2, "save_every": 2, "save_mode": "lora",
        "resume_from": null, "generate_samples": false, "sample_prompt": null,
        "seed": 1, "log_level": "info", "debug": false
    }))
    .unwrap()
}

/// Runs `config` to the end, returning every event; `stop_after` stops it
/// after that many steps through `stop_training`.
fn train(ui: &Ui, cfg: &RunConfig, stop_after: Option<u64>) -> (String, Vec<Value>) {
    let events: Arc<Mutex<Vec<TrainingEvent>>> = Arc::default();
    let sink = events.clone();
    let jobs = ui.app.state::<TrainingJobs>();
    let id = training::start(&jobs, cfg, move |e| sink.lock().unwrap().push(e)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut stopped = false;
    while jobs.running().is_some() {
        assert!(
            Instant::now() < deadline,
            "training did not finish in 10 minutes"
        );
        let steps = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, TrainingEvent::Step(_)))
            .count() as u64;
        if let (Some(n), false) = (stop_after, stopped) {
            if steps >= n {
                ui.invoke("stop_training", json!({ "runId": id })).unwrap();
                stopped = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    (id, events)
}

#[test]
fn commands_on_the_demo_end_to_end() {
    let ui = Ui::new(&data_home());

    // demo_assets builds the demo under the app data dir once, then reuses it.
    let t = Instant::now();
    let demo = ui.invoke("demo_assets", json!({})).unwrap();
    eprintln!("demo_assets: {:?}", t.elapsed());
    for k in [
        "modelPath",
        "mimiPath",
        "tokenizerPath",
        "audioDir",
        "transcriptDir",
    ] {
        assert!(
            Path::new(demo[k].as_str().unwrap()).exists(),
            "{k}: {}",
            demo[k]
        );
    }
    assert!(demo["modelPath"]
        .as_str()
        .unwrap()
        .starts_with(data_home().to_str().unwrap()));
    assert_eq!(ui.invoke("demo_assets", json!({})).unwrap(), demo);

    // scan_dataset: both folders, or their parent.
    let scan = ui
        .invoke(
            "scan_dataset",
            json!({ "paths": [demo["audioDir"], demo["transcriptDir"]] }),
        )
        .unwrap();
    let n = scan["items"].as_array().unwrap().len();
    assert_eq!(n, csm_app_lib::commands::models::DEMO_SENTENCES);
    assert_eq!(scan["totals"]["files"], n);
    assert_eq!(scan["totals"]["usable"], n);
    assert_eq!(scan["totals"]["withTranscript"], n);
    assert!(scan["totals"]["seconds"].as_f64().unwrap() > 1.0);
    let item = &scan["items"][0];
    assert!(item["transcript"].as_str().unwrap().len() > 3);
    assert_eq!(item["sampleRate"], 24000);
    let parent = Path::new(demo["audioDir"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let by_parent = ui
        .invoke("scan_dataset", json!({ "paths": [parent] }))
        .unwrap();
    assert_eq!(by_parent["items"], scan["items"]);

    // inspect_model: the three kinds.
    let csm = ui
        .invoke(
            "inspect_model",
            json!({ "path": demo["modelPath"], "kind": "csm" }),
        )
        .unwrap();
    assert_eq!(csm["format"], "safetensors");
    assert_eq!(csm["dtype"], "float32");
    assert!(csm["parameters"].as_u64().unwrap() > 1000);
    assert!(csm["details"]["codebooks"].is_string());
    let mimi = ui
        .invoke(
            "inspect_model",
            json!({ "path": demo["mimiPath"], "kind": "mimi" }),
        )
        .unwrap();
    assert!(mimi["parameters"].as_u64().unwrap() > 1_000_000);
    let tok = ui
        .invoke(
            "inspect_model",
            json!({ "path": demo["tokenizerPath"], "kind": "tokenizer" }),
        )
        .unwrap();
    assert!(tok["details"]["vocab size"].is_string());
    // A folder without weights: the loader's own error, as modelLoad/unsupportedFormat.
    let empty = tempfile::tempdir().unwrap();
    ui.allow(empty.path());
    let err = ui
        .invoke(
            "inspect_model",
            json!({ "path": empty.path(), "kind": "csm" }),
        )
        .unwrap_err();
    assert!(
        ["modelLoad", "unsupportedFormat"].contains(&err["kind"].as_str().unwrap()),
        "{err}"
    );

    // No run yet: no estimate, and no runs.
    let runs_root = ui
        .app
        .state::<RunRoots>()
        .default_root(ui.app.handle())
        .unwrap();
    let cfg = config(&demo, &runs_root, 1);
    let est = ui.invoke("estimate_run", json!({ "config": cfg })).unwrap();
    assert_eq!(est, json!({ "secsPerStep": null, "peakMemoryBytes": null }));

    // A real run to completion.
    let t = Instant::now();
    let (id, events) = train(&ui, &cfg, None);
    eprintln!("training 1 epoch: {:?}", t.elapsed());
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"phase"), "{kinds:?}");
    assert!(
        kinds.contains(&"started") && kinds.contains(&"step") && kinds.contains(&"checkpoint"),
        "{kinds:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["event"], "finished", "{last}");
    assert_eq!(last["data"]["status"], "completed");
    assert!(last["data"]["adapterPath"]
        .as_str()
        .unwrap()
        .ends_with("adapters.safetensors"));
    let started = events.iter().find(|e| e["event"] == "started").unwrap();
    assert_eq!(started["data"]["runId"], id.as_str());
    let step = events.iter().find(|e| e["event"] == "step").unwrap();
    assert!(step["data"]["loss"].as_f64().unwrap() > 0.0);
    assert_eq!(step["data"]["totalSteps"], started["data"]["totalSteps"]);

    // History reads it back.
    let runs = ui.invoke("list_runs", json!({})).unwrap();
    let run = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .expect("run listed");
    assert_eq!(run["status"], "completed");
    assert_eq!(run["step"], last["data"]["step"]);
    assert_eq!(run["config"]["output_dir"], json!(runs_root));
    assert_eq!(run["config"]["lora_r"], 4);
    assert!(!run["checkpoints"].as_array().unwrap().is_empty());
    assert!(run["startedAt"].as_str().unwrap().ends_with('Z'));
    let metrics = ui.invoke("run_metrics", json!({ "runId": id })).unwrap();
    let steps: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| &e["data"])
        .collect();
    assert_eq!(metrics["steps"].as_array().unwrap().len(), steps.len());
    let f32_of = |v: &Value| v.as_f64().unwrap() as f32;
    assert_eq!(
        f32_of(&metrics["steps"][0]["loss"]),
        f32_of(&steps[0]["loss"])
    );
    assert_eq!(metrics["steps"][0]["epoch"], steps[0]["epoch"]);
    assert!(!metrics["validation"].as_array().unwrap().is_empty());
    let err = ui
        .invoke("run_metrics", json!({ "runId": "nope" }))
        .unwrap_err();
    assert_eq!(err["kind"], "notFound");

    // Export: the final adapter, then a training checkpoint's adapter, each
    // into a new folder inside the chosen one; nothing is ever overwritten.
    let out = tempfile::tempdir().unwrap();
    ui.allow(out.path());
    let export = |ckpt: &Value| {
        ui.invoke(
            "export_adapter",
            json!({ "runId": id, "checkpoint": ckpt, "dest": out.path() }),
        )
    };
    let written = export(&Value::Null).unwrap();
    let folder = out.path().join(&id);
    assert_eq!(written, json!(folder));
    for f in [
        "adapters.safetensors",
        "adapter_config.json",
        "peft/adapter_model.safetensors",
        "peft/adapter_config.json",
    ] {
        assert!(folder.join(f).is_file(), "{f} exported");
    }
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        [std::ffi::OsString::from(&id)],
        "no temp files left"
    );
    // A second export of the same adapter is refused and touches nothing.
    std::fs::write(folder.join("adapter_config.json"), "mine").unwrap();
    let err = export(&Value::Null).unwrap_err();
    assert_eq!(err["kind"], "alreadyExists", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains(folder.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(folder.join("adapter_config.json")).unwrap(),
        "mine"
    );
    let ckpt = &run["checkpoints"][0]["path"];
    let written = export(ckpt).unwrap();
    let stem = Path::new(ckpt.as_str().unwrap()).file_stem().unwrap();
    let folder2 = out.path().join(format!("{id}-{}", stem.to_string_lossy()));
    assert_eq!(written, json!(folder2));
    assert!(folder2.join("adapters.safetensors").is_file());
    assert!(folder2.join("adapter_config.json").is_file());
    let missing = export(&Value::Null);
    assert_eq!(missing.unwrap_err()["kind"], "alreadyExists");
    let not_allowed = ui
        .invoke(
            "export_adapter",
            json!({ "runId": id, "checkpoint": null, "dest": "/tmp" }),
        )
        .unwrap_err();
    assert_eq!(not_allowed["kind"], "invalidInput");
    let no_dest = out.path().join("not-there");
    let err = ui
        .invoke(
            "export_adapter",
            json!({ "runId": id, "checkpoint": null, "dest": no_dest }),
        )
        .unwrap_err();
    assert_eq!(err["kind"], "notFound", "{err}");

    // The measured run now gives an estimate.
    let est = ui.invoke("estimate_run", json!({ "config": cfg })).unwrap();
    assert!(est["secsPerStep"].as_f64().unwrap() > 0.0, "{est}");
    assert!(est["peakMemoryBytes"].as_u64().unwrap() > 0);

    // Generation: base model and the run's newest training checkpoint; same seed, same audio.
    let req = |ckpt: &Value| {
        json!({ "request": {
            "text": "Hello there.", "speakerId": 0, "contextAudio": null, "contextText": null,
            "checkpoint": ckpt, "modelPath": demo["modelPath"], "mimiPath": demo["mimiPath"],
            "tokenizerPath": demo["tokenizerPath"], "seed": 3, "temperature": 0.9, "topK": 20,
            "maxAudioSecs": 0.8 }, "onProgress": "__CHANNEL__:1" })
    };
    let t = Instant::now();
    let base = ui.invoke("generate_sample", req(&Value::Null)).unwrap();
    eprintln!("generate_sample: {:?}", t.elapsed());
    assert!(Path::new(base["path"].as_str().unwrap()).is_file());
    assert_eq!(base["sampleRate"], 24000);
    assert_eq!(base["peaks"].as_array().unwrap().len(), 512);
    assert!(base["durationSecs"].as_f64().unwrap() > 0.0);
    let again = ui.invoke("generate_sample", req(&Value::Null)).unwrap();
    assert_eq!(again["peaks"], base["peaks"], "same seed, same audio");
    assert_ne!(again["path"], base["path"]);
    let tuned = ui.invoke("generate_sample", req(ckpt)).unwrap();
    assert_eq!(tuned["checkpoint"], *ckpt);
    let err = ui
        .invoke("generate_sample", req(&json!("/no/such/ckpt")))
        .unwrap_err();
    assert_eq!(err["kind"], "notFound");

    // Progress: a loading and a generating phase, then one event per frame,
    // counting up to the frames of the audio written.
    let mut request: GenerateRequest =
        serde_json::from_value(req(&Value::Null)["request"].clone()).unwrap();
    request.max_audio_secs = 1.6;
    let samples_dir = tempfile::tempdir().unwrap();
    let events = Mutex::new(Vec::new());
    let on_event = |e: GenerationEvent| events.lock().unwrap().push(e);
    let sample =
        generate::generate(&request, samples_dir.path(), &on_event, &CancelToken::new()).unwrap();
    let events = events.into_inner().unwrap();
    let wire: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert_eq!(
        wire[0],
        json!({"event": "phase", "data": {"phase": "loading"}})
    );
    assert_eq!(
        wire[1],
        json!({"event": "phase", "data": {"phase": "generating"}})
    );
    let frames: Vec<u64> = wire[2..]
        .iter()
        .map(|e| {
            assert_eq!(e["event"], "progress", "{e}");
            assert_eq!(e["data"]["maxFrames"], 20, "{e}");
            assert!(e["data"]["elapsedSecs"].as_f64().unwrap() > 0.0, "{e}");
            e["data"]["frames"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        frames,
        (1..=frames.len() as u64).collect::<Vec<_>>(),
        "frames count up by one"
    );
    let last = wire.last().unwrap();
    assert!(
        (last["data"]["audioSecs"].as_f64().unwrap() - frames.len() as f64 * 0.08).abs() < 1e-9
    );
    assert!(
        (sample.duration_secs - frames.len() as f64 * 0.08).abs() < 1e-6,
        "{}",
        sample.duration_secs
    );

    // Cancel after two frames: a `cancelled` error and no file written.
    let cancel = CancelToken::new();
    let stopper = cancel.clone();
    let on_event = move |e: GenerationEvent| {
        if let GenerationEvent::Progress { frames: 2, .. } = e {
            stopper.cancel();
        }
    };
    let before = std::fs::read_dir(samples_dir.path()).unwrap().count();
    let err = generate::generate(&request, samples_dir.path(), &on_event, &cancel).unwrap_err();
    let err = serde_json::to_value(&err).unwrap();
    assert_eq!(err["kind"], "cancelled", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("after 2 of 20 frames"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(samples_dir.path()).unwrap().count(),
        before,
        "no file written"
    );

    // cancel_generation flips the flag of every generation in progress.
    let jobs = ui.app.state::<GenerationJobs>();
    let job = jobs.start();
    assert_eq!(
        ui.invoke("cancel_generation", json!({})).unwrap(),
        Value::Null
    );
    assert!(job.cancel.is_cancelled());
    drop(job);
    assert_eq!(
        jobs.cancel_all(),
        0,
        "finished generations are unregistered"
    );

    // Stop mid-run: a checkpoint, then finished/stopped.
    let long = config(&demo, &runs_root, 20);
    let (id2, events) = train(&ui, &long, Some(1));
    let last = events.last().unwrap();
    assert_eq!(last["data"]["status"], "stopped", "{last}");
    let n_before = events
        .iter()
        .position(|e| e["event"] == "finished")
        .unwrap();
    assert_eq!(events[n_before - 1]["event"], "checkpoint");
    let runs = ui.invoke("list_runs", json!({})).unwrap();
    assert_eq!(runs[0]["id"], id2.as_str(), "newest first");
    assert_eq!(runs[0]["status"], "stopped");
    let err = ui
        .invoke("stop_training", json!({ "runId": id2 }))
        .unwrap_err();
    assert_eq!(err["kind"], "notRunning");
}

#[test]
fn paths_the_user_did_not_choose_are_refused() {
    let ui = Ui::new(&data_home());
    let dir = tempfile::tempdir().unwrap();
    let err = ui
        .invoke("scan_dataset", json!({ "paths": [dir.path()] }))
        .unwrap_err();
    assert_eq!(err["kind"], "invalidInput");
    assert!(
        err["message"].as_str().unwrap().contains("was not chosen"),
        "{err}"
    );
    ui.allow(dir.path());
    let err = ui
        .invoke(
            "scan_dataset",
            json!({ "paths": [dir.path().join("audio")] }),
        )
        .unwrap_err();
    assert_eq!(err["kind"], "notFound");
    let err = ui
        .invoke(
            "audio_peaks",
            json!({ "path": "/etc/passwd", "buckets": 8 }),
        )
        .unwrap_err();
    assert_eq!(err["kind"], "invalidInput");
}

#[test]
fn audio_peaks_of_a_wav() {
    let ui = Ui::new(&data_home());
    let dir = tempfile::tempdir().unwrap();
    ui.allow(dir.path());
    let wav = dir.path().join("a.wav");
    let samples: Vec<f32> = (0..2400)
        .map(|i| if i < 1200 { 0.25 } else { -0.75 })
        .collect();
    csm_core::data::audio::write_wav(
        &wav,
        &samples,
        24000,
        csm_core::data::audio::WavEncoding::Float32,
    )
    .unwrap();
    let peaks = ui
        .invoke("audio_peaks", json!({ "path": wav, "buckets": 4 }))
        .unwrap();
    assert_eq!(peaks, json!([0.25, 0.25, 0.75, 0.75]));
    let err = ui
        .invoke(
            "audio_peaks",
            json!({ "path": dir.path().join("b.wav"), "buckets": 4 }),
        )
        .unwrap_err();
    assert_eq!(err["kind"], "notFound");
}
