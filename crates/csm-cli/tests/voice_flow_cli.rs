//! `csm voice` end to end on the demo model, the tiny random Whisper of the
//! fixtures and resemblyzer's real speaker encoder: espeak-ng speech given
//! as long MP3 files without transcripts (the random Whisper writes random
//! words: the path, not the words, is under test). Every stage runs; runs
//! killed with SIGKILL in transcription and in training continue to the
//! same transcripts, losses and adapter tensors (bit for bit) as an
//! uninterrupted run; a run with everything present starts training at
//! once; the download stage fetches a bundle from a mock hub on 127.0.0.1
//! and resumes after a kill; the CSM bundle downloads while the
//! recordings are transcribed (transcription ends first, the hub being
//! slowed), Ctrl-C stops both, and a kill during both resumes both.

mod common;

#[path = "../../csm-hub/tests/support/mock_hub.rs"]
mod mock_hub;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{demo, signal_when, step_records, text, tiny_whisper, wait_until, CSM};
use csm_flow::layout::{StageStatus, VoiceDir};
use csm_flow::Stage;

const LIMIT: Duration = Duration::from_secs(400);

/// resemblyzer's weights, fetched by scripts/fetch-test-speaker-encoder.sh.
fn encoder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-data/resemblyzer-pretrained.pt")
}

/// Three recordings of about 18 s each, spoken by espeak-ng and encoded
/// as MP3 by ffmpeg, with no transcripts.
fn raw_recordings(root: &Path) -> PathBuf {
    let raw = root.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let text = "The quick brown fox jumps over the lazy dog. She sells sea shells by the \
                sea shore. A journey of a thousand miles begins with a single step. Peter \
                Piper picked a peck of pickled peppers. All that glitters is not gold.";
    for i in 1..=3 {
        let wav = root.join(format!("t{i}.wav"));
        let ok = Command::new("espeak-ng")
            .arg("-w")
            .arg(&wav)
            .arg(format!("{text} Recording number {i} ends here."))
            .status()
            .expect("espeak-ng runs (apt install espeak-ng)");
        assert!(ok.success());
        let ok = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-i"])
            .arg(&wav)
            .args(["-ar", "22050", "-b:a", "32k"])
            .arg(raw.join(format!("talk{i}.mp3")))
            .status()
            .expect("ffmpeg runs (apt install ffmpeg)");
        assert!(ok.success());
    }
    // A short recording with its own transcript: copied in, not
    // transcribed, and the clip voice scores hold out (see `seed`): the
    // random Whisper's words are thousands of byte tokens, too long a
    // prompt for the demo model.
    let wav = root.join("given.wav");
    let ok = Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg("Hello there, this is my own voice.")
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(&wav)
        .arg(raw.join("given.mp3"))
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(
        raw.join("given.txt"),
        "Hello there, this is my own voice.\n",
    )
    .unwrap();
    raw
}

/// A seed for which the voice scores hold out `given`'s clip: the trainer
/// takes, among the recordings' last utterances of 2 to 12 s, the least
/// `mix64(seed ^ fnv1a(recording))` (`train::voice::hold_out`); the run's
/// output is checked to name `given`.
fn seed() -> u64 {
    let fnv = |s: &str| {
        s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let key = |seed: u64, r: &str| csm_core::rng::mix64(seed ^ fnv(r));
    (0..)
        .find(|&s| {
            ["talk1", "talk2", "talk3"]
                .iter()
                .all(|r| key(s, "given") < key(s, r))
        })
        .unwrap()
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    raw: PathBuf,
    whisper: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    Setup {
        raw: raw_recordings(&root),
        whisper: tiny_whisper(&root),
        root,
        _tmp: tmp,
    }
}

/// `csm voice` with small, fast settings.
fn voice_args(s: &Setup, out: &Path) -> Vec<String> {
    let paths = demo();
    [
        "voice",
        s.raw.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--speaker-name",
        "Tester",
        "--model-path",
        paths.model.to_str().unwrap(),
        "--whisper-model",
        s.whisper.to_str().unwrap(),
        "--speaker-encoder",
        encoder().to_str().unwrap(),
        "--language",
        "en",
        "--temperature",
        "0",
        "--voice-prompt",
        "Hi.",
        "--val-split",
        "0",
        "--context-turns",
        "0",
        "--batch-size",
        "1",
        "--steps",
        "4",
        "--save-every",
        "2",
        "--learning-rate",
        "2e-3",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--seed".to_string(), seed().to_string()])
    .collect()
}

fn command(s: &Setup, args: &[String], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(CSM);
    cmd.args(args)
        .env("HF_HOME", s.root.join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env("CSM_CACHE_DIR", s.root.join("cache"))
        .env_remove("MLX_HOSTFILE")
        .env_remove("MLX_RANK")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// `csm` against the mock hub, with none of the user's `HF_*` or proxy
/// variables; HOME and HF_HOME inside the test's folder.
fn hub_command(home: &Path, hf_home: &Path, hub: &mock_hub::MockHub) -> Command {
    let mut c = Command::new(CSM);
    for (k, _) in std::env::vars() {
        if k.starts_with("HF_") || k.to_ascii_lowercase().ends_with("_proxy") {
            c.env_remove(k);
        }
    }
    c.env("HOME", home)
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", &hub.url)
        .env("CSM_PYPI_URL", &hub.pypi_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs to the end (or `LIMIT`).
fn run(s: &Setup, args: &[String], env: &[(&str, &str)]) -> Output {
    let mut child = command(s, args, env).spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < LIMIT, "csm voice ran past {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Runs until `ready()` holds, then SIGKILLs it.
fn run_and_kill(s: &Setup, args: &[String], ready: impl Fn() -> bool) -> Output {
    signal_when(command(s, args, &[]).spawn().unwrap(), "KILL", LIMIT, ready)
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".partial"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every tensor of a safetensors file: name -> (dtype, shape, raw bytes),
/// read from the format itself (an 8-byte little-endian header length, the
/// JSON header, the data) so the comparison does not go through the code
/// under test.
fn tensors(path: &Path) -> std::collections::BTreeMap<String, (String, Vec<u64>, Vec<u8>)> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&data[8..8 + n]).unwrap();
    let body = &data[8 + n..];
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let offsets = v["data_offsets"].as_array().unwrap();
            let (a, b) = (
                offsets[0].as_u64().unwrap() as usize,
                offsets[1].as_u64().unwrap() as usize,
            );
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            (
                k,
                (
                    v["dtype"].as_str().unwrap().to_string(),
                    shape,
                    body[a..b].to_vec(),
                ),
            )
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
#[cfg_attr(
    not(csm_test_speaker_encoder),
    ignore = "needs target/test-data/resemblyzer-pretrained.pt: scripts/fetch-test-speaker-encoder.sh"
)]
fn every_stage_runs_and_killed_runs_continue_to_the_same_voice() {
    let s = setup();

    // Uninterrupted: every stage.
    let straight = s.root.join("straight");
    let out = run(&s, &voice_args(&s, &straight), &[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for line in [
        "[download] skipped",
        "every model given as a path",
        "[transcribe] done",
        "3 transcribed now, 1 with their own transcript",
        "[dataset] done",
        "prompt(s) after given",
        "[train] done",
        "[summary] done",
        "best adapter:",
    ] {
        assert!(t.contains(line), "no `{line}`:\n{t}");
    }
    let dir = VoiceDir::new(&straight);
    let state = dir.read_state().unwrap();
    assert_eq!(state.speaker_name.as_deref(), Some("Tester"));
    for stage in [
        Stage::Transcribe,
        Stage::Dataset,
        Stage::Train,
        Stage::Summary,
    ] {
        assert_eq!(state.status(stage), StageStatus::Done, "{stage}");
    }
    assert_eq!(state.status(Stage::Download), StageStatus::Skipped);
    assert_eq!(
        files(&dir.transcripts_dir()),
        ["given.txt", "talk1.txt", "talk2.txt", "talk3.txt"]
    );
    // The settings printed and in voice.json are the run's config.json.
    let config: serde_json::Value =
        serde_json::from_str(&read(&dir.run_dir().join("config.json"))).unwrap();
    for c in &state.settings {
        // As numbers: config.json writes 16.0 where voice.json has 16.
        assert_eq!(config[&c.name].as_f64(), c.value.as_f64(), "{}", c.name);
        assert!(t.contains(&c.name), "{} not printed", c.name);
    }
    assert_eq!(config["batch_size"], 1, "--batch-size overrides the rule");
    let summary = dir.read_summary().unwrap().unwrap();
    // Examples longer than --max-seq-len (the random words) are left out:
    // 3 steps of 1 example, checkpoints at 2 and 3.
    assert!(summary.steps >= 3, "{summary:?}");
    assert!(
        summary.base.is_some() && summary.best.is_some(),
        "{summary:?}"
    );
    for p in [
        &summary.best_adapter,
        &summary.final_adapter,
        &summary.sample_wav,
    ] {
        let p = p.as_ref().expect("written");
        assert!(dir.resolve(p).is_file(), "{}", p.display());
    }
    assert!(summary.minutes_used > 0.5, "{summary:?}");
    let reference = step_records(&dir.run_dir());

    // Killed once a first transcript is written, then again at step 3 of
    // training (checkpoint 2 kept), then run to the end.
    let killed = s.root.join("killed");
    let kdir = VoiceDir::new(&killed);
    let talks = |d: &VoiceDir| {
        files(&d.transcripts_dir())
            .iter()
            .filter(|f| f.starts_with("talk"))
            .count()
    };
    let out = run_and_kill(&s, &voice_args(&s, &killed), || talks(&kdir) > 0);
    assert!(!out.status.success());
    let done_before = talks(&kdir);
    assert!(done_before < 3, "all transcribed before the kill");
    let out = run(
        &s,
        &voice_args(&s, &killed),
        &[("CSM_DEBUG_KILL_AT_STEP", "0:3")],
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains(&format!("{} transcribed now", 3 - done_before)),
        "{t}"
    );
    assert_eq!(
        kdir.read_state().unwrap().status(Stage::Train),
        StageStatus::Running
    );

    // Everything present: straight to training, which resumes.
    let out = run(&s, &voice_args(&s, &killed), &[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for line in ["[download] skipped", "resuming from"] {
        assert!(t.contains(line), "no `{line}`:\n{t}");
    }
    for not in [
        "loading Whisper",
        "transcribed now",
        "[transcribe] recordings",
    ] {
        assert!(
            !t.contains(not),
            "`{not}` in a run with every transcript:\n{t}"
        );
    }
    assert!(
        t.contains("[transcribe] skipped") && t.contains("done by an earlier run"),
        "{t}"
    );

    // Same transcripts, same losses (step 3 ran twice: the last record
    // counts) as the uninterrupted run.
    for f in files(&dir.transcripts_dir()) {
        assert_eq!(
            read(&kdir.transcripts_dir().join(&f)),
            read(&dir.transcripts_dir().join(&f)),
            "{f}"
        );
    }
    let mut resumed = std::collections::BTreeMap::new();
    for (step, loss) in step_records(&kdir.run_dir()) {
        resumed.insert(step, loss);
    }
    assert_eq!(
        resumed.len(),
        reference.len(),
        "{resumed:?} vs {reference:?}"
    );
    for (step, loss) in &reference {
        let got = resumed[step];
        assert!(
            (got - loss).abs() <= 1e-5 * loss.abs().max(1.0),
            "step {step}: resumed {got} vs uninterrupted {loss}"
        );
    }
    let ks = kdir.read_summary().unwrap().unwrap();
    assert_eq!(
        (ks.steps, ks.utterances),
        (summary.steps, summary.utterances)
    );
    // The same adapter, bit for bit: the final one and the best one.
    for (name, a, b) in [
        ("final", &summary.final_adapter, &ks.final_adapter),
        ("best", &summary.best_adapter, &ks.best_adapter),
    ] {
        let (a, b) = (
            dir.resolve(a.as_ref().unwrap()),
            kdir.resolve(b.as_ref().unwrap()),
        );
        let (ta, tb) = (tensors(&a), tensors(&b));
        assert!(!ta.is_empty(), "{}: no tensors", a.display());
        assert_eq!(
            ta.keys().collect::<Vec<_>>(),
            tb.keys().collect::<Vec<_>>(),
            "{name} adapter: tensor names"
        );
        for (key, (dtype, shape, bytes)) in &ta {
            let (dtype2, shape2, bytes2) = &tb[key];
            assert_eq!((dtype, shape), (dtype2, shape2), "{name} adapter {key}");
            assert!(
                bytes == bytes2,
                "{name} adapter {key}: the resumed run's values differ from the uninterrupted \
                 run's ({} of {} bytes differ)",
                bytes.iter().zip(bytes2).filter(|(x, y)| x != y).count(),
                bytes.len()
            );
        }
    }

    // Once finished, a run only reports the summary.
    let out = run(&s, &voice_args(&s, &killed), &[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        !t.contains("[Loading]") && t.contains("best adapter:"),
        "{t}"
    );
}

#[test]
fn the_download_stage_fetches_a_bundle_and_resumes_after_a_kill() {
    use mock_hub::{MockFile, MockHub};
    let paths = demo();
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    let model = bytes(&paths.model.join("model.safetensors"));
    let mimi = mock_hub::pattern(50_000, 2);
    let hub = MockHub::start(vec![
        MockFile::lfs("sesame/csm-1b", "model.safetensors", model.clone()),
        MockFile::git(
            "sesame/csm-1b",
            "config.json",
            &bytes(&paths.model.join("config.json")),
        ),
        // Stand-in bytes: the demo's Mimi is 384 MB, and this run stops
        // before anything is loaded.
        MockFile::lfs(
            "kyutai/moshiko-pytorch-bf16",
            "tokenizer-e351c8d8-checkpoint125.safetensors",
            mimi.clone(),
        ),
        MockFile::git(
            "unsloth/Llama-3.2-1B",
            "tokenizer.json",
            &bytes(&paths.tokenizer),
        ),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let out_dir = tmp.path().join("voice");
    let whisper = tmp.path().join("whisper-dir");
    std::fs::create_dir_all(&whisper).unwrap();
    let args: Vec<String> = [
        "voice",
        raw.to_str().unwrap(),
        "--output-dir",
        out_dir.to_str().unwrap(),
        "--model-path",
        "csm-1b",
        "--whisper-model",
        whisper.to_str().unwrap(),
        "--speaker-encoder",
        paths.model.join("config.json").to_str().unwrap(),
        "--stop-after",
        "download",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cmd = || {
        let mut c = hub_command(tmp.path(), &tmp.path().join("hf"), &hub);
        c.args(&args);
        c
    };
    // Slow enough to be killed half-way through the model's weights.
    hub.throttle(Some(Duration::from_millis(20)));
    let mut child = cmd().spawn().unwrap();
    let blobs = tmp.path().join("hf/hub/models--sesame--csm-1b/blobs");
    let start = Instant::now();
    let partial = loop {
        let part = std::fs::read_dir(&blobs).ok().and_then(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "incomplete"))
        });
        // More than a chunk: the model's weights, not the small config.
        if let Some(p) = part.filter(|p| std::fs::metadata(p).map_or(0, |m| m.len()) > 64 << 10) {
            break p;
        }
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        assert!(start.elapsed() < LIMIT);
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && (kept as usize) < model.len(), "{kept}");
    let state = VoiceDir::new(&out_dir).read_state().unwrap();
    assert_eq!(state.status(Stage::Download), StageStatus::Running);

    hub.throttle(None);
    let out = cmd().output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("resuming at"), "{t}");
    assert!(t.contains("stopped after the download stage"), "{t}");
    // The second transfer asked for the rest only.
    let served = hub.served("model.safetensors");
    assert_eq!(
        served.last().copied(),
        Some(model.len() as u64 - kept),
        "{served:?}"
    );
    let state = VoiceDir::new(&out_dir).read_state().unwrap();
    assert_eq!(state.status(Stage::Download), StageStatus::Done);
    let models = state.models.unwrap();
    assert_eq!(bytes(&models.model.join("model.safetensors")), model);
    assert_eq!(bytes(models.mimi.as_ref().unwrap()), mimi);
    assert_eq!(models.whisper, whisper);

    // Cached now: a second run downloads nothing.
    let before = hub.requests().len();
    let out = cmd().output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("already in the cache: csm-1b"), "{t}");
    assert_eq!(hub.requests().len(), before, "the hub was asked again");
}

/// The blob files of a repo in the hub cache under `hf`: (complete ones,
/// `.incomplete` ones with their sizes).
fn blobs(hf: &Path, repo_dir: &str) -> (Vec<PathBuf>, Vec<(PathBuf, u64)>) {
    let (mut whole, mut partial) = (Vec::new(), Vec::new());
    let dir = hf.join("hub").join(repo_dir).join("blobs");
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "incomplete") {
            partial.push((p.clone(), std::fs::metadata(&p).map_or(0, |m| m.len())));
        } else if p.extension().is_none_or(|x| x != "lock") {
            whole.push(p);
        }
    }
    (whole, partial)
}

#[test]
fn the_model_downloads_while_the_recordings_are_transcribed_and_both_resume_after_a_kill() {
    use mock_hub::{MockFile, MockHub};
    let s = setup();
    let paths = demo();
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    let model = bytes(&paths.model.join("model.safetensors"));
    let hub = MockHub::start(vec![
        MockFile::lfs("sesame/csm-1b", "model.safetensors", model.clone()),
        MockFile::git(
            "sesame/csm-1b",
            "config.json",
            &bytes(&paths.model.join("config.json")),
        ),
        // Stand-in bytes: these runs stop before anything is loaded.
        MockFile::lfs(
            "kyutai/moshiko-pytorch-bf16",
            "tokenizer-e351c8d8-checkpoint125.safetensors",
            mock_hub::pattern(50_000, 2),
        ),
        MockFile::git(
            "unsloth/Llama-3.2-1B",
            "tokenizer.json",
            &bytes(&paths.tokenizer),
        ),
    ]);
    let out_dir = s.root.join("parallel");
    let vdir = VoiceDir::new(&out_dir);
    let hf = s.root.join("hf-parallel");
    let args: Vec<String> = [
        "voice",
        s.raw.to_str().unwrap(),
        "--output-dir",
        out_dir.to_str().unwrap(),
        "--model-path",
        "csm-1b",
        "--whisper-model",
        s.whisper.to_str().unwrap(),
        // A stand-in path: nothing is scored in these runs.
        "--speaker-encoder",
        paths.model.join("config.json").to_str().unwrap(),
        "--language",
        "en",
        "--temperature",
        "0",
        "--stop-after",
        "transcribe",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let spawn = || {
        hub_command(&s.root, &hf, &hub)
            .args(&args)
            .env("CSM_CACHE_DIR", s.root.join("cache"))
            .spawn()
            .unwrap()
    };
    let talks = || {
        files(&vdir.transcripts_dir())
            .iter()
            .filter(|f| f.starts_with("talk"))
            .count()
    };
    let model_partial = || {
        blobs(&hf, "models--sesame--csm-1b")
            .1
            .into_iter()
            .find(|(_, n)| *n > 64 << 10)
    };
    // 80 KB/s: the weights take minutes; the test lifts it once it has
    // seen what it looks for.
    hub.throttle(Some(Duration::from_millis(200)));

    // Killed with a transcript written and the weights part-way.
    signal_when(spawn(), "KILL", LIMIT, || {
        talks() > 0 && model_partial().is_some()
    });
    assert!(talks() < 3, "all transcribed before the kill");
    let (_, killed_at) = model_partial().expect("the partial weights stay");
    let state = vdir.read_state().unwrap();
    assert_eq!(state.status(Stage::Download), StageStatus::Running);
    assert_eq!(state.status(Stage::Transcribe), StageStatus::Running);

    // Ctrl-C once the download is going again: both stages stop, marked
    // cancelled, the partial weights kept.
    let out = signal_when(spawn(), "INT", LIMIT, || {
        model_partial().is_some_and(|(_, n)| n > killed_at)
    });
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("stopped during the"), "{t}");
    let state = vdir.read_state().unwrap();
    assert_eq!(state.status(Stage::Download), StageStatus::Cancelled, "{t}");
    assert_eq!(
        state.status(Stage::Transcribe),
        StageStatus::Cancelled,
        "{t}"
    );
    let done_before = talks();
    let (partial, kept) = model_partial().expect("the partial weights stay");
    assert!((kept as usize) < model.len(), "{kept}");

    // Run again, still slowed: transcription ends while the weights are
    // still coming (the partial file is there, the whole blob is not).
    let mut child = spawn();
    let start = Instant::now();
    wait_until(&mut child, "transcription was done", LIMIT, || {
        vdir.read_state().unwrap().status(Stage::Transcribe) == StageStatus::Done
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "it ended with transcription"
    );
    let (whole, partials) = blobs(&hf, "models--sesame--csm-1b");
    let sha = mock_hub::sha256_hex(&model);
    assert!(
        whole.iter().all(|p| !p.ends_with(&sha)) && partials.iter().any(|(p, _)| *p == partial),
        "the weights were whole before transcription ended: {whole:?} {partials:?}"
    );
    assert_eq!(
        vdir.read_state().unwrap().status(Stage::Download),
        StageStatus::Running
    );
    hub.throttle(None);
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < LIMIT, "csm voice ran past {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for line in [
        "resuming at",
        &format!("{} transcribed now", 3 - done_before),
        "stopped after the transcribe stage",
    ] {
        assert!(t.contains(line), "no `{line}`:\n{t}");
    }
    let (transcribed, downloaded) = (
        t.find("[transcribe] done").expect("transcription ends"),
        t.find("[download] done").expect("the download ends"),
    );
    assert!(transcribed < downloaded, "{t}");
    // The second transfer of the weights asked for the rest only.
    let served = hub.served("model.safetensors");
    assert_eq!(
        served.last().copied(),
        Some(model.len() as u64 - kept),
        "{served:?}"
    );
    let state = vdir.read_state().unwrap();
    assert_eq!(state.status(Stage::Download), StageStatus::Done);
    assert_eq!(state.status(Stage::Transcribe), StageStatus::Done);
    let models = state.models.unwrap();
    assert_eq!(bytes(&models.model.join("model.safetensors")), model);
    assert_eq!(models.whisper, s.whisper);
    assert_eq!(
        files(&vdir.transcripts_dir()),
        ["given.txt", "talk1.txt", "talk2.txt", "talk3.txt"]
    );
}

#[test]
fn a_background_download_that_fails_names_the_file_and_keeps_the_transcripts() {
    use mock_hub::{MockFile, MockHub};
    let paths = demo();
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    // No tokenizer repo on this hub.
    let hub = MockHub::start(vec![
        MockFile::lfs(
            "sesame/csm-1b",
            "model.safetensors",
            bytes(&paths.model.join("model.safetensors")),
        ),
        MockFile::git(
            "sesame/csm-1b",
            "config.json",
            &bytes(&paths.model.join("config.json")),
        ),
        MockFile::lfs(
            "kyutai/moshiko-pytorch-bf16",
            "tokenizer-e351c8d8-checkpoint125.safetensors",
            mock_hub::pattern(50_000, 2),
        ),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    // One recording with its own transcript: no Whisper work.
    let raw = tmp.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let wav = raw.join("mine.wav");
    let ok = Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg("Hello there.")
        .status()
        .expect("espeak-ng runs (apt install espeak-ng)");
    assert!(ok.success());
    std::fs::write(raw.join("mine.txt"), "Hello there.\n").unwrap();
    let out_dir = tmp.path().join("voice");
    let out = hub_command(tmp.path(), &tmp.path().join("hf"), &hub)
        .arg("voice")
        .arg(&raw)
        .arg("--output-dir")
        .arg(&out_dir)
        .args(["--model-path", "csm-1b", "--whisper-model"])
        .arg(tmp.path())
        .arg("--speaker-encoder")
        .arg(paths.model.join("config.json"))
        .args(["--stop-after", "transcribe"])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("unsloth/Llama-3.2-1B") && t.contains("tokenizer.json"),
        "the error does not name the file:\n{t}"
    );
    let dir = VoiceDir::new(&out_dir);
    let state = dir.read_state().unwrap();
    assert_eq!(state.status(Stage::Transcribe), StageStatus::Done);
    assert_eq!(state.status(Stage::Download), StageStatus::Failed);
    let error = state.stages[&Stage::Download].error.clone().unwrap();
    assert!(error.contains("tokenizer.json"), "{error}");
    assert_eq!(files(&dir.transcripts_dir()), ["mine.txt"]);
}
