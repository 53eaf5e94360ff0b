//! LoRA fine-tuning: configuration, optimizer, schedule, reporting, the
//! training loop, the voice scores at its checkpoints ([`voice`]) and the
//! run folder it writes ([`run_dir`]).

pub mod auto_batch;
pub mod batch;
pub mod codes;
pub mod config;
pub mod full;
pub mod lr_find;
pub mod metrics;
pub mod modes;
pub mod observer;
pub mod optim;
mod run;
pub mod run_dir;
pub mod schedule;
pub mod settings;
pub mod state;
pub mod step;
pub mod trainer;
pub mod voice;

pub use config::{LrSchedule, Method, ModelPart, SaveMode, TrainConfig};
pub use config::{VoiceConfig, VOICE_PROMPTS};
pub use observer::{
    NullObserver, Phase, RecordingObserver, SpeakerValReport, StepReport, TrainEvent,
    TrainingObserver, ValReport,
};
pub use observer::{VoiceReport, VoiceSample, VoiceSetupReport, VoiceSummary};
pub use run::train;
#[cfg(feature = "fault-injection")]
pub use settings::FaultPlan;
pub use settings::RunSettings;
pub use trainer::{
    evaluate, evaluate_by_speaker, load_assets, prepare, Assets, LossValues, Prepared, RunSummary,
    SpeakerLoss, TrainError,
};
pub use trainer::{CheckSplit, FullPrecisionCheck};
