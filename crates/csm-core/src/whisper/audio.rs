//! The log-mel frontend: 16 kHz mono -> `[frames, n_mels]` log-mel features,
//! as openai-whisper's `log_mel_spectrogram` and transformers'
//! `WhisperFeatureExtractor` compute them.
//!
//! STFT with `n_fft = 400`, hop 160, a periodic Hann window, reflect padding
//! of 200 samples on both sides (`torch.stft(center=True)`), the last frame
//! dropped; power spectrum; slaney-scale, slaney-normalised triangular mel
//! filters from 0 to 8 kHz (librosa's `filters.mel`, the same numbers as
//! openai-whisper's `mel_filters.npz`); `log10(max(x, 1e-10))`, floored at
//! `max - 8` over the whole input, then `(x + 4) / 4`.
//!
//! Long recordings are read twice, never held whole: [`scan_recording`]
//! decodes the file once for the maximum (and the dataset's 24 kHz copy),
//! then [`RecordingMel`] decodes it again as the 30 s windows move forward.
//! The features equal those of [`log_mel_spectrogram`] on the whole signal
//! bit for bit; memory stays at a few windows (a three-hour file would be
//! 690 MB at 16 kHz, and 550 MB of 128-bin features).

use std::path::{Path, PathBuf};

use mlx_rs::{ops, Array};

use super::config::{HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE};
use super::error::WhisperError;
use crate::cancel::CancelToken;
use crate::data::audio::{StreamResampler, TARGET_SAMPLE_RATE};
use crate::data::decode::{AudioStream, StreamInfo};

/// Frames sent through the FFT at once (bounds memory on long recordings).
const CHUNK_FRAMES: usize = 6000;

/// Log-mel features of a whole recording, frame-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMel {
    /// Mel bins per frame.
    pub n_mels: usize,
    /// `[frames, n_mels]`, row-major.
    pub data: Vec<f32>,
}

impl LogMel {
    /// Number of 10 ms frames.
    pub fn frames(&self) -> usize {
        self.data.len() / self.n_mels.max(1)
    }

    /// Frames `start..start + len` (clipped to the end), zero-padded to
    /// [`N_FRAMES`] as openai-whisper's `pad_or_trim` does (zeros, not the
    /// log floor), ready for the encoder.
    ///
    /// # Shapes
    /// -> `[1, 3000, n_mels]` f32
    pub fn window(&self, start: usize, len: usize) -> Array {
        let end = (start + len.min(N_FRAMES)).min(self.frames());
        let start = start.min(end);
        let mut out = vec![0f32; N_FRAMES * self.n_mels];
        let src = &self.data[start * self.n_mels..end * self.n_mels];
        out[..src.len()].copy_from_slice(src);
        Array::from_slice(&out, &[1, N_FRAMES as i32, self.n_mels as i32])
    }

    /// All frames as an array.
    ///
    /// # Shapes
    /// -> `[frames, n_mels]` f32
    pub fn to_array(&self) -> Array {
        Array::from_slice(&self.data, &[self.frames() as i32, self.n_mels as i32])
    }
}

/// Slaney mel scale (librosa `hz_to_mel(htk=False)`).
fn hz_to_mel(f: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// Triangular slaney-normalised mel filters from 0 Hz to 8 kHz.
///
/// # Shapes
/// -> `[n_mels, N_FFT / 2 + 1]`, row-major
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let n_freqs = N_FFT / 2 + 1;
    let nyquist = f64::from(SAMPLE_RATE) / 2.0;
    let fft_freqs: Vec<f64> = (0..n_freqs)
        .map(|i| nyquist * i as f64 / (n_freqs - 1) as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(nyquist));
    let edges: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = vec![0f32; n_mels * n_freqs];
    for m in 0..n_mels {
        let (left, center, right) = (edges[m], edges[m + 1], edges[m + 2]);
        let norm = 2.0 / (right - left);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let up = (f - left) / (center - left);
            let down = (right - f) / (right - center);
            out[m * n_freqs + k] = (up.min(down).max(0.0) * norm) as f32;
        }
    }
    out
}

/// Log-mel features of `audio` (16 kHz mono) followed by `padding` zero
/// samples: `(audio.len() + padding) / 160` frames.
///
/// transformers' short-form features are `padding = 480000 - len`;
/// openai-whisper's long-form loop uses `padding = 480000` and never reads
/// the padded frames.
pub fn log_mel_spectrogram(
    audio: &[f32],
    n_mels: usize,
    padding: usize,
) -> Result<LogMel, WhisperError> {
    let mut stream = MelStream::new(n_mels)?;
    let mut data = Vec::new();
    stream.push(audio, &mut data)?;
    stream.finish(padding, &mut data)?;
    let floor = log_floor(data.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    for v in &mut data {
        *v = scale_log(*v, floor);
    }
    Ok(LogMel { n_mels, data })
}

/// The floor of the log-mel values: 8 (decades) below their maximum.
pub fn log_floor(max: f32) -> f32 {
    max - 8.0
}

/// A `log10` mel value floored and scaled as Whisper's features are.
pub fn scale_log(v: f32, floor: f32) -> f32 {
    (v.max(floor) + 4.0) / 4.0
}

/// The log-mel STFT of a 16 kHz signal that arrives in pieces, before the
/// floor (which needs the maximum of the whole signal): `log10(max(mel,
/// 1e-10))` per frame.
///
/// Frames are computed in batches of [`CHUNK_FRAMES`] counted from the
/// first frame, as [`log_mel_spectrogram`] does (it is built on this), so
/// the values are the same bit for bit however the signal is cut. Holds
/// about one batch of samples (4 MB) whatever the length of the signal.
pub struct MelStream {
    n_mels: usize,
    /// `[N_FFT / 2 + 1, n_mels]`.
    filters: Array,
    window: Vec<f32>,
    /// The first samples, until the reflection at the start can be made.
    head: Vec<f32>,
    started: bool,
    /// The reflect-padded signal from index `offset` on.
    signal: Vec<f32>,
    offset: usize,
    /// The first frame not computed yet.
    next_frame: usize,
    /// Samples pushed.
    samples: usize,
}

impl std::fmt::Debug for MelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelStream")
            .field("n_mels", &self.n_mels)
            .field("samples", &self.samples)
            .field("next_frame", &self.next_frame)
            .finish_non_exhaustive()
    }
}

impl MelStream {
    /// A stream for `n_mels` mel bins.
    ///
    /// # Errors
    /// MLX errors building the filter bank.
    pub fn new(n_mels: usize) -> Result<Self, WhisperError> {
        let n_freqs = (N_FFT / 2 + 1) as i32;
        let filters =
            Array::from_slice(&mel_filters(n_mels), &[n_mels as i32, n_freqs]).transpose()?; // [201, n_mels]
        let window = (0..N_FFT)
            .map(|i| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        Ok(Self {
            n_mels,
            filters,
            window,
            head: Vec::new(),
            started: false,
            signal: Vec::new(),
            offset: 0,
            next_frame: 0,
            samples: 0,
        })
    }

    /// Mel bins per frame.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Frames appended to the outputs so far.
    pub fn frames_done(&self) -> usize {
        self.next_frame
    }

    /// Feeds samples; appends every whole batch of frames now computable
    /// to `out` (`[frames, n_mels]`, row-major, not floored).
    ///
    /// # Errors
    /// MLX errors.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) -> Result<(), WhisperError> {
        self.samples += samples.len();
        // Pieces of one batch, so the buffer never holds more than about two.
        for piece in samples.chunks(CHUNK_FRAMES * HOP_LENGTH) {
            self.append(piece);
            self.compute(None, out)?;
        }
        Ok(())
    }

    /// Appends `padding` zeros, reflects the end and computes the remaining
    /// frames: `(samples + padding) / 160` in all.
    ///
    /// # Errors
    /// [`WhisperError::Input`] when there are at most 200 samples in all;
    /// MLX errors.
    pub fn finish(mut self, padding: usize, out: &mut Vec<f32>) -> Result<(), WhisperError> {
        let n = self.samples + padding;
        if n <= N_FFT / 2 {
            return Err(WhisperError::Input(format!(
                "{n} samples are too few for a {N_FFT}-point STFT"
            )));
        }
        self.append(&vec![0.0; padding]);
        // Reflect about the last sample (torch.stft(center=True)).
        let half = N_FFT / 2;
        let last = self.signal.len() - 1;
        for k in 1..=half {
            self.signal.push(self.signal[last - k]);
        }
        self.compute(Some(n / HOP_LENGTH), out)
    }

    fn append(&mut self, samples: &[f32]) {
        let half = N_FFT / 2;
        if self.started {
            self.signal.extend_from_slice(samples);
            return;
        }
        self.head.extend_from_slice(samples);
        if self.head.len() > half {
            // Reflect about the first sample.
            self.signal.extend((1..=half).rev().map(|i| self.head[i]));
            self.signal.append(&mut self.head);
            self.started = true;
        }
    }

    /// Computes whole batches (or, with the final frame count, everything
    /// left) and drops the samples no later frame reads.
    fn compute(&mut self, total: Option<usize>, out: &mut Vec<f32>) -> Result<(), WhisperError> {
        let end = self.offset + self.signal.len(); // signal index
        let available = match total {
            Some(t) => t,
            None if self.started && end >= N_FFT => (end - N_FFT) / HOP_LENGTH + 1,
            None => 0,
        };
        while available > self.next_frame
            && (total.is_some() || available - self.next_frame >= CHUNK_FRAMES)
        {
            let count = CHUNK_FRAMES.min(available - self.next_frame);
            let mut buf = Vec::with_capacity(count * N_FFT);
            for t in self.next_frame..self.next_frame + count {
                let at = t * HOP_LENGTH - self.offset;
                let s = &self.signal[at..at + N_FFT];
                buf.extend(s.iter().zip(&self.window).map(|(x, w)| x * w));
            }
            let x = Array::from_slice(&buf, &[count as i32, N_FFT as i32]);
            let spec = mlx_rs::fft::rfft(&x, N_FFT as i32, -1)?; // [count, 201] complex
            let power = spec.abs()?.square()?; // [count, 201]
            let mel = ops::matmul(&power, &self.filters)?; // [count, n_mels]
            let log = ops::maximum(&mel, Array::from_f32(1e-10))?.log10()?;
            out.extend_from_slice(log.as_slice::<f32>());
            self.next_frame += count;
            let drop = self.next_frame * HOP_LENGTH - self.offset;
            self.signal.drain(..drop.min(self.signal.len()));
            self.offset += drop;
        }
        Ok(())
    }
}

/// Reads an audio file of any format `data::decode` reads and returns it
/// mono at 16 kHz (the whole signal: 64 kB a second; long recordings are
/// better read with [`Recording16k`]).
///
/// # Errors
/// The file's [`crate::data::DataError`].
pub fn load_16k(path: &Path) -> Result<Vec<f32>, WhisperError> {
    let mut reader = Recording16k::open(path, false)?;
    let mut out = Vec::new();
    while let Some(chunk) = reader.next_chunk()? {
        out.extend_from_slice(&chunk.mono_16k);
    }
    Ok(out)
}

/// One piece of a [`Recording16k`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk16k {
    /// Mono at 16 kHz.
    pub mono_16k: Vec<f32>,
    /// The same piece mono at 24 kHz (when asked for).
    pub mono_24k: Vec<f32>,
    /// Largest absolute sample of the piece, mono at the file's own rate.
    pub peak: f32,
}

/// An audio file read a packet at a time, mixed to mono and resampled to
/// 16 kHz (and, for the dataset writer, to 24 kHz in the same pass). The
/// concatenated output equals [`crate::data::audio::resample`] of the
/// whole mono signal.
#[derive(Debug)]
pub struct Recording16k {
    stream: AudioStream,
    to_16k: Option<StreamResampler>,
    to_24k: Option<StreamResampler>,
    done: bool,
}

impl Recording16k {
    /// Opens `path`; `with_24k` also resamples to 24 kHz.
    ///
    /// # Errors
    /// [`AudioStream::open`]'s and the resampler's.
    pub fn open(path: &Path, with_24k: bool) -> Result<Self, WhisperError> {
        let stream = AudioStream::open(path)?;
        let rate = stream.info().sample_rate;
        let to_16k = Some(StreamResampler::new(rate, SAMPLE_RATE)?);
        let to_24k = if with_24k {
            Some(StreamResampler::new(rate, TARGET_SAMPLE_RATE)?)
        } else {
            None
        };
        Ok(Self {
            stream,
            to_16k,
            to_24k,
            done: false,
        })
    }

    /// The source's rate, channels, codec and (where the container says)
    /// length.
    pub fn info(&self) -> &StreamInfo {
        self.stream.info()
    }

    /// The next piece; `None` at the end.
    ///
    /// # Errors
    /// [`AudioStream::next_chunk`]'s (truncated file, no samples...).
    pub fn next_chunk(&mut self) -> Result<Option<Chunk16k>, WhisperError> {
        if self.done {
            return Ok(None);
        }
        let mut out = Chunk16k::default();
        match self.stream.next_chunk()? {
            Some(chunk) => {
                let mono = chunk.to_mono();
                out.peak = crate::data::audio::peak(&mono);
                if let Some(r) = self.to_16k.as_mut() {
                    r.push(&mono, &mut out.mono_16k)?;
                }
                if let Some(r) = self.to_24k.as_mut() {
                    r.push(&mono, &mut out.mono_24k)?;
                }
            }
            None => {
                self.done = true;
                if let Some(r) = self.to_16k.take() {
                    r.finish(&mut out.mono_16k)?;
                }
                if let Some(r) = self.to_24k.take() {
                    r.finish(&mut out.mono_24k)?;
                }
            }
        }
        Ok(Some(out))
    }
}

/// What a first pass over a recording found: enough to hand out its
/// floored log-mel windows on a second pass ([`RecordingMel`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MelScan {
    /// Samples at 16 kHz.
    pub samples_16k: usize,
    /// Largest `log10` mel value (the floor is 8 below it).
    pub max_log: f32,
    /// Largest absolute sample, mono at the file's own rate.
    pub peak: f32,
}

impl MelScan {
    /// Seconds of audio.
    pub fn duration_s(&self) -> f64 {
        self.samples_16k as f64 / f64::from(SAMPLE_RATE)
    }
}

/// Where [`scan_recording`] hands each 24 kHz piece.
pub type ChunkSink<'a> = &'a mut dyn FnMut(&[f32]) -> Result<(), WhisperError>;

/// First pass: decodes `path` once, computing the log-mel maximum (with
/// openai-whisper's 30 s of padding) and handing each 24 kHz piece to
/// `on_24k` when given. Holds one batch of frames at a time.
///
/// # Errors
/// The file's decoding errors, `on_24k`'s, [`WhisperError::Cancelled`].
pub fn scan_recording(
    path: &Path,
    n_mels: usize,
    mut on_24k: Option<ChunkSink<'_>>,
    cancel: &CancelToken,
) -> Result<MelScan, WhisperError> {
    let mut reader = Recording16k::open(path, on_24k.is_some())?;
    let mut mel = MelStream::new(n_mels)?;
    let mut frames = Vec::new();
    let mut scan = MelScan {
        samples_16k: 0,
        max_log: f32::NEG_INFINITY,
        peak: 0.0,
    };
    let take_max = |frames: &mut Vec<f32>, max: &mut f32| {
        *max = frames.iter().copied().fold(*max, f32::max);
        frames.clear();
    };
    while let Some(chunk) = reader.next_chunk()? {
        if cancel.is_cancelled() {
            return Err(WhisperError::Cancelled);
        }
        scan.peak = scan.peak.max(chunk.peak);
        scan.samples_16k += chunk.mono_16k.len();
        mel.push(&chunk.mono_16k, &mut frames)?;
        take_max(&mut frames, &mut scan.max_log);
        if let Some(f) = on_24k.as_mut() {
            f(&chunk.mono_24k)?;
        }
    }
    mel.finish(N_SAMPLES, &mut frames)?;
    take_max(&mut frames, &mut scan.max_log);
    Ok(scan)
}

/// Where [`crate::whisper::Whisper::transcribe_windows`] reads its 30 s
/// windows of features.
pub trait MelWindows {
    /// Frames in all, the 30 s of padding included.
    fn total_frames(&self) -> usize;
    /// Frames `start..start + len` (at most 3000, clipped to the end),
    /// zero-padded to 3000 as [`LogMel::window`] does. A streamed source
    /// serves starts that go forward (openai-whisper's `seek` never goes
    /// back) or back by at most one window.
    ///
    /// # Shapes
    /// -> `[1, 3000, n_mels]` f32
    ///
    /// # Errors
    /// Decoding errors of a streamed source.
    fn read_window(&mut self, start: usize, len: usize) -> Result<Array, WhisperError>;
}

impl MelWindows for &LogMel {
    fn total_frames(&self) -> usize {
        self.frames()
    }
    fn read_window(&mut self, start: usize, len: usize) -> Result<Array, WhisperError> {
        Ok(self.window(start, len))
    }
}

/// Second pass: the floored log-mel windows of a recording, decoded again
/// as the windows move forward. Memory: the frames of about three windows,
/// whatever the length of the recording.
pub struct RecordingMel {
    path: PathBuf,
    reader: Recording16k,
    stream: Option<MelStream>,
    n_mels: usize,
    floor: f32,
    total: usize,
    /// Floored frames from frame `first` on, row-major.
    frames: Vec<f32>,
    first: usize,
    raw: Vec<f32>,
}

impl std::fmt::Debug for RecordingMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingMel")
            .field("path", &self.path)
            .field("total", &self.total)
            .field("first", &self.first)
            .finish_non_exhaustive()
    }
}

impl RecordingMel {
    /// Opens `path` again for the windows of `scan` (its first pass).
    ///
    /// # Errors
    /// As [`Recording16k::open`].
    pub fn open(path: &Path, n_mels: usize, scan: &MelScan) -> Result<Self, WhisperError> {
        Ok(Self {
            path: path.to_path_buf(),
            reader: Recording16k::open(path, false)?,
            stream: Some(MelStream::new(n_mels)?),
            n_mels,
            floor: log_floor(scan.max_log),
            total: (scan.samples_16k + N_SAMPLES) / HOP_LENGTH,
            frames: Vec::new(),
            first: 0,
            raw: Vec::new(),
        })
    }

    fn held(&self) -> usize {
        self.frames.len() / self.n_mels
    }

    /// Decodes until frame `end` is held (or the stream ends).
    fn fill(&mut self, end: usize) -> Result<(), WhisperError> {
        while self.first + self.held() < end {
            let Some(stream) = self.stream.as_mut() else {
                break;
            };
            match self.reader.next_chunk()? {
                Some(chunk) => stream.push(&chunk.mono_16k, &mut self.raw)?,
                None => {
                    let stream = self.stream.take().expect("checked above");
                    stream.finish(N_SAMPLES, &mut self.raw)?;
                }
            }
            let floor = self.floor;
            self.frames
                .extend(self.raw.drain(..).map(|v| scale_log(v, floor)));
        }
        if self.stream.is_none() && self.first + self.held() != self.total {
            return Err(WhisperError::Input(format!(
                "{} changed while it was being read ({} mel frames, {} the first time)",
                self.path.display(),
                self.first + self.held(),
                self.total
            )));
        }
        Ok(())
    }
}

impl MelWindows for RecordingMel {
    fn total_frames(&self) -> usize {
        self.total
    }

    fn read_window(&mut self, start: usize, len: usize) -> Result<Array, WhisperError> {
        if start < self.first {
            return Err(WhisperError::Input(format!(
                "mel window at frame {start} is behind the streamed frames (from {})",
                self.first
            )));
        }
        let end = (start + len.min(N_FRAMES)).min(self.total);
        self.fill(end)?;
        // Keep one window behind `start`; nothing earlier is read again.
        let keep_from = start
            .saturating_sub(N_FRAMES)
            .clamp(self.first, self.first + self.held());
        self.frames.drain(..(keep_from - self.first) * self.n_mels);
        self.first = keep_from;
        let mut out = vec![0f32; N_FRAMES * self.n_mels];
        let from = (start.min(end) - self.first) * self.n_mels;
        let to = (end - self.first) * self.n_mels;
        out[..to - from].copy_from_slice(&self.frames[from..to]);
        Ok(Array::from_slice(
            &out,
            &[1, N_FRAMES as i32, self.n_mels as i32],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_scale_round_trips_and_filters_cover_the_band() {
        for f in [0.0, 300.0, 999.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(f)) - f).abs() < 1e-9);
        }
        let f = mel_filters(80);
        assert_eq!(f.len(), 80 * 201);
        // Every filter has some weight; the area of each is ~2/width * width/2 = 1 per Hz step.
        for m in 0..80 {
            assert!(
                f[m * 201..(m + 1) * 201].iter().any(|&v| v > 0.0),
                "filter {m} empty"
            );
        }
    }

    #[test]
    fn frame_count_and_window_padding() {
        let audio: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let mel = log_mel_spectrogram(&audio, 80, 0).unwrap();
        assert_eq!(mel.frames(), 100);
        let w = mel.window(90, 3000);
        assert_eq!(w.shape(), &[1, 3000, 80]);
        let v = w.as_slice::<f32>();
        assert_eq!(&v[..800], &mel.data[90 * 80..]);
        assert!(v[800..].iter().all(|&x| x == 0.0));
        // Floor at max - 8 (after the (x + 4) / 4 scaling: 2 below the max).
        let (lo, hi) = mel
            .data
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(hi - lo <= 2.0 + 1e-6);
    }
}
