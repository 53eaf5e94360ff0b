//! Training data: reading audio, pairing it with transcripts, cutting long
//! recordings into utterances and grouping them into conversations.
//!
//! The pieces, in the order a training run uses them:
//!
//! - [`audio`]: read any PCM/float WAV ([`audio::read_wav`]) and turn it into
//!   24 kHz mono `f32` ([`audio::load_mono_24k`]), write WAV files, level
//!   helpers ([`audio::peak`], [`audio::rms`]).
//! - [`decode`]: every other format (FLAC, MP3, AAC and ALAC in M4A, Ogg
//!   Vorbis) through symphonia, streamed chunk by chunk into 24 kHz mono
//!   ([`decode::Mono24k`], [`decode::load_mono_24k`]); which file
//!   extensions count as audio ([`decode::AUDIO_EXTENSIONS`]).
//! - [`dataset`]: the folder layout ([`DatasetLayout`]), pairing
//!   `audio/*.wav` with `transcripts/*.txt` by stem, the per-file
//!   [`ScanReport`] shown in the GUI table, the deterministic
//!   train/validation split, [`load_dataset`], which returns ready
//!   [`Conversation`]s, and [`audio_usage`] / [`Dataset::usage`]: the
//!   seconds read and the seconds used after trimming and cutting.
//! - [`alignment`]: word timings from JSON (`{"words": [...]}`, a bare list,
//!   whisper-style `{"segments": [{"words": [...]}]}`, MFA tiers), with the
//!   variant that was found.
//! - [`segment`]: trimming edge silence and cutting a recording at word
//!   boundaries into utterances of about 3-12 s, as [`SegmentConfig`] says
//!   (a run's `TrainConfig` fills it from its settings), the
//!   [`Utterance`]/[`Conversation`] types, context turns and length
//!   bucketing.
//! - [`speakers`]: datasets with several speakers: one folder per speaker
//!   or a `speakers.json`, conversations whose alignments name who speaks,
//!   the names-to-ids table ([`speakers::speaker_table`]) and the split
//!   per speaker ([`speakers::load_source`]).
//! - [`proofread`]: editing a dataset in place: saving a corrected
//!   transcript atomically (an alignment that no longer matches becomes
//!   stale), moving a recording to `excluded/` and back.
//! - [`espeak`]: a small spoken dataset synthesised with `espeak-ng`, so the
//!   product can be tried without downloads.
//!
//! Everything here is plain Rust; nothing needs MLX. Every failure is a
//! [`DataError`] that names the file it concerns.
//!
//! # Example
//!
//! ```no_run
//! use csm_core::data::{load_dataset, scan_dataset, DatasetLayout, LoadOptions, ScanOptions, Split};
//!
//! let layout = DatasetLayout::from_root("my-voice".as_ref());
//! let report = scan_dataset(&layout, &ScanOptions::default())?;
//! println!("{} usable minutes", report.totals.usable_minutes);
//!
//! let dataset = load_dataset(&layout, &LoadOptions::default())?;
//! for example in dataset.examples(Split::Train, 2) {
//!     let _key = example.target.content_key(); // key for the Mimi code cache
//!     let _audio: &[f32] = example.target.samples(); // 24 kHz mono
//! }
//! # Ok::<(), csm_core::data::DataError>(())
//! ```

pub mod alignment;
pub mod audio;
pub mod dataset;
pub mod decode;
pub mod espeak;
pub mod proofread;
pub mod segment;
pub mod speakers;

use std::path::PathBuf;

pub use alignment::{Alignment, AlignmentFormat, SpeakerLabel, Word};
pub use audio::TARGET_SAMPLE_RATE;
pub use dataset::{
    audio_usage, load_dataset, load_dataset_with_progress, pair_files, scan_dataset,
    split_train_val, AudioUsage, Dataset, DatasetLayout, FileReport, LoadOptions, LoadProgress,
    PairedFile, Problem, ProblemKind, RecordingUsage, ScanOptions, ScanReport, ScanTotals,
    SpeakerUsage, Split, SplitUnit, UtteranceId,
};
pub use espeak::{generate_demo_dataset, DemoOptions, DemoSummary};
pub use segment::{Conversation, Example, LongUnaligned, SegmentConfig, Speaker, Utterance};
pub use speakers::{DataSource, SpeakerPlan, SpeakersFile, SPEAKERS_FILE};

/// Errors of the data module. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or folder could not be read or written.
    #[error("I/O error on {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A folder the dataset needs does not exist.
    #[error("folder not found: {path}")]
    MissingDir {
        /// The folder that was expected.
        path: PathBuf,
    },
    /// A folder holds none of the files it should.
    #[error("no {what} files in {path}")]
    EmptyDir {
        /// The folder.
        path: PathBuf,
        /// What was looked for, e.g. `.wav`.
        what: &'static str,
    },
    /// The transcript folder holds no `.txt` file at all.
    #[error(
        "no .txt transcripts in {path}; each recording NAME.wav needs a NAME.txt there. \
         Without a transcript: {}",
        name_list(audio_without_transcript)
    )]
    NoTranscripts {
        /// The transcript folder.
        path: PathBuf,
        /// The audio files (names) that have no transcript: all of them.
        audio_without_transcript: Vec<String>,
    },
    /// Some audio files have no transcript, or some transcripts no audio.
    #[error(
        "unpaired files: {} audio file(s) without a transcript [{}], \
         {} transcript(s) without audio [{}]",
        audio_without_transcript.len(),
        audio_without_transcript.join(", "),
        transcripts_without_audio.len(),
        transcripts_without_audio.join(", ")
    )]
    Unpaired {
        /// File names in the audio folder with no `.txt` of the same stem.
        audio_without_transcript: Vec<String>,
        /// File names in the transcript folder with no `.wav` of the same stem.
        transcripts_without_audio: Vec<String>,
    },
    /// A file given to the WAV reader ([`audio::read_wav`]) that is not a
    /// `.wav`; [`decode`] reads the other formats.
    #[error("{path}: not a .wav file")]
    NotWav {
        /// The file.
        path: PathBuf,
    },
    /// An audio format or codec that cannot be decoded (Opus, WMA, ...).
    #[error("{path}: {reason}; convert it to WAV or FLAC first (e.g. `ffmpeg -i in out.flac`)")]
    UnsupportedAudio {
        /// The file.
        path: PathBuf,
        /// Which format or codec, and why.
        reason: String,
    },
    /// An audio file that could not be decoded: not audio, truncated, zero
    /// bytes, or a stream the decoder rejects.
    #[error("{path}: cannot decode audio: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A `.wav` file that is not a readable WAV (corrupt, truncated, not RIFF).
    #[error("{path}: not a readable WAV file")]
    InvalidWav {
        /// The file.
        path: PathBuf,
        /// What the WAV reader said.
        #[source]
        source: hound::Error,
    },
    /// A WAV sample format this reader does not handle.
    #[error("{path}: unsupported WAV sample format ({bits}-bit {format})")]
    UnsupportedWav {
        /// The file.
        path: PathBuf,
        /// Bits per sample in the header.
        bits: u16,
        /// `int` or `float`.
        format: &'static str,
    },
    /// A WAV with a zero sample rate or zero channels in its header.
    #[error("{path}: invalid WAV header ({reason})")]
    InvalidWavHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A WAV file with no samples.
    #[error("{path}: audio is empty (0 samples)")]
    EmptyAudio {
        /// The file.
        path: PathBuf,
    },
    /// A transcript that is empty or only whitespace.
    #[error("{path}: transcript is empty")]
    EmptyTranscript {
        /// The file.
        path: PathBuf,
    },
    /// A transcript that is not valid UTF-8.
    #[error("{path}: transcript is not valid UTF-8 (byte offset {offset}); save it as UTF-8")]
    TranscriptNotUtf8 {
        /// The file.
        path: PathBuf,
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// An alignment file that is not valid JSON.
    #[error("{path}: alignment is not valid JSON")]
    AlignmentJson {
        /// The file.
        path: PathBuf,
        /// The parser's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// An alignment file that is JSON but not a word-timing layout we know,
    /// or whose timings are inconsistent.
    #[error("{path}: malformed alignment: {reason}")]
    MalformedAlignment {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// A recording too long to use without word alignments.
    #[error(
        "{path}: {duration_s:.1} s is longer than {max_s:.1} s and has no alignment; \
         without word timings it cannot be cut safely (transcript text could end up \
         with the wrong audio). Provide --alignment-dir JSON for it or shorten it"
    )]
    NeedsAlignment {
        /// The audio file.
        path: PathBuf,
        /// Its duration in seconds.
        duration_s: f64,
        /// The longest recording accepted whole.
        max_s: f64,
    },
    /// The resampler could not be built or failed.
    #[error("resampling {from_hz} Hz -> {to_hz} Hz failed: {message}")]
    Resample {
        /// Input rate.
        from_hz: u32,
        /// Output rate.
        to_hz: u32,
        /// rubato's message.
        message: String,
    },
    /// A WAV file could not be written.
    #[error("could not write WAV {path}")]
    WavWrite {
        /// The file.
        path: PathBuf,
        /// The writer's error.
        #[source]
        source: hound::Error,
    },
    /// An option is out of range.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// The option, as the CLI spells it.
        name: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// `espeak-ng` is not installed (needed by `csm demo`).
    #[error(
        "`{program}` was not found; the demo dataset is spoken by espeak-ng. \
         Install it with `apt-get install espeak-ng` (Debian/Ubuntu) or \
         `brew install espeak-ng` (macOS)"
    )]
    EspeakMissing {
        /// The program that was looked for.
        program: String,
    },
    /// `espeak-ng` ran but failed.
    #[error("espeak-ng failed on {task} ({status}): {stderr}")]
    EspeakFailed {
        /// What it was asked to do, e.g. `sentence 3` or `--version`.
        task: String,
        /// Exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `speakers.json` is not JSON, or not its layout.
    #[error(
        "{path}: not a valid speakers file; expected \
         {{\"speakers\": {{\"alice\": 0}}, \"recordings\": {{\"NAME\": \"alice\"}}}}"
    )]
    SpeakersJson {
        /// The file.
        path: PathBuf,
        /// The parser's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// Who speaks is wrong or missing: a `speakers.json` key naming no
    /// recording, a recording no one speaks, an alignment label that is no
    /// speaker of the dataset, two speakers with one id.
    #[error("{path}: `{key}`: {reason}")]
    Speaker {
        /// The file (`speakers.json`, an alignment, an audio file).
        path: PathBuf,
        /// The key at fault, e.g. `recordings.007` or `segments[3].speaker`.
        key: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A dataset folder in no layout, or in two at once.
    #[error("{path}: {reason}")]
    Layout {
        /// The folder.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The demo output folder already holds files.
    #[error("{path} is not empty; choose an empty folder or allow overwriting")]
    OutputNotEmpty {
        /// The folder.
        path: PathBuf,
    },
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// `a.wav, b.wav, ... and N more`: names for a message, at most ten.
fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut out = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    out
}

/// Result type of the data module.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// A 64-bit FNV-1a hash of a string, stable across platforms and releases.
pub(crate) fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fisher-Yates shuffle driven by [`crate::rng::mix64`] of `seed`.
pub(crate) fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        state = crate::rng::mix64(state);
        let j = (state % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
