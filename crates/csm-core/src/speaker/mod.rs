//! Speaker encoder: the GE2E d-vector network of resemblyzer, in MLX.
//!
//! Model and weights: Wan et al., "Generalized End-to-End Loss for Speaker
//! Verification" (2018), as trained and released by resemble-ai/Resemblyzer
//! (`resemblyzer/pretrained.pt` inside the PyPI wheel `resemblyzer==0.1.4`).
//! Ported from that package's `voice_encoder.py` (network, partial windows),
//! `audio.py` (preprocessing, mel) and `hparams.py` (every constant, here in
//! [`SpeakerEncoderConfig::resemblyzer`]).
//!
//! The pipeline, from a recording to a 256-d unit vector:
//!
//! 1. [`preprocess`]: mono audio resampled to 16 kHz, its level raised to
//!    -30 dBFS RMS (never lowered), and pauses longer than a few windows
//!    shortened by a voice-activity detector (see below).
//! 2. [`mel`]: 40-band mel *power* spectrogram (not a log-mel: resemblyzer's
//!    `wav_to_mel_spectrogram` feeds librosa's power mel straight to the
//!    network), 25 ms Hann window, 10 ms hop, centred frames.
//! 3. [`encoder`]: the waveform is cut into partial windows of 160 frames
//!    (1.6 s) every 77 frames (1.3 windows a second); each window goes
//!    through a 3-layer LSTM (256 units), the last hidden state of the top
//!    layer through `Linear(256, 256)` and ReLU, and is L2-normalised. The
//!    utterance embedding is the mean of the windows, L2-normalised again;
//!    a speaker's embedding is the normalised mean of their utterances.
//!
//! # Voice-activity detection
//!
//! resemblyzer asks webrtcvad (mode 3, a GMM speech/noise classifier over
//! 30 ms windows of 16-bit PCM) which windows hold speech. This module uses
//! an energy detector on the same 30 ms windows instead, so that nothing
//! outside Rust is needed: a window is voiced when its RMS level is above
//! `max(loudest - 40 dB, min(floor + 12 dB, loudest - 20 dB))`, where
//! `loudest` is the loudest window and `floor` the 10th percentile of the
//! window levels (a noise-floor estimate). The smoothing that follows is
//! resemblyzer's, unchanged: a moving average over 8 windows rounded half
//! to even (voiced when at least 5 of the 8 windows around it are), then a
//! dilation by 6 windows, and only voiced windows are kept.
//!
//! How it differs: webrtcvad tells speech from loud non-speech (music,
//! clatter, steady hum well above the floor) by its spectrum; an energy
//! detector keeps any loud sound and may drop very quiet speech. On clean
//! recordings (the use here: a speaker's own dataset and generated samples)
//! both keep the speech and drop the pauses. The parity test therefore
//! feeds both implementations one already-preprocessed waveform.
//!
//! # Loading
//!
//! [`SpeakerEncoder::load`] takes a path to resemblyzer's `pretrained.pt`.
//! That file is a legacy (pre-zip) `torch.save` of `{"step", "model_state",
//! "optimizer_state"}`; it is read with the restricted pickle reader
//! ([`crate::checkpoint::pickle`]) and loaded strictly: every LSTM and
//! linear tensor must be there with its shape, the optimizer state and the
//! GE2E loss's `similarity_weight`/`similarity_bias` (training only) are
//! dropped, anything else is an error.

pub mod encoder;
mod error;
pub mod load;
pub mod mel;
pub mod preprocess;

pub use encoder::{
    cosine_similarity, mean_embedding, partial_slices, PartialOptions, SpeakerEncoder,
    UtteranceEmbedding,
};
pub use error::SpeakerError;
pub use load::{RESEMBLYZER_WEIGHTS_FILE, RESEMBLYZER_WHEEL};

/// Every constant of resemblyzer's `hparams.py`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeakerEncoderConfig {
    /// Sample rate the network hears, Hz.
    pub sample_rate: u32,
    /// STFT window (and FFT size), samples (25 ms).
    pub window_samples: usize,
    /// STFT hop, samples (10 ms).
    pub hop_samples: usize,
    /// Mel bands.
    pub n_mels: usize,
    /// Frames in one partial window (1.6 s).
    pub partial_frames: usize,
    /// LSTM width.
    pub hidden_size: i32,
    /// Embedding width.
    pub embedding_size: i32,
    /// LSTM layers.
    pub num_layers: usize,
    /// Voice-activity window, ms.
    pub vad_window_ms: usize,
    /// Windows averaged when smoothing the voice flags.
    pub vad_moving_average_width: usize,
    /// Silent windows kept on each side of speech.
    pub vad_max_silence_windows: usize,
    /// Level the audio is raised to, dBFS RMS.
    pub norm_target_dbfs: f32,
}

impl SpeakerEncoderConfig {
    /// The values of resemblyzer 0.1.4 (`hparams.py`).
    pub fn resemblyzer() -> Self {
        SpeakerEncoderConfig {
            sample_rate: 16_000,
            window_samples: 400,
            hop_samples: 160,
            n_mels: 40,
            partial_frames: 160,
            hidden_size: 256,
            embedding_size: 256,
            num_layers: 3,
            vad_window_ms: 30,
            vad_moving_average_width: 8,
            vad_max_silence_windows: 6,
            norm_target_dbfs: -30.0,
        }
    }
}

impl Default for SpeakerEncoderConfig {
    fn default() -> Self {
        Self::resemblyzer()
    }
}
