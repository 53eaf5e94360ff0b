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
//! Recordings may be in any format `data::decode` reads (WAV, FLAC, MP3,
//! M4A, Ogg...). Each is decoded twice and never held whole (see
//! [`super::audio`]): a first pass writes the 24 kHz copy and measures the
//! features' maximum, the second feeds Whisper its 30 s windows.
//!
//! Existing files are never replaced unless `overwrite` is set; every file
//! is written to a temporary name and renamed once the recording is
//! transcribed, so a recording that fails leaves nothing behind. A file
//! that fails (cannot be decoded, unsupported codec, silent, no speech
//! heard, a second file with the same name) is reported with its reason
//! and the others go on.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::audio::{scan_recording, RecordingMel};
use super::error::WhisperError;
use super::load::Whisper;
use super::transcribe::{TranscribeEvent, TranscribeOptions, Transcript};
use crate::cancel::CancelToken;
use crate::data::audio::{self, WavEncoding, WavSink, TARGET_SAMPLE_RATE};
use crate::data::decode::{self, AudioStream};

/// Extensions read as audio (those `data::decode` reads).
pub use crate::data::decode::AUDIO_EXTENSIONS;

/// A recording whose loudest sample is below this (dBFS) is silent: it is
/// reported, not transcribed (Whisper would make words up).
pub const SILENCE_PEAK_DBFS: f32 = -60.0;

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

/// The recordings of `dir`, sorted by name: files with an extension of
/// [`AUDIO_EXTENSIONS`], and audio we recognise but cannot decode (Opus,
/// WMA...: listed so that they are reported). Hidden files are skipped.
pub fn list_audio(dir: &Path) -> Result<Vec<PathBuf>, WhisperError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
            !hidden
                && p.is_file()
                && (decode::is_audio_extension(ext) || decode::is_unsupported_audio_extension(ext))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A file written under a temporary name beside its final one: renamed
/// into place by [`Pending::commit`], removed if dropped before.
struct Pending {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Pending {
    fn new(path: &Path) -> Self {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".partial");
        Self {
            tmp: PathBuf::from(tmp),
            path: path.to_path_buf(),
            committed: false,
        }
    }

    fn commit(mut self) -> Result<(), WhisperError> {
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.committed {
            // It may not exist yet; nothing else to do either way.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `path` through a temporary file unless it exists (or
/// `overwrite`).
fn write_new(
    path: &Path,
    overwrite: bool,
    write: impl FnOnce(&Path) -> Result<(), WhisperError>,
) -> Result<(), WhisperError> {
    if path.exists() && !overwrite {
        return Ok(());
    }
    let pending = Pending::new(path);
    write(&pending.tmp)?;
    pending.commit()
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
    // One recording per name: `a.wav` beside `a.mp3` would both become
    // `audio/a.wav`; the preferred format is used, the other reported.
    let mut by_name: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    for f in files {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        by_name.entry(name).or_default().push(f);
    }
    let mut todo = Vec::new();
    let mut duplicates = Vec::new();
    let mut total_s = 0.0;
    for (name, mut paths) in by_name {
        paths.sort_by_key(|p| (decode::preference(p), p.clone()));
        let path = paths.remove(0);
        for other in paths {
            duplicates.push((name.clone(), other, path.clone()));
        }
        if text_out.join(format!("{name}.txt")).exists() && !options.overwrite {
            summary.skipped.push(name);
            continue;
        }
        // From the header; a file that cannot be opened fails later with
        // the full reason.
        total_s += AudioStream::open(&path)
            .ok()
            .and_then(|s| {
                let i = s.info();
                i.frames.map(|n| n as f64 / f64::from(i.sample_rate))
            })
            .unwrap_or(0.0);
        todo.push((name, path));
    }
    observer(FolderEvent::Start {
        files: todo.len(),
        total_s,
        skipped: summary.skipped.len(),
    });
    for (name, other, used) in duplicates {
        let error = format!(
            "{}: not transcribed: {} has the same name and is used for {name}; rename one to keep both",
            other.display(),
            file_name(&used),
        );
        observer(FolderEvent::FileFailed {
            name,
            error: error.clone(),
        });
        summary.failed.push((file_name(&other), error));
    }
    let transcribe = TranscribeOptions {
        word_timestamps: true,
        ..options.transcribe.clone()
    };
    let targets = Targets {
        audio: &audio_out,
        text: &text_out,
        alignment: &align_out,
        overwrite: options.overwrite,
    };
    for (name, path) in todo {
        if cancel.is_cancelled() {
            return Err(WhisperError::Cancelled);
        }
        let result = transcribe_one(
            whisper,
            &name,
            &path,
            &targets,
            &transcribe,
            observer,
            cancel,
        );
        match result {
            Ok((text, duration_s)) => {
                summary.audio_s += duration_s;
                summary.transcribed.push(name.clone());
                observer(FolderEvent::FileDone { name, text });
            }
            Err(WhisperError::Cancelled) => return Err(WhisperError::Cancelled),
            Err(e) => {
                observer(FolderEvent::FileFailed {
                    name,
                    error: e.to_string(),
                });
                summary.failed.push((file_name(&path), e.to_string()));
            }
        }
    }
    Ok(summary)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The dataset folders and whether their files may be replaced.
struct Targets<'a> {
    audio: &'a Path,
    text: &'a Path,
    alignment: &'a Path,
    overwrite: bool,
}

/// One recording: the 24 kHz copy (to a temporary file), the transcript,
/// then every output renamed into place. Returns the text and seconds.
fn transcribe_one(
    whisper: &Whisper,
    name: &str,
    path: &Path,
    to: &Targets<'_>,
    options: &TranscribeOptions,
    observer: &mut dyn FnMut(FolderEvent),
    cancel: &CancelToken,
) -> Result<(String, f64), WhisperError> {
    let n_mels = whisper.model.config.num_mel_bins as usize;
    let wav_path = to.audio.join(format!("{name}.wav"));
    let wav = (to.overwrite || !wav_path.exists()).then(|| Pending::new(&wav_path));
    let mut sink = match &wav {
        Some(p) => Some(WavSink::create(
            &p.tmp,
            TARGET_SAMPLE_RATE,
            WavEncoding::Int16,
        )?),
        None => None,
    };
    let mut write_24k = |chunk: &[f32]| -> Result<(), WhisperError> {
        match sink.as_mut() {
            Some(s) => Ok(s.write(chunk)?),
            None => Ok(()),
        }
    };
    let scan = scan_recording(path, n_mels, Some(&mut write_24k), cancel)?;
    if let Some(s) = sink {
        s.finish()?;
    }
    let peak_dbfs = audio::to_dbfs(scan.peak);
    if peak_dbfs < SILENCE_PEAK_DBFS {
        return Err(WhisperError::NoSpeech {
            path: path.to_path_buf(),
            reason: format!(
                "silent (loudest sample {peak_dbfs:.1} dBFS, below {SILENCE_PEAK_DBFS} dBFS); nothing to transcribe"
            ),
        });
    }
    let duration_s = scan.duration_s();
    observer(FolderEvent::FileStart {
        name: name.to_string(),
        duration_s,
    });
    let mut mel = RecordingMel::open(path, n_mels, &scan)?;
    let t = whisper.transcribe_windows(
        &mut mel,
        options,
        &mut |e| {
            if let TranscribeEvent::Window { done_s, .. } = e {
                observer(FolderEvent::Progress { done_s });
            }
        },
        cancel,
    )?;
    let text = t.text.trim().to_string();
    if text.is_empty() {
        return Err(WhisperError::NoSpeech {
            path: path.to_path_buf(),
            reason: "Whisper heard no speech in it (every window was judged silent)".into(),
        });
    }
    if let Some(w) = wav {
        w.commit()?;
    }
    write_new(
        &to.alignment.join(format!("{name}.json")),
        to.overwrite,
        |tmp| {
            let json =
                serde_json::to_string_pretty(&alignment_json(&t)).expect("JSON values serialize");
            std::fs::write(tmp, json + "\n").map_err(io(tmp))
        },
    )?;
    write_new(&to.text.join(format!("{name}.txt")), to.overwrite, |tmp| {
        std::fs::write(tmp, format!("{text}\n")).map_err(io(tmp))
    })?;
    Ok((text, duration_s))
}
