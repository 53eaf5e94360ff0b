//! One path from a folder of raw recordings to a scored voice: the library
//! behind `csm voice` and the app's "New voice" screen.
//!
//! [`run_voice`] runs the stages in order, each reporting through a
//! [`FlowObserver`] and stopping at a [`CancelToken`]:
//!
//! 1. **download** ([`Stage::Download`]): the models named by bundle
//!    (CSM-1B, a Whisper, the speaker encoder) that are not cached, through
//!    csm-hub (resumable); a model given as a path is used as it is.
//!    Whisper is fetched first; the others download on a second thread
//!    while the next stages transcribe and cut the recordings, and
//!    training waits for them;
//! 2. **transcribe**: recordings of the raw folder with no transcript
//!    beside them (`NAME.txt`) go through Whisper into `dataset/`
//!    (csm-core's folder loop: a recording whose transcript is written is
//!    done); those with one are copied in as 24 kHz WAVs;
//! 3. **dataset**: the dataset is cut into utterances as training will cut
//!    it, checked, and the settings are chosen ([`recipe`]);
//! 4. **train**: csm-core's trainer with voice scores on, into `run/`;
//!    a checkpoint left by an earlier run is resumed;
//! 5. **summary**: `summary.json`.
//!
//! The voice folder and its files are [`layout`]'s. A stage finished by an
//! earlier run is skipped, so running again continues where it stopped.
//! `docs/voice.md` is the user's side of it.

pub mod error;
pub mod events;
pub mod layout;
pub mod library;
pub mod recipe;
pub mod stages;

use std::path::PathBuf;

pub use csm_core::cancel::CancelToken;
pub use error::FlowError;
pub use events::{FlowEvent, FlowObserver, NullObserver, StageEnd, Unit};
pub use layout::{ModelSource, Stage, StageStatus, Summary, VoiceDir, VoiceState};
pub use recipe::{DeviceKind, Overrides};
pub use stages::{run_voice, FlowOutcome};

use csm_core::train::settings::RunSettings;
use csm_core::train::TrainConfig;
use csm_core::whisper::TranscribeOptions;

/// The bundle of CSM-1B (model, codec, tokenizer).
pub const DEFAULT_MODEL: &str = "csm-1b";
/// The Whisper bundle used when none is named.
pub const DEFAULT_WHISPER: &str = "whisper-large-v3-turbo";
/// The speaker encoder's bundle.
pub const DEFAULT_SPEAKER_ENCODER: &str = "speaker-encoder";

/// What [`run_voice`] is asked to do.
#[derive(Debug, Clone)]
pub struct VoiceRequest {
    /// Folder of raw recordings (any format csm-core decodes; not searched
    /// recursively). A recording with `NAME.txt` beside it is not
    /// transcribed: that text is its transcript.
    pub raw_dir: PathBuf,
    /// The voice folder (created; an existing one is continued).
    pub voice_dir: PathBuf,
    /// The voice's name; `None`: the voice folder's name (or the one
    /// `voice.json` already has).
    pub name: Option<String>,
    /// The speaker's name, shown with the voice.
    pub speaker_name: Option<String>,
    /// The CSM model: a path or a bundle ([`DEFAULT_MODEL`]).
    pub model: ModelSource,
    /// The Mimi codec; `None`: the bundle's, or found next to the model.
    pub mimi: Option<PathBuf>,
    /// The text tokenizer; `None`: the bundle's, or next to the model.
    pub tokenizer: Option<PathBuf>,
    /// Whisper (transcription and WER): a folder or a bundle.
    pub whisper: ModelSource,
    /// resemblyzer's `pretrained.pt`: a file or [`DEFAULT_SPEAKER_ENCODER`].
    pub speaker_encoder: ModelSource,
    /// The hub's settings; needed only when a bundle is not cached yet
    /// (the caller reads them from its environment).
    pub hub: Option<csm_hub::HubSettings>,
    /// Every training setting the recipe does not choose (target modules,
    /// seed, segmenting, voice prompts...). Its paths, folders, `voice`
    /// and `resume_from` are set by the flow.
    pub base: TrainConfig,
    /// The caller's values for what the recipe chooses.
    pub overrides: Overrides,
    /// The machine: device, codes cache, compile.
    pub run: RunSettings,
    /// Whisper's decoding settings (language...).
    pub transcribe: TranscribeOptions,
    /// Stop after this stage (the app runs up to `Transcribe`, lets the
    /// user proofread, then runs again); `None`: every stage.
    pub stop_after: Option<Stage>,
}
