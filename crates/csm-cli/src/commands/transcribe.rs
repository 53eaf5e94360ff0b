//! `csm transcribe`: raw recordings -> a dataset folder (24 kHz WAVs,
//! transcripts, word alignments) with Whisper; the work is
//! `csm_core::whisper::dataset::transcribe_folder`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use csm_core::whisper::dataset::{transcribe_folder, FolderEvent, FolderOptions};
use csm_core::whisper::{TranscribeOptions, Whisper};
use indicatif::{ProgressBar, ProgressStyle};

use super::finetune::cancel_on_ctrl_c;

/// Exit status when the run finished but some recordings were not
/// transcribed (0: all were; 1: the run itself failed).
pub const EXIT_SOME_FAILED: u8 = 3;

/// The run finished, but these recordings failed (each already reported
/// with its reason); `main` exits with [`EXIT_SOME_FAILED`].
#[derive(Debug)]
pub struct SomeFailed(pub usize);

impl std::fmt::Display for SomeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} recording(s) could not be transcribed (reasons above); the others are done",
            self.0
        )
    }
}

impl std::error::Error for SomeFailed {}

/// Flags of `csm transcribe`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Formats: WAV, FLAC, MP3, M4A (AAC, ALAC), Ogg Vorbis, AIFF, at any rate and
channel count, decoded in pieces: a three-hour recording is never held in
memory whole. Opus, WMA and other formats are reported; convert them first
(ffmpeg -i in.opus out.flac).

A recording that cannot be read (truncated, empty, not audio, unsupported
codec), is silent, or in which Whisper hears no speech is named with the
reason; the others are still transcribed and nothing of it is written.

Exit status: 0 every recording is transcribed (or was already); 3 the run
finished but some recordings failed (listed at the end); 1 the run could
not start or was stopped (bad folder, model, Ctrl-C).")]
pub struct TranscribeArgs {
    /// Folder of recordings to transcribe (not searched recursively).
    #[arg(long)]
    pub audio_dir: PathBuf,
    /// Dataset folder to fill (`audio/`, `transcripts/`, `alignments/`).
    #[arg(long)]
    pub output_dir: PathBuf,
    /// A transformers Whisper folder, a bundle (whisper-large-v3-turbo,
    /// whisper-small, whisper-base, whisper-tiny) or a hub id
    /// (openai/whisper-tiny); bundles and hub ids are taken from the hub
    /// cache, or downloaded once (`csm download whisper-tiny`).
    #[arg(long, default_value = "openai/whisper-large-v3-turbo")]
    pub whisper_model: PathBuf,
    /// Language code (`en`, `fr`, ...); detected per recording when absent.
    #[arg(long)]
    pub language: Option<String>,
    /// Decoding temperature; 0 is greedy with no fallback. Without the
    /// flag: 0, then 0.2 ... 1.0 when a window looks wrong (openai-whisper).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Replace outputs that already exist (by default they are kept and
    /// recordings with a transcript are skipped).
    #[arg(long)]
    pub overwrite: bool,
}

/// Runs `csm transcribe`.
pub fn run(args: TranscribeArgs) -> Result<()> {
    let dir = super::hub_paths::resolve_whisper(&args.whisper_model)?;
    let whisper =
        Whisper::load(&dir).with_context(|| format!("loading Whisper from {}", dir.display()))?;
    let cancel = cancel_on_ctrl_c()?;
    let mut transcribe = TranscribeOptions {
        language: args.language.clone(),
        ..TranscribeOptions::default()
    };
    if let Some(t) = args.temperature {
        transcribe.temperatures = vec![t];
    }
    let options = FolderOptions {
        audio_dir: args.audio_dir.clone(),
        output_dir: args.output_dir.clone(),
        overwrite: args.overwrite,
        transcribe,
    };
    let bar = ProgressBar::hidden();
    let mut done_before = 0.0; // audio seconds of finished files
    let mut current = 0.0;
    let mut total_min = 0.0;
    let mut on_event = |e: FolderEvent| match e {
        FolderEvent::Start {
            files,
            total_s,
            skipped,
        } => {
            if skipped > 0 {
                say!("{skipped} recording(s) already transcribed, skipped");
            }
            total_min = total_s / 60.0;
            bar.set_length((total_s * 1000.0) as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {msg} [{elapsed_precise}, ETA {eta}]")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar.println(format!(
                "transcribing {files} recording(s), {total_min:.1} audio minutes"
            ));
        }
        FolderEvent::FileStart { name, duration_s } => {
            current = duration_s;
            bar.println(format!("{name} ({:.1} min)", duration_s / 60.0));
        }
        FolderEvent::Progress { done_s } => {
            let pos = done_before + done_s.min(current);
            bar.set_position((pos * 1000.0) as u64);
            bar.set_message(format!("{:.1}/{total_min:.1} audio min", pos / 60.0));
        }
        FolderEvent::FileDone { name, text } => {
            done_before += std::mem::take(&mut current);
            let preview: String = text.chars().take(70).collect();
            bar.println(format!("  {name}: {preview}"));
        }
        FolderEvent::FileFailed { name, error } => {
            // A file that fails before it starts has no length here.
            done_before += std::mem::take(&mut current);
            bar.println(format!("  {name}: FAILED: {error}"));
        }
    };
    let summary = transcribe_folder(&whisper, &options, &mut on_event, &cancel)?;
    bar.finish_and_clear();
    tell!(
        "transcribed {} recording(s) ({:.1} audio min), skipped {}, failed {} -> {}",
        summary.transcribed.len(),
        summary.audio_s / 60.0,
        summary.skipped.len(),
        summary.failed.len(),
        args.output_dir.display()
    );
    if !summary.failed.is_empty() {
        say!("not transcribed:");
        for (file, why) in &summary.failed {
            say!("  {file}: {why}");
        }
        return Err(SomeFailed(summary.failed.len()).into());
    }
    Ok(())
}
