//! The dataset folder: pairing audio with transcripts, the scan report, the
//! train/validation split and loading ready conversations.
//!
//! Layout: `audio/NAME.wav` (or any format in
//! [`super::decode::AUDIO_EXTENSIONS`]: FLAC, MP3, M4A, Ogg...) and
//! `transcripts/NAME.txt` with the same stems, and optionally
//! `alignments/NAME.json` (see [`super::alignment`]).
//!
//! [`scan_dataset`] looks at every file and reports problems per file
//! without failing on them (for the GUI table and `csm` preflight);
//! [`load_dataset`] is strict: the first bad file is an error naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::alignment::{read_alignment, Alignment, AlignmentFormat};
use super::audio;
use super::decode;
use super::segment::{
    bucket_by_length, segment_spoken, Conversation, Example, Recording, RecordingSpeakers,
    SegmentConfig, Speaker, Utterance,
};
use super::{DataError, Result};

/// Where the dataset's files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetLayout {
    /// Folder of audio files (WAV, FLAC, MP3, M4A, Ogg...).
    pub audio_dir: PathBuf,
    /// Folder of `.txt` transcripts named like the audio files.
    pub transcript_dir: PathBuf,
    /// Optional folder of `.json` word alignments named like the audio files.
    pub alignment_dir: Option<PathBuf>,
}

impl DatasetLayout {
    /// A layout from explicit folders (`--audio-dir`, `--transcript-dir`,
    /// `--alignment-dir`).
    pub fn new(
        audio_dir: impl Into<PathBuf>,
        transcript_dir: impl Into<PathBuf>,
        alignment_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            audio_dir: audio_dir.into(),
            transcript_dir: transcript_dir.into(),
            alignment_dir,
        }
    }

    /// `root/audio`, `root/transcripts`, and `root/alignments` if it exists.
    pub fn from_root(root: &Path) -> Self {
        let alignments = root.join("alignments");
        Self::new(
            root.join("audio"),
            root.join("transcripts"),
            alignments.is_dir().then_some(alignments),
        )
    }
}

/// An audio file with its transcript (and alignment, if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairedFile {
    /// The shared file stem, used as the recording id.
    pub id: String,
    /// The audio file (`.wav`, `.flac`, `.mp3`...).
    pub audio: PathBuf,
    /// The `.txt` file.
    pub transcript: PathBuf,
    /// The `.json` alignment, if the alignment folder has one.
    pub alignment: Option<PathBuf>,
}

/// Files found in the layout's folders, by stem.
#[derive(Debug, Default)]
struct Listing {
    /// Audio we decode ([`decode::AUDIO_EXTENSIONS`]), by stem; where a
    /// stem has several, the preferred extension (`a.wav` over `a.mp3`).
    wav: BTreeMap<String, PathBuf>,
    /// Audio we recognise but cannot decode (Opus, WMA...).
    other_audio: BTreeMap<String, PathBuf>,
    txt: BTreeMap<String, PathBuf>,
    json: BTreeMap<String, PathBuf>,
}

fn list_dir(dir: &Path, mut keep: impl FnMut(String, &str, PathBuf)) -> Result<()> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
        });
    }
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        // Hidden files are editor or OS droppings (.DS_Store, ._x.wav).
        if stem.starts_with('.') || !path.is_file() {
            continue;
        }
        keep(stem.to_string(), &ext.to_ascii_lowercase(), path.clone());
    }
    Ok(())
}

fn list(layout: &DatasetLayout) -> Result<Listing> {
    let mut l = Listing::default();
    list_dir(&layout.audio_dir, |stem, ext, path| {
        if decode::is_audio_extension(ext) {
            let preferred = l
                .wav
                .get(&stem)
                .is_none_or(|old| decode::preference(&path) < decode::preference(old));
            if preferred {
                l.wav.insert(stem, path);
            }
        } else if decode::is_unsupported_audio_extension(ext) {
            l.other_audio.insert(stem, path);
        }
    })?;
    list_dir(&layout.transcript_dir, |stem, ext, path| {
        if ext == "txt" {
            l.txt.insert(stem, path);
        }
    })?;
    if let Some(dir) = &layout.alignment_dir {
        list_dir(dir, |stem, ext, path| {
            if ext == "json" {
                l.json.insert(stem, path);
            }
        })?;
    }
    Ok(l)
}

/// What the audio folder should hold, for [`DataError::EmptyDir`].
const AUDIO_WHAT: &str = "audio (.wav, .flac, .mp3, .m4a, .ogg)";

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Pairs the audio files with `transcripts/*.txt` by stem.
///
/// # Errors
/// [`DataError::MissingDir`] for a missing folder,
/// [`DataError::UnsupportedAudio`] for audio in a format we cannot decode,
/// [`DataError::EmptyDir`] if there is no audio at all,
/// [`DataError::NoTranscripts`] (naming the audio files) if there is no
/// `.txt`, and
/// [`DataError::Unpaired`] listing every file without a partner.
pub fn pair_files(layout: &DatasetLayout) -> Result<Vec<PairedFile>> {
    let l = list(layout)?;
    // An .opus next to its converted .wav is fine; an .opus alone is not.
    if let Some((_, path)) = l
        .other_audio
        .iter()
        .find(|(stem, _)| !l.wav.contains_key(*stem))
    {
        return Err(decode::unsupported(path));
    }
    if l.wav.is_empty() {
        return Err(DataError::EmptyDir {
            path: layout.audio_dir.clone(),
            what: AUDIO_WHAT,
        });
    }
    if l.txt.is_empty() {
        return Err(DataError::NoTranscripts {
            path: layout.transcript_dir.clone(),
            audio_without_transcript: l.wav.values().map(|p| file_name(p)).collect(),
        });
    }
    let audio_without_transcript: Vec<String> = l
        .wav
        .iter()
        .filter(|(s, _)| !l.txt.contains_key(*s))
        .map(|(_, p)| file_name(p))
        .collect();
    let transcripts_without_audio: Vec<String> = l
        .txt
        .iter()
        .filter(|(s, _)| !l.wav.contains_key(*s))
        .map(|(_, p)| file_name(p))
        .collect();
    if !audio_without_transcript.is_empty() || !transcripts_without_audio.is_empty() {
        return Err(DataError::Unpaired {
            audio_without_transcript,
            transcripts_without_audio,
        });
    }
    Ok(l.wav
        .into_iter()
        .map(|(id, audio)| PairedFile {
            transcript: l.txt[&id].clone(),
            alignment: l.json.get(&id).cloned(),
            id,
            audio,
        })
        .collect())
}

/// Reads a transcript: UTF-8 (a BOM is dropped), whitespace collapsed to
/// single spaces.
///
/// # Errors
/// [`DataError::Io`], [`DataError::TranscriptNotUtf8`] and
/// [`DataError::EmptyTranscript`], naming the file.
pub fn read_transcript(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::TranscriptNotUtf8 {
        path: path.to_path_buf(),
        offset: e.valid_up_to(),
    })?;
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return Err(DataError::EmptyTranscript {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// Which side of the split an item is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Used for training.
    Train,
    /// Held out for validation.
    Validation,
}

fn check_val_split(val_split: f64) -> Result<()> {
    if (0.0..1.0).contains(&val_split) {
        Ok(())
    } else {
        Err(DataError::InvalidOption {
            name: "val_split",
            reason: format!("{val_split} is not in [0, 1)"),
        })
    }
}

/// Splits items (named by unique ids) into train and validation.
///
/// `round(n * val_split)` items go to validation, at least one when
/// `val_split > 0` and at most `n - 1` (fewer than 2 items: none). Which
/// ones depends only on the set of ids and `seed`, not on their order, so
/// adding files moves few others. Returns one [`Split`] per id, in input
/// order.
///
/// # Errors
/// [`DataError::InvalidOption`] if `val_split` is outside `[0, 1)`.
pub fn split_train_val(ids: &[String], val_split: f64, seed: u64) -> Result<Vec<Split>> {
    check_val_split(val_split)?;
    let n = ids.len();
    let n_val = if val_split == 0.0 || n < 2 {
        0
    } else {
        ((n as f64 * val_split).round() as usize).clamp(1, n - 1)
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (crate::rng::mix64(seed ^ super::hash_str(&ids[i])), &ids[i]));
    let mut out = vec![Split::Train; n];
    for &i in &order[..n_val] {
        out[i] = Split::Validation;
    }
    Ok(out)
}

/// Settings for [`scan_dataset`].
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ScanOptions {
    /// Fraction of usable recordings held out for validation.
    pub val_split: f64,
    /// Seed of the split.
    pub seed: u64,
    /// Segmenting settings (for the longest recording usable unaligned).
    pub segment: SegmentConfig,
    /// Characters of transcript shown in the preview.
    pub preview_chars: usize,
    /// A file whose RMS level is below this (dBFS) is flagged as silent.
    pub silence_dbfs: f32,
    /// A file with more than this fraction of clipped samples is flagged.
    pub clip_fraction: f64,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            val_split: 0.1,
            seed: 42,
            segment: SegmentConfig::default(),
            preview_chars: 80,
            silence_dbfs: -50.0,
            clip_fraction: 1e-4,
        }
    }
}

/// Kinds of problem a file can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Audio with no transcript.
    MissingTranscript,
    /// Transcript with no audio.
    MissingAudio,
    /// Transcript is empty.
    EmptyTranscript,
    /// Transcript is not UTF-8.
    TranscriptNotUtf8,
    /// Audio in a format that cannot be decoded (Opus, WMA...).
    NotWav,
    /// The WAV cannot be read.
    Unreadable,
    /// The WAV has no samples.
    EmptyAudio,
    /// Too long to use without an alignment.
    TooLong,
    /// Flat-topped (clipped) samples.
    Clipping,
    /// (Almost) no signal.
    Silence,
    /// An alignment folder was given but this file has no alignment.
    MissingAlignment,
    /// The alignment file is unusable.
    BadAlignment,
}

/// One problem of one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// Whether the file is left out of training because of it.
    pub blocking: bool,
    /// A sentence for the user.
    pub message: String,
}

impl Problem {
    fn new(kind: ProblemKind, blocking: bool, message: impl Into<String>) -> Self {
        Self {
            kind,
            blocking,
            message: message.into(),
        }
    }
}

/// One row of the scan report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileReport {
    /// The file stem (recording id).
    pub name: String,
    /// The audio file name, if there is one.
    pub audio_file: Option<String>,
    /// The transcript file name, if there is one.
    pub transcript_file: Option<String>,
    /// The alignment file name, if there is one.
    pub alignment_file: Option<String>,
    /// Which alignment layout was found.
    pub alignment_format: Option<AlignmentFormat>,
    /// Duration in seconds.
    pub duration_s: Option<f64>,
    /// Sample rate of the file.
    pub sample_rate: Option<u32>,
    /// Channels of the file.
    pub channels: Option<u16>,
    /// Bits per sample of the file.
    pub bits_per_sample: Option<u16>,
    /// Whether a transcript file exists.
    pub transcript_found: bool,
    /// The start of the transcript.
    pub text_preview: Option<String>,
    /// Peak level in dBFS.
    pub peak_dbfs: Option<f32>,
    /// RMS level in dBFS.
    pub rms_dbfs: Option<f32>,
    /// Everything wrong with the file.
    pub problems: Vec<Problem>,
    /// Whether the file can be trained on (no blocking problem).
    pub usable: bool,
    /// Where the split puts it (usable files only).
    pub split: Option<Split>,
}

/// Totals of a scan.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScanTotals {
    /// Rows in the report (audio files plus orphan transcripts).
    pub files: usize,
    /// Audio files.
    pub audio_files: usize,
    /// Files usable for training.
    pub usable_files: usize,
    /// Files with at least one problem.
    pub files_with_problems: usize,
    /// Minutes of readable audio.
    pub total_minutes: f64,
    /// Minutes of usable audio.
    pub usable_minutes: f64,
    /// Usable files in the training split.
    pub train_files: usize,
    /// Usable files in the validation split.
    pub validation_files: usize,
    /// Minutes in the training split.
    pub train_minutes: f64,
    /// Minutes in the validation split.
    pub validation_minutes: f64,
}

/// The whole scan: one row per file, and totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanReport {
    /// The folders scanned.
    pub layout: DatasetLayout,
    /// One row per stem, sorted by name.
    pub files: Vec<FileReport>,
    /// Sums over the rows.
    pub totals: ScanTotals,
    /// The validation fraction used.
    pub val_split: f64,
    /// The split seed used.
    pub seed: u64,
    /// How the validation set is chosen (see [`SplitUnit`]).
    pub split_unit: SplitUnit,
}

/// Whether validation holds out whole recordings or single utterances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitUnit {
    /// Whole recordings (when there are at least two usable ones), so no
    /// audio of a validation recording is trained on.
    Recording,
    /// Utterances of the single usable recording.
    Utterance,
}

/// Looks at every file of the dataset and reports per-file problems.
///
/// Reads every WAV fully (for levels, clipping and silence) but does not
/// resample. Problems with single files are reported in the rows, never as
/// errors.
///
/// # Errors
/// [`DataError::MissingDir`] / [`DataError::Io`] for folders that cannot be
/// listed, [`DataError::EmptyDir`] when the audio folder has no audio at
/// all, [`DataError::InvalidOption`] for a bad `val_split`.
pub fn scan_dataset(layout: &DatasetLayout, opts: &ScanOptions) -> Result<ScanReport> {
    check_val_split(opts.val_split)?;
    let l = list(layout)?;
    if l.wav.is_empty() && l.other_audio.is_empty() {
        return Err(DataError::EmptyDir {
            path: layout.audio_dir.clone(),
            what: AUDIO_WHAT,
        });
    }
    let stems: BTreeSet<&String> = l
        .wav
        .keys()
        .chain(l.other_audio.keys())
        .chain(l.txt.keys())
        .collect();
    let stems: Vec<&String> = stems.into_iter().collect();
    // Decoding every WAV dominates; spread the files over the cores.
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(stems.len())
        .max(1);
    let mut files: Vec<FileReport> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (stems, l) = (&stems, &l);
                scope.spawn(move || {
                    (w..stems.len())
                        .step_by(workers)
                        .map(|i| (i, scan_one(stems[i], l, layout, opts)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut rows: Vec<(usize, FileReport)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        rows.sort_by_key(|(i, _)| *i);
        rows.into_iter().map(|(_, r)| r).collect()
    });

    let usable: Vec<String> = files
        .iter()
        .filter(|f| f.usable)
        .map(|f| f.name.clone())
        .collect();
    let split_unit = if usable.len() >= 2 {
        SplitUnit::Recording
    } else {
        SplitUnit::Utterance
    };
    if split_unit == SplitUnit::Recording {
        let splits = split_train_val(&usable, opts.val_split, opts.seed)?;
        let by_name: BTreeMap<&String, Split> = usable.iter().zip(splits).collect();
        for f in &mut files {
            f.split = by_name.get(&f.name).copied();
        }
    } else {
        for f in files.iter_mut().filter(|f| f.usable) {
            f.split = Some(Split::Train);
        }
    }

    let mut t = ScanTotals {
        files: files.len(),
        ..ScanTotals::default()
    };
    for f in &files {
        let minutes = f.duration_s.unwrap_or(0.0) / 60.0;
        t.audio_files += usize::from(f.audio_file.is_some());
        t.files_with_problems += usize::from(!f.problems.is_empty());
        t.total_minutes += minutes;
        if f.usable {
            t.usable_files += 1;
            t.usable_minutes += minutes;
        }
        match f.split {
            Some(Split::Train) => {
                t.train_files += 1;
                t.train_minutes += minutes;
            }
            Some(Split::Validation) => {
                t.validation_files += 1;
                t.validation_minutes += minutes;
            }
            None => {}
        }
    }
    Ok(ScanReport {
        layout: layout.clone(),
        files,
        totals: t,
        val_split: opts.val_split,
        seed: opts.seed,
        split_unit,
    })
}

fn scan_one(stem: &str, l: &Listing, layout: &DatasetLayout, opts: &ScanOptions) -> FileReport {
    use ProblemKind as K;
    let audio_path = l.wav.get(stem).or_else(|| l.other_audio.get(stem));
    let mut r = FileReport {
        name: stem.to_string(),
        audio_file: audio_path.map(|p| file_name(p)),
        transcript_file: l.txt.get(stem).map(|p| file_name(p)),
        alignment_file: l.json.get(stem).map(|p| file_name(p)),
        alignment_format: None,
        duration_s: None,
        sample_rate: None,
        channels: None,
        bits_per_sample: None,
        transcript_found: l.txt.contains_key(stem),
        text_preview: None,
        peak_dbfs: None,
        rms_dbfs: None,
        problems: Vec::new(),
        usable: false,
        split: None,
    };
    let p = &mut r.problems;

    match l.txt.get(stem) {
        None => p.push(Problem::new(
            K::MissingTranscript,
            true,
            format!("no {stem}.txt in the transcript folder"),
        )),
        Some(path) => match read_transcript(path) {
            Ok(text) => {
                let mut preview: String = text.chars().take(opts.preview_chars).collect();
                if preview.len() < text.len() {
                    preview.push('…');
                }
                r.text_preview = Some(preview);
            }
            Err(DataError::EmptyTranscript { .. }) => {
                p.push(Problem::new(
                    K::EmptyTranscript,
                    true,
                    "transcript is empty",
                ));
            }
            Err(e @ DataError::TranscriptNotUtf8 { .. }) => {
                p.push(Problem::new(K::TranscriptNotUtf8, true, e.to_string()));
            }
            Err(e) => p.push(Problem::new(K::Unreadable, true, error_chain(&e))),
        },
    }

    let mut audio_duration = None;
    match (l.wav.get(stem), l.other_audio.get(stem)) {
        (None, None) => p.push(Problem::new(
            K::MissingAudio,
            true,
            format!("no {stem}.wav in the audio folder"),
        )),
        (None, Some(other)) => p.push(Problem::new(
            K::NotWav,
            true,
            decode::unsupported(other).to_string(),
        )),
        // One streaming pass per file: long recordings are never held whole.
        (Some(path), _) => match decode::summarize(path) {
            Ok(a) => {
                let duration = a.duration_s;
                r.duration_s = Some(duration);
                r.sample_rate = Some(a.info.sample_rate);
                r.channels = Some(a.info.channels);
                r.bits_per_sample = a.info.bits_per_sample;
                let (peak, rms) = (a.peak, a.rms);
                r.peak_dbfs = Some(audio::to_dbfs(peak));
                r.rms_dbfs = Some(audio::to_dbfs(rms));
                let clipped = a.clipped_fraction;
                if clipped > opts.clip_fraction {
                    p.push(Problem::new(
                        K::Clipping,
                        false,
                        format!("{:.2}% of samples are clipped", clipped * 100.0),
                    ));
                }
                if audio::to_dbfs(rms) < opts.silence_dbfs {
                    p.push(Problem::new(
                        K::Silence,
                        false,
                        format!("almost silent: RMS {:.1} dBFS", audio::to_dbfs(rms)),
                    ));
                }
                audio_duration = Some(duration);
            }
            Err(DataError::EmptyAudio { .. }) => {
                r.duration_s = Some(0.0);
                p.push(Problem::new(K::EmptyAudio, true, "audio has no samples"));
            }
            Err(e) => p.push(Problem::new(K::Unreadable, true, error_chain(&e))),
        },
    }

    let alignment_path = l.json.get(stem);
    if let Some(path) = alignment_path {
        match read_alignment(path) {
            Ok(a) => {
                r.alignment_format = Some(a.format);
                if let (Some(dur), Some(last)) = (audio_duration, a.last_end()) {
                    if last > dur + 0.5 {
                        p.push(Problem::new(
                            K::BadAlignment,
                            true,
                            format!("alignment runs to {last:.2} s but the audio is {dur:.2} s"),
                        ));
                    }
                }
            }
            Err(e) => p.push(Problem::new(K::BadAlignment, true, error_chain(&e))),
        }
    } else if layout.alignment_dir.is_some() && l.wav.contains_key(stem) {
        p.push(Problem::new(
            K::MissingAlignment,
            false,
            format!("no {stem}.json in the alignment folder"),
        ));
    }
    if let Some(dur) = r.duration_s {
        if alignment_path.is_none() && dur > opts.segment.max_unaligned_s {
            p.push(Problem::new(
                K::TooLong,
                true,
                format!(
                    "{dur:.1} s is longer than {:.1} s; without an alignment it cannot be cut safely; add one or shorten the file",
                    opts.segment.max_unaligned_s
                ),
            ));
        }
    }
    r.usable = !r.problems.iter().any(|p| p.blocking);
    r
}

/// The error's message followed by its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Settings for [`load_dataset`].
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LoadOptions {
    /// How recordings are cut.
    pub segment: SegmentConfig,
    /// Fraction held out for validation (`--val-split`), in `[0, 1)`.
    pub val_split: f64,
    /// Seed of the split.
    pub seed: u64,
}

impl Default for LoadOptions {
    /// The same split settings as [`ScanOptions::default`], so a scan shows
    /// the split a default load makes.
    fn default() -> Self {
        let scan = ScanOptions::default();
        Self {
            segment: scan.segment,
            val_split: scan.val_split,
            seed: scan.seed,
        }
    }
}

/// Position of an utterance in a [`Dataset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct UtteranceId {
    /// Index into [`Dataset::conversations`].
    pub conversation: usize,
    /// Index into that conversation's utterances.
    pub utterance: usize,
}

/// A loaded dataset: conversations of 24 kHz utterances and the split.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// One conversation per usable recording, sorted by recording id.
    pub conversations: Vec<Conversation>,
    /// Training utterances.
    pub train: Vec<UtteranceId>,
    /// Validation utterances.
    pub validation: Vec<UtteranceId>,
    /// How validation was chosen.
    pub split_unit: SplitUnit,
    /// Things the user should know (skipped files, long utterances...).
    pub warnings: Vec<String>,
    /// Every recording read, in name order, with its whole duration in
    /// seconds, skipped ones included (see [`Dataset::usage`]).
    pub recordings_read: Vec<(String, f64)>,
    /// The speakers, by id, when the dataset has several (see
    /// [`super::speakers`]); each utterance names its own
    /// ([`Utterance::speaker`]). Empty: one speaker, the run's.
    pub speakers: Vec<Speaker>,
}

impl Dataset {
    /// The utterance at `id`.
    ///
    /// # Panics
    /// If `id` is not from this dataset.
    pub fn utterance(&self, id: UtteranceId) -> &Utterance {
        &self.conversations[id.conversation].utterances[id.utterance]
    }

    /// Training or validation examples, each with up to `context_turns`
    /// previous utterances of its recording as context.
    pub fn examples(&self, split: Split, context_turns: usize) -> Vec<Example<'_>> {
        let ids = match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
        };
        ids.iter()
            .map(|id| {
                let conv = &self.conversations[id.conversation];
                Example {
                    context: conv.context(id.utterance, context_turns),
                    target: &conv.utterances[id.utterance],
                }
            })
            .collect()
    }

    /// Batches of `split`'s utterances with similar lengths (context plus
    /// target samples), shuffled with `seed`; see [`bucket_by_length`].
    ///
    /// # Errors
    /// [`DataError::InvalidOption`] if `batch_size` is 0.
    pub fn batches(
        &self,
        split: Split,
        context_turns: usize,
        batch_size: usize,
        seed: u64,
    ) -> Result<Vec<Vec<UtteranceId>>> {
        let ids = match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
        };
        let lengths: Vec<usize> = ids
            .iter()
            .map(|id| {
                let conv = &self.conversations[id.conversation];
                let context: usize = conv
                    .context(id.utterance, context_turns)
                    .iter()
                    .map(Utterance::len)
                    .sum();
                context + conv.utterances[id.utterance].len()
            })
            .collect();
        Ok(bucket_by_length(&lengths, batch_size, seed)?
            .into_iter()
            .map(|batch| batch.into_iter().map(|i| ids[i]).collect())
            .collect())
    }

    /// Number of utterances.
    pub fn len(&self) -> usize {
        self.conversations.iter().map(|c| c.utterances.len()).sum()
    }

    /// Whether there are no utterances.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total duration in seconds.
    pub fn duration_s(&self) -> f64 {
        self.conversations
            .iter()
            .map(Conversation::duration_s)
            .sum()
    }

    /// How much of the recordings read this dataset uses, after silence
    /// trimming, cutting and skipping.
    pub fn usage(&self) -> AudioUsage {
        let seconds = |ids: &[UtteranceId]| -> f64 {
            // A fold from +0.0: an empty `sum()` of floats is -0.0 ("-0.0 s").
            ids.iter()
                .map(|&id| self.utterance(id).duration_s())
                .fold(0.0, |a, b| a + b)
        };
        let recordings: Vec<RecordingUsage> = self
            .recordings_read
            .iter()
            .map(|(id, seconds_in)| {
                let conv = self.conversations.iter().find(|c| &c.recording_id == id);
                RecordingUsage {
                    recording_id: id.clone(),
                    seconds_in: *seconds_in,
                    seconds_used: conv.map_or(0.0, Conversation::duration_s),
                    utterances: conv.map_or(0, |c| c.utterances.len()),
                }
            })
            .collect();
        AudioUsage {
            recordings_used: recordings.iter().filter(|r| r.utterances > 0).count(),
            seconds_in: recordings
                .iter()
                .map(|r| r.seconds_in)
                .fold(0.0, |a, b| a + b),
            seconds_used: self.duration_s(),
            utterances: self.len(),
            train_utterances: self.train.len(),
            validation_utterances: self.validation.len(),
            train_seconds: seconds(&self.train),
            validation_seconds: seconds(&self.validation),
            warnings: self.warnings.clone(),
            speakers: self.speaker_usage(),
            recordings,
        }
    }

    /// Per speaker (datasets with several): what each one contributes.
    fn speaker_usage(&self) -> Vec<SpeakerUsage> {
        let mut rows: Vec<SpeakerUsage> = self
            .speakers
            .iter()
            .map(|s| SpeakerUsage {
                speaker: s.clone(),
                ..SpeakerUsage::default()
            })
            .collect();
        let row = |rows: &[SpeakerUsage], id: Option<u32>| {
            rows.iter().position(|r| Some(r.speaker.id) == id)
        };
        for conv in &self.conversations {
            let mut heard: Vec<usize> = Vec::new();
            for u in &conv.utterances {
                if let Some(i) = row(&rows, u.speaker) {
                    rows[i].utterances += 1;
                    rows[i].seconds += u.duration_s();
                    if !heard.contains(&i) {
                        heard.push(i);
                    }
                }
            }
            for &i in &heard {
                rows[i].recordings += 1;
                rows[i].conversations += usize::from(heard.len() > 1);
            }
        }
        for (ids, train) in [(&self.train, true), (&self.validation, false)] {
            for &id in ids {
                let u = self.utterance(id);
                if let Some(i) = row(&rows, u.speaker) {
                    let r = &mut rows[i];
                    if train {
                        r.train_utterances += 1;
                        r.train_seconds += u.duration_s();
                    } else {
                        r.validation_utterances += 1;
                        r.validation_seconds += u.duration_s();
                    }
                }
            }
        }
        rows
    }
}

/// What one speaker of a dataset with several contributes (see
/// [`AudioUsage::speakers`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpeakerUsage {
    /// The speaker: name and CSM id.
    pub speaker: Speaker,
    /// Recordings with at least one of its utterances.
    pub recordings: usize,
    /// Of those, conversations (recordings with several speakers).
    pub conversations: usize,
    /// Its utterances.
    pub utterances: usize,
    /// Seconds in them.
    pub seconds: f64,
    /// Its utterances in the training split.
    pub train_utterances: usize,
    /// Its utterances held out for validation.
    pub validation_utterances: usize,
    /// Seconds in the training split.
    pub train_seconds: f64,
    /// Seconds in the validation split.
    pub validation_seconds: f64,
}

/// The audio of one recording that training uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordingUsage {
    /// The recording id (file stem).
    pub recording_id: String,
    /// Its whole duration, in seconds.
    pub seconds_in: f64,
    /// Seconds in its utterances, after trimming and cutting (0 if skipped).
    pub seconds_used: f64,
    /// Utterances cut from it (0 if skipped).
    pub utterances: usize,
}

/// The audio a run actually trains and validates on: durations after
/// silence trimming and cutting ([`SegmentConfig`]), per recording and in
/// total. `csm prepare` prints it; the app's Dataset screen shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AudioUsage {
    /// One row per recording read, in name order.
    pub recordings: Vec<RecordingUsage>,
    /// Recordings that gave at least one utterance.
    pub recordings_used: usize,
    /// Seconds of audio read.
    pub seconds_in: f64,
    /// Seconds in the utterances (what is Mimi-encoded and trained on).
    pub seconds_used: f64,
    /// Utterances in total.
    pub utterances: usize,
    /// Utterances in the training split.
    pub train_utterances: usize,
    /// Utterances in the validation split.
    pub validation_utterances: usize,
    /// Seconds in the training split.
    pub train_seconds: f64,
    /// Seconds in the validation split.
    pub validation_seconds: f64,
    /// Skipped recordings, over-long utterances and other notes.
    pub warnings: Vec<String>,
    /// Per speaker, by id, when the dataset has several (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub speakers: Vec<SpeakerUsage>,
}

/// Loads the dataset as training would (reading, resampling, trimming,
/// cutting, splitting) and reports the audio it uses. `on_progress` is
/// called after each recording, as in [`load_dataset_with_progress`].
///
/// # Errors
/// As [`load_dataset`]: the first bad file is an error naming it (a
/// [`scan_dataset`] lists every problem without failing).
pub fn audio_usage(
    layout: &DatasetLayout,
    opts: &LoadOptions,
    on_progress: &mut dyn FnMut(LoadProgress),
) -> Result<AudioUsage> {
    Ok(load_dataset_with_progress(layout, opts, on_progress)?.usage())
}

/// Loads, resamples and segments the whole dataset, then splits it.
///
/// Every pair is read strictly: the first bad file stops the load with an
/// error naming it (use [`scan_dataset`] to see all problems at once).
/// Recordings skipped by [`SegmentConfig::long_unaligned`] are listed in
/// [`Dataset::warnings`]. With at least two recordings whole recordings are
/// held out for validation; with one, its utterances are split.
///
/// # Errors
/// Those of [`pair_files`], [`read_transcript`], [`audio::read_wav`],
/// [`read_alignment`] and [`segment_recording`], plus
/// [`DataError::InvalidOption`] for bad options.
pub fn load_dataset(layout: &DatasetLayout, opts: &LoadOptions) -> Result<Dataset> {
    load_dataset_with_progress(layout, opts, &mut |_| {})
}

/// Progress of [`load_dataset_with_progress`], sent after each recording.
#[derive(Debug, Clone, Serialize)]
pub struct LoadProgress {
    /// Recordings finished so far.
    pub done: usize,
    /// Recordings in total.
    pub total: usize,
    /// The recording just finished.
    pub recording_id: String,
}

/// [`load_dataset`], calling `on_progress` (on the calling thread) after
/// each recording. Recordings are decoded and resampled on all cores.
///
/// # Errors
/// As [`load_dataset`]; when several files are bad, the error is the one
/// of the first in name order, as in a sequential load.
pub fn load_dataset_with_progress(
    layout: &DatasetLayout,
    opts: &LoadOptions,
    on_progress: &mut dyn FnMut(LoadProgress),
) -> Result<Dataset> {
    check_val_split(opts.val_split)?;
    opts.segment.validate()?;
    let pairs = pair_files(layout)?;
    let ids: Vec<String> = pairs.iter().map(|p| p.id.clone()).collect();
    let results = load_parallel(&ids, on_progress, |i| {
        load_recording(&pairs[i], layout, &opts.segment)
    });
    let mut warnings = Vec::new();
    let mut conversations = Vec::new();
    let mut recordings_read = Vec::with_capacity(pairs.len());
    for (pair, result) in pairs.iter().zip(results) {
        // A worker that hit an error stops, leaving later slots empty; the
        // error itself sits in an earlier slot, so it is returned first.
        let Some(result) = result else { continue };
        let loaded = result?;
        recordings_read.push((pair.id.clone(), loaded.seconds));
        warnings.extend(loaded.warnings);
        if let Some(conv) = loaded.conversation {
            log_alignment(&conv);
            conversations.push(conv);
        }
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if conversations.is_empty() {
        return Err(DataError::EmptyDir {
            path: layout.audio_dir.clone(),
            what: "usable .wav",
        });
    }
    let names: Vec<String> = conversations
        .iter()
        .map(|c| c.recording_id.clone())
        .collect();
    let (train, validation, split_unit) = split_conversations(&conversations, &names, opts)?;
    Ok(Dataset {
        conversations,
        train,
        validation,
        split_unit,
        warnings,
        recordings_read,
        speakers: Vec::new(),
    })
}

/// Logs the alignment layout a conversation was cut with.
pub(super) fn log_alignment(conv: &Conversation) {
    if let Some(format) = conv.alignment_format {
        tracing::info!(
            recording = %conv.recording_id,
            utterances = conv.utterances.len(),
            "alignment layout found: {format}"
        );
    }
}

/// Runs `load(i)` for every recording `ids[i]` on all cores, calling
/// `on_progress` (on the calling thread) after each. A worker stops at its
/// first error, so slots after it may stay `None`; the error is in an
/// earlier slot.
pub(super) fn load_parallel<T: Send>(
    ids: &[String],
    on_progress: &mut dyn FnMut(LoadProgress),
    load: impl Fn(usize) -> Result<T> + Sync,
) -> Vec<Option<Result<T>>> {
    let total = ids.len();
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(total);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<T>>> = (0..total).map(|_| None).collect();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, load) = (&next, &load);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let result = load(i);
                // Stop early on an error; the receiver still gets it.
                let failed = result.is_err();
                if tx.send((i, result)).is_err() || failed {
                    break;
                }
            });
        }
        drop(tx);
        for (done, (i, result)) in rx.into_iter().enumerate() {
            on_progress(LoadProgress {
                done: done + 1,
                total,
                recording_id: ids[i].clone(),
            });
            results[i] = Some(result);
        }
    });
    results
}

/// Splits conversations into training and validation utterances:
/// with at least two, whole recordings are held out (chosen by `names`,
/// one per conversation, with [`split_train_val`]); with one, its
/// utterances are split (named `NAME#INDEX`). Returned ids index
/// `conversations`.
///
/// # Errors
/// [`DataError::InvalidOption`] for a bad `val_split`.
pub(super) fn split_conversations(
    conversations: &[Conversation],
    names: &[String],
    opts: &LoadOptions,
) -> Result<(Vec<UtteranceId>, Vec<UtteranceId>, SplitUnit)> {
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    let split_unit = if conversations.len() >= 2 {
        SplitUnit::Recording
    } else {
        SplitUnit::Utterance
    };
    match split_unit {
        SplitUnit::Recording => {
            let splits = split_train_val(names, opts.val_split, opts.seed)?;
            for (ci, (conv, split)) in conversations.iter().zip(splits).enumerate() {
                let side = if split == Split::Train {
                    &mut train
                } else {
                    &mut validation
                };
                side.extend((0..conv.utterances.len()).map(|u| UtteranceId {
                    conversation: ci,
                    utterance: u,
                }));
            }
        }
        SplitUnit::Utterance => {
            let Some(conv) = conversations.first() else {
                return Ok((train, validation, split_unit));
            };
            let ids: Vec<String> = conv
                .utterances
                .iter()
                .map(|u| format!("{}#{}", names[0], u.index))
                .collect();
            let splits = split_train_val(&ids, opts.val_split, opts.seed)?;
            for (u, split) in splits.into_iter().enumerate() {
                let id = UtteranceId {
                    conversation: 0,
                    utterance: u,
                };
                if split == Split::Train {
                    train.push(id)
                } else {
                    validation.push(id)
                }
            }
        }
    }
    Ok((train, validation, split_unit))
}

/// One recording read, resampled and segmented.
pub(super) struct LoadedRecording {
    pub(super) conversation: Option<Conversation>,
    pub(super) warnings: Vec<String>,
    /// Whole duration at 24 kHz.
    pub(super) seconds: f64,
}

/// One recording of the run's one speaker. Speaker labels in its
/// alignment are not used, and a warning says so.
fn load_recording(
    pair: &PairedFile,
    layout: &DatasetLayout,
    cfg: &SegmentConfig,
) -> Result<LoadedRecording> {
    load_spoken(
        pair,
        &pair.id,
        layout,
        cfg,
        RecordingSpeakers::Run,
        &|path, alignment| {
            let labels = alignment.speaker_labels();
            let note = (!labels.is_empty()).then(|| {
                format!(
                    "{}: names speakers ({}) but the dataset has one speaker (--speaker-id); \
                 the labels are not used (a speakers.json beside audio/ trains each voice \
                 under its own id)",
                    path.display(),
                    labels.join(", ")
                )
            });
            Ok((RecordingSpeakers::Run, note))
        },
    )
}

/// Who speaks in a recording, told from its alignment file and contents:
/// the speakers, and a warning if there is one.
pub(super) type WhoSpeaks<'a> =
    dyn Fn(&Path, &Alignment) -> Result<(RecordingSpeakers, Option<String>)> + 'a;

/// Reads, resamples and segments one recording under the id `id`: `who`
/// says who speaks when it has an alignment, `unaligned` when it has none.
pub(super) fn load_spoken(
    pair: &PairedFile,
    id: &str,
    layout: &DatasetLayout,
    cfg: &SegmentConfig,
    unaligned: RecordingSpeakers,
    who: &WhoSpeaks<'_>,
) -> Result<LoadedRecording> {
    let mut warnings = Vec::new();
    let text = read_transcript(&pair.transcript)?;
    let alignment: Option<Alignment> = pair.alignment.as_deref().map(read_alignment).transpose()?;
    if layout.alignment_dir.is_some() && alignment.is_none() {
        warnings.push(format!(
            "{}: no alignment; used whole",
            file_name(&pair.audio)
        ));
    }
    let aligned = pair.alignment.as_deref().zip(alignment.as_ref());
    let speakers = match aligned {
        Some((path, a)) => {
            let (speakers, note) = who(path, a)?;
            warnings.extend(note);
            speakers
        }
        None => unaligned,
    };
    let samples: Arc<[f32]> = decode::load_mono_24k(&pair.audio)?.into();
    let seconds = samples.len() as f64 / f64::from(audio::TARGET_SAMPLE_RATE);
    let conversation = segment_spoken(
        Recording {
            id,
            audio: samples,
            transcript: &text,
            alignment: aligned,
            audio_path: &pair.audio,
            speakers,
        },
        cfg,
        &mut warnings,
    )?;
    Ok(LoadedRecording {
        conversation,
        warnings,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_order_free_and_sized() {
        let ids: Vec<String> = (0..50).map(|i| format!("file{i:03}")).collect();
        let a = split_train_val(&ids, 0.2, 7).unwrap();
        assert_eq!(a, split_train_val(&ids, 0.2, 7).unwrap());
        assert_eq!(a.iter().filter(|s| **s == Split::Validation).count(), 10);
        // Reversing the input reverses the output: the split follows names.
        let mut rev = ids.clone();
        rev.reverse();
        let mut b = split_train_val(&rev, 0.2, 7).unwrap();
        b.reverse();
        assert_eq!(a, b);
        // Another seed, another split.
        assert_ne!(a, split_train_val(&ids, 0.2, 8).unwrap());
        // Edge cases.
        assert!(split_train_val(&ids, 0.0, 1)
            .unwrap()
            .iter()
            .all(|s| *s == Split::Train));
        let two = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            split_train_val(&two, 0.01, 1)
                .unwrap()
                .iter()
                .filter(|s| **s == Split::Validation)
                .count(),
            1
        );
        assert_eq!(
            split_train_val(&two, 0.99, 1)
                .unwrap()
                .iter()
                .filter(|s| **s == Split::Validation)
                .count(),
            1
        );
        assert_eq!(split_train_val(&two[..1], 0.5, 1).unwrap(), [Split::Train]);
        for bad in [-0.1, 1.0, f64::NAN] {
            assert!(matches!(
                split_train_val(&ids, bad, 1),
                Err(DataError::InvalidOption {
                    name: "val_split",
                    ..
                })
            ));
        }
    }

    #[test]
    fn options_deserialize_with_defaults() {
        let o: ScanOptions =
            serde_json::from_str(r#"{"val_split": 0.2, "segment": {"max_s": 15}}"#).unwrap();
        assert_eq!(o.val_split, 0.2);
        assert_eq!(o.seed, ScanOptions::default().seed);
        assert_eq!(o.segment.max_s, 15.0);
        assert_eq!(o.segment.min_s, SegmentConfig::default().min_s);
        let l: LoadOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(l, LoadOptions::default());
    }

    #[test]
    fn transcripts_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.txt");
        std::fs::write(&ok, "\u{feff} Hello\n  world \n").unwrap();
        assert_eq!(read_transcript(&ok).unwrap(), "Hello world");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, " \n\t").unwrap();
        assert!(
            matches!(read_transcript(&empty), Err(DataError::EmptyTranscript { path }) if path == empty)
        );
        let latin1 = dir.path().join("latin1.txt");
        std::fs::write(&latin1, b"caf\xe9").unwrap();
        let err = read_transcript(&latin1).unwrap_err();
        assert!(
            matches!(&err, DataError::TranscriptNotUtf8 { path, offset: 3 } if *path == latin1)
        );
        assert!(err.to_string().contains("latin1.txt"));
    }
}
