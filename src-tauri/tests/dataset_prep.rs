//! From raw recordings to a dataset in the app, and the start-up BLAS
//! check, through Tauri's mock runtime (real IPC: argument names, serde,
//! capabilities, `{kind, message}` errors) over the real engine:
//!
//! - a raw folder (an MP3 spoken by espeak-ng and encoded by ffmpeg at test
//!   time, a fixture WAV, a file that is not audio) is scanned and
//!   transcribed with the tiny random Whisper of `tests/fixtures/whisper`
//!   (its text is random tokens: the folder handling is under test) into
//!   `audio/` (24 kHz mono), `transcripts/`, `alignments/`, with progress
//!   events, nothing overwritten on a second run, and overwriting the
//!   recordings themselves refused;
//! - proofreading: a saved edit (atomic, alignment made stale and visible
//!   in the scan), a dropped recording moved to `excluded/` and restored;
//! - `blas_status` agrees with the core's check in this process, and warns
//!   in a child process forced onto OpenBLAS's generic kernels.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use csm_app_lib::commands::transcribe::{self, TranscribeRequest, TranscriptionEvent};
use csm_app_lib::state::AllowedPaths;
use csm_core::cancel::CancelToken;
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

/// Held by tests that run MLX, one at a time.
fn mlx() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/whisper")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tiny80 fixture model with its tokenizer unpacked beside it (as
/// crates/csm-cli/tests/transcribe_cli.rs makes it).
fn whisper_model(root: &Path) -> PathBuf {
    let dir = root.join("whisper-tiny80");
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(fixtures().join("tiny80")).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap() != "ref.safetensors" {
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
    }
    run(Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(fixtures().join("multilingual.tiktoken.zip"))
        .arg(&dir));
    dir
}

/// A raw folder: `speech.mp3` (espeak-ng, then ffmpeg's LAME at 44.1 kHz
/// stereo), `clip0.wav` (a fixture), `notes.mp3` (not audio) and a text
/// file that is no recording.
fn raw_folder(root: &Path) -> PathBuf {
    let raw = root.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let spoken = root.join("spoken.wav");
    run(Command::new("espeak-ng")
        .args(["-v", "en", "-s", "160", "-w"])
        .arg(&spoken)
        .arg("Proofreading keeps the words and the voice together."));
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&spoken)
        .args([
            "-ac",
            "2",
            "-ar",
            "44100",
            "-codec:a",
            "libmp3lame",
            "-b:a",
            "96k",
        ])
        .arg(raw.join("speech.mp3")));
    std::fs::copy(fixtures().join("clip0.wav"), raw.join("clip0.wav")).unwrap();
    std::fs::write(raw.join("notes.mp3"), b"this is not an mp3 at all").unwrap();
    std::fs::write(raw.join("readme.txt"), b"not a recording").unwrap();
    raw
}

fn request(raw: &Path, data: &Path, model: &Path, overwrite: bool) -> TranscribeRequest {
    TranscribeRequest {
        audio_dir: raw.to_path_buf(),
        output_dir: data.to_path_buf(),
        whisper_model: model.display().to_string(),
        language: Some("en".into()),
        temperature: Some(0.0),
        overwrite,
    }
}

/// Transcribes and returns the summary (or error) as the UI gets it, and
/// every event sent.
fn transcribe_all(req: &TranscribeRequest) -> (Result<Value, Value>, Vec<TranscriptionEvent>) {
    let events = Mutex::new(Vec::new());
    let result = transcribe::transcribe(
        req,
        &|e| events.lock().unwrap().push(e),
        &CancelToken::new(),
        &csm_hub::Cancel::new(),
    )
    .map(|s| serde_json::to_value(s).unwrap())
    .map_err(|e| serde_json::to_value(e).unwrap());
    (result, events.into_inner().unwrap())
}

fn folders(data: &Path) -> Value {
    json!({
        "audioDir": data.join("audio"),
        "transcriptDir": data.join("transcripts"),
        "alignmentDir": data.join("alignments"),
    })
}

fn item<'a>(scan: &'a Value, file: &str) -> &'a Value {
    scan["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["file"] == file)
        .unwrap_or_else(|| panic!("no row {file} in {}", scan["items"]))
}

#[test]
fn raw_recordings_are_transcribed_into_the_dataset_layout_and_proofread() {
    let _mlx = mlx();
    let ui = Ui::new();
    let tmp = tempfile::tempdir().unwrap();
    let model = whisper_model(tmp.path());
    let raw = raw_folder(tmp.path());

    // Not dropped or chosen yet: refused.
    let err = ui.err("scan_recordings", json!({ "dir": raw }));
    assert_eq!(err["kind"], "invalidInput", "{err}");
    ui.allow(tmp.path());

    // The folder as the Dataset screen sees it: three recordings, none done.
    let scan = ui.ok("scan_recordings", json!({ "dir": raw }));
    let files: Vec<&str> = scan["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["clip0.wav", "notes.mp3", "speech.mp3"], "{scan}");
    assert_eq!(scan["outputDir"], json!(raw.join("dataset")));
    assert_eq!(scan["transcribed"], 0);
    let speech = item(&scan, "speech.mp3");
    assert_eq!(
        (&speech["sampleRate"], &speech["channels"], &speech["codec"]),
        (&json!(44100), &json!(2), &json!("mp3")),
        "{speech}"
    );
    assert!(item(&scan, "notes.mp3")["error"].is_string(), "{scan}");
    // The app's audio readers take the MP3 (the waveform of its rows).
    let peaks = ui.ok(
        "audio_peaks",
        json!({ "path": raw.join("speech.mp3"), "buckets": 16 }),
    );
    let peaks: Vec<f64> = serde_json::from_value(peaks).unwrap();
    assert_eq!(peaks.len(), 16);
    assert!(
        peaks.iter().cloned().fold(0.0, f64::max) > 0.05,
        "{peaks:?}"
    );
    assert!(item(&scan, "clip0.wav")["error"].is_null(), "{scan}");

    // Transcribe: the bad file is named, the others are written.
    let data = raw.join("dataset");
    let (result, events) = transcribe_all(&request(&raw, &data, &model, false));
    let summary = result.unwrap_or_else(|e| panic!("transcription failed: {e}"));
    assert_eq!(
        summary["transcribed"],
        json!(["clip0", "speech"]),
        "{summary}"
    );
    assert_eq!(summary["failed"][0]["file"], "notes.mp3", "{summary}");
    let events: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[..2], ["loading", "started"], "{kinds:?}");
    assert_eq!(events[1]["data"]["files"], 3, "{}", events[1]);
    for k in ["fileStarted", "progress", "fileDone", "fileFailed"] {
        assert!(kinds.contains(&k), "no {k} event: {kinds:?}");
    }
    let progress: Vec<&Value> = events.iter().filter(|e| e["event"] == "progress").collect();
    let done: Vec<f64> = progress
        .iter()
        .map(|e| e["data"]["doneSecs"].as_f64().unwrap())
        .collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    let last = &progress.last().unwrap()["data"];
    // The total comes from the headers, the progress from the decoded audio.
    assert!(
        (last["doneSecs"].as_f64().unwrap() - last["totalSecs"].as_f64().unwrap()).abs() < 0.1,
        "the last window ends the work: {last}"
    );
    assert!(last["etaSecs"].as_f64().unwrap() >= 0.0, "{last}");

    // The layout csm transcribe writes: 24 kHz mono WAV (the core decoder's
    // samples, 16-bit), text, word timings; nothing for the bad file.
    let wav = csm_core::data::audio::read_wav(&data.join("audio/speech.wav")).unwrap();
    assert_eq!((wav.sample_rate, wav.channels.len()), (24_000, 1));
    let reference = csm_core::data::decode::load_mono_24k(&raw.join("speech.mp3")).unwrap();
    assert_eq!(wav.frames(), reference.len());
    // Written as round(x * 32767), read back as n / 32768.
    let worst = wav.channels[0]
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - (b.clamp(-1.0, 1.0) * 32767.0).round() / 32768.0).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-7,
        "the 16-bit copy differs from the decoded MP3 by {worst}"
    );
    for name in ["clip0", "speech"] {
        let text = std::fs::read_to_string(data.join(format!("transcripts/{name}.txt"))).unwrap();
        assert!(!text.trim().is_empty(), "{name}: empty transcript");
        let al = csm_core::data::alignment::read_alignment(
            &data.join(format!("alignments/{name}.json")),
        )
        .unwrap();
        assert!(!al.words.is_empty() && al.words.iter().all(|w| w.span.is_some()));
    }
    assert!(!data.join("transcripts/notes.txt").exists());
    assert!(!data.join("audio/notes.wav").exists());

    // A second run leaves the user's edit alone; the scan sees them done.
    std::fs::write(data.join("transcripts/clip0.txt"), "my own words\n").unwrap();
    let (result, _) = transcribe_all(&request(&raw, &data, &model, false));
    let summary = result.unwrap();
    assert_eq!(summary["skipped"], json!(["clip0", "speech"]), "{summary}");
    assert_eq!(
        std::fs::read_to_string(data.join("transcripts/clip0.txt")).unwrap(),
        "my own words\n"
    );
    let scan = ui.ok("scan_recordings", json!({ "dir": raw }));
    assert_eq!(scan["transcribed"], 2, "{scan}");

    // Overwriting the recordings themselves (in place) is refused.
    let audio = data.join("audio");
    let (result, events) = transcribe_all(&request(&audio, &data, &model, true));
    let err = result.unwrap_err();
    assert_eq!(err["kind"], "invalidInput", "{err}");
    assert!(events.is_empty(), "refused before loading: {events:?}");

    // Proofreading: the dataset as scan_dataset shows it.
    let scan = ui.ok("scan_dataset", json!({ "paths": [data] }));
    let row = item(&scan, "speech.wav");
    assert_eq!(
        (&row["hasAlignment"], &row["alignmentStale"]),
        (&json!(true), &json!(false)),
        "{row}"
    );
    let original = row["transcript"].as_str().unwrap().to_string();

    // An edit that changes the words: saved atomically, the alignment is
    // stale (kept aside), and the scan says so.
    let saved = ui.ok(
        "save_transcript",
        json!({ "folders": folders(&data), "id": "speech", "text": "  Proofreading keeps words together.  " }),
    );
    assert_eq!(saved["alignment"], "madeStale", "{saved}");
    assert_eq!(
        std::fs::read_to_string(data.join("transcripts/speech.txt")).unwrap(),
        "Proofreading keeps words together.\n"
    );
    assert!(data.join("alignments/stale/speech.json").is_file());
    assert!(!data.join("alignments/speech.json").exists());
    let scan = ui.ok("scan_dataset", json!({ "paths": [data] }));
    let row = item(&scan, "speech.wav");
    assert_eq!(
        (&row["hasAlignment"], &row["alignmentStale"]),
        (&json!(false), &json!(true)),
        "{row}"
    );
    // Back to the words Whisper aligned: the alignment is restored.
    let saved = ui.ok(
        "save_transcript",
        json!({ "folders": folders(&data), "id": "speech", "text": original }),
    );
    assert_eq!(saved["alignment"], "restored", "{saved}");
    let err = ui.err(
        "save_transcript",
        json!({ "folders": folders(&data), "id": "speech", "text": " " }),
    );
    assert_eq!(err["kind"], "invalidInput", "{err}");

    // Drop a recording: moved to excluded/ (visible, listed), gone from the
    // scan, then restored; the audio is never deleted.
    let dropped = ui.ok(
        "exclude_recording",
        json!({ "folders": folders(&data), "id": "clip0" }),
    );
    assert_eq!(dropped["files"].as_array().unwrap().len(), 3, "{dropped}");
    for f in [
        "audio/excluded/clip0.wav",
        "transcripts/excluded/clip0.txt",
        "alignments/excluded/clip0.json",
    ] {
        assert!(data.join(f).is_file(), "{f}");
    }
    let scan = ui.ok("scan_dataset", json!({ "paths": [data] }));
    assert_eq!(scan["items"].as_array().unwrap().len(), 1, "{scan}");
    let listed = ui.ok("list_excluded", json!({ "folders": folders(&data) }));
    assert_eq!(listed[0]["id"], "clip0", "{listed}");
    ui.ok(
        "restore_recording",
        json!({ "folders": folders(&data), "id": "clip0" }),
    );
    assert_eq!(
        std::fs::read_to_string(data.join("transcripts/clip0.txt")).unwrap(),
        "my own words\n"
    );
    let scan = ui.ok("scan_dataset", json!({ "paths": [data] }));
    assert_eq!(scan["items"].as_array().unwrap().len(), 2, "{scan}");
    assert_eq!(
        ui.ok("list_excluded", json!({ "folders": folders(&data) })),
        json!([])
    );
}

#[test]
fn a_cancelled_transcription_keeps_what_was_finished() {
    let _mlx = mlx();
    let tmp = tempfile::tempdir().unwrap();
    let model = whisper_model(tmp.path());
    let raw = tmp.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    for c in ["clip0", "clip1"] {
        std::fs::copy(
            fixtures().join(format!("{c}.wav")),
            raw.join(format!("{c}.wav")),
        )
        .unwrap();
    }
    let data = tmp.path().join("data");
    let cancel = CancelToken::new();
    let flag = cancel.clone();
    let err = transcribe::transcribe(
        &request(&raw, &data, &model, false),
        &|e| {
            // Stop once the first recording is written.
            if matches!(e, TranscriptionEvent::FileDone { .. }) {
                flag.cancel();
            }
        },
        &cancel,
        &csm_hub::Cancel::new(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), "cancelled", "{err}");
    assert!(err.to_string().contains("after 1 of 2"), "{err}");
    assert!(data.join("transcripts/clip0.txt").is_file());
    assert!(!data.join("transcripts/clip1.txt").exists());
    assert!(!data.join("audio/clip1.wav").exists());
}

/// A hub cache holding `openai/whisper-tiny` as huggingface_hub lays it
/// out (blobs, a snapshot of links, `refs/main`), from the tiny80 fixture.
fn cache_with_whisper(root: &Path) -> PathBuf {
    let model = whisper_model(root);
    let cache = root.join("hub");
    let repo = cache.join("models--openai--whisper-tiny");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (i, f) in std::fs::read_dir(&model).unwrap().enumerate() {
        let f = f.unwrap().path();
        let blob = repo.join("blobs").join(format!("blob{i}"));
        std::fs::copy(&f, &blob).unwrap();
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(blob.file_name().unwrap()),
            snapshot.join(f.file_name().unwrap()),
        )
        .unwrap();
    }
    cache
}

#[test]
fn a_cached_whisper_is_listed_and_used_without_the_network() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = cache_with_whisper(tmp.path());
    // Port 9 (discard): any request would fail.
    let settings = csm_hub::HubSettings {
        endpoint: "http://127.0.0.1:9".into(),
        ..csm_hub::HubSettings::new(&cache)
    };
    let hub = || Ok(csm_hub::Hub::new(settings.clone()).unwrap());
    // csm-hub's Whisper bundles, the default first; the cached one has its
    // snapshot, the others none.
    let models = transcribe::list_whisper_models(&hub().unwrap()).unwrap();
    let repos: Vec<&str> = models.iter().map(|m| m.repo.as_str()).collect();
    assert_eq!(repos[0], transcribe::DEFAULT_WHISPER, "{repos:?}");
    assert_eq!(
        models[0].bundle,
        Some("whisper-large-v3-turbo"),
        "{models:?}"
    );
    let tiny = models
        .iter()
        .find(|m| m.repo == "openai/whisper-tiny")
        .unwrap();
    assert_eq!(tiny.bundle, Some("whisper-tiny"), "{models:?}");
    let snapshot = cache
        .join("models--openai--whisper-tiny/snapshots/0123456789abcdef0123456789abcdef01234567");
    assert_eq!(tiny.path.as_deref(), Some(snapshot.as_path()), "{models:?}");
    assert!(tiny.size_bytes > 800_000, "{models:?}");
    assert!(models
        .iter()
        .find(|m| m.repo == transcribe::DEFAULT_WHISPER)
        .unwrap()
        .path
        .is_none());

    let events = Mutex::new(Vec::new());
    let dir = transcribe::whisper_dir(
        "openai/whisper-tiny",
        hub,
        &|e| events.lock().unwrap().push(e),
        &csm_hub::Cancel::new(),
    )
    .unwrap();
    assert_eq!(dir, snapshot);
    // The bundle's name gives the same snapshot.
    let by_bundle = transcribe::whisper_dir(
        "whisper-tiny",
        hub,
        &|e| events.lock().unwrap().push(e),
        &csm_hub::Cancel::new(),
    )
    .unwrap();
    assert_eq!(by_bundle, snapshot);
    assert!(events.lock().unwrap().is_empty(), "nothing downloaded");
    {
        let _mlx = mlx();
        csm_core::whisper::Whisper::load(&dir).unwrap();
    }

    for bad in ["not a model", "/no/such/folder", "csm-1b"] {
        let err = transcribe::whisper_dir(bad, hub, &|_| {}, &csm_hub::Cancel::new()).unwrap_err();
        assert_eq!(err.kind(), "invalidInput", "{err}");
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn blas_status_reports_this_process_kernels() {
    use csm_core::runtime::blas::{kernel_origin, KernelOrigin};
    let ui = Ui::new();
    let status = ui.ok("blas_status", json!({}));
    match csm_core::runtime::openblas_core() {
        None => assert_eq!(status["origin"], "notOpenblas", "{status}"),
        Some(core) => {
            assert_eq!(status["kernels"], core, "{status}");
            let origin = kernel_origin(|k| std::env::var_os(k));
            let want = match origin {
                KernelOrigin::Fits => "fits",
                KernelOrigin::SetByUs { .. } => "setByApp",
                KernelOrigin::Narrow(_) => "narrow",
            };
            assert_eq!(status["origin"], want, "{status}");
            assert_eq!(status["warning"].is_string(), want == "narrow", "{status}");
        }
    }
}

/// The child half of [`generic_kernels_on_a_better_cpu_raise_the_warning`].
const CHILD: &str = "CSM_APP_TEST_BLAS_CHILD";

#[test]
fn generic_kernels_on_a_better_cpu_raise_the_warning() {
    if std::env::var_os(CHILD).is_some() {
        // In the child, OpenBLAS loaded with OPENBLAS_CORETYPE=Prescott.
        let status = Ui::new().ok("blas_status", json!({}));
        println!("BLAS-STATUS {status}");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "generic_kernels_on_a_better_cpu_raise_the_warning",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("OPENBLAS_CORETYPE", "Prescott")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BLAS-STATUS "))
        .map(|j| serde_json::from_str(j).unwrap())
        .unwrap_or_else(|| panic!("the child printed no status:\n{stdout}"));
    let cpu = csm_core::runtime::blas::CpuFeatures::detect();
    match (csm_core::runtime::openblas_core(), cpu.best_core()) {
        (Some(_), Some((better, _))) => {
            assert_eq!(status["origin"], "narrow", "{status}");
            assert_eq!(status["kernels"], "Prescott", "{status}");
            assert_eq!(status["recommended"], better, "{status}");
            let warning = status["warning"].as_str().unwrap();
            assert!(
                warning.contains("Prescott") && warning.contains(better),
                "{warning}"
            );
        }
        // Not OpenBLAS, or a CPU with nothing better than SSE: no warning.
        _ => assert!(status["warning"].is_null(), "{status}"),
    }
}
