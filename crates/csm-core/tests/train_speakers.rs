//! Several speakers in one run, on the demo model (tiny CSM, random Mimi)
//! with two espeak-ng voices: conversations give each turn its own speaker
//! id and the other voice's turns as context; a two-speaker run validates
//! per speaker (`metrics.jsonl`), samples each speaker, writes its table to
//! `config.json`, and agrees with two one-speaker runs on the examples they
//! share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;
use common::remove_at_exit;

use csm_core::adapter;
use csm_core::cancel::CancelToken;
use csm_core::data::espeak::{generate_demo_dataset, DemoOptions, DEMO_SENTENCES};
use csm_core::data::{decode, Speaker};
use csm_core::demo::{create_demo, DemoPaths};
use csm_core::model::LossWeights;
use csm_core::train::batch::Example;
use csm_core::train::metrics::JsonlObserver;
use csm_core::train::run_dir::{RunDir, RunEvent};
use csm_core::train::{
    self, trainer, NullObserver, RecordingObserver, RunSettings, TrainConfig, TrainEvent,
};

/// Sentences each voice speaks (the first N of the demo's).
const SENTENCES: usize = 4;
/// Tokens the demo's byte tokenizer adds around a segment.
const BOS: i32 = 256;
const EOS: i32 = 257;

/// This process's folder (nextest runs each test in its own process).
fn root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("train-speakers-{}", std::process::id()))
}

/// The demo model and two voices: `speakers/alice` (espeak-ng en-us) and
/// `speakers/bob` (en-us+f3), each speaking the first [`SENTENCES`]
/// sentences, one folder per speaker.
fn voices() -> (DemoPaths, PathBuf) {
    let root = root();
    let _ = std::fs::remove_dir_all(&root);
    remove_at_exit(&root);
    let paths = create_demo(&root, 1, 7).expect("demo builds (needs espeak-ng)");
    let data = root.join("speakers");
    for (name, voice) in [("alice", "en-us"), ("bob", "en-us+f3")] {
        generate_demo_dataset(
            &data.join(name),
            &DemoOptions {
                count: Some(SENTENCES),
                voice: voice.into(),
                ..DemoOptions::default()
            },
        )
        .unwrap();
    }
    (paths, data)
}

fn settings() -> RunSettings {
    RunSettings::new(root().join("codes"))
}

fn config(paths: &DemoPaths, out: &Path) -> TrainConfig {
    TrainConfig {
        model_path: paths.model.clone(),
        output_dir: out.to_path_buf(),
        context_turns: 1,
        batch_size: 2,
        epochs: 2,
        learning_rate: 3e-3,
        warmup_steps: 1,
        val_split: 0.25,
        val_every: 3,
        save_every: 0,
        decoder_fraction: 0.5,
        seed: 5,
        ..TrainConfig::default()
    }
}

/// The turns of an example as text: each run of text frames, bytes
/// between BOS and EOS (the demo tokenizer is byte-level).
fn turns(ex: &Example) -> Vec<String> {
    let width = ex.num_codebooks + 1;
    let mut out = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for t in 0..ex.len() {
        let (tok, on) = (
            ex.frames[t * width + width - 1],
            ex.mask[t * width + width - 1],
        );
        match (on > 0.0, tok) {
            (true, BOS) => current = Some(Vec::new()),
            (true, EOS) => out.push(String::from_utf8(current.take().unwrap()).unwrap()),
            (true, b) => current.as_mut().unwrap().push(u8::try_from(b).unwrap()),
            (false, _) => assert!(current.is_none(), "audio inside a text turn"),
        }
    }
    out
}

/// `[id]text` into its parts.
fn speaker_and_text(turn: &str) -> (u32, &str) {
    let (id, text) = turn.strip_prefix('[').unwrap().split_once(']').unwrap();
    (id.parse().unwrap(), text)
}

#[test]
fn conversation_turns_carry_their_own_speaker_and_the_other_as_context() {
    let (paths, voices) = voices();
    // One recording: alice and bob take turns, sentence after sentence,
    // with 0.6 s between turns; segment timings name who speaks.
    let conv = root().join("conversation");
    for d in ["audio", "transcripts", "alignments"] {
        std::fs::create_dir_all(conv.join(d)).unwrap();
    }
    let gap = vec![0f32; 14_400];
    let mut audio = vec![0f32; 7_200];
    let mut segments = Vec::new();
    let mut order = Vec::new();
    for (i, sentence) in DEMO_SENTENCES[..SENTENCES].iter().enumerate() {
        let who = ["alice", "bob"][i % 2];
        let clip =
            decode::load_mono_24k(&voices.join(who).join(format!("audio/{i:03}.wav"))).unwrap();
        let start = audio.len() as f64 / 24_000.0;
        audio.extend(&clip);
        let end = audio.len() as f64 / 24_000.0;
        audio.extend(&gap);
        segments.push(serde_json::json!({
            "text": sentence, "start": start, "end": end, "speaker": who,
        }));
        order.push((*sentence, who));
    }
    csm_core::data::audio::write_wav(
        &conv.join("audio/talk.wav"),
        &audio,
        24_000,
        csm_core::data::audio::WavEncoding::Float32,
    )
    .unwrap();
    let transcript: Vec<&str> = order.iter().map(|(s, _)| *s).collect();
    std::fs::write(conv.join("transcripts/talk.txt"), transcript.join(" ")).unwrap();
    std::fs::write(
        conv.join("alignments/talk.json"),
        serde_json::json!({ "segments": segments }).to_string(),
    )
    .unwrap();
    // Ids fixed by speakers.json; no `recordings` entry is needed when
    // every segment names its speaker.
    std::fs::write(
        conv.join("speakers.json"),
        r#"{"speakers": {"alice": 3, "bob": 8}}"#,
    )
    .unwrap();
    let id_of = |who: &str| if who == "alice" { 3 } else { 8 };

    let cfg = TrainConfig {
        data_dir: Some(conv.clone()),
        val_split: 0.0,
        ..config(&paths, &root().join("unused"))
    };
    let mut assets =
        train::load_assets(&cfg.model_path, None, None, csm_core::demo::DEMO_DTYPE).unwrap();
    let prepared =
        train::prepare(&mut assets, &cfg, &root().join("codes"), &mut NullObserver).unwrap();
    assert_eq!(
        prepared.speakers,
        [
            Speaker {
                name: "alice".into(),
                id: 3
            },
            Speaker {
                name: "bob".into(),
                id: 8
            }
        ]
    );
    assert_eq!(prepared.train.len(), SENTENCES, "{:?}", prepared.warnings);
    let mut with_context = 0;
    for (ex, &speaker) in prepared.train.iter().zip(&prepared.train_speakers) {
        let turns = turns(ex);
        let (id, text) = speaker_and_text(turns.last().unwrap());
        let at = order.iter().position(|(s, _)| *s == text).unwrap();
        assert_eq!(id, id_of(order[at].1), "target `{text}`");
        assert_eq!(speaker, id);
        if at == 0 {
            assert_eq!(turns.len(), 1, "the first turn has no context");
            continue;
        }
        // One context turn: the previous one, the other voice's, under its id.
        assert_eq!(turns.len(), 2, "{turns:?}");
        let (cid, ctext) = speaker_and_text(&turns[0]);
        assert_eq!(ctext, order[at - 1].0);
        assert_eq!(cid, id_of(order[at - 1].1));
        assert_ne!(cid, id);
        with_context += 1;
    }
    assert_eq!(with_context, SENTENCES - 1);
    // The dataset report counts each speaker's turns in the conversation.
    let per: BTreeMap<&str, (usize, usize, usize)> = prepared
        .usage
        .speakers
        .iter()
        .map(|s| {
            (
                s.speaker.name.as_str(),
                (s.utterances, s.recordings, s.conversations),
            )
        })
        .collect();
    assert_eq!(per["alice"], (2, 1, 1));
    assert_eq!(per["bob"], (2, 1, 1));
}

#[test]
fn two_speakers_validate_per_speaker_and_match_one_speaker_runs() {
    let (paths, voices) = voices();
    let out = root().join("run");
    let cfg = TrainConfig {
        data_dir: Some(voices.clone()),
        generate_samples: true,
        ..config(&paths, &out)
    };
    let mut events = RecordingObserver::default();
    {
        let mut observer = JsonlObserver::new(&out, &mut events).unwrap();
        train::train(&cfg, &settings(), &mut observer, &CancelToken::new()).unwrap();
    }
    // The names' ids, by the documented rule (byte order), in config.json.
    let run = RunDir::new(&out);
    let written = run.read_config().unwrap();
    let table: BTreeMap<String, u32> = [("alice".to_string(), 0), ("bob".to_string(), 1)].into();
    assert_eq!(written.speakers, table);
    assert_eq!(written.data_dir.as_deref(), Some(voices.as_path()));

    // metrics.jsonl: every validation has each speaker's part, one held-out
    // recording each (4 recordings, --val-split 0.25), pooled into the total.
    let validations: Vec<_> = run
        .read_metrics()
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            RunEvent::Train(TrainEvent::Validation(v)) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(
        validations.iter().map(|v| v.step).collect::<Vec<_>>(),
        [3, 6]
    );
    for v in &validations {
        let parts: Vec<(&str, u32, usize)> = v
            .speakers
            .iter()
            .map(|s| (s.speaker.as_str(), s.id, s.examples))
            .collect();
        assert_eq!(parts, [("alice", 0, 1), ("bob", 1, 1)]);
        let (lo, hi) = v.speakers.iter().fold((f32::MAX, f32::MIN), |(lo, hi), s| {
            (lo.min(s.loss), hi.max(s.loss))
        });
        assert!(v.loss.is_finite() && lo <= v.loss && v.loss <= hi, "{v:?}");
    }
    // A sample per speaker at the end.
    for id in [0, 1] {
        let sample = run.sample_path(6, Some(id));
        assert!(sample.is_file(), "{} missing", sample.display());
    }

    // The trained adapter on the two-speaker data and on each speaker's
    // folder alone (as --speaker-id 0 and 1): the same examples, split the
    // same way, with the same losses.
    let mut assets =
        train::load_assets(&paths.model, None, None, csm_core::demo::DEMO_DTYPE).unwrap();
    adapter::load_mlx(&mut assets.loaded.model, &out).unwrap();
    let cache = root().join("codes");
    let two = train::prepare(&mut assets, &cfg, &cache, &mut NullObserver).unwrap();
    let weights = LossWeights {
        semantic: 1.0,
        acoustic: 1.0,
    };
    // Every example of the two-speaker data, each speaker's batched apart.
    let all: Vec<Example> = two.train.iter().chain(&two.val).cloned().collect();
    let all_speakers: Vec<u32> = two
        .train_speakers
        .iter()
        .chain(&two.val_speakers)
        .copied()
        .collect();
    let (_, per_speaker) =
        train::evaluate_by_speaker(&mut assets.loaded.model, &all, &all_speakers, 2, weights)
            .unwrap();
    for (name, id) in [("alice", 0u32), ("bob", 1)] {
        let folder = voices.join(name);
        let one_cfg = TrainConfig {
            data_dir: None,
            audio_dir: folder.join("audio"),
            transcript_dir: folder.join("transcripts"),
            speaker_id: id,
            ..cfg.clone()
        };
        let one = train::prepare(&mut assets, &one_cfg, &cache, &mut NullObserver).unwrap();
        assert!(one.speakers.is_empty());
        let mine = |examples: &[Example], speakers: &[u32]| -> Vec<Example> {
            examples
                .iter()
                .zip(speakers)
                .filter(|(_, &s)| s == id)
                .map(|(e, _)| e.clone())
                .collect()
        };
        assert_eq!(mine(&two.train, &two.train_speakers), one.train, "{name}");
        assert_eq!(mine(&two.val, &two.val_speakers), one.val, "{name}");
        assert_eq!((one.train.len(), one.val.len()), (3, 1));
        let one_all: Vec<Example> = one.train.iter().chain(&one.val).cloned().collect();
        let alone = trainer::evaluate(&mut assets.loaded.model, &one_all, 2, weights).unwrap();
        let together = per_speaker.iter().find(|l| l.speaker == id).unwrap();
        assert_eq!(together.examples, SENTENCES);
        assert_eq!(
            (together.loss.semantic, together.loss.acoustic),
            (alone.semantic, alone.acoustic),
            "{name}"
        );
    }
    assert!(events.events.iter().any(|e| matches!(
        e,
        TrainEvent::Finished {
            cancelled: false,
            ..
        }
    )));
}
