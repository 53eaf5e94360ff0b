//! WAV input/output, mono downmix, resampling to 24 kHz and level helpers.
//!
//! Mimi works on 24 kHz mono, so every recording goes through
//! [`load_mono_24k`]. Reading accepts 8/16/24/32-bit integer and 32-bit
//! float WAV with any number of channels and any sample rate.

use std::io::{Read, Seek};
use std::path::Path;

use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};
use serde::Serialize;

use super::{DataError, Result};

/// The sample rate Mimi (and so all training audio) uses.
pub const TARGET_SAMPLE_RATE: u32 = 24_000;

/// Samples at or above this magnitude count as full scale (clipped).
pub const CLIP_LEVEL: f32 = 0.999;

/// What a WAV header says, read without decoding the samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WavInfo {
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// Number of channels.
    pub channels: u16,
    /// Bits per sample.
    pub bits_per_sample: u16,
    /// Whether samples are floats (`true`) or integers.
    pub float: bool,
    /// Number of frames (samples per channel).
    pub frames: u64,
}

impl WavInfo {
    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        self.frames as f64 / f64::from(self.sample_rate)
    }
}

/// Decoded audio, samples in `[-1, 1]`, one `Vec` per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples per second.
    pub sample_rate: u32,
    /// Samples of each channel; all have the same length.
    pub channels: Vec<Vec<f32>>,
}

impl Audio {
    /// Frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        self.frames() as f64 / f64::from(self.sample_rate)
    }

    /// Averages all channels into one.
    pub fn to_mono(&self) -> Vec<f32> {
        match self.channels.as_slice() {
            [] => Vec::new(),
            [only] => only.clone(),
            many => {
                let scale = 1.0 / many.len() as f32;
                (0..self.frames())
                    .map(|i| many.iter().map(|c| c[i]).sum::<f32>() * scale)
                    .collect()
            }
        }
    }
}

/// Sample encoding used by [`write_wav`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WavEncoding {
    /// 16-bit signed integer PCM (samples are clamped to `[-1, 1]`).
    Int16,
    /// 32-bit IEEE float.
    Float32,
}

/// Reads only the header of a WAV file.
///
/// # Errors
/// [`DataError::NotWav`] for other extensions, [`DataError::InvalidWav`] if
/// the header cannot be parsed, [`DataError::InvalidWavHeader`] for a zero
/// rate or channel count, [`DataError::UnsupportedWav`] for sample formats
/// [`read_wav`] cannot decode.
pub fn read_wav_info(path: &Path) -> Result<WavInfo> {
    check_wav_extension(path)?;
    // The header sits in the first few KiB; read a bounded prefix so that
    // scanning large files stays cheap.
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let mut prefix = Vec::new();
    file.take(1 << 20)
        .read_to_end(&mut prefix)
        .map_err(|e| DataError::io(path, e))?;
    repair_streamed_header(&mut prefix, file_len);
    let reader = hound::WavReader::new(std::io::Cursor::new(prefix)).map_err(|source| {
        DataError::InvalidWav {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let spec = reader.spec();
    validate_spec(path, spec)?;
    Ok(WavInfo {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        bits_per_sample: spec.bits_per_sample,
        float: spec.sample_format == hound::SampleFormat::Float,
        frames: u64::from(reader.duration()),
    })
}

/// Reads a whole WAV file into `f32` samples in `[-1, 1]`.
///
/// Integers are scaled by `2^(bits-1)`, so 8-, 16-, 24- and 32-bit files of
/// the same signal give the same values (up to their resolution).
///
/// # Errors
/// As [`read_wav_info`], plus [`DataError::InvalidWav`] for truncated data
/// and [`DataError::EmptyAudio`] for a file with no samples.
pub fn read_wav(path: &Path) -> Result<Audio> {
    check_wav_extension(path)?;
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    read_wav_bytes(path, &bytes)
}

/// Decodes WAV bytes already in memory; `name` is used in errors only.
///
/// # Errors
/// As [`read_wav`].
pub fn read_wav_bytes(name: &Path, bytes: &[u8]) -> Result<Audio> {
    let mut header = bytes[..bytes.len().min(1 << 16)].to_vec();
    let reader = if repair_streamed_header(&mut header, bytes.len() as u64) {
        let mut fixed = header;
        fixed.extend_from_slice(&bytes[fixed.len()..]);
        hound::WavReader::new(std::io::Cursor::new(std::borrow::Cow::Owned(fixed)))
    } else {
        hound::WavReader::new(std::io::Cursor::new(std::borrow::Cow::Borrowed(bytes)))
    };
    let reader = reader.map_err(|source| DataError::InvalidWav {
        path: name.to_path_buf(),
        source,
    })?;
    decode(name, reader)
}

/// A WAV file read a chunk at a time (what [`super::decode`] uses for
/// `.wav`); the samples are those [`read_wav`] gives.
pub struct WavStream {
    path: std::path::PathBuf,
    reader: hound::WavReader<Box<dyn Read + Send>>,
    info: WavInfo,
}

impl std::fmt::Debug for WavStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavStream")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl WavStream {
    /// Opens `path` and reads its header.
    ///
    /// # Errors
    /// As [`read_wav_info`].
    pub fn open(path: &Path) -> Result<Self> {
        check_wav_extension(path)?;
        let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        let mut header = Vec::new();
        (&mut file)
            .take(1 << 16)
            .read_to_end(&mut header)
            .map_err(|e| DataError::io(path, e))?;
        repair_streamed_header(&mut header, file_len);
        let source: Box<dyn Read + Send> =
            Box::new(std::io::Cursor::new(header).chain(std::io::BufReader::new(file)));
        let reader = hound::WavReader::new(source).map_err(|source| DataError::InvalidWav {
            path: path.to_path_buf(),
            source,
        })?;
        let spec = reader.spec();
        validate_spec(path, spec)?;
        let info = WavInfo {
            sample_rate: spec.sample_rate,
            channels: spec.channels,
            bits_per_sample: spec.bits_per_sample,
            float: spec.sample_format == hound::SampleFormat::Float,
            frames: u64::from(reader.duration()),
        };
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            info,
        })
    }

    /// What the header says.
    pub fn info(&self) -> &WavInfo {
        &self.info
    }

    /// The next `max_frames` frames or fewer; `None` at the end.
    ///
    /// # Errors
    /// [`DataError::InvalidWav`] for truncated data.
    pub fn next_chunk(&mut self, max_frames: usize) -> Result<Option<Audio>> {
        let n_channels = usize::from(self.info.channels);
        let want = max_frames.max(1) * n_channels;
        let invalid = |source| DataError::InvalidWav {
            path: self.path.clone(),
            source,
        };
        let interleaved: Vec<f32> = if self.info.float {
            self.reader
                .samples::<f32>()
                .take(want)
                .collect::<std::result::Result<_, _>>()
                .map_err(invalid)?
        } else {
            let scale = 1.0 / (1u64 << (self.info.bits_per_sample - 1)) as f64;
            self.reader
                .samples::<i32>()
                .take(want)
                .map(|s| s.map(|v| (f64::from(v) * scale) as f32))
                .collect::<std::result::Result<_, _>>()
                .map_err(invalid)?
        };
        if interleaved.len() < n_channels {
            return Ok(None);
        }
        let frames = interleaved.len() / n_channels;
        let mut channels = vec![Vec::with_capacity(frames); n_channels];
        for frame in interleaved.chunks_exact(n_channels) {
            for (channel, &s) in channels.iter_mut().zip(frame) {
                channel.push(s);
            }
        }
        Ok(Some(Audio {
            sample_rate: self.info.sample_rate,
            channels,
        }))
    }
}

/// Reads a WAV file and converts it to mono at [`TARGET_SAMPLE_RATE`].
///
/// # Errors
/// As [`read_wav`] and [`resample`].
pub fn load_mono_24k(path: &Path) -> Result<Vec<f32>> {
    let audio = read_wav(path)?;
    resample(&audio.to_mono(), audio.sample_rate, TARGET_SAMPLE_RATE)
}

/// Resamples one channel from `from_hz` to `to_hz` with a high-quality
/// windowed sinc filter (256 taps, Blackman-Harris, cubic interpolation).
///
/// The output has `round(len * to_hz / from_hz)` samples and is aligned with
/// the input (the filter delay is removed). Equal rates return a copy. This
/// is [`StreamResampler`] fed the whole input at once.
///
/// # Errors
/// [`DataError::Resample`] if a rate is zero or rubato fails.
pub fn resample(samples: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>> {
    let mut resampler = StreamResampler::new(from_hz, to_hz)?;
    let mut out = Vec::new();
    resampler.push(samples, &mut out)?;
    resampler.finish(&mut out)?;
    Ok(out)
}

/// [`resample`] for input that arrives in pieces: one channel in, any piece
/// sizes, and the concatenated output is bit-identical to [`resample`] of
/// the concatenated input (the filter sees the same 4096-sample blocks).
pub struct StreamResampler {
    from_hz: u32,
    to_hz: u32,
    /// `None` when the rates are equal (a copy).
    sinc: Option<SincFixedIn<f32>>,
    /// Input not yet a whole block.
    pending: Vec<f32>,
    /// Output held back: the last few samples may be cut by `finish`.
    held: Vec<f32>,
    samples_in: u64,
    samples_out: u64,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("from_hz", &self.from_hz)
            .field("to_hz", &self.to_hz)
            .field("samples_in", &self.samples_in)
            .finish_non_exhaustive()
    }
}

impl StreamResampler {
    /// Input block of the sinc filter.
    const CHUNK: usize = 4096;
    /// Output samples kept back until [`Self::finish`] knows the length.
    const HOLD: usize = 16;

    /// A resampler from `from_hz` to `to_hz`.
    ///
    /// # Errors
    /// [`DataError::Resample`] if a rate is zero or rubato fails.
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self> {
        if from_hz == 0 || to_hz == 0 {
            return Err(Self::fail(
                from_hz,
                to_hz,
                "sample rate must be positive".into(),
            ));
        }
        let sinc = if from_hz == to_hz {
            None
        } else {
            let params = SincInterpolationParameters {
                sinc_len: 256,
                f_cutoff: 0.95,
                oversampling_factor: 256,
                interpolation: SincInterpolationType::Cubic,
                window: WindowFunction::BlackmanHarris2,
            };
            let ratio = f64::from(to_hz) / f64::from(from_hz);
            // rubato 0.16's sinc resamplers start their read position half a
            // filter back, so output sample 0 is centred on input sample 0:
            // no delay to trim (its `output_delay()` is not what this output
            // shows; the timing test pins this down).
            Some(
                SincFixedIn::<f32>::new(ratio, 1.0, params, Self::CHUNK, 1)
                    .map_err(|e| Self::fail(from_hz, to_hz, e.to_string()))?,
            )
        };
        Ok(Self {
            from_hz,
            to_hz,
            sinc,
            pending: Vec::new(),
            held: Vec::new(),
            samples_in: 0,
            samples_out: 0,
        })
    }

    fn fail(from_hz: u32, to_hz: u32, message: String) -> DataError {
        DataError::Resample {
            from_hz,
            to_hz,
            message,
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> DataError {
        Self::fail(self.from_hz, self.to_hz, e.to_string())
    }

    /// Feeds `samples`; appends the output that is final to `out`.
    ///
    /// # Errors
    /// [`DataError::Resample`] if rubato fails.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) -> Result<()> {
        self.samples_in += samples.len() as u64;
        let Some(sinc) = self.sinc.as_mut() else {
            out.extend_from_slice(samples);
            self.samples_out += samples.len() as u64;
            return Ok(());
        };
        let mut rest = samples;
        let mut produced = Vec::new();
        while !rest.is_empty() {
            let take = (Self::CHUNK - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == Self::CHUNK {
                let block = sinc
                    .process(&[&self.pending], None)
                    .map_err(|e| Self::fail(self.from_hz, self.to_hz, e.to_string()))?;
                produced.extend_from_slice(&block[0]);
                self.pending.clear();
            }
        }
        self.held.extend_from_slice(&produced);
        if self.held.len() > Self::HOLD {
            let ready = self.held.len() - Self::HOLD;
            out.extend(self.held.drain(..ready));
            self.samples_out += ready as u64;
        }
        Ok(())
    }

    /// Flushes the filter; appends the rest of the output to `out`, so that
    /// the whole output has `round(samples_in * to_hz / from_hz)` samples.
    ///
    /// # Errors
    /// [`DataError::Resample`] if rubato fails.
    pub fn finish(mut self, out: &mut Vec<f32>) -> Result<()> {
        let Some(mut sinc) = self.sinc.take() else {
            return Ok(());
        };
        let ratio = f64::from(self.to_hz) / f64::from(self.from_hz);
        let expected = (self.samples_in as f64 * ratio).round() as u64;
        let mut tail = std::mem::take(&mut self.held);
        if !self.pending.is_empty() {
            let block = sinc
                .process_partial(Some(&[&self.pending]), None)
                .map_err(|e| self.err(e))?;
            tail.extend_from_slice(&block[0]);
        }
        // Flush the filter's tail: zeros in until every expected sample is out.
        while self.samples_out + (tail.len() as u64) < expected {
            let block = sinc
                .process_partial::<&[f32]>(None, None)
                .map_err(|e| self.err(e))?;
            if block[0].is_empty() {
                break;
            }
            tail.extend_from_slice(&block[0]);
        }
        let keep = expected.saturating_sub(self.samples_out) as usize;
        tail.resize(keep, 0.0);
        out.extend_from_slice(&tail);
        Ok(())
    }
}

/// Writes mono samples to a WAV file.
///
/// # Errors
/// [`DataError::WavWrite`] if the file cannot be created or written.
pub fn write_wav(
    path: &Path,
    samples: &[f32],
    sample_rate: u32,
    encoding: WavEncoding,
) -> Result<()> {
    let mut sink = WavSink::create(path, sample_rate, encoding)?;
    sink.write(samples)?;
    sink.finish()
}

/// A mono WAV file written a piece at a time: [`write_wav`] without
/// holding the samples (the dataset writer streams hours of audio).
pub struct WavSink {
    path: std::path::PathBuf,
    encoding: WavEncoding,
    writer: hound::WavWriter<std::io::BufWriter<std::fs::File>>,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink")
            .field("path", &self.path)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl WavSink {
    /// Creates (or truncates) `path`.
    ///
    /// # Errors
    /// [`DataError::WavWrite`] if the file cannot be created.
    pub fn create(path: &Path, sample_rate: u32, encoding: WavEncoding) -> Result<Self> {
        let (bits_per_sample, sample_format) = match encoding {
            WavEncoding::Int16 => (16, hound::SampleFormat::Int),
            WavEncoding::Float32 => (32, hound::SampleFormat::Float),
        };
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate,
            bits_per_sample,
            sample_format,
        };
        let writer =
            hound::WavWriter::create(path, spec).map_err(|source| DataError::WavWrite {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            encoding,
            writer,
        })
    }

    /// Appends samples (clamped to `[-1, 1]` for 16-bit files).
    ///
    /// # Errors
    /// [`DataError::WavWrite`] if the file cannot be written.
    pub fn write(&mut self, samples: &[f32]) -> Result<()> {
        for &s in samples {
            let written = match self.encoding {
                WavEncoding::Int16 => {
                    let v = (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16;
                    self.writer.write_sample(v)
                }
                WavEncoding::Float32 => self.writer.write_sample(s),
            };
            written.map_err(|source| DataError::WavWrite {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Writes the header's lengths and closes the file.
    ///
    /// # Errors
    /// [`DataError::WavWrite`] if the file cannot be written.
    pub fn finish(self) -> Result<()> {
        let path = self.path;
        self.writer
            .finalize()
            .map_err(|source| DataError::WavWrite { path, source })
    }
}

/// Largest absolute sample value (0 for empty input).
pub fn peak(samples: &[f32]) -> f32 {
    samples.iter().fold(0.0f32, |m, &s| m.max(s.abs()))
}

/// Root mean square (0 for empty input).
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt() as f32
}

/// A level in dB relative to full scale; `-inf` for silence.
pub fn to_dbfs(level: f32) -> f32 {
    20.0 * level.log10()
}

/// Fraction of samples that sit in runs of at least 3 consecutive samples at
/// or above [`CLIP_LEVEL`].
///
/// A lone full-scale peak is legal; flat tops are what clipping looks like.
pub fn clipped_fraction(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut clipped = 0usize;
    let mut run = 0usize;
    for &s in samples {
        if s.abs() >= CLIP_LEVEL {
            run += 1;
        } else {
            if run >= 3 {
                clipped += run;
            }
            run = 0;
        }
    }
    if run >= 3 {
        clipped += run;
    }
    clipped as f64 / samples.len() as f64
}

/// [`peak`], [`rms`] and [`clipped_fraction`] of all channels, measured a
/// chunk at a time (clipping runs are followed per channel across chunks).
#[derive(Debug, Clone, Default)]
pub struct LevelMeter {
    peak: f32,
    sum_sq: f64,
    samples: u64,
    clipped: u64,
    runs: Vec<u64>,
}

impl LevelMeter {
    /// Adds one chunk; its channel count must not change between chunks.
    pub fn add(&mut self, chunk: &Audio) {
        self.runs.resize(chunk.channels.len(), 0);
        for (channel, run) in chunk.channels.iter().zip(&mut self.runs) {
            for &s in channel {
                let a = s.abs();
                self.peak = self.peak.max(a);
                self.sum_sq += f64::from(s) * f64::from(s);
                if a >= CLIP_LEVEL {
                    *run += 1;
                } else {
                    if *run >= 3 {
                        self.clipped += *run;
                    }
                    *run = 0;
                }
            }
            self.samples += channel.len() as u64;
        }
    }

    /// Largest absolute sample value.
    pub fn peak(&self) -> f32 {
        self.peak
    }

    /// Root mean square over all samples.
    pub fn rms(&self) -> f32 {
        if self.samples == 0 {
            return 0.0;
        }
        (self.sum_sq / self.samples as f64).sqrt() as f32
    }

    /// As [`clipped_fraction`].
    pub fn clipped_fraction(&self) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        let open: u64 = self.runs.iter().filter(|&&r| r >= 3).sum();
        (self.clipped + open) as f64 / self.samples as f64
    }
}

/// The sample range from the first to the last 10 ms frame that is louder
/// than 45 dB below the loudest frame (and above -70 dBFS), widened by
/// `pad_s` on each side. Silent input gives the whole range.
///
/// Soft consonants at word edges sit well above -45 dB relative to the
/// peak frame, and `pad_s` keeps their tails.
pub fn speech_bounds(samples: &[f32], sample_rate: u32, pad_s: f64) -> std::ops::Range<usize> {
    let frame = (sample_rate as usize / 100).max(1);
    let levels: Vec<f32> = samples.chunks(frame).map(rms).collect();
    let loudest = levels.iter().copied().fold(0.0, f32::max);
    let threshold = (loudest * 10f32.powf(-45.0 / 20.0)).max(10f32.powf(-70.0 / 20.0));
    let first = levels.iter().position(|&l| l > threshold);
    let last = levels.iter().rposition(|&l| l > threshold);
    let (Some(first), Some(last)) = (first, last) else {
        return 0..samples.len();
    };
    let pad = (pad_s * f64::from(sample_rate)).round() as usize;
    let start = (first * frame).saturating_sub(pad);
    let end = ((last + 1) * frame + pad).min(samples.len());
    start..end
}

fn check_wav_extension(path: &Path) -> Result<()> {
    let is_wav = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("wav") || e.eq_ignore_ascii_case("wave"));
    if is_wav {
        Ok(())
    } else {
        Err(DataError::NotWav {
            path: path.to_path_buf(),
        })
    }
}

/// Writers streaming to a pipe (`espeak-ng --stdout`, `ffmpeg ... pipe:`)
/// cannot seek back to fill in the RIFF and data sizes and leave
/// placeholders near 2^31 or 2^32. When the data chunk claims more bytes than
/// the file holds and its size is such a placeholder, set both sizes from
/// the file length (`header` is the file's start, `file_len` its length).
/// Returns whether anything changed; any other short file stays an error.
fn repair_streamed_header(header: &mut [u8], file_len: u64) -> bool {
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    if header.get(0..4) != Some(b"RIFF") || header.get(8..12) != Some(b"WAVE") {
        return false;
    }
    let mut pos = 12usize;
    let mut block_align = 1u64;
    while let (Some(id), Some(size)) = (header.get(pos..pos + 4), u32_at(header, pos + 4)) {
        let body = pos + 8;
        if id == b"fmt " {
            if let Some(b) = header.get(body + 12..body + 14) {
                block_align = u64::from(u16::from_le_bytes([b[0], b[1]])).max(1);
            }
        } else if id == b"data" {
            let available = file_len.saturating_sub(body as u64);
            if size < 0x7FFF_0000 || u64::from(size) <= available {
                return false;
            }
            let data = available - available % block_align;
            let Ok(data) = u32::try_from(data) else {
                return false;
            };
            let riff = u32::try_from(file_len - 8).unwrap_or(u32::MAX);
            header[4..8].copy_from_slice(&riff.to_le_bytes());
            header[pos + 4..pos + 8].copy_from_slice(&data.to_le_bytes());
            return true;
        }
        // Chunks are padded to an even length.
        pos = body + size as usize + (size as usize & 1);
    }
    false
}

fn validate_spec(path: &Path, spec: hound::WavSpec) -> Result<()> {
    let bad = |reason: &str| {
        Err(DataError::InvalidWavHeader {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        })
    };
    if spec.sample_rate == 0 {
        return bad("sample rate is 0");
    }
    if spec.channels == 0 {
        return bad("0 channels");
    }
    let supported = match spec.sample_format {
        hound::SampleFormat::Int => (1..=32).contains(&spec.bits_per_sample),
        hound::SampleFormat::Float => spec.bits_per_sample == 32,
    };
    if !supported {
        return Err(DataError::UnsupportedWav {
            path: path.to_path_buf(),
            bits: spec.bits_per_sample,
            format: match spec.sample_format {
                hound::SampleFormat::Int => "int",
                hound::SampleFormat::Float => "float",
            },
        });
    }
    Ok(())
}

fn decode<R: Read + Seek>(path: &Path, mut reader: hound::WavReader<R>) -> Result<Audio> {
    let spec = reader.spec();
    validate_spec(path, spec)?;
    let invalid = |source| DataError::InvalidWav {
        path: path.to_path_buf(),
        source,
    };
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<std::result::Result<_, _>>()
            .map_err(invalid)?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f64;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| (f64::from(v) * scale) as f32))
                .collect::<std::result::Result<_, _>>()
                .map_err(invalid)?
        }
    };
    let n_channels = usize::from(spec.channels);
    let frames = interleaved.len() / n_channels;
    if frames == 0 {
        return Err(DataError::EmptyAudio {
            path: path.to_path_buf(),
        });
    }
    let mut channels = vec![Vec::with_capacity(frames); n_channels];
    for frame in interleaved.chunks_exact(n_channels) {
        for (channel, &s) in channels.iter_mut().zip(frame) {
            channel.push(s);
        }
    }
    Ok(Audio {
        sample_rate: spec.sample_rate,
        channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: u32, secs: f64, amp: f64) -> Vec<f32> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n)
            .map(|i| {
                (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin())
                    as f32
            })
            .collect()
    }

    /// Magnitude of the DFT of `x` at `freq` Hz, normalised by length.
    fn dft_mag(x: &[f32], rate: u32, freq: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &s) in x.iter().enumerate() {
            re += f64::from(s) * (w * i as f64).cos();
            im -= f64::from(s) * (w * i as f64).sin();
        }
        (re * re + im * im).sqrt() / x.len() as f64
    }

    fn write_stereo_int(path: &Path, left: &[f32], right: &[f32], rate: u32, bits: u16) {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        let max = ((1i64 << (bits - 1)) - 1) as f64;
        for (&l, &r) in left.iter().zip(right) {
            for s in [l, r] {
                let v = (f64::from(s) * max).round() as i32;
                if bits == 8 {
                    w.write_sample(v as i8).unwrap();
                } else if bits == 16 {
                    w.write_sample(v as i16).unwrap();
                } else {
                    w.write_sample(v).unwrap();
                }
            }
        }
        w.finalize().unwrap();
    }

    #[test]
    fn resampling_stereo_sines_keeps_frequency_and_length() {
        let dir = tempfile::tempdir().unwrap();
        for rate in [44_100u32, 48_000, 16_000] {
            let secs = 1.5;
            let left = sine(440.0, rate, secs, 0.5);
            let right = sine(440.0, rate, secs, 0.3);
            let path = dir.path().join(format!("s{rate}.wav"));
            write_stereo_int(&path, &left, &right, rate, 16);

            let out = load_mono_24k(&path).unwrap();
            let expected = (left.len() as f64 * 24_000.0 / f64::from(rate)).round() as usize;
            assert_eq!(out.len(), expected, "length at {rate} Hz");

            // Skip the edges, where the filter sees the zero padding.
            let mid = &out[2400..out.len() - 2400];
            let at_440 = dft_mag(mid, 24_000, 440.0);
            assert!(
                (at_440 - 0.2).abs() < 0.01,
                "{rate} Hz: 440 Hz bin {at_440}"
            );
            for f in [
                220.0,
                400.0,
                480.0,
                880.0,
                440.0 * f64::from(rate) / 24_000.0,
            ] {
                if (f - 440.0f64).abs() > 1.0 {
                    assert!(
                        dft_mag(mid, 24_000, f) < 0.01,
                        "{rate} Hz: energy at {f} Hz"
                    );
                }
            }
            // Zero crossings per second of a 440 Hz sine: 880.
            let crossings = mid
                .windows(2)
                .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
                .count();
            let per_s = crossings as f64 / (mid.len() as f64 / 24_000.0);
            assert!(
                (per_s - 880.0).abs() < 5.0,
                "{rate} Hz: {per_s} crossings/s"
            );
        }
    }

    #[test]
    fn resampling_keeps_timing() {
        // An impulse at 1.0 s must stay at 1.0 s, down- and upsampling.
        for rate in [44_100usize, 48_000, 16_000, 22_050] {
            let mut x = vec![0.0f32; rate * 2];
            x[rate] = 1.0;
            let y = resample(&x, rate as u32, 24_000).unwrap();
            let argmax = y
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert!(
                (argmax as i64 - 24_000).abs() <= 1,
                "{rate} Hz: impulse at {argmax}"
            );
        }
    }

    #[test]
    fn all_bit_depths_read_the_same_values() {
        let dir = tempfile::tempdir().unwrap();
        let signal: Vec<f32> = sine(300.0, 24_000, 0.1, 0.8);
        let silent = vec![0.0; signal.len()];
        let mut decoded = Vec::new();
        for bits in [8u16, 16, 24, 32] {
            let path = dir.path().join(format!("b{bits}.wav"));
            write_stereo_int(&path, &signal, &silent, 24_000, bits);
            let audio = read_wav(&path).unwrap();
            assert_eq!(audio.sample_rate, 24_000);
            assert_eq!(audio.channels.len(), 2);
            decoded.push((bits, audio.channels[0].clone()));
        }
        let path = dir.path().join("float.wav");
        write_wav(&path, &signal, 24_000, WavEncoding::Float32).unwrap();
        let float = read_wav(&path).unwrap();
        assert_eq!(float.channels[0], signal);
        for (bits, values) in decoded {
            // One step of the coarsest resolution, plus rounding.
            let tol = 1.5 / f32::from(1u16 << (bits.min(16) - 1));
            let worst = values
                .iter()
                .zip(&signal)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst <= tol, "{bits}-bit differs by {worst}");
        }
    }

    #[test]
    fn int16_round_trip_and_header_info() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wav");
        let signal = sine(1000.0, 24_000, 0.5, 0.5);
        write_wav(&path, &signal, 24_000, WavEncoding::Int16).unwrap();
        let info = read_wav_info(&path).unwrap();
        assert_eq!(
            info,
            WavInfo {
                sample_rate: 24_000,
                channels: 1,
                bits_per_sample: 16,
                float: false,
                frames: 12_000
            }
        );
        assert!((info.duration_s() - 0.5).abs() < 1e-9);
        let back = read_wav(&path).unwrap().to_mono();
        assert!(back.iter().zip(&signal).all(|(a, b)| (a - b).abs() < 1e-4));
    }

    #[test]
    fn level_helpers() {
        let s = sine(100.0, 24_000, 1.0, 0.5);
        assert!((peak(&s) - 0.5).abs() < 1e-3);
        assert!((rms(&s) - 0.5 / 2f32.sqrt()).abs() < 1e-3);
        assert!((to_dbfs(1.0)).abs() < 1e-6);
        assert_eq!(rms(&[]), 0.0);
        assert_eq!(clipped_fraction(&s), 0.0);
        let hard: Vec<f32> = sine(100.0, 24_000, 1.0, 3.0)
            .into_iter()
            .map(|v| v.clamp(-1.0, 1.0))
            .collect();
        assert!(clipped_fraction(&hard) > 0.5);
    }

    #[test]
    fn bad_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.wav");
        std::fs::write(&junk, b"this is not a wav file at all").unwrap();
        match read_wav(&junk) {
            Err(DataError::InvalidWav { path, .. }) => assert_eq!(path, junk),
            other => panic!("{other:?}"),
        }
        let mp3 = dir.path().join("a.mp3");
        std::fs::write(&mp3, b"ID3").unwrap();
        assert!(matches!(read_wav(&mp3), Err(DataError::NotWav { path }) if path == mp3));

        let empty = dir.path().join("empty.wav");
        write_wav(&empty, &[], 24_000, WavEncoding::Int16).unwrap();
        assert!(matches!(read_wav(&empty), Err(DataError::EmptyAudio { path }) if path == empty));

        // Truncated data chunk: header promises more than the file holds.
        let full = dir.path().join("full.wav");
        write_wav(
            &full,
            &sine(100.0, 24_000, 0.1, 0.5),
            24_000,
            WavEncoding::Int16,
        )
        .unwrap();
        let bytes = std::fs::read(&full).unwrap();
        let cut = dir.path().join("cut.wav");
        std::fs::write(&cut, &bytes[..bytes.len() - 101]).unwrap();
        let err = read_wav(&cut).unwrap_err();
        assert!(
            matches!(&err, DataError::InvalidWav { path, .. } if *path == cut),
            "{err:?}"
        );
        assert!(err.to_string().contains("cut.wav"));
    }

    #[test]
    fn streamed_wav_with_placeholder_size_is_read() {
        // What `espeak-ng --stdout` and `ffmpeg ... -f wav pipe:` write.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wav");
        let signal = sine(440.0, 22_050, 0.2, 0.5);
        write_wav(&path, &signal, 22_050, WavEncoding::Int16).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4..8].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        bytes[40..44].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let audio = read_wav(&path).unwrap();
        assert_eq!(audio.frames(), signal.len());
        assert_eq!(read_wav_info(&path).unwrap().frames, signal.len() as u64);
        // A real truncation (size not a placeholder) is still an error.
        let cut = dir.path().join("cut.wav");
        write_wav(&cut, &signal, 22_050, WavEncoding::Int16).unwrap();
        let whole = std::fs::read(&cut).unwrap();
        std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
        assert!(matches!(read_wav(&cut), Err(DataError::InvalidWav { .. })));
        assert!((audio.channels[0][100] - signal[100]).abs() < 1e-4);
    }

    #[test]
    fn resample_rejects_zero_rate() {
        assert!(matches!(
            resample(&[0.0; 10], 0, 24_000),
            Err(DataError::Resample { .. })
        ));
    }
}
