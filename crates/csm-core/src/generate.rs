//! Speech generation: prompt frames from context segments, the frame loop
//! (backbone, codebook 0, depth decoder, EOS, feedback), sampling and Mimi
//! decoding. Follows SesameAILabs/csm `generator.py` and
//! `docs/architecture.md`, "The model".
//!
//! ```ignore
//! use csm_core::generate::{Generator, SamplingConfig, Segment};
//! let mut gen = Generator::load(model_dir, None, None, Dtype::Float32)?;
//! gen.apply_adapter(Path::new("runs/voice/adapters"))?; // optional
//! let context = [Segment { speaker: 0, text: "Hi.".into(), audio: Some(wav_24k) }];
//! let out = gen.generate(&context, "Hello there.", 0, &SamplingConfig::default())?;
//! // out.audio: 24 kHz mono samples; out.codes: [frames][codebooks]
//! ```
//!
//! [`generate_frames`] is the layer below: it takes prompt frames directly
//! (tests build them from token ids, the benchmark from a fixed prompt).

pub mod sampling;

use std::path::Path;
use std::time::{Duration, Instant};

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

use crate::cancel::CancelToken;

pub use sampling::{top_k_mask, Sampler};

use crate::adapter::{Adapter, AdapterError, AdapterInfo};
use crate::codec::{CodecError, Mimi};
use crate::model::{load_csm, Csm, LoadOptions, ModelError};
use crate::tokenizer::{TextTokenizer, TokenizerError};

/// Milliseconds of audio per CSM frame (Mimi runs at 12.5 Hz).
pub const FRAME_MS: u32 = 80;

/// Everything that can go wrong while generating.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Loading the CSM checkpoint failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Loading or running Mimi failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Loading or running the text tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// An MLX operation failed.
    #[error("MLX error during generation: {0}")]
    Mlx(#[from] Exception),
    /// A sampling setting is out of range.
    #[error("invalid sampling setting `{field}`: {message}")]
    Sampling {
        /// The setting at fault.
        field: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// A companion file (codec, tokenizer) was not found.
    #[error(transparent)]
    Asset(#[from] crate::assets::AssetError),
    /// The prompt leaves no room for the frames to generate.
    #[error(
        "prompt of {prompt_frames} frames is too long: with {max_frames} frames to generate \
         (max_audio_ms / {FRAME_MS}) it must be shorter than max_seq_len {max_seq_len} - \
         {max_frames} = {}; shorten the context or lower max_audio_ms",
        max_seq_len.saturating_sub(*max_frames)
    )]
    PromptTooLong {
        /// Frames in the prompt.
        prompt_frames: usize,
        /// Frames to generate at most.
        max_frames: usize,
        /// The backbone's context length.
        max_seq_len: usize,
    },
    /// A text token id is outside the model's text vocabulary (e.g. the
    /// Llama-3 tokenizer with a model that has a smaller table).
    #[error(
        "text of {segment} tokenizes to id {token}, outside this model's text vocabulary of \
         {text_vocab} ids; the tokenizer does not belong to this model"
    )]
    TextTokenOutOfRange {
        /// Which segment (`context segment 1`, `the target text`).
        segment: String,
        /// The offending id.
        token: u32,
        /// The model's `text_vocab_size`.
        text_vocab: i32,
    },
    /// The input is unusable (names the item and value at fault).
    #[error("{0}")]
    Input(String),
    /// The adapter is missing, malformed or does not fit the model.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// The caller's [`CancelToken`] stopped the frame loop.
    #[error("generation cancelled after {frames} of at most {max_frames} frames")]
    Cancelled {
        /// Frames generated before the stop.
        frames: usize,
        /// The cap.
        max_frames: usize,
    },
}

/// One turn of the conversation: who speaks, what they say and, for
/// context turns, the recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Speaker id (`[speaker]` in the text prompt).
    pub speaker: u32,
    /// Transcript.
    pub text: String,
    /// 24 kHz mono samples; required for context segments.
    pub audio: Option<Vec<f32>>,
}

/// Sampling settings; the defaults are Sesame's.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature (0 = greedy).
    pub temperature: f32,
    /// Keep the `top_k` largest logits (ties kept); 1 is greedy.
    pub top_k: usize,
    /// Random seed; the same seed gives the same output.
    pub seed: u64,
    /// Longest audio to generate, in ms; frames are capped at
    /// `max_audio_ms / 80`.
    pub max_audio_ms: u32,
    /// Stops for samples that do not end by themselves (see [`Guards`]).
    pub guards: Guards,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.9,
            top_k: 50,
            seed: 42,
            max_audio_ms: 90_000,
            guards: Guards::default(),
        }
    }
}

/// Guards against the known failures of CSM generation: a sample that
/// never emits the end frame and runs to the cap, or ends in a long silent
/// tail. Each can be turned off; with all off, generation runs exactly as
/// the reference (to EOS or `max_audio_ms`).
#[derive(Debug, Clone, PartialEq)]
pub struct Guards {
    /// Caps the audio at `base + per_char × characters of the text`
    /// seconds (and never above `max_audio_ms`). The default, 2 s + 0.2 s a
    /// character, is 5 characters a second, a third of ordinary English
    /// speech (13-16): only a sample that has lost its way reaches it.
    pub length_from_text: Option<LengthRule>,
    /// Ends the sample once its last `stop_after_silence_s` seconds are
    /// silent (every 10 ms frame 40 dB below the loudest so far, or under
    /// -60 dBFS); the silence is then trimmed. Default 2 s.
    pub stop_after_silence_s: Option<f32>,
    /// Trims trailing silence from the output, keeping this many seconds
    /// after the last sound. Default 0.25 s.
    pub trim_trailing_silence_s: Option<f32>,
}

/// The length cap of [`Guards::length_from_text`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LengthRule {
    /// Seconds allowed whatever the text.
    pub base_s: f32,
    /// Seconds allowed per character of the text.
    pub per_char_s: f32,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            length_from_text: Some(LengthRule {
                base_s: 2.0,
                per_char_s: 0.2,
            }),
            stop_after_silence_s: Some(2.0),
            trim_trailing_silence_s: Some(0.25),
        }
    }
}

impl Guards {
    /// No guard: generation as the reference runs it.
    pub fn off() -> Self {
        Guards {
            length_from_text: None,
            stop_after_silence_s: None,
            trim_trailing_silence_s: None,
        }
    }

    /// Frames allowed for `text` by the length rule (`None`: no rule).
    pub fn max_frames_for(&self, text: &str) -> Option<usize> {
        let rule = self.length_from_text?;
        let secs = rule.base_s + rule.per_char_s * text.chars().count() as f32;
        Some(((secs * 1000.0 / FRAME_MS as f32).ceil() as usize).max(1))
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`GenerateError::Sampling`] naming the guard.
    pub fn validate(&self) -> Result<(), GenerateError> {
        let bad = |field: &'static str, v: f32| GenerateError::Sampling {
            field,
            message: format!("must be a finite number > 0, got {v}"),
        };
        if let Some(r) = self.length_from_text {
            if !(r.base_s.is_finite() && r.base_s >= 0.0) {
                return Err(bad("guards.length_from_text.base_s", r.base_s));
            }
            if !(r.per_char_s.is_finite() && r.per_char_s >= 0.0 && r.base_s + r.per_char_s > 0.0) {
                return Err(bad("guards.length_from_text.per_char_s", r.per_char_s));
            }
        }
        if let Some(v) = self.stop_after_silence_s {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad("guards.stop_after_silence_s", v));
            }
        }
        if let Some(v) = self.trim_trailing_silence_s {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad("guards.trim_trailing_silence_s", v));
            }
        }
        Ok(())
    }
}

/// Why a generation ended (serialised in camelCase: `eos`, `lengthLimit`,
/// `silence`, `maxAudio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StopReason {
    /// The model emitted the end frame: the healthy ending.
    Eos,
    /// The length cap from the text ([`Guards::length_from_text`]).
    LengthLimit,
    /// [`Guards::stop_after_silence_s`] of silence.
    Silence,
    /// `max_audio_ms`.
    MaxAudio,
}

impl StopReason {
    /// Whether the model ended the sample itself.
    pub fn is_healthy(self) -> bool {
        self == StopReason::Eos
    }
}

impl SamplingConfig {
    /// Most frames to generate: `max_audio_ms / 80`.
    pub fn max_frames(&self) -> usize {
        (self.max_audio_ms / FRAME_MS) as usize
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`GenerateError::Sampling`] naming the setting.
    pub fn validate(&self) -> Result<(), GenerateError> {
        self.guards.validate()?;
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(GenerateError::Sampling {
                field: "temperature",
                message: format!("must be a finite number >= 0, got {}", self.temperature),
            });
        }
        if self.top_k < 1 {
            return Err(GenerateError::Sampling {
                field: "top_k",
                message: "must be at least 1".into(),
            });
        }
        if self.max_frames() < 1 {
            return Err(GenerateError::Sampling {
                field: "max_audio_ms",
                message: format!(
                    "must be at least {FRAME_MS} (one frame), got {}",
                    self.max_audio_ms
                ),
            });
        }
        Ok(())
    }
}

/// How [`generate_frames`] runs, beyond sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameOptions {
    /// Frames to generate at most.
    pub max_frames: usize,
    /// Stop at the first all-zero frame (not included in the output).
    /// Off for parity tests and benchmarks.
    pub stop_on_eos: bool,
    /// Sample only codes `0..limit` (the codec's codebook size); `None`
    /// samples over the model's whole audio vocabulary, as the reference.
    pub code_limit: Option<i32>,
}

/// Progress after each generated frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameProgress {
    /// Frames generated so far.
    pub frames: usize,
    /// The cap.
    pub max_frames: usize,
    /// Time since the frame loop started (after the prefill).
    pub elapsed: Duration,
}

/// What a caller can attach to a generation: a progress callback, run
/// after every frame, a cancel token, checked before every frame (the
/// app's stop button), and a stop rule. `GenerateHooks::default()`
/// attaches none.
#[derive(Default)]
pub struct GenerateHooks<'a> {
    /// Called after every frame.
    pub progress: Option<&'a mut dyn FnMut(&FrameProgress)>,
    /// Stops generation before the next frame once set.
    pub cancel: Option<&'a CancelToken>,
    /// Called after every frame with the codes so far; `Ok(true)` ends
    /// generation there (a normal end, not an error).
    pub stop: Option<&'a mut StopRule<'a>>,
}

/// A rule that ends generation: given the codes so far, `Ok(true)` stops.
pub type StopRule<'a> = dyn FnMut(&[Vec<i32>]) -> Result<bool, GenerateError> + 'a;

/// Frames to samples, for the silence guard.
type Decode<'a> = dyn FnMut(&[Vec<i32>]) -> Result<Vec<f32>, GenerateError> + 'a;

/// Output of [`generate_frames`].
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedFrames {
    /// Codes `[T][n_codebooks]` (the EOS frame is not included).
    pub codes: Vec<Vec<i32>>,
    /// Whether an all-zero frame ended generation.
    pub stopped_on_eos: bool,
    /// Whether [`GenerateHooks::stop`] ended generation.
    pub stopped_by_hook: bool,
    /// Backbone pass over the prompt.
    pub prefill: Duration,
    /// From the end of the prefill to the first frame's codes.
    pub first_frame: Duration,
    /// The whole frame loop (first frame included, prefill excluded).
    pub frames_total: Duration,
}

/// Timings of [`Generator::generate`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Mimi-encoding the context audio.
    pub encode_context: Duration,
    /// Backbone pass over the prompt.
    pub prefill: Duration,
    /// First frame after the prefill.
    pub first_frame: Duration,
    /// The frame loop (first frame included).
    pub frames: Duration,
    /// Mimi-decoding the generated frames.
    pub decode: Duration,
    /// Everything.
    pub total: Duration,
}

/// Output of [`Generator::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Codes `[T][n_codebooks]`.
    pub codes: Vec<Vec<i32>>,
    /// 24 kHz mono samples, `hop * T` of them.
    pub audio: Vec<f32>,
    /// `T`.
    pub frames: usize,
    /// Whether an all-zero frame ended generation (else the cap did).
    pub stopped_on_eos: bool,
    /// Why generation ended.
    pub stop_reason: StopReason,
    /// Seconds of trailing silence trimmed from `audio` (and the frames
    /// wholly inside it from `codes`).
    pub trimmed_s: f64,
    /// Where the time went.
    pub timings: Timings,
}

impl Generated {
    /// Seconds of audio generated (12.5 frames per second).
    pub fn audio_seconds(&self) -> f64 {
        self.frames as f64 * f64::from(FRAME_MS) / 1000.0
    }
}

/// Prompt frames under construction, in the model's layout: `n_cb` code
/// columns then the text column, with a column mask.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptFrames {
    num_codebooks: usize,
    tokens: Vec<i32>,
    mask: Vec<bool>,
}

impl PromptFrames {
    /// An empty prompt for a model with `num_codebooks` codebooks.
    pub fn new(num_codebooks: usize) -> Self {
        PromptFrames {
            num_codebooks,
            tokens: Vec::new(),
            mask: Vec::new(),
        }
    }

    /// Number of frames so far.
    pub fn len(&self) -> usize {
        self.tokens.len() / (self.num_codebooks + 1)
    }

    /// Whether no frame was added.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// One text frame per id (codes 0, mask on the text column only).
    pub fn push_text(&mut self, ids: &[u32]) {
        let n = self.num_codebooks;
        for &id in ids {
            self.tokens.extend(std::iter::repeat_n(0, n));
            self.tokens.push(id as i32);
            self.mask.extend(std::iter::repeat_n(false, n));
            self.mask.push(true);
        }
    }

    /// One audio frame per row of `codes` (`[T][n_cb]`; text 0, mask on the
    /// code columns).
    ///
    /// # Errors
    /// A row with the wrong number of codes.
    pub fn push_audio(&mut self, codes: &[Vec<i32>]) -> Result<(), GenerateError> {
        let n = self.num_codebooks;
        for (t, row) in codes.iter().enumerate() {
            if row.len() != n {
                return Err(GenerateError::Input(format!(
                    "audio frame {t} has {} codes, the model uses {n} codebooks",
                    row.len()
                )));
            }
            self.tokens.extend_from_slice(row);
            self.tokens.push(0);
            self.mask.extend(std::iter::repeat_n(true, n));
            self.mask.push(false);
        }
        Ok(())
    }

    /// The end-of-segment frame: all codes 0, mask on the code columns.
    pub fn push_eos(&mut self) {
        let n = self.num_codebooks;
        self.tokens.extend(std::iter::repeat_n(0, n + 1));
        self.mask.extend(std::iter::repeat_n(true, n));
        self.mask.push(false);
    }

    /// The frames as arrays.
    ///
    /// # Shapes
    /// -> `(tokens [1, L, n_cb + 1] int32, mask [1, L, n_cb + 1] bool)`
    pub fn to_arrays(&self) -> (Array, Array) {
        let shape = [1, self.len() as i32, self.num_codebooks as i32 + 1];
        (
            Array::from_slice(&self.tokens, &shape),
            Array::from_slice(&self.mask, &shape),
        )
    }
}

/// Generates frames after a prompt: prefill the backbone, then per frame
/// sample codebook 0 from `codebook0_head` and the other codebooks from the
/// depth decoder (fresh cache each frame), stop on an all-zero frame when
/// asked, and feed the frame back. Deterministic for a given seed.
/// `hooks` reports each frame and can stop before the next one.
///
/// # Shapes
/// `prompt_tokens, prompt_mask: [1, L, n_cb + 1]` -> codes `[T][n_cb]`
///
/// # Errors
/// A prompt of the wrong shape, one with
/// `L >= max_seq_len - options.max_frames` ([`GenerateError::PromptTooLong`]),
/// invalid sampling settings, an MLX failure, or
/// [`GenerateError::Cancelled`] when `hooks.cancel` was set.
pub fn generate_frames(
    csm: &mut Csm,
    prompt_tokens: &Array,
    prompt_mask: &Array,
    cfg: &SamplingConfig,
    options: &FrameOptions,
    hooks: GenerateHooks<'_>,
) -> Result<GeneratedFrames, GenerateError> {
    let n_cb = csm.config.audio_num_codebooks;
    let shape = prompt_tokens.shape();
    if shape.len() != 3 || shape[0] != 1 || shape[1] < 1 || shape[2] != n_cb + 1 {
        return Err(GenerateError::Input(format!(
            "prompt frames must be [1, L >= 1, {}], got {shape:?}",
            n_cb + 1
        )));
    }
    if options.max_frames < 1 {
        return Err(GenerateError::Input("max_frames must be at least 1".into()));
    }
    let prompt_frames = shape[1] as usize;
    let max_seq_len = csm.config.backbone.max_seq_len as usize;
    if prompt_frames + options.max_frames >= max_seq_len {
        return Err(GenerateError::PromptTooLong {
            prompt_frames,
            max_frames: options.max_frames,
            max_seq_len,
        });
    }
    let GenerateHooks {
        mut progress,
        cancel,
        mut stop,
    } = hooks;
    let mut sampler = Sampler::new(cfg)?;
    let limit = options.code_limit;

    // Where the weight products have their own threads (frame steps on the
    // CPU always, the prefill where `kernels` takes many rows),
    // OpenBLAS's spinning workers only slow them down (see
    // `SingleThreadBlas`).
    use crate::runtime::SingleThreadBlas;
    let prefill_ours = crate::kernels::many_row_products_are_ours();
    let _prefill_blas = prefill_ours.then(SingleThreadBlas::new);
    let start = Instant::now();
    let mut cache = csm.new_backbone_cache();
    let mut h = csm.backbone_step(prompt_tokens, prompt_mask, &mut cache)?; // [1, D]
    h.eval()?;
    let prefill = start.elapsed();
    let _frames_blas =
        (!prefill_ours && crate::runtime::default_device_is_cpu()).then(SingleThreadBlas::new);

    let loop_start = Instant::now();
    let mut first_frame = Duration::ZERO;
    let mut codes = Vec::new();
    let mut stopped_on_eos = false;
    let mut stopped_by_hook = false;
    for i in 0..options.max_frames {
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(GenerateError::Cancelled {
                frames: codes.len(),
                max_frames: options.max_frames,
            });
        }
        let frame = csm.generate_frame(&h, &mut |logits, _cb| sampler.sample(logits, limit))?; // [1, n_cb]

        // Queue the feedback step before reading the codes, so the device
        // runs it while the host checks for EOS and builds the next frame.
        let next = if i + 1 < options.max_frames {
            let (tokens, mask) = csm.audio_frame(&frame)?; // [1, 1, n_cb + 1]
            Some(csm.backbone_step(&tokens, &mask, &mut cache)?) // [1, D]
        } else {
            None
        };
        let mut outputs = vec![&frame, sampler.key()];
        outputs.extend(next.as_ref());
        mlx_rs::transforms::async_eval(outputs)?;
        let row = frame.as_dtype(Dtype::Int32)?;
        row.eval()?;
        let row = row.as_slice::<i32>().to_vec();
        if i == 0 {
            first_frame = loop_start.elapsed();
        }
        if options.stop_on_eos && row.iter().all(|&c| c == 0) {
            stopped_on_eos = true;
            break;
        }
        codes.push(row);
        if let Some(report) = progress.as_deref_mut() {
            report(&FrameProgress {
                frames: codes.len(),
                max_frames: options.max_frames,
                elapsed: loop_start.elapsed(),
            });
        }
        if let Some(rule) = stop.as_deref_mut() {
            if rule(&codes)? {
                stopped_by_hook = true;
                break;
            }
        }
        match next {
            Some(n) => h = n,
            None => break,
        }
    }
    Ok(GeneratedFrames {
        codes,
        stopped_on_eos,
        stopped_by_hook,
        prefill,
        first_frame,
        frames_total: loop_start.elapsed(),
    })
}

/// A CSM model with its codec and tokenizer, ready to speak.
#[derive(Debug)]
pub struct Generator {
    /// The speech model (LoRA adapters, if any, attached).
    pub csm: Csm,
    /// The codec, producing as many codebooks as the model uses.
    pub mimi: Mimi,
    /// The Llama-3 text tokenizer.
    pub tokenizer: TextTokenizer,
}

impl Generator {
    /// Puts loaded parts together, setting Mimi to the model's number of
    /// codebooks.
    ///
    /// # Errors
    /// A codec with fewer codebooks than the model uses, or more codes per
    /// codebook than the model's audio vocabulary.
    pub fn new(csm: Csm, mut mimi: Mimi, tokenizer: TextTokenizer) -> Result<Self, GenerateError> {
        let n_cb = csm.config.audio_num_codebooks as usize;
        mimi.set_num_codebooks(n_cb).map_err(|e| {
            GenerateError::Input(format!(
                "the Mimi codec does not fit a model with {n_cb} codebooks: {e}"
            ))
        })?;
        crate::assets::check_codec_fits(&mimi, "given", csm.config.audio_vocab_size)?;
        Ok(Generator {
            csm,
            mimi,
            tokenizer,
        })
    }

    /// Loads a model (any layout [`load_csm`] reads) with its codec and
    /// tokenizer, found as training finds them when not given (see
    /// [`crate::assets::load_mimi`] and [`crate::assets::find_tokenizer`]).
    ///
    /// # Errors
    /// Loading failures, and [`GenerateError::Asset`] listing the places
    /// searched.
    pub fn load(
        model_path: &Path,
        mimi_path: Option<&Path>,
        tokenizer_path: Option<&Path>,
        dtype: Dtype,
    ) -> Result<Self, GenerateError> {
        let loaded = load_csm(
            model_path,
            &LoadOptions {
                dtype,
                config: None,
            },
        )?;
        // The same search as training: next to the model, or inside a
        // transformers checkpoint (see `crate::assets`).
        let n_cb = loaded.model.config.audio_num_codebooks as usize;
        let mimi = crate::assets::load_mimi(model_path, mimi_path, n_cb)?.mimi;
        let tokenizer_file = crate::assets::find_tokenizer(model_path, tokenizer_path)?;
        let tokenizer = TextTokenizer::from_file(&tokenizer_file)?;
        Generator::new(loaded.model, mimi, tokenizer)
    }

    /// Attaches a trained LoRA adapter in mlx_lm layout; see
    /// [`crate::adapter::load_mlx`].
    ///
    /// # Errors
    /// As [`crate::adapter::load_mlx`].
    pub fn apply_adapter(&mut self, path: &Path) -> Result<AdapterInfo, GenerateError> {
        Ok(crate::adapter::load_mlx(&mut self.csm, path)?)
    }

    /// Attaches an adapter held in memory (e.g. a training checkpoint's,
    /// from `train::state::read_adapter`); see [`Adapter::apply`].
    ///
    /// # Errors
    /// As [`Adapter::apply`].
    pub fn apply_loaded_adapter(
        &mut self,
        adapter: &Adapter,
    ) -> Result<AdapterInfo, GenerateError> {
        Ok(adapter.apply(&mut self.csm)?)
    }

    /// Text frames of one segment, checked against the text vocabulary.
    fn text_ids(&self, speaker: u32, text: &str, what: &str) -> Result<Vec<u32>, GenerateError> {
        let ids = self.tokenizer.encode_segment(speaker, text)?;
        check_text_ids(&ids, self.csm.config.text_vocab_size, what)?;
        Ok(ids)
    }

    /// Builds the prompt: per context segment its text frames, its
    /// Mimi-encoded audio frames and an EOS frame; then the target's text
    /// frames.
    ///
    /// # Errors
    /// A context segment without audio, token ids outside the model's text
    /// vocabulary, or a codec failure.
    pub fn prompt(
        &mut self,
        context: &[Segment],
        text: &str,
        speaker: u32,
    ) -> Result<PromptFrames, GenerateError> {
        let n_cb = self.csm.config.audio_num_codebooks as usize;
        let mut prompt = PromptFrames::new(n_cb);
        for (i, seg) in context.iter().enumerate() {
            let what = format!("context segment {}", i + 1);
            let ids = self.text_ids(seg.speaker, &seg.text, &what)?;
            let audio = match &seg.audio {
                Some(a) if !a.is_empty() => a,
                _ => {
                    return Err(GenerateError::Input(format!(
                        "{what} (\"{}\") has no audio; every context segment needs its recording",
                        seg.text
                    )))
                }
            };
            prompt.push_text(&ids);
            prompt.push_audio(&self.encode(audio)?)?;
            prompt.push_eos();
        }
        let ids = self.text_ids(speaker, text, "the target text")?;
        prompt.push_text(&ids);
        Ok(prompt)
    }

    /// Mimi codes of 24 kHz mono audio, as `[T][n_cb]`.
    ///
    /// # Errors
    /// A codec failure.
    pub fn encode(&mut self, audio: &[f32]) -> Result<Vec<Vec<i32>>, GenerateError> {
        let wav = Array::from_slice(audio, &[1, 1, audio.len() as i32]);
        let codes = self.mimi.encode(&wav)?; // [1, K, T]
        let k = codes.shape()[1] as usize;
        let t = codes.shape()[2] as usize;
        let codes = codes
            .transpose_axes(&[0, 2, 1])?
            .as_dtype(Dtype::Int32)?
            .contiguous()?; // [1, T, K]
        codes.eval()?;
        let flat = codes.as_slice::<i32>();
        Ok((0..t).map(|i| flat[i * k..(i + 1) * k].to_vec()).collect())
    }

    /// 24 kHz samples of codes `[T][n_cb]` (`hop * T` of them; empty for
    /// no frames).
    ///
    /// # Errors
    /// A codec failure (e.g. codes outside the codebook).
    pub fn decode(&mut self, codes: &[Vec<i32>]) -> Result<Vec<f32>, GenerateError> {
        decode_codes(&mut self.mimi, codes)
    }

    /// Speaks `text` as `speaker` after the `context` turns.
    ///
    /// # Errors
    /// See [`Generator::generate_with`].
    pub fn generate(
        &mut self,
        context: &[Segment],
        text: &str,
        speaker: u32,
        cfg: &SamplingConfig,
    ) -> Result<Generated, GenerateError> {
        self.generate_with(context, text, speaker, cfg, GenerateHooks::default())
    }

    /// [`Generator::generate`] with a progress callback and/or a cancel
    /// token attached.
    ///
    /// # Errors
    /// Invalid settings, a context segment without audio, token ids outside
    /// the model's text vocabulary, a prompt too long for `max_audio_ms`,
    /// codec or MLX failures, and [`GenerateError::Cancelled`] when
    /// `hooks.cancel` stopped it (nothing is decoded then).
    pub fn generate_with(
        &mut self,
        context: &[Segment],
        text: &str,
        speaker: u32,
        cfg: &SamplingConfig,
        hooks: GenerateHooks<'_>,
    ) -> Result<Generated, GenerateError> {
        cfg.validate()?;
        let start = Instant::now();
        let prompt = self.prompt(context, text, speaker)?;
        let encode_context = start.elapsed();
        let (tokens, mask) = prompt.to_arrays();
        let text_cap = cfg.guards.max_frames_for(text);
        let max_frames = text_cap.map_or(cfg.max_frames(), |c| c.min(cfg.max_frames()));
        let options = FrameOptions {
            max_frames,
            stop_on_eos: true,
            code_limit: Some(self.mimi.config.quantizer.bins),
        };
        let GenerateHooks {
            mut progress,
            cancel,
            stop: mut caller_stop,
        } = hooks;
        let mut silence = cfg.guards.stop_after_silence_s.map(SilenceWatch::new);
        let mut by_silence = false;
        let out = {
            let mimi = &mut self.mimi;
            let by_silence = &mut by_silence;
            let mut stop_rule = |codes: &[Vec<i32>]| -> Result<bool, GenerateError> {
                if let Some(rule) = caller_stop.as_deref_mut() {
                    if rule(codes)? {
                        return Ok(true);
                    }
                }
                if let Some(watch) = silence.as_mut() {
                    let rate = mimi.config.sample_rate;
                    *by_silence = watch.is_silent(codes, rate, &mut |c| decode_codes(mimi, c))?;
                }
                Ok(*by_silence)
            };
            // Reborrowed for this call only, so the stop rule's borrow of
            // the codec ends with this block.
            let progress: Option<&mut dyn FnMut(&FrameProgress)> = match progress {
                Some(ref mut p) => Some(&mut **p),
                None => None,
            };
            let hooks = GenerateHooks {
                progress,
                cancel,
                stop: Some(&mut stop_rule),
            };
            generate_frames(&mut self.csm, &tokens, &mask, cfg, &options, hooks)?
        };
        let stop_reason = if out.stopped_on_eos {
            StopReason::Eos
        } else if by_silence {
            StopReason::Silence
        } else if text_cap.is_some_and(|c| c < cfg.max_frames()) {
            StopReason::LengthLimit
        } else {
            StopReason::MaxAudio
        };
        let decode_start = Instant::now();
        let mut codes = out.codes;
        let mut audio = self.decode(&codes)?;
        let decode = decode_start.elapsed();
        let mut trimmed_s = 0.0;
        if let Some(keep_s) = cfg.guards.trim_trailing_silence_s {
            let rate = self.mimi.config.sample_rate;
            let end = trailing_silence_start(&audio, rate, keep_s);
            if end < audio.len() {
                let hop = self.mimi.hop_length();
                trimmed_s = (audio.len() - end) as f64 / f64::from(rate);
                audio.truncate(end);
                // Frames wholly inside the trimmed tail go too.
                codes.truncate(end.div_ceil(hop));
            }
        }
        Ok(Generated {
            frames: codes.len(),
            codes,
            audio,
            stopped_on_eos: out.stopped_on_eos,
            stop_reason,
            trimmed_s,
            timings: Timings {
                encode_context,
                prefill: out.prefill,
                first_frame: out.first_frame,
                frames: out.frames_total,
                decode,
                total: start.elapsed(),
            },
        })
    }
}

/// Level of each 10 ms stretch of `audio` (RMS).
fn levels(audio: &[f32], sample_rate: u32) -> Vec<f32> {
    audio
        .chunks((sample_rate as usize / 100).max(1))
        .map(crate::data::audio::rms)
        .collect()
}

/// Silence threshold: 40 dB under `loudest`, and never under -60 dBFS.
fn silence_threshold(loudest: f32) -> f32 {
    (loudest * 10f32.powf(-40.0 / 20.0)).max(10f32.powf(-60.0 / 20.0))
}

/// Where the trailing silence of `audio` starts, `keep_s` seconds after its
/// last sound (`audio.len()` when it ends in sound; `keep_s` seconds in
/// when it is all silence).
fn trailing_silence_start(audio: &[f32], sample_rate: u32, keep_s: f32) -> usize {
    let levels = levels(audio, sample_rate);
    let loudest = levels.iter().copied().fold(0.0, f32::max);
    let threshold = silence_threshold(loudest);
    let stretch = (sample_rate as usize / 100).max(1);
    match levels.iter().rposition(|&l| l > threshold) {
        Some(last) => {
            let keep = (f64::from(keep_s) * f64::from(sample_rate)).round() as usize;
            ((last + 1) * stretch + keep).min(audio.len())
        }
        None => ((f64::from(keep_s) * f64::from(sample_rate)).round() as usize).min(audio.len()),
    }
}

/// Watches generated frames for a silent stretch: every few frames it
/// decodes the latest ones and checks their tail.
struct SilenceWatch {
    /// Frames the silent stretch must span.
    frames: usize,
    /// The loudest 10 ms level heard so far.
    loudest: f32,
    /// Frames generated at the last check.
    checked_at: usize,
}

/// Frames between silence checks (0.48 s at 12.5 Hz).
const SILENCE_CHECK_EVERY: usize = 6;
/// Frames of left context decoded before the checked stretch, so the
/// decoder's convolutions have settled.
const SILENCE_CONTEXT: usize = 12;

impl SilenceWatch {
    fn new(seconds: f32) -> Self {
        SilenceWatch {
            frames: ((seconds * 1000.0 / FRAME_MS as f32).ceil() as usize).max(1),
            loudest: 0.0,
            checked_at: 0,
        }
    }

    /// Whether the last `frames` frames of `codes` decode to silence;
    /// `decode` turns frames into samples at `rate`.
    fn is_silent(
        &mut self,
        codes: &[Vec<i32>],
        rate: u32,
        decode: &mut Decode<'_>,
    ) -> Result<bool, GenerateError> {
        if codes.len() < self.frames || codes.len() < self.checked_at + SILENCE_CHECK_EVERY {
            return Ok(false);
        }
        // Frames not seen at the last check count towards the loudest level
        // heard, so speech that went silent is measured against itself.
        let fresh = codes.len() - self.checked_at;
        self.checked_at = codes.len();
        let window = (self.frames.max(fresh) + SILENCE_CONTEXT).min(codes.len());
        let audio = decode(&codes[codes.len() - window..])?;
        let hop = audio.len() / window;
        let fresh_audio = &audio[audio.len() - fresh.min(window) * hop..];
        self.loudest = levels(fresh_audio, rate)
            .into_iter()
            .fold(self.loudest, f32::max);
        let threshold = silence_threshold(self.loudest);
        let tail = &audio[audio.len() - self.frames * hop..];
        Ok(levels(tail, rate).iter().all(|&l| l <= threshold))
    }
}

/// Decodes codes `[T][n_cb]` with `mimi` into mono samples (`hop * T`).
///
/// # Errors
/// Ragged rows or a codec failure.
pub fn decode_codes(mimi: &mut Mimi, codes: &[Vec<i32>]) -> Result<Vec<f32>, GenerateError> {
    let Some(first) = codes.first() else {
        return Ok(Vec::new());
    };
    let k = first.len();
    if codes.iter().any(|r| r.len() != k) {
        return Err(GenerateError::Input(
            "frames have different numbers of codes".into(),
        ));
    }
    let flat: Vec<i32> = codes.iter().flatten().copied().collect();
    let t = codes.len() as i32;
    let arr = Array::from_slice(&flat, &[1, t, k as i32]).transpose_axes(&[0, 2, 1])?; // [1, K, T]
    let wav = mimi.decode(&arr)?; // [1, 1, hop * T]
    let wav = wav.as_dtype(Dtype::Float32)?.contiguous()?;
    wav.eval()?;
    Ok(wav.as_slice::<f32>().to_vec())
}

/// Checks that every id fits a text vocabulary of `text_vocab` rows.
///
/// # Errors
/// [`GenerateError::TextTokenOutOfRange`] with the first offending id.
pub fn check_text_ids(ids: &[u32], text_vocab: i32, segment: &str) -> Result<(), GenerateError> {
    match ids
        .iter()
        .find(|&&id| i64::from(id) >= i64::from(text_vocab))
    {
        Some(&token) => Err(GenerateError::TextTokenOutOfRange {
            segment: segment.to_owned(),
            token,
            text_vocab,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 12.5 Hz frames of 1920 samples at 24 kHz: a "loud" frame code 1
    /// decodes to a 0.3 sine, a "quiet" one (code 0) to silence.
    fn fake_decode(codes: &[Vec<i32>]) -> Result<Vec<f32>, GenerateError> {
        Ok(codes
            .iter()
            .flat_map(|f| {
                (0..1920).map(move |i| {
                    if f[0] == 1 {
                        0.3 * (i as f32 * 0.1).sin()
                    } else {
                        0.0
                    }
                })
            })
            .collect())
    }

    fn frames(loud: usize, quiet: usize) -> Vec<Vec<i32>> {
        let mut v = vec![vec![1]; loud];
        v.extend(vec![vec![0]; quiet]);
        v
    }

    #[test]
    fn the_silence_rule_ends_a_sample_that_goes_silent() {
        // 2 s = 25 frames of silence after 1 s of sound.
        let mut watch = SilenceWatch::new(2.0);
        let mut decode = fake_decode;
        let mut stopped_at = None;
        let all = frames(12, 60);
        for n in 1..=all.len() {
            if watch.is_silent(&all[..n], 24_000, &mut decode).unwrap() {
                stopped_at = Some(n);
                break;
            }
        }
        // Checked every 6 frames: the first check with 25 quiet frames.
        let n = stopped_at.expect("the silence rule fired");
        assert!((12 + 25..12 + 25 + SILENCE_CHECK_EVERY).contains(&n), "{n}");

        // Sound throughout never trips it; nor does a short pause.
        let mut watch = SilenceWatch::new(2.0);
        let mut pauses = frames(12, 20);
        pauses.extend(frames(40, 0));
        for n in 1..=pauses.len() {
            assert!(!watch.is_silent(&pauses[..n], 24_000, &mut decode).unwrap());
        }
    }

    #[test]
    fn trailing_silence_is_trimmed_to_the_kept_tail() {
        let audio = fake_decode(&frames(10, 30)).unwrap();
        let end = trailing_silence_start(&audio, 24_000, 0.25);
        // The sound ends at 10 * 1920 samples; 0.25 s = 6000 samples kept.
        assert_eq!(end, 10 * 1920 + 6000);
        let sound = fake_decode(&frames(10, 0)).unwrap();
        assert_eq!(trailing_silence_start(&sound, 24_000, 0.25), sound.len());
        let silent = fake_decode(&frames(0, 10)).unwrap();
        assert_eq!(trailing_silence_start(&silent, 24_000, 0.25), 6000);
    }

    #[test]
    fn the_length_rule_follows_the_text() {
        let g = Guards::default();
        // 2 s + 0.2 s x 12 characters = 4.4 s = 55 frames of 80 ms.
        assert_eq!(g.max_frames_for("hello there."), Some(55));
        assert_eq!(Guards::off().max_frames_for("hello there."), None);
        let bad = Guards {
            stop_after_silence_s: Some(0.0),
            ..Guards::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("stop_after_silence"));
    }
}
