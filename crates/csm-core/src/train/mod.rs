//! LoRA fine-tuning: configuration, optimizer, schedule, reporting and the
//! training loop.

pub mod batch;
pub mod codes;
pub mod config;
pub mod metrics;
pub mod observer;
pub mod optim;
pub mod rng;
pub mod schedule;
pub mod state;
pub mod trainer;

pub use config::{LayerSet, LrSchedule, SaveMode, TargetLayers, TrainConfig};
pub use observer::{
    CancelToken, NullObserver, Phase, RecordingObserver, StepReport, TrainEvent, TrainingObserver,
    ValReport,
};
pub use trainer::{
    evaluate, load_assets, prepare, train, Assets, LossValues, Prepared, RunSummary, TrainError,
};
