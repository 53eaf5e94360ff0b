//! `csm voice`: raw recordings -> a scored voice, every stage in one
//! command; the work is `csm_flow::run_voice` (the app's "New voice" runs
//! the same).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use csm_core::adapter::TargetLayers;
use csm_core::train::{TrainConfig, TrainingObserver, VoiceConfig, VOICE_PROMPTS};
use csm_core::whisper::TranscribeOptions;
use csm_flow::layout::{Chooser, Scores, SettingChoice};
use csm_flow::{
    FlowEvent, FlowObserver, FlowOutcome, ModelSource, Overrides, Stage, StageEnd, Summary, Unit,
    VoiceDir, VoiceRequest,
};
use csm_hub::{find_bundle, Role, BUNDLES};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::finetune::{cancel_on_ctrl_c, TerminalObserver};

/// `--stop-after` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StageArg {
    /// After the models are in the cache.
    Download,
    /// After transcription (proofread dataset/transcripts, then run again).
    Transcribe,
    /// After cutting the dataset and choosing the settings.
    Dataset,
    /// After training.
    Train,
}

/// Flags of `csm voice`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Stages (each one skipped when an earlier run finished it):
  1 download    the models named by bundle (--model-path csm-1b, --whisper-model
                whisper-large-v3-turbo, --speaker-encoder speaker-encoder) that are
                not in the hub cache; resumable. A path given is used as it is.
                Whisper comes first; the others download while stages 2 and 3
                run (a bar each), and training waits for them.
  2 transcribe  every recording of RAW_DIR without NAME.txt beside it goes
                through Whisper into VOICE_DIR/dataset (24 kHz WAV, transcript,
                word timings); one with NAME.txt is copied in with that text.
  3 dataset     the recordings are cut into utterances as training cuts them and
                the settings are chosen from the minutes of audio and the device's
                memory (docs/voice.md has the rules); each choice is printed with
                its reason, and a flag below replaces it.
  4 train       LoRA fine-tuning into VOICE_DIR/run (the run folder of
                finetune-lora), the voice scored at step 0 and every checkpoint
                (similarity to the speaker, WER); the best checkpoint's adapter is
                kept as run/adapters_best.safetensors.
  5 summary     VOICE_DIR/summary.json and the table printed at the end.

Ctrl-C at any stage stops it (training saves a checkpoint first); the same
command again continues where it stopped: downloads resume, transcribed
recordings are kept, training resumes from run/checkpoint_latest.safetensors.
VOICE_DIR/voice.json holds each stage's status and times, and the settings.

Environment: HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE (as
`csm download`), CSM_CACHE_DIR (Mimi codes cache), CSM_COMPILE.")]
pub struct VoiceArgs {
    /// Folder of recordings (WAV, FLAC, MP3, M4A, Ogg, AIFF; not searched
    /// recursively). NAME.txt beside NAME.mp3 is its transcript.
    #[arg(value_name = "RAW_DIR")]
    pub raw_dir: PathBuf,
    /// The voice folder: voice.json, dataset/, run/, summary.json. An
    /// existing one is continued.
    #[arg(long, value_name = "VOICE_DIR")]
    pub output_dir: PathBuf,
    /// The voice's name [default: the folder's name].
    #[arg(long)]
    pub name: Option<String>,
    /// The speaker's name, kept with the voice.
    #[arg(long)]
    pub speaker_name: Option<String>,
    /// Stop after this stage (once the models downloading beside it are
    /// in); running again without it continues.
    #[arg(long, value_enum)]
    pub stop_after: Option<StageArg>,

    /// CSM checkpoint: a path, a bundle or a hub id.
    #[arg(long, value_name = "PATH", default_value = csm_flow::DEFAULT_MODEL, help_heading = "Models")]
    pub model_path: PathBuf,
    /// Mimi codec weights [default: the bundle's, or found next to the model].
    #[arg(long, value_name = "PATH", help_heading = "Models")]
    pub mimi_path: Option<PathBuf>,
    /// Llama-3 tokenizer.json [default: the bundle's, or next to the model].
    #[arg(long, value_name = "FILE", help_heading = "Models")]
    pub tokenizer_path: Option<PathBuf>,
    /// Whisper, for transcription and the WER of samples: a transformers
    /// folder, a bundle (whisper-large-v3-turbo, whisper-small,
    /// whisper-base, whisper-tiny) or a hub id.
    #[arg(long, value_name = "DIR", default_value = csm_flow::DEFAULT_WHISPER, help_heading = "Models")]
    pub whisper_model: PathBuf,
    /// resemblyzer's pretrained.pt, or the bundle speaker-encoder
    /// (downloaded from PyPI on first use).
    #[arg(long, value_name = "FILE", default_value = csm_flow::DEFAULT_SPEAKER_ENCODER, help_heading = "Models")]
    pub speaker_encoder: PathBuf,
    /// Language of the recordings (`en`, `fr`...) [default: detected].
    #[arg(long, help_heading = "Models")]
    pub language: Option<String>,
    /// Whisper's decoding temperature; 0 is greedy with no fallback
    /// [default: 0, then 0.2 ... 1.0 when a window looks wrong].
    #[arg(long, help_heading = "Models")]
    pub temperature: Option<f32>,

    /// LoRA rank [default: by minutes of audio].
    #[arg(long, help_heading = "Settings (each replaces the rule's choice)")]
    pub lora_r: Option<usize>,
    /// LoRA alpha [default: twice the rank].
    #[arg(long, help_heading = "Settings (each replaces the rule's choice)")]
    pub lora_alpha: Option<f32>,
    /// Examples per micro-batch [default: by device memory].
    #[arg(long, help_heading = "Settings (each replaces the rule's choice)")]
    pub batch_size: Option<usize>,
    /// Passes over the training set [default: by minutes of audio].
    #[arg(
        long,
        conflicts_with = "steps",
        help_heading = "Settings (each replaces the rule's choice)"
    )]
    pub epochs: Option<usize>,
    /// Train at least this many optimizer steps (rounded up to whole epochs).
    #[arg(long, help_heading = "Settings (each replaces the rule's choice)")]
    pub steps: Option<usize>,
    /// Peak learning rate [default: by minutes of audio].
    #[arg(long, help_heading = "Settings (each replaces the rule's choice)")]
    pub learning_rate: Option<f32>,
    /// Fraction of frames the depth decoder trains on [default: by minutes
    /// and memory].
    #[arg(long, help_heading = "Settings (each replaces the rule's choice)")]
    pub decoder_fraction: Option<f32>,
    /// Linear warm-up steps [default: a tenth of the steps, at most 20].
    #[arg(long, help_heading = "Settings (each replaces the rule's choice)")]
    pub warmup_steps: Option<usize>,
    /// Checkpoint (and score the voice) every N steps [default: 5 in all].
    #[arg(long, help_heading = "Settings (each replaces the rule's choice)")]
    pub save_every: Option<usize>,
    /// Validate every N steps [default: with each checkpoint].
    #[arg(long, help_heading = "Settings (each replaces the rule's choice)")]
    pub val_every: Option<usize>,

    /// Projections to adapt [default: q_proj v_proj].
    #[arg(long, num_args = 1.., value_delimiter = ',', help_heading = "Other training settings")]
    pub target_modules: Option<Vec<String>>,
    /// Layers to adapt, e.g. `backbone:8-15,decoder:all` [default: all].
    #[arg(long, help_heading = "Other training settings")]
    pub target_layers: Option<String>,
    /// QLoRA: quantize the frozen projections to 4 or 8 bits.
    #[arg(long, value_name = "BITS", help_heading = "Other training settings")]
    pub quantize: Option<u8>,
    /// Recompute activations in the backward pass (less memory).
    #[arg(long, help_heading = "Other training settings")]
    pub grad_checkpoint: bool,
    /// Fraction of recordings held out for validation [default: 0.1].
    #[arg(long, help_heading = "Other training settings")]
    pub val_split: Option<f32>,
    /// Previous utterances used as context [default: 2].
    #[arg(long, help_heading = "Other training settings")]
    pub context_turns: Option<usize>,
    /// Longest training sequence in frames [default: 2048].
    #[arg(long, help_heading = "Other training settings")]
    pub max_seq_len: Option<usize>,
    /// Seed of data order, LoRA init and frame choice [default: 42].
    #[arg(long, help_heading = "Other training settings")]
    pub seed: Option<u64>,
    /// Built-in prompts spoken at each scoring, 1 to 8 [default: 3].
    #[arg(long, value_name = "K", help_heading = "Other training settings")]
    pub voice_prompts: Option<usize>,
    /// A prompt of your own to speak at each scoring; repeat for several.
    /// Replaces the built-in ones.
    #[arg(
        long,
        value_name = "TEXT",
        conflicts_with = "voice_prompts",
        help_heading = "Other training settings"
    )]
    pub voice_prompt: Vec<String>,
    /// Preferred utterance length when cutting recordings [default: 10].
    #[arg(long, value_name = "SECS", help_heading = "Other training settings")]
    pub target_utterance_secs: Option<f64>,
}

/// A path flag as the flow takes it: an existing path, a bundle (by name,
/// or by a hub repo a bundle of `role` uses), or else a hub id resolved
/// (and downloaded) here as every other command does.
fn source(value: &Path, role: Role) -> Option<ModelSource> {
    if value.exists() {
        return Some(ModelSource::Path(value.to_path_buf()));
    }
    let s = value.to_str()?;
    let bundle = find_bundle(s).filter(|b| b.files_for(role).next().is_some());
    let by_repo = || {
        BUNDLES
            .iter()
            .find(|b| b.files_for(role).any(|f| f.repo == s))
    };
    bundle
        .or_else(by_repo)
        .map(|b| ModelSource::Bundle(b.name.to_string()))
}

/// The models as the flow takes them.
struct Models {
    model: ModelSource,
    mimi: Option<PathBuf>,
    tokenizer: Option<PathBuf>,
    whisper: ModelSource,
    speaker_encoder: ModelSource,
}

impl VoiceArgs {
    fn models(&self) -> Result<Models> {
        let (mut mimi, mut tokenizer) = (self.mimi_path.clone(), self.tokenizer_path.clone());
        let model = match source(&self.model_path, Role::Model) {
            Some(s) => s,
            None => {
                let mut model = self.model_path.clone();
                super::hub_paths::resolve(&mut model, &mut mimi, &mut tokenizer)?;
                if !model.exists() {
                    bail!(
                        "--model-path {}: no such file or folder, and not a bundle or hub id",
                        self.model_path.display()
                    );
                }
                ModelSource::Path(model)
            }
        };
        // Hub ids of the codec and tokenizer are resolved as elsewhere.
        let mut unused = PathBuf::from(".");
        super::hub_paths::resolve(&mut unused, &mut mimi, &mut tokenizer)?;
        let whisper = match source(&self.whisper_model, Role::Whisper) {
            Some(s) => s,
            None => ModelSource::Path(super::hub_paths::resolve_whisper(&self.whisper_model)?),
        };
        let encoder = match source(&self.speaker_encoder, Role::SpeakerEncoder) {
            Some(s) => s,
            None => ModelSource::Path(super::hub_paths::resolve_speaker_encoder(
                &self.speaker_encoder,
            )?),
        };
        Ok(Models {
            model,
            mimi,
            tokenizer,
            whisper,
            speaker_encoder: encoder,
        })
    }

    fn base_config(&self, log_level: &str) -> Result<TrainConfig> {
        let mut c = TrainConfig {
            log_level: log_level.to_string(),
            ..TrainConfig::default()
        };
        if let Some(m) = &self.target_modules {
            c.target_modules.clone_from(m);
        }
        if let Some(t) = &self.target_layers {
            c.target_layers =
                TargetLayers::parse(t).map_err(|e| anyhow::anyhow!("--target-layers: {e}"))?;
        }
        c.quantize = self.quantize.or(c.quantize);
        c.grad_checkpoint |= self.grad_checkpoint;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            val_split,
            context_turns,
            max_seq_len,
            seed,
            target_utterance_secs
        );
        if let Some(k) = self.voice_prompts {
            if !(1..=VOICE_PROMPTS.len()).contains(&k) {
                bail!("--voice-prompts {k}: choose 1 to {}", VOICE_PROMPTS.len());
            }
            // The encoder path is the flow's to set.
            let mut v = VoiceConfig::new("");
            v.prompts = VoiceConfig::builtin_prompts(k);
            c.voice = Some(v);
        }
        if !self.voice_prompt.is_empty() {
            let mut v = VoiceConfig::new("");
            v.prompts.clone_from(&self.voice_prompt);
            c.voice = Some(v);
        }
        Ok(c)
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            lora_r: self.lora_r,
            lora_alpha: self.lora_alpha,
            batch_size: self.batch_size,
            epochs: self.epochs,
            steps: self.steps,
            decoder_fraction: self.decoder_fraction,
            learning_rate: self.learning_rate,
            warmup_steps: self.warmup_steps,
            save_every: self.save_every,
            val_every: self.val_every,
        }
    }
}

/// Runs `csm voice`.
pub fn run(args: VoiceArgs, log_level: &str) -> Result<()> {
    let Models {
        model,
        mimi,
        tokenizer,
        whisper,
        speaker_encoder,
    } = args.models()?;
    let any_bundle = [&model, &whisper, &speaker_encoder]
        .iter()
        .any(|s| matches!(s, ModelSource::Bundle(_)));
    let hub = if any_bundle {
        Some(crate::env::hub_settings()?)
    } else {
        None
    };
    let request = VoiceRequest {
        raw_dir: args.raw_dir.clone(),
        voice_dir: args.output_dir.clone(),
        name: args.name.clone(),
        speaker_name: args.speaker_name.clone(),
        model,
        mimi,
        tokenizer,
        whisper,
        speaker_encoder,
        hub,
        base: args.base_config(log_level)?,
        overrides: args.overrides(),
        run: crate::env::run_settings()?,
        transcribe: {
            let mut t = TranscribeOptions {
                language: args.language.clone(),
                ..TranscribeOptions::default()
            };
            if let Some(temp) = args.temperature {
                t.temperatures = vec![temp];
            }
            t
        },
        stop_after: args.stop_after.map(|s| match s {
            StageArg::Download => Stage::Download,
            StageArg::Transcribe => Stage::Transcribe,
            StageArg::Dataset => Stage::Dataset,
            StageArg::Train => Stage::Train,
        }),
    };
    let cancel = cancel_on_ctrl_c()?;
    let mut terminal = Terminal::default();
    let outcome = csm_flow::run_voice(&request, &mut terminal, &cancel);
    terminal.clear();
    match outcome.with_context(|| format!("csm voice {}", args.output_dir.display()))? {
        FlowOutcome::StoppedAfter(stage) => {
            tell!(
                "stopped after the {stage} stage, as asked; run again without --stop-after to \
                 continue"
            );
        }
        FlowOutcome::Finished(summary) => {
            tell_raw!(
                "{}",
                summary_table(&summary, &VoiceDir::new(&args.output_dir))
            );
        }
    }
    Ok(())
}

/// The stages on the terminal: a bar per running stage with its ETA (the
/// models download while the recordings are transcribed: two bars, one
/// above the other); training shows finetune-lora's own bars and lines.
#[derive(Default)]
struct Terminal {
    multi: MultiProgress,
    bars: BTreeMap<Stage, ProgressBar>,
    train: TerminalObserver,
}

impl Terminal {
    fn clear(&mut self) {
        for bar in std::mem::take(&mut self.bars).into_values() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }

    fn end(&mut self, stage: Stage) {
        if let Some(bar) = self.bars.remove(&stage) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }

    fn println(&self, line: String) {
        // Bars drawn nowhere (stderr is not a terminal) print nothing.
        if self.bars.is_empty() || self.multi.is_hidden() || self.multi.println(&line).is_err() {
            say!("{line}");
        }
    }
}

fn amount(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => csm_hub::human_bytes(v as u64),
        Unit::AudioSeconds => format!("{:.1} audio min", v / 60.0),
        Unit::Recordings => format!("{v:.0} recordings"),
        Unit::Utterances => format!("{v:.0} utterances"),
        Unit::Steps => format!("step {v:.0}"),
    }
}

fn clock(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

impl FlowObserver for Terminal {
    fn on_event(&mut self, event: &FlowEvent) {
        match event {
            FlowEvent::StageStarted { stage, detail } => {
                self.end(*stage);
                self.println(format!("[{stage}] {detail}"));
                if *stage != Stage::Train {
                    // No length until the stage reports a total (a bar of
                    // length 0 would draw full); the message takes what the
                    // terminal's width leaves, so two bars never wrap.
                    let bar = ProgressBar::no_length().with_style(
                        ProgressStyle::with_template(&format!(
                            "  {stage:<10} {{bar:30}} [{{elapsed_precise}}] {{wide_msg}}"
                        ))
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    let bar = self.multi.add(bar);
                    bar.enable_steady_tick(Duration::from_millis(250));
                    self.bars.insert(*stage, bar);
                }
            }
            FlowEvent::StageProgress {
                stage,
                done,
                total,
                unit,
                eta_s,
                item,
            } if *stage != Stage::Train => {
                if let Some(bar) = self.bars.get(stage) {
                    let len = total.max(*done);
                    if len > 0.0 {
                        bar.set_length((len * 1000.0) as u64);
                    }
                    bar.set_position((done * 1000.0) as u64);
                    bar.set_message(format!(
                        "{} / {}{}{}",
                        amount(*done, *unit),
                        amount(*total, *unit),
                        eta_s
                            .map(|s| format!(", ETA {}", clock(s)))
                            .unwrap_or_default(),
                        item.as_deref()
                            .map(|i| format!(" ({i})"))
                            .unwrap_or_default()
                    ));
                }
            }
            FlowEvent::StageProgress { .. } => {}
            FlowEvent::Message { stage, text } => {
                // Two stages at once: say whose line it is.
                let line = if self.bars.len() > 1 {
                    format!("  {stage}: {text}")
                } else {
                    format!("  {text}")
                };
                self.println(line);
            }
            FlowEvent::Settings { choices } => {
                self.println(settings_table(choices));
            }
            FlowEvent::Train(e) => self.train.on_event(e),
            FlowEvent::StageFinished {
                stage,
                end,
                seconds,
                note,
            } => {
                self.end(*stage);
                let how = match end {
                    StageEnd::Done => "done",
                    StageEnd::Skipped => "skipped",
                };
                self.println(format!("[{stage}] {how} in {}: {note}", clock(*seconds)));
            }
            _ => {}
        }
    }
}

/// The settings, one a line, with who chose them and why.
fn settings_table(choices: &[SettingChoice]) -> String {
    let mut out = String::from("settings (docs/voice.md has the rules; each flag replaces one):\n");
    for c in choices {
        let who = match c.chosen_by {
            Chooser::Recipe => "rule",
            Chooser::Override => "flag",
        };
        out.push_str(&format!(
            "  {:<17} {:>8}  {who}: {}\n",
            c.name,
            c.value.to_string(),
            c.reason
        ));
    }
    out.pop();
    out
}

fn pct(v: Option<f32>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn sim(v: Option<f32>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// The end-of-journey table.
fn summary_table(s: &Summary, dir: &VoiceDir) -> String {
    let mut out = format!(
        "voice {}{}: {:.1} minutes of audio used ({} utterances), {} steps\n",
        s.name,
        s.speaker_name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        s.minutes_used,
        s.utterances,
        s.steps
    );
    out.push_str("time     ");
    for (stage, secs) in &s.stage_seconds {
        out.push_str(&format!(" {stage} {}", clock(*secs)));
    }
    out.push_str(&format!(", in all {}\n", clock(s.total_seconds)));
    out.push_str(&format!(
        "scores    {:>6}  {:>10}  {:>7}\n",
        "step", "similarity", "WER"
    ));
    let row = |name: &str, sc: &Option<Scores>| match sc {
        Some(sc) => format!(
            "  {name:<7} {:>6}  {:>10}  {:>7}\n",
            sc.step,
            sim(sc.similarity),
            pct(sc.wer)
        ),
        None => format!("  {name:<7} {:>6}  (not scored)\n", "-"),
    };
    out.push_str(&row("base", &s.base));
    out.push_str(&row("best", &s.best));
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or_else(|| "-".into(), |p| dir.resolve(p).display().to_string())
    };
    out.push_str(&format!("best adapter: {}\n", path(&s.best_adapter)));
    out.push_str(&format!("final adapter: {}\n", path(&s.final_adapter)));
    out.push_str(&format!("sample: {}\n", path(&s.sample_wav)));
    out
}
