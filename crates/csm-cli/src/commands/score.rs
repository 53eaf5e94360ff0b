//! `csm score`: one JSON line per sample with its similarity to a speaker,
//! WER/CER against the text it should say, and its health; the work is
//! `csm_core::score`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use csm_core::cancel::CancelToken;
use csm_core::data::audio::read_wav;
use csm_core::score::health::HealthOptions;
use csm_core::score::{dataset_recordings, score_sample, ScoreInputs, SpeakerReference};
use csm_core::speaker::{SpeakerEncoder, RESEMBLYZER_WEIGHTS_FILE, RESEMBLYZER_WHEEL};
use csm_core::whisper::{TranscribeOptions, Whisper};
use serde_json::json;

use super::hub_paths::{default_speaker_encoder, resolve_speaker_encoder, resolve_whisper};

/// Flags of `csm score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The speaker's recordings (a dataset's `audio/` folder); transcripts
    /// in the sibling `transcripts/` folder give their speaking rate.
    /// Similarity needs it.
    #[arg(long)]
    pub reference_dir: Option<PathBuf>,
    /// resemblyzer's speaker-encoder weights: a `pretrained.pt` (from the
    /// PyPI wheel resemblyzer==0.1.4), or `speaker-encoder`, the bundle,
    /// taken from the cache or downloaded from PyPI once (`csm download
    /// speaker-encoder`) [default with --reference-dir: speaker-encoder].
    #[arg(long)]
    pub speaker_encoder: Option<PathBuf>,
    /// The text the samples should say (WER/CER, speaking rate).
    #[arg(long)]
    pub text: Option<String>,
    /// What was heard in the samples, when you transcribed them yourself
    /// (used for every sample).
    #[arg(long, conflicts_with = "whisper_model")]
    pub transcript: Option<String>,
    /// Transcribe each sample (in English) for WER/CER with this Whisper: a
    /// transformers folder, a bundle (whisper-large-v3-turbo, whisper-small,
    /// whisper-base, whisper-tiny) or a hub id (openai/whisper-tiny);
    /// bundles and hub ids are downloaded once into the hub cache.
    #[arg(long)]
    pub whisper_model: Option<PathBuf>,
    /// Samples to score (WAV).
    #[arg(required = true)]
    pub samples: Vec<PathBuf>,
}

/// Runs `csm score`.
pub fn run(args: ScoreArgs) -> Result<()> {
    let speaker = match (&args.reference_dir, &args.speaker_encoder) {
        (Some(dir), given) => {
            let cached = match given {
                Some(_) => None,
                None => default_speaker_encoder()?,
            };
            let weights = match (given, cached) {
                (_, Some(path)) => path,
                (given, None) => {
                    let given = given.clone().unwrap_or_else(|| {
                        tracing::info!(
                            "similarity: fetching the speaker encoder ({RESEMBLYZER_WHEEL} from \
                             PyPI, 17 MB, once); --speaker-encoder PATH uses another copy"
                        );
                        PathBuf::from(csm_hub::SPEAKER_ENCODER.name)
                    });
                    resolve_speaker_encoder(&given).with_context(|| {
                        format!(
                            "similarity needs the speaker encoder, {RESEMBLYZER_WEIGHTS_FILE} of \
                             the PyPI wheel {RESEMBLYZER_WHEEL}"
                        )
                    })?
                }
            };
            let encoder = SpeakerEncoder::load(&weights)
                .with_context(|| format!("loading the speaker encoder {}", weights.display()))?;
            let recordings = dataset_recordings(dir)?;
            let reference =
                SpeakerReference::from_recordings(&encoder, &recordings, &HealthOptions::default())
                    .with_context(|| format!("embedding the recordings of {}", dir.display()))?;
            tracing::info!(
                "speaker: {} recordings in {}{}",
                reference.recordings,
                dir.display(),
                match &reference.rate {
                    Some(r) => format!(", {:.1} characters/s", r.chars_per_s),
                    None => ", no transcripts (no reference speaking rate)".into(),
                }
            );
            Some((encoder, reference))
        }
        (None, Some(_)) => {
            bail!("--speaker-encoder needs --reference-dir (the speaker's recordings)")
        }
        (None, None) => None,
    };
    let whisper = match &args.whisper_model {
        Some(given) => {
            let dir = resolve_whisper(given)?;
            Some(
                Whisper::load(&dir)
                    .with_context(|| format!("loading Whisper from {}", dir.display()))?,
            )
        }
        None => None,
    };
    let cancel = CancelToken::new();
    let options = HealthOptions::default();
    for path in &args.samples {
        let audio = read_wav(path)?;
        let mono = audio.to_mono();
        let heard = match &whisper {
            Some(w) if args.text.is_some() => {
                let at_16k = csm_core::data::audio::resample(&mono, audio.sample_rate, 16_000)?;
                let options = TranscribeOptions {
                    language: Some("en".into()),
                    ..TranscribeOptions::default()
                };
                let t = w
                    .transcribe(&at_16k, &options, &mut |_| {}, &cancel)
                    .with_context(|| format!("transcribing {}", path.display()))?;
                Some(t.text.trim().to_string())
            }
            _ => args.transcript.clone(),
        };
        let inputs = ScoreInputs {
            text: args.text.as_deref(),
            transcript: heard.as_deref(),
            speaker: speaker.as_ref().map(|(e, r)| (e, r)),
        };
        let score = score_sample(&mono, audio.sample_rate, &inputs, &options)
            .with_context(|| format!("scoring {}", path.display()))?;
        let mut line = json!({ "sample": path.display().to_string() });
        let fields = serde_json::to_value(&score)?;
        if let (Some(line), Some(fields)) = (line.as_object_mut(), fields.as_object()) {
            line.extend(fields.clone());
            if let Some(heard) = &heard {
                line.insert("transcript".into(), json!(heard));
            }
            if score.wer.is_none() {
                line.insert(
                    "wer_note".into(),
                    json!("WER/CER need --text and a transcript (--transcript or --whisper-model)"),
                );
            }
        }
        tell!("{line}");
    }
    Ok(())
}
