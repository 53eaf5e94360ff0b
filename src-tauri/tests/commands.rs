//! The commands through Tauri's mock runtime (no display): real IPC
//! (argument names, serde, capabilities, `{kind, message}` errors) over the
//! real engine, on the demo model and dataset.
//!
//! One test a command or behaviour. The demo is built once under a shared
//! app data dir; the tests that read a finished run share one 1-epoch run
//! ([`trained_run`]); work that runs MLX holds [`mlx`], so the trainer and
//! generator never run side by side.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use csm_app_lib::commands::generate::{self, GenerateRequest, GenerationEvent};
use csm_app_lib::commands::{history, training};
use csm_app_lib::contract::TrainingEvent;
use csm_app_lib::state::{AllowedPaths, GenerationJobs, RunRoots, TrainingJobs};
use csm_core::cancel::CancelToken;
use csm_core::train::run_dir::RunDir;
use csm_core::train::{LrSchedule, StepReport, TrainConfig, TrainEvent, ValReport};
use serde_json::{json, Value};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{
    get_ipc_response, mock_builder, mock_context, noop_assets, MockRuntime, INVOKE_KEY,
};
use tauri::webview::InvokeRequest;
use tauri::{App, Manager, WebviewWindow};

// ------------------------------------------------------------------ harness

struct Ui {
    app: App<MockRuntime>,
    webview: WebviewWindow<MockRuntime>,
}

impl Ui {
    fn new() -> Self {
        // app_data_dir() follows XDG_DATA_HOME; every test uses the same one.
        std::env::set_var("XDG_DATA_HOME", data_home());
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

    /// `cmd` must succeed; the panic names the command and the error.
    fn ok(&self, cmd: &str, body: Value) -> Value {
        self.invoke(cmd, body)
            .unwrap_or_else(|e| panic!("{cmd} failed: {e}"))
    }

    /// `cmd` must fail; returns the `{kind, message}` error.
    fn err(&self, cmd: &str, body: Value) -> Value {
        match self.invoke(cmd, body) {
            Ok(v) => panic!("{cmd} should have failed, returned {v}"),
            Err(e) => e,
        }
    }

    fn allow(&self, p: &Path) {
        self.app.state::<AllowedPaths>().allow(p);
    }

    fn runs_root(&self) -> PathBuf {
        self.app
            .state::<RunRoots>()
            .default_root(self.app.handle())
            .unwrap()
    }
}

fn data_home() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .to_path_buf()
}

/// Held by every test that runs MLX (demo build, inspection, training,
/// generation): one at a time, as in the app.
fn mlx() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The demo assets (`demo_assets`' answer), built on first use.
fn demo_assets(ui: &Ui) -> Value {
    ui.ok("demo_assets", json!({}))
}

fn path(demo: &Value, key: &str) -> PathBuf {
    PathBuf::from(
        demo[key]
            .as_str()
            .unwrap_or_else(|| panic!("demo_assets has no {key}: {demo}")),
    )
}

/// A small, fast run on the demo: the UI's config as TrainConfig.
fn config(demo: &Value, output_dir: &Path, epochs: usize) -> TrainConfig {
    TrainConfig {
        model_path: path(demo, "modelPath"),
        mimi_path: Some(path(demo, "mimiPath")),
        tokenizer_path: Some(path(demo, "tokenizerPath")),
        audio_dir: path(demo, "audioDir"),
        transcript_dir: path(demo, "transcriptDir"),
        output_dir: output_dir.to_path_buf(),
        context_turns: 0,
        lora_r: 4,
        lora_alpha: 8.0,
        learning_rate: 1e-3,
        lr_schedule: LrSchedule::Constant,
        warmup_steps: 0,
        decoder_fraction: 0.5,
        weight_decay: 0.0,
        batch_size: 4,
        epochs,
        val_split: 0.2,
        val_every: 2,
        save_every: 2,
        seed: 1,
        ..TrainConfig::default()
    }
}

/// Runs `cfg` to the end and returns its id and every event sent (as the
/// UI receives them); `stop_after` stops it through `stop_training` after
/// that many steps.
fn train(ui: &Ui, cfg: &TrainConfig, stop_after: Option<usize>) -> (String, Vec<Value>) {
    let events: Arc<Mutex<Vec<TrainingEvent>>> = Arc::default();
    let sink = events.clone();
    let jobs = ui.app.state::<TrainingJobs>();
    let id = training::start(&jobs, cfg, move |e| sink.lock().unwrap().push(e))
        .unwrap_or_else(|e| panic!("training::start refused the config: {e}"));
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
            .count();
        if let (Some(n), false) = (stop_after, stopped) {
            if steps >= n {
                ui.ok("stop_training", json!({ "runId": id }));
                stopped = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = events
        .lock()
        .unwrap()
        .iter()
        // As JSON text, like the channel (to_value would widen f32 values).
        .map(|e| serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap())
        .collect();
    (id, events)
}

/// The 1-epoch run the History, export, estimate and generation tests read.
struct TrainedRun {
    id: String,
    config: TrainConfig,
    demo: Value,
    events: Vec<Value>,
}

/// Trains [`TrainedRun`] once (call with [`mlx`] held).
fn trained_run() -> &'static TrainedRun {
    static RUN: OnceLock<TrainedRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let ui = Ui::new();
        let demo = demo_assets(&ui);
        let config = config(&demo, &ui.runs_root(), 1);
        let t = Instant::now();
        let (id, events) = train(&ui, &config, None);
        eprintln!("training 1 epoch: {:?}", t.elapsed());
        TrainedRun {
            id,
            config,
            demo,
            events,
        }
    })
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("?"))
        .collect()
}

fn first<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == kind)
        .unwrap_or_else(|| panic!("no `{kind}` event in {:?}", kinds(events)))
}

// ------------------------------------------------------------------ demo, dataset, models

#[test]
fn demo_assets_are_built_once_under_the_app_data_dir() {
    let _mlx = mlx();
    let ui = Ui::new();
    let t = Instant::now();
    let demo = demo_assets(&ui);
    eprintln!("demo_assets: {:?}", t.elapsed());
    for key in [
        "modelPath",
        "mimiPath",
        "tokenizerPath",
        "audioDir",
        "transcriptDir",
    ] {
        let p = path(&demo, key);
        assert!(p.exists(), "{key} {} does not exist", p.display());
        assert!(
            p.starts_with(data_home()),
            "{key} {} is not under the app data dir",
            p.display()
        );
    }
    assert_eq!(
        demo_assets(&ui),
        demo,
        "a second call reuses the demo and answers the same"
    );
}

#[test]
fn scan_dataset_reads_the_demo_from_its_folders_or_their_parent() {
    let ui = Ui::new();
    let demo = {
        let _mlx = mlx();
        demo_assets(&ui)
    };
    let scan = ui.ok(
        "scan_dataset",
        json!({ "paths": [demo["audioDir"], demo["transcriptDir"]] }),
    );
    let n = scan["items"].as_array().expect("items").len();
    assert_eq!(
        n,
        csm_app_lib::commands::models::DEMO_CLIPS,
        "one row per demo clip"
    );
    for total in ["files", "usable", "withTranscript"] {
        assert_eq!(
            scan["totals"][total], n,
            "totals.{total}: {}",
            scan["totals"]
        );
    }
    assert!(
        scan["totals"]["seconds"].as_f64().unwrap() > 1.0,
        "{}",
        scan["totals"]
    );
    let item = &scan["items"][0];
    assert!(
        item["transcript"].as_str().unwrap().len() > 3,
        "transcript text: {item}"
    );
    assert_eq!(item["sampleRate"], 24000, "{item}");

    let parent = path(&demo, "audioDir").parent().unwrap().to_path_buf();
    let by_parent = ui.ok("scan_dataset", json!({ "paths": [parent] }));
    assert_eq!(
        by_parent["items"], scan["items"],
        "the parent folder gives the same rows"
    );
}

#[test]
fn dataset_usage_reports_the_audio_used_after_trimming() {
    let ui = Ui::new();
    let demo = {
        let _mlx = mlx();
        demo_assets(&ui)
    };
    let cfg = config(&demo, &ui.runs_root(), 1);
    let trimmed = ui.ok("dataset_usage", json!({ "config": cfg }));
    let secs = |u: &Value, k: &str| u[k].as_f64().unwrap_or_else(|| panic!("no {k}: {u}"));
    let clips = csm_app_lib::commands::models::DEMO_CLIPS;
    assert_eq!(
        trimmed["utterances"], clips,
        "one utterance a clip: {trimmed}"
    );
    assert_eq!(trimmed["recordings"].as_array().unwrap().len(), clips);
    assert!(
        secs(&trimmed, "seconds_used") < secs(&trimmed, "seconds_in"),
        "espeak's edge silence is trimmed: {trimmed}"
    );
    assert_eq!(
        trimmed["train_utterances"].as_u64().unwrap()
            + trimmed["validation_utterances"].as_u64().unwrap(),
        clips as u64,
        "{trimmed}"
    );

    let whole = TrainConfig {
        trim_silence: false,
        ..cfg
    };
    let untrimmed = ui.ok("dataset_usage", json!({ "config": whole }));
    assert!(
        (secs(&untrimmed, "seconds_used") - secs(&untrimmed, "seconds_in")).abs() < 1e-6,
        "without trimming the short clips are used whole: {untrimmed}"
    );

    let stranger = tempfile::tempdir().unwrap();
    let refused = TrainConfig {
        audio_dir: stranger.path().to_path_buf(),
        ..TrainConfig::default()
    };
    let err = ui.err("dataset_usage", json!({ "config": refused }));
    assert_eq!(err["kind"], "invalidInput", "a folder not chosen: {err}");
}

#[test]
fn inspect_model_reports_each_kind_of_demo_file() {
    let _mlx = mlx();
    let ui = Ui::new();
    let demo = demo_assets(&ui);
    let csm = ui.ok(
        "inspect_model",
        json!({ "path": demo["modelPath"], "kind": "csm" }),
    );
    assert_eq!(csm["format"], "safetensors", "{csm}");
    assert_eq!(csm["dtype"], "float32", "{csm}");
    assert!(csm["parameters"].as_u64().unwrap() > 1000, "{csm}");
    assert!(csm["details"]["codebooks"].is_string(), "{csm}");
    let mimi = ui.ok(
        "inspect_model",
        json!({ "path": demo["mimiPath"], "kind": "mimi" }),
    );
    assert!(mimi["parameters"].as_u64().unwrap() > 1_000_000, "{mimi}");
    let tok = ui.ok(
        "inspect_model",
        json!({ "path": demo["tokenizerPath"], "kind": "tokenizer" }),
    );
    assert!(tok["details"]["vocab size"].is_string(), "{tok}");
}

#[test]
fn inspect_model_of_a_folder_without_weights_is_the_loaders_error() {
    let _mlx = mlx();
    let ui = Ui::new();
    let empty = tempfile::tempdir().unwrap();
    ui.allow(empty.path());
    let err = ui.err(
        "inspect_model",
        json!({ "path": empty.path(), "kind": "csm" }),
    );
    assert!(
        ["modelLoad", "unsupportedFormat"].contains(&err["kind"].as_str().unwrap()),
        "{err}"
    );
}

// ------------------------------------------------------------------ training

#[test]
fn estimate_run_is_null_without_a_measured_run_of_the_model() {
    let ui = Ui::new();
    let cfg = TrainConfig {
        model_path: "/models/never-trained".into(),
        ..TrainConfig::default()
    };
    let est = ui.ok("estimate_run", json!({ "config": cfg }));
    assert_eq!(est, json!({ "secsPerStep": null, "peakMemoryBytes": null }));
}

#[test]
fn estimate_run_refuses_an_empty_batch() {
    let ui = Ui::new();
    let cfg = TrainConfig {
        batch_size: 0,
        ..TrainConfig::default()
    };
    let err = ui.err("estimate_run", json!({ "config": cfg }));
    assert_eq!(err["kind"], "invalidInput", "{err}");
}

#[test]
fn a_run_streams_phases_steps_and_a_checkpoint_then_finishes() {
    let _mlx = mlx();
    let run = trained_run();
    let kinds = kinds(&run.events);
    assert_eq!(kinds.first(), Some(&"phase"), "first event: {kinds:?}");
    for kind in ["started", "step", "checkpoint"] {
        assert!(kinds.contains(&kind), "no `{kind}` event in {kinds:?}");
    }
    let last = run.events.last().unwrap();
    assert_eq!(last["event"], "finished", "{last}");
    assert_eq!(last["data"]["status"], "completed", "{last}");
    assert!(
        last["data"]["adapterPath"]
            .as_str()
            .is_some_and(|p| p.ends_with("adapters.safetensors")),
        "a finished run names its adapter: {last}"
    );
    let started = first(&run.events, "started");
    assert_eq!(started["data"]["runId"], run.id.as_str(), "{started}");
    let step = first(&run.events, "step");
    assert!(step["data"]["loss"].as_f64().unwrap() > 0.0, "{step}");
    assert_eq!(
        step["data"]["totalSteps"], started["data"]["totalSteps"],
        "steps count towards the planned total"
    );
}

#[test]
fn a_runs_folder_holds_its_config_as_started() {
    let _mlx = mlx();
    let run = trained_run();
    let dir = RunDir::new(
        first(&run.events, "started")["data"]["runDir"]
            .as_str()
            .unwrap(),
    );
    let written = dir.read_config().expect("config.json of the run");
    assert_eq!(
        written.output_dir,
        dir.path(),
        "config.json names the run folder"
    );
    assert_eq!(
        TrainConfig {
            output_dir: run.config.output_dir.clone(),
            ..written
        },
        run.config,
        "and is otherwise the config the UI sent"
    );
}

#[test]
fn stop_training_stops_after_a_checkpoint() {
    let _mlx = mlx();
    let ui = Ui::new();
    let demo = demo_assets(&ui);
    let long = config(&demo, &ui.runs_root(), 20);
    let (id, events) = train(&ui, &long, Some(1));
    let last = events.last().unwrap();
    assert_eq!(last["data"]["status"], "stopped", "{last}");
    let finished = events
        .iter()
        .position(|e| e["event"] == "finished")
        .unwrap();
    assert_eq!(
        events[finished - 1]["event"],
        "checkpoint",
        "a checkpoint right before the end: {:?}",
        kinds(&events)
    );
    let runs = ui.ok("list_runs", json!({}));
    let listed = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap_or_else(|| panic!("run {id} not listed: {runs}"));
    assert_eq!(listed["status"], "stopped", "{listed}");
    let err = ui.err("stop_training", json!({ "runId": id }));
    assert_eq!(err["kind"], "notRunning", "{err}");
}

// ------------------------------------------------------------------ history

#[test]
fn list_runs_shows_the_run_newest_first() {
    let _mlx = mlx();
    let run = trained_run();
    let ui = Ui::new();
    let runs = ui.ok("list_runs", json!({}));
    let runs = runs.as_array().unwrap();
    let started: Vec<&str> = runs
        .iter()
        .map(|r| r["startedAt"].as_str().unwrap())
        .collect();
    assert!(
        started.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {started:?}"
    );
    let listed = runs
        .iter()
        .find(|r| r["id"] == run.id.as_str())
        .unwrap_or_else(|| panic!("run {} not listed", run.id));
    let last = run.events.last().unwrap();
    assert_eq!(listed["status"], "completed", "{listed}");
    assert_eq!(listed["step"], last["data"]["step"], "{listed}");
    assert!(
        listed["startedAt"].as_str().unwrap().ends_with('Z'),
        "{listed}"
    );
    assert!(
        !listed["checkpoints"].as_array().unwrap().is_empty(),
        "{listed}"
    );
    // The config as TrainConfig's JSON, with the form's output folder.
    assert_eq!(
        listed["config"]["output_dir"],
        json!(ui.runs_root()),
        "{listed}"
    );
    // Through text, as f32 values cross IPC (to_value would widen them).
    let sent: Value = serde_json::from_str(&serde_json::to_string(&run.config).unwrap()).unwrap();
    assert_eq!(listed["config"], sent, "the config the UI sent comes back");
}

#[test]
fn run_metrics_reads_the_steps_back_as_they_were_streamed() {
    let _mlx = mlx();
    let run = trained_run();
    let ui = Ui::new();
    let metrics = ui.ok("run_metrics", json!({ "runId": run.id }));
    let streamed: Vec<&Value> = run
        .events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| &e["data"])
        .collect();
    let read = metrics["steps"].as_array().unwrap();
    assert_eq!(read.len(), streamed.len(), "one record a step");
    for (r, s) in read.iter().zip(&streamed) {
        assert_eq!(r, *s, "metrics.jsonl gives back the step the channel sent");
    }
    assert!(
        !metrics["validation"].as_array().unwrap().is_empty(),
        "validation passes: {metrics}"
    );
    let err = ui.err("run_metrics", json!({ "runId": "nope" }));
    assert_eq!(err["kind"], "notFound", "{err}");
}

#[test]
fn history_reads_a_run_folder_as_run_dir_writes_it() {
    // A run that failed after one step whose loss was NaN; no MLX needed.
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path().join("20260101-000000"));
    let cfg = TrainConfig {
        output_dir: run.path().to_path_buf(),
        batch_size: 2,
        grad_accum: 2,
        ..TrainConfig::default()
    };
    std::fs::create_dir_all(run.path()).unwrap();
    run.write_config(&cfg).unwrap();
    let mut log = run.open_metrics().unwrap();
    log.append(&TrainEvent::Started {
        total_steps: 20,
        start_step: 0,
        train_examples: 16,
        val_examples: 2,
        trainable_params: 10,
    })
    .unwrap();
    for (step, loss) in [(1, 3.0), (2, f32::NAN)] {
        log.append(&TrainEvent::Step(StepReport {
            step,
            total_steps: 20,
            epoch: 1,
            loss,
            semantic_loss: 1.0,
            acoustic_loss: 2.0,
            lr: 1e-4,
            grad_norm: 0.5,
            frames_per_sec: 10.0,
            comm_bytes: 0,
            comm_secs: 0.0,
            memory_bytes: 1,
            peak_memory_bytes: 4096,
            elapsed_secs: step as f64,
            eta_secs: f64::NAN,
        }))
        .unwrap();
    }
    log.append(&TrainEvent::Validation(ValReport {
        step: 2,
        loss: 2.5,
        semantic_loss: 1.0,
        acoustic_loss: 1.5,
        examples: 2,
        speakers: Vec::new(),
    }))
    .unwrap();
    log.append_failure("training", "the loss became NaN")
        .unwrap();

    let rec = history::read_run(run.path(), false).expect("the folder reads back");
    let s = &rec.summary;
    assert_eq!((s.status, s.step, s.total_steps), ("failed", 2, 20));
    assert!(s.final_loss.unwrap().is_nan(), "null comes back as NaN");
    assert_eq!(s.best_val_loss, Some(2.5));
    assert_eq!(s.config.output_dir, dir.path(), "the form's output folder");
    assert_eq!(rec.secs_per_step, Some(1.0));
    assert_eq!(rec.peak_memory_bytes, Some(4096));

    let m = history::metrics(run.path()).unwrap();
    assert_eq!(m.steps.len(), 2);
    // 16 examples, 2 a micro-batch, 2 micro-batches a step: 4 steps an epoch.
    assert_eq!(
        m.steps[1].epoch, 0.5,
        "epochs from the core's steps_per_epoch"
    );
    let wire = serde_json::to_value(&m).unwrap();
    assert_eq!(
        wire["steps"][1]["loss"],
        Value::Null,
        "NaN crosses IPC as null"
    );
    assert_eq!(wire["validation"][0]["semanticLoss"], 1.0, "{wire}");
}

#[test]
fn export_adapter_writes_a_new_folder_and_never_overwrites() {
    let _mlx = mlx();
    let run = trained_run();
    let ui = Ui::new();
    let out = tempfile::tempdir().unwrap();
    ui.allow(out.path());
    let export = |ckpt: &Value| {
        ui.invoke(
            "export_adapter",
            json!({ "runId": run.id, "checkpoint": ckpt, "dest": out.path() }),
        )
    };
    let folder = out.path().join(&run.id);
    assert_eq!(export(&Value::Null).unwrap(), json!(folder));
    for f in [
        "adapters.safetensors",
        "adapter_config.json",
        "peft/adapter_model.safetensors",
        "peft/adapter_config.json",
    ] {
        assert!(folder.join(f).is_file(), "{f} not exported");
    }
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from(&run.id)], "temp files left");

    std::fs::write(folder.join("adapter_config.json"), "mine").unwrap();
    let err = export(&Value::Null).unwrap_err();
    assert_eq!(err["kind"], "alreadyExists", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains(folder.to_str().unwrap()),
        "the message names the folder: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(folder.join("adapter_config.json")).unwrap(),
        "mine",
        "an existing export is not touched"
    );
}

#[test]
fn export_adapter_of_a_checkpoint_writes_its_adapter() {
    let _mlx = mlx();
    let run = trained_run();
    let ui = Ui::new();
    let out = tempfile::tempdir().unwrap();
    ui.allow(out.path());
    let ckpt = RunDir::new(
        first(&run.events, "started")["data"]["runDir"]
            .as_str()
            .unwrap(),
    )
    .checkpoints()
    .into_iter()
    .next()
    .expect("the run wrote a checkpoint")
    .path;
    let written = ui.ok(
        "export_adapter",
        json!({ "runId": run.id, "checkpoint": ckpt, "dest": out.path() }),
    );
    let stem = ckpt.file_stem().unwrap().to_string_lossy();
    let folder = out.path().join(format!("{}-{stem}", run.id));
    assert_eq!(written, json!(folder));
    for f in ["adapters.safetensors", "adapter_config.json"] {
        assert!(folder.join(f).is_file(), "{f} not exported");
    }
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["lora_parameters"]["rank"], 4, "{config}");
    assert_eq!(
        config["base_model"],
        json!(run.config.model_path),
        "{config}"
    );
}

#[test]
fn export_adapter_refuses_bad_destinations() {
    let _mlx = mlx();
    let run = trained_run();
    let ui = Ui::new();
    let not_allowed = ui.err(
        "export_adapter",
        json!({ "runId": run.id, "checkpoint": null, "dest": "/tmp" }),
    );
    assert_eq!(not_allowed["kind"], "invalidInput", "{not_allowed}");
    let out = tempfile::tempdir().unwrap();
    ui.allow(out.path());
    let missing = ui.err(
        "export_adapter",
        json!({ "runId": run.id, "checkpoint": null, "dest": out.path().join("not-there") }),
    );
    assert_eq!(missing["kind"], "notFound", "{missing}");
}

#[test]
fn estimate_run_scales_the_measured_run_of_the_model() {
    let _mlx = mlx();
    let run = trained_run();
    let ui = Ui::new();
    let est = ui.ok("estimate_run", json!({ "config": run.config }));
    assert!(est["secsPerStep"].as_f64().unwrap() > 0.0, "{est}");
    assert!(est["peakMemoryBytes"].as_u64().unwrap() > 0, "{est}");
}

// ------------------------------------------------------------------ generation

fn request(demo: &Value, checkpoint: &Value) -> Value {
    json!({ "request": {
        "text": "Hello there.", "speakerId": 0, "contextAudio": null, "contextText": null,
        "checkpoint": checkpoint, "modelPath": demo["modelPath"], "mimiPath": demo["mimiPath"],
        "tokenizerPath": demo["tokenizerPath"], "seed": 3, "temperature": 0.9, "topK": 20,
        "maxAudioSecs": 0.8 }, "onProgress": "__CHANNEL__:1" })
}

#[test]
fn generate_sample_is_deterministic_for_a_seed() {
    let _mlx = mlx();
    let ui = Ui::new();
    let demo = demo_assets(&ui);
    let t = Instant::now();
    let base = ui.ok("generate_sample", request(&demo, &Value::Null));
    eprintln!("generate_sample: {:?}", t.elapsed());
    assert!(
        Path::new(base["path"].as_str().unwrap()).is_file(),
        "{base}"
    );
    assert_eq!(base["sampleRate"], 24000);
    assert_eq!(base["peaks"].as_array().unwrap().len(), 512);
    assert!(base["durationSecs"].as_f64().unwrap() > 0.0, "{base}");
    let again = ui.ok("generate_sample", request(&demo, &Value::Null));
    assert_eq!(again["peaks"], base["peaks"], "same seed, same audio");
    assert_ne!(again["path"], base["path"], "each sample its own file");
}

#[test]
fn generate_sample_loads_a_training_checkpoint() {
    let _mlx = mlx();
    let run = trained_run();
    let ui = Ui::new();
    let ckpt = json!(
        RunDir::new(
            first(&run.events, "started")["data"]["runDir"]
                .as_str()
                .unwrap()
        )
        .checkpoints()
        .pop()
        .expect("a checkpoint")
        .path
    );
    let tuned = ui.ok("generate_sample", request(&run.demo, &ckpt));
    assert_eq!(tuned["checkpoint"], ckpt, "{tuned}");
    let samples = Path::new(tuned["path"].as_str().unwrap()).parent().unwrap();
    assert!(
        !samples.join("adapters").exists(),
        "the checkpoint's adapter is applied from memory, not extracted to a file"
    );
    let err = ui.err(
        "generate_sample",
        request(&run.demo, &json!("/no/such/ckpt")),
    );
    assert_eq!(err["kind"], "notFound", "{err}");
}

/// The IPC request as the command body takes it, with `max_audio_secs`.
fn generate_request(demo: &Value, max_audio_secs: f32) -> GenerateRequest {
    let mut req: GenerateRequest =
        serde_json::from_value(request(demo, &Value::Null)["request"].clone()).unwrap();
    req.max_audio_secs = max_audio_secs;
    req
}

#[test]
fn generation_streams_a_progress_event_a_frame() {
    let _mlx = mlx();
    let ui = Ui::new();
    let demo = demo_assets(&ui);
    let samples = tempfile::tempdir().unwrap();
    let events = Mutex::new(Vec::new());
    let on_event = |e: GenerationEvent| events.lock().unwrap().push(e);
    let sample = generate::generate(
        &generate_request(&demo, 1.6),
        samples.path(),
        &on_event,
        &CancelToken::new(),
    )
    .expect("generation");
    let wire: Vec<Value> = events
        .into_inner()
        .unwrap()
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert_eq!(
        wire[..2],
        [
            json!({"event": "phase", "data": {"phase": "loading"}}),
            json!({"event": "phase", "data": {"phase": "generating"}})
        ],
        "a loading and a generating phase first"
    );
    let frames: Vec<u64> = wire[2..]
        .iter()
        .map(|e| {
            assert_eq!(e["event"], "progress", "{e}");
            assert_eq!(e["data"]["maxFrames"], 20, "1.6 s is 20 frames: {e}");
            assert!(e["data"]["elapsedSecs"].as_f64().unwrap() > 0.0, "{e}");
            e["data"]["frames"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        frames,
        (1..=frames.len() as u64).collect::<Vec<_>>(),
        "frames count up by one"
    );
    let audio_secs = wire.last().unwrap()["data"]["audioSecs"].as_f64().unwrap();
    assert!(
        (audio_secs - frames.len() as f64 * 0.08).abs() < 1e-9,
        "80 ms a frame: {audio_secs}"
    );
    assert!(
        (sample.duration_secs - frames.len() as f64 * 0.08).abs() < 1e-6,
        "the WAV holds the frames streamed: {} s",
        sample.duration_secs
    );
}

#[test]
fn a_cancelled_generation_writes_no_file() {
    let _mlx = mlx();
    let ui = Ui::new();
    let demo = demo_assets(&ui);
    let samples = tempfile::tempdir().unwrap();
    let cancel = CancelToken::new();
    let stopper = cancel.clone();
    let on_event = move |e: GenerationEvent| {
        if let GenerationEvent::Progress { frames: 2, .. } = e {
            stopper.cancel();
        }
    };
    let err = generate::generate(
        &generate_request(&demo, 1.6),
        samples.path(),
        &on_event,
        &cancel,
    )
    .expect_err("cancelled after two frames");
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
        std::fs::read_dir(samples.path()).unwrap().count(),
        0,
        "no file written"
    );
}

#[test]
fn cancel_generation_flips_every_generation_in_progress() {
    let ui = Ui::new();
    let jobs = ui.app.state::<GenerationJobs>();
    let job = jobs.start();
    assert_eq!(ui.ok("cancel_generation", json!({})), Value::Null);
    assert!(job.cancel.is_cancelled(), "the running job was cancelled");
    drop(job);
    assert_eq!(
        jobs.cancel_all(),
        0,
        "finished generations are unregistered"
    );
}

// ------------------------------------------------------------------ paths and audio

#[test]
fn paths_the_user_did_not_choose_are_refused() {
    let ui = Ui::new();
    let dir = tempfile::tempdir().unwrap();
    let err = ui.err("scan_dataset", json!({ "paths": [dir.path()] }));
    assert_eq!(err["kind"], "invalidInput", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("was not chosen"),
        "{err}"
    );
    ui.allow(dir.path());
    let err = ui.err(
        "scan_dataset",
        json!({ "paths": [dir.path().join("audio")] }),
    );
    assert_eq!(err["kind"], "notFound", "{err}");
    let err = ui.err(
        "audio_peaks",
        json!({ "path": "/etc/passwd", "buckets": 8 }),
    );
    assert_eq!(err["kind"], "invalidInput", "{err}");
}

#[test]
fn audio_peaks_of_a_wav() {
    let ui = Ui::new();
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
    let peaks = ui.ok("audio_peaks", json!({ "path": wav, "buckets": 4 }));
    assert_eq!(peaks, json!([0.25, 0.25, 0.75, 0.75]));
    let err = ui.err(
        "audio_peaks",
        json!({ "path": dir.path().join("b.wav"), "buckets": 4 }),
    );
    assert_eq!(err["kind"], "notFound", "{err}");
}
