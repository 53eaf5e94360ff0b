//! Raw recordings -> a training dataset: every audio file of a folder is
//! transcribed with word timestamps and written in the layout the trainer
//! reads (`docs/architecture.md`, "From a WAV file to an adapter"):
//!
//! * `OUT/audio/NAME.wav`: mono, 24 kHz, 16-bit;
//! * `OUT/alignments/NAME.json`: `{"language", "text", "segments": [{"start",
//!   "end", "text", "words": [{"word", "start", "end", "probability"}]}]}`,
//!   the whisper layout `data::alignment` reads;
//! * `OUT/transcripts/NAME.txt`: the text, written last: a recording whose
//!   transcript exists is done, so a second run continues where the first
//!   stopped.
//!
//! Existing files are never replaced unless `overwrite` is set; every file
//! is written to a temporary name and renamed. A file that fails is
//! reported and the others go on.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::audio::load_16k;
use super::error::WhisperError;
use super::load::Whisper;
use super::transcribe::{TranscribeEvent, TranscribeOptions, Transcript};
use crate::cancel::CancelToken;
use crate::data::audio::{self, WavEncoding, TARGET_SAMPLE_RATE};

/// Extensions read as audio (what `data::audio` decodes).
pub const AUDIO_EXTENSIONS: &[&str] = &["wav"];

/// What [`transcribe_folder`] does.
#[derive(Debug, Clone)]
pub struct FolderOptions {
    /// Folder of raw recordings (not searched recursively).
    pub audio_dir: PathBuf,
    /// Dataset folder (`audio/`, `transcripts/`, `alignments/` go in it).
    pub output_dir: PathBuf,
    /// Replace existing outputs.
    pub overwrite: bool,
    /// Decoding settings (word timestamps are always on).
    pub transcribe: TranscribeOptions,
}

/// Progress of [`transcribe_folder`].
#[derive(Debug, Clone, PartialEq)]
pub enum FolderEvent {
    /// The work ahead.
    Start {
        /// Recordings to transcribe.
        files: usize,
        /// Their audio seconds.
        total_s: f64,
        /// Recordings skipped because their transcript exists.
        skipped: usize,
    },
    /// A recording starts.
    FileStart {
        /// Its name (stem).
        name: String,
        /// Its length, seconds.
        duration_s: f64,
    },
    /// Audio seconds done inside the current recording.
    Progress {
        /// Seconds of this recording done.
        done_s: f64,
    },
    /// A recording is written.
    FileDone {
        /// Its name.
        name: String,
        /// Its text.
        text: String,
    },
    /// A recording failed (the others go on).
    FileFailed {
        /// Its name.
        name: String,
        /// Why.
        error: String,
    },
}

/// What [`transcribe_folder`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FolderSummary {
    /// Recordings transcribed now.
    pub transcribed: Vec<String>,
    /// Recordings left alone (transcript already there).
    pub skipped: Vec<String>,
    /// `(file, reason)` of recordings that failed.
    pub failed: Vec<(String, String)>,
    /// Audio seconds transcribed now.
    pub audio_s: f64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WhisperError + '_ {
    move |source| WhisperError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The recordings of `dir`, sorted by name.
pub fn list_audio(dir: &Path) -> Result<Vec<PathBuf>, WhisperError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| AUDIO_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Writes `bytes` to `path` unless it exists (or `overwrite`), through a
/// temporary file in the same folder.
fn write_new(
    path: &Path,
    overwrite: bool,
    write: impl FnOnce(&Path) -> Result<(), WhisperError>,
) -> Result<(), WhisperError> {
    if path.exists() && !overwrite {
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The alignment JSON of a transcript.
pub fn alignment_json(t: &Transcript) -> serde_json::Value {
    let segments: Vec<_> = t
        .segments
        .iter()
        .filter(|s| !s.text.is_empty())
        .map(|s| {
            let words: Vec<_> = s
                .words
                .iter()
                .map(|w| json!({"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}))
                .collect();
            json!({"start": s.start, "end": s.end, "text": s.text.trim(), "words": words})
        })
        .collect();
    json!({"language": t.language, "text": t.text.trim(), "segments": segments})
}

/// Transcribes every recording of `options.audio_dir` into the dataset
/// layout (see the module docs).
///
/// # Errors
/// Only for the folders themselves and cancellation; a bad recording is a
/// [`FolderEvent::FileFailed`] and an entry of [`FolderSummary::failed`].
pub fn transcribe_folder(
    whisper: &Whisper,
    options: &FolderOptions,
    observer: &mut dyn FnMut(FolderEvent),
    cancel: &CancelToken,
) -> Result<FolderSummary, WhisperError> {
    let files = list_audio(&options.audio_dir)?;
    let out = &options.output_dir;
    let (audio_out, text_out, align_out) = (
        out.join("audio"),
        out.join("transcripts"),
        out.join("alignments"),
    );
    for d in [&audio_out, &text_out, &align_out] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let mut summary = FolderSummary::default();
    let mut todo = Vec::new();
    let mut total_s = 0.0;
    for f in files {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if text_out.join(format!("{name}.txt")).exists() && !options.overwrite {
            summary.skipped.push(name);
            continue;
        }
        // A header that cannot be read fails later with the full reason.
        total_s += audio::read_wav_info(&f)
            .map(|i| i.duration_s())
            .unwrap_or(0.0);
        todo.push((name, f));
    }
    observer(FolderEvent::Start {
        files: todo.len(),
        total_s,
        skipped: summary.skipped.len(),
    });
    let transcribe = TranscribeOptions {
        word_timestamps: true,
        ..options.transcribe.clone()
    };
    for (name, path) in todo {
        if cancel.is_cancelled() {
            return Err(WhisperError::Cancelled);
        }
        let result = (|| -> Result<(String, f64), WhisperError> {
            let audio16 = load_16k(&path)?;
            let duration_s = audio16.len() as f64 / 16_000.0;
            observer(FolderEvent::FileStart {
                name: name.clone(),
                duration_s,
            });
            let t = whisper.transcribe(
                &audio16,
                &transcribe,
                &mut |e| {
                    if let TranscribeEvent::Window { done_s, .. } = e {
                        observer(FolderEvent::Progress { done_s });
                    }
                },
                cancel,
            )?;
            write_new(
                &audio_out.join(format!("{name}.wav")),
                options.overwrite,
                |tmp| {
                    let samples = audio::load_mono_24k(&path)?;
                    Ok(audio::write_wav(
                        tmp,
                        &samples,
                        TARGET_SAMPLE_RATE,
                        WavEncoding::Int16,
                    )?)
                },
            )?;
            write_new(
                &align_out.join(format!("{name}.json")),
                options.overwrite,
                |tmp| {
                    let text = serde_json::to_string_pretty(&alignment_json(&t))
                        .expect("JSON values serialize");
                    std::fs::write(tmp, text + "\n").map_err(io(tmp))
                },
            )?;
            let text = t.text.trim().to_string();
            write_new(
                &text_out.join(format!("{name}.txt")),
                options.overwrite,
                |tmp| std::fs::write(tmp, format!("{text}\n")).map_err(io(tmp)),
            )?;
            Ok((text, duration_s))
        })();
        match result {
            Ok((text, duration_s)) => {
                summary.audio_s += duration_s;
                summary.transcribed.push(name.clone());
                observer(FolderEvent::FileDone { name, text });
            }
            Err(WhisperError::Cancelled) => return Err(WhisperError::Cancelled),
            Err(e) => {
                let file = path
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or(name.clone());
                observer(FolderEvent::FileFailed {
                    name,
                    error: e.to_string(),
                });
                summary.failed.push((file, e.to_string()));
            }
        }
    }
    Ok(summary)
}
