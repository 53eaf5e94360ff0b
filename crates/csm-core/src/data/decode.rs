//! Reading every common audio format, streamed into 24 kHz mono.
//!
//! WAV goes through [`super::audio`]'s reader (hound), so WAV input gives
//! exactly the samples it always did; FLAC, MP3, AAC and ALAC (in M4A),
//! Ogg Vorbis and AIFF go through `symphonia`, pure Rust, no ffmpeg. Opus is
//! not supported: symphonia has no Opus decoder and no established pure-Rust
//! one exists yet; such files are reported as
//! [`DataError::UnsupportedAudio`].
//!
//! Decoding streams: [`AudioStream`] hands out one packet's worth of native
//! audio at a time and [`Mono24k`] mixes each to mono and resamples it with
//! [`StreamResampler`], so a three-hour file never sits in memory as raw
//! multichannel audio. The output equals [`audio::resample`] of the whole
//! mono signal, sample for sample.
//!
//! [`AUDIO_EXTENSIONS`] is the one list of extensions that count as audio;
//! the dataset scan, the trainer and the app all ask [`is_audio_file`].

use std::path::{Path, PathBuf};

use symphonia::core::codecs::audio::{well_known as codec_ids, AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;

use super::audio::{self, Audio, LevelMeter, StreamResampler, WavStream, TARGET_SAMPLE_RATE};
use super::{DataError, Result};

/// Extensions (lower case) of the files this module decodes, in order of
/// preference when one folder has the same recording twice (`a.wav` next
/// to `a.mp3`: the WAV is used).
pub const AUDIO_EXTENSIONS: &[&str] = &[
    "wav", "wave", "flac", "aif", "aiff", "m4a", "m4b", "alac", "mp3", "aac", "ogg", "oga",
];

/// Extensions of audio files that cannot be decoded: reported, not ignored.
pub const UNSUPPORTED_AUDIO_EXTENSIONS: &[&str] = &[
    "opus", "wma", "webm", "weba", "mka", "amr", "ape", "wv", "ac3", "dts", "ra",
];

/// Frames per chunk when streaming a WAV file.
const WAV_CHUNK_FRAMES: usize = 1 << 15;

/// Whether `ext` (any case, no dot) is in [`AUDIO_EXTENSIONS`].
pub fn is_audio_extension(ext: &str) -> bool {
    AUDIO_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext))
}

/// Whether `path`'s extension is in [`AUDIO_EXTENSIONS`].
pub fn is_audio_file(path: &Path) -> bool {
    extension(path).is_some_and(|e| is_audio_extension(&e))
}

/// Whether `ext` names audio we recognise but cannot decode (Opus, WMA...).
pub fn is_unsupported_audio_extension(ext: &str) -> bool {
    UNSUPPORTED_AUDIO_EXTENSIONS
        .iter()
        .any(|e| e.eq_ignore_ascii_case(ext))
}

/// Rank of `path`'s extension in [`AUDIO_EXTENSIONS`] (lower is preferred).
pub fn preference(path: &Path) -> usize {
    extension(path)
        .and_then(|e| AUDIO_EXTENSIONS.iter().position(|a| *a == e))
        .unwrap_or(usize::MAX)
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

fn is_wav(path: &Path) -> bool {
    matches!(extension(path).as_deref(), Some("wav" | "wave"))
}

/// What a stream is, known once it is opened.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamInfo {
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// Number of channels.
    pub channels: u16,
    /// Bits per sample of the source, where the format says.
    pub bits_per_sample: Option<u16>,
    /// Frames (samples per channel), where the container says.
    pub frames: Option<u64>,
    /// The codec, e.g. `pcm`, `flac`, `mp3`, `aac`.
    pub codec: String,
}

/// An audio file opened for reading a chunk at a time at its own rate.
pub struct AudioStream {
    path: PathBuf,
    info: StreamInfo,
    source: Source,
    frames_read: u64,
}

enum Source {
    Wav(WavStream),
    Symphonia(Box<Demuxed>),
}

struct Demuxed {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    bad_packets: usize,
    last_error: Option<String>,
}

impl std::fmt::Debug for AudioStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioStream")
            .field("path", &self.path)
            .field("info", &self.info)
            .field("frames_read", &self.frames_read)
            .finish_non_exhaustive()
    }
}

impl AudioStream {
    /// Opens `path`, finds its audio track and its decoder.
    ///
    /// # Errors
    /// [`DataError::Io`] if it cannot be opened, [`DataError::Decode`] for a
    /// zero-byte file or one that is not audio, and
    /// [`DataError::UnsupportedAudio`] for a codec without a decoder (Opus);
    /// `.wav` files give the errors of [`audio::read_wav_info`].
    pub fn open(path: &Path) -> Result<Self> {
        if is_wav(path) {
            let wav = WavStream::open(path)?;
            let i = *wav.info();
            let info = StreamInfo {
                sample_rate: i.sample_rate,
                channels: i.channels,
                bits_per_sample: Some(i.bits_per_sample),
                frames: Some(i.frames),
                codec: if i.float { "pcm-float" } else { "pcm" }.to_string(),
            };
            return Ok(Self {
                path: path.to_path_buf(),
                info,
                source: Source::Wav(wav),
                frames_read: 0,
            });
        }
        let ext = extension(path).unwrap_or_default();
        if is_unsupported_audio_extension(&ext) {
            return Err(unsupported(path));
        }
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        if len == 0 {
            return Err(decode_error(path, "the file is empty (0 bytes)"));
        }
        let mss = MediaSourceStream::new(Box::new(file), MediaSourceStreamOptions::default());
        let mut hint = Hint::new();
        hint.with_extension(&ext);
        let format = symphonia::default::get_probe()
            .probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .map_err(|e| match e {
                SymError::Unsupported(_) => decode_error(
                    path,
                    "not a recognised audio file (no WAV, FLAC, MP3, M4A, Ogg or AIFF stream found)",
                ),
                SymError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    decode_error(path, "the file ends before its header does (truncated)")
                }
                e => decode_error(path, &format!("cannot read the container: {e}")),
            })?;
        let track = format
            .default_track(TrackType::Audio)
            .ok_or_else(|| decode_error(path, "the file holds no audio track"))?;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| decode_error(path, "the audio track has no codec parameters"))?
            .clone();
        let track_id = track.id;
        let frames = track.num_frames;
        if params.codec == codec_ids::CODEC_ID_OPUS {
            return Err(unsupported_reason(path, "opus"));
        }
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .map_err(|e| match e {
                SymError::Unsupported(_) => DataError::UnsupportedAudio {
                    path: path.to_path_buf(),
                    reason: format!("audio codec {} is not supported", params.codec),
                },
                e => decode_error(path, &format!("cannot start the decoder: {e}")),
            })?;
        let codec = decoder.codec_info().short_name.to_string();
        let sample_rate = params
            .sample_rate
            .filter(|&r| r > 0)
            .ok_or_else(|| decode_error(path, "the stream has no sample rate"))?;
        let channels = params
            .channels
            .as_ref()
            .map(|c| c.count())
            .filter(|&c| c > 0)
            .ok_or_else(|| decode_error(path, "the stream has no channel layout"))?;
        let info = StreamInfo {
            sample_rate,
            channels: u16::try_from(channels)
                .map_err(|_| decode_error(path, "too many channels"))?,
            bits_per_sample: params.bits_per_sample.and_then(|b| u16::try_from(b).ok()),
            frames,
            codec,
        };
        Ok(Self {
            path: path.to_path_buf(),
            info,
            source: Source::Symphonia(Box::new(Demuxed {
                format,
                decoder,
                track_id,
                bad_packets: 0,
                last_error: None,
            })),
            frames_read: 0,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rate, channels and codec.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The next chunk at the file's own rate (about one packet: 1 152
    /// frames for MP3, up to 32 768 for WAV); `None` at the end.
    ///
    /// A packet the decoder rejects is skipped, as players do, and logged.
    ///
    /// # Errors
    /// [`DataError::EmptyAudio`] if the file decodes to no samples,
    /// [`DataError::Decode`] if it is truncated inside a packet, no packet
    /// decodes, or the stream changes rate or channels midway.
    pub fn next_chunk(&mut self) -> Result<Option<Audio>> {
        let chunk = match &mut self.source {
            Source::Wav(wav) => wav.next_chunk(WAV_CHUNK_FRAMES)?,
            Source::Symphonia(d) => next_packet_audio(&self.path, &self.info, d)?,
        };
        match chunk {
            Some(c) => {
                self.frames_read += c.frames() as u64;
                Ok(Some(c))
            }
            None if self.frames_read == 0 => match &self.source {
                Source::Symphonia(d) if d.bad_packets > 0 => Err(decode_error(
                    &self.path,
                    &format!(
                        "no packet could be decoded ({})",
                        d.last_error.as_deref().unwrap_or("unknown error")
                    ),
                )),
                _ => Err(DataError::EmptyAudio {
                    path: self.path.clone(),
                }),
            },
            None => match (&self.source, self.info.frames) {
                // A stream cut at a packet boundary ends cleanly; the
                // container's frame count (MP3's Xing/LAME tag, MP4's
                // duration) shows it. Some counts are estimates from the
                // bitrate, hence the slack of 2% and one large packet.
                (Source::Symphonia(_), Some(expected))
                    if self.frames_read + 4096 < expected
                        && (self.frames_read as f64) < 0.98 * expected as f64 =>
                {
                    Err(decode_error(
                        &self.path,
                        &format!(
                            "truncated: {} of the {} frames the header announces",
                            self.frames_read, expected
                        ),
                    ))
                }
                _ => Ok(None),
            },
        }
    }

    /// Turns this stream into chunks of 24 kHz mono.
    ///
    /// # Errors
    /// [`DataError::Resample`] if the resampler cannot be built.
    pub fn into_mono_24k(self) -> Result<Mono24k> {
        let resampler = StreamResampler::new(self.info.sample_rate, TARGET_SAMPLE_RATE)?;
        Ok(Mono24k {
            stream: self,
            resampler: Some(resampler),
        })
    }
}

fn next_packet_audio(path: &Path, info: &StreamInfo, d: &mut Demuxed) -> Result<Option<Audio>> {
    loop {
        let packet = match d.format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(decode_error(
                    path,
                    "the file ends inside a packet (truncated)",
                ));
            }
            Err(SymError::ResetRequired) => {
                return Err(decode_error(
                    path,
                    "the stream changes its layout midway (chained streams are not supported)",
                ));
            }
            Err(e) => return Err(decode_error(path, &e.to_string())),
        };
        if packet.track_id != d.track_id {
            continue;
        }
        match d.decoder.decode(&packet) {
            Ok(buf) => {
                if buf.frames() == 0 {
                    continue;
                }
                let spec = buf.spec();
                if spec.rate() != info.sample_rate
                    || spec.channels().count() != usize::from(info.channels)
                {
                    return Err(decode_error(
                        path,
                        &format!(
                            "the stream changes from {} Hz x {} to {} Hz x {} midway",
                            info.sample_rate,
                            info.channels,
                            spec.rate(),
                            spec.channels().count()
                        ),
                    ));
                }
                let mut channels: Vec<Vec<f32>> = Vec::new();
                buf.copy_to_vecs_planar::<f32>(&mut channels);
                return Ok(Some(Audio {
                    sample_rate: info.sample_rate,
                    channels,
                }));
            }
            Err(SymError::DecodeError(msg)) => {
                tracing::warn!(path = %path.display(), "skipped an undecodable packet: {msg}");
                d.bad_packets += 1;
                d.last_error = Some(msg.to_string());
            }
            Err(SymError::IoError(e)) => {
                tracing::warn!(path = %path.display(), "skipped an undecodable packet: {e}");
                d.bad_packets += 1;
                d.last_error = Some(e.to_string());
            }
            Err(e) => return Err(decode_error(path, &e.to_string())),
        }
    }
}

/// 24 kHz mono chunks of one file, each final: their concatenation is
/// [`load_mono_24k`]'s result. Ends after the first error.
#[derive(Debug)]
pub struct Mono24k {
    stream: AudioStream,
    resampler: Option<StreamResampler>,
}

impl Mono24k {
    /// The stream being read (rate, channels, codec of the source).
    pub fn info(&self) -> &StreamInfo {
        self.stream.info()
    }

    fn step(&mut self) -> Result<Option<Vec<f32>>> {
        loop {
            let Some(resampler) = self.resampler.as_mut() else {
                return Ok(None);
            };
            let mut out = Vec::new();
            match self.stream.next_chunk()? {
                Some(chunk) => resampler.push(&chunk.to_mono(), &mut out)?,
                None => {
                    if let Some(r) = self.resampler.take() {
                        r.finish(&mut out)?;
                    }
                }
            }
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
    }
}

impl Iterator for Mono24k {
    type Item = Result<Vec<f32>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(chunk) => chunk.map(Ok),
            Err(e) => {
                self.resampler = None;
                Some(Err(e))
            }
        }
    }
}

/// Opens `path` and streams it as 24 kHz mono chunks.
///
/// # Errors
/// As [`AudioStream::open`]; the chunks carry [`AudioStream::next_chunk`]'s.
pub fn stream_mono_24k(path: &Path) -> Result<Mono24k> {
    AudioStream::open(path)?.into_mono_24k()
}

/// Reads a whole file of any supported format as 24 kHz mono.
///
/// `.wav` files take [`audio::load_mono_24k`] itself, so training on WAV
/// gives the samples it always did.
///
/// # Errors
/// As [`stream_mono_24k`].
pub fn load_mono_24k(path: &Path) -> Result<Vec<f32>> {
    if is_wav(path) {
        return audio::load_mono_24k(path);
    }
    let mut out = Vec::new();
    for chunk in stream_mono_24k(path)? {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// Reads a whole file at its own rate and channel count (for tests and
/// short clips; long files should use [`AudioStream`]).
///
/// # Errors
/// As [`AudioStream::next_chunk`].
pub fn read_audio(path: &Path) -> Result<Audio> {
    let mut stream = AudioStream::open(path)?;
    let mut channels = vec![Vec::new(); usize::from(stream.info().channels)];
    while let Some(chunk) = stream.next_chunk()? {
        for (all, part) in channels.iter_mut().zip(chunk.channels) {
            all.extend_from_slice(&part);
        }
    }
    Ok(Audio {
        sample_rate: stream.info().sample_rate,
        channels,
    })
}

/// What a scan shows of an audio file, measured in one streaming pass.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AudioSummary {
    /// Rate, channels and codec.
    pub info: StreamInfo,
    /// Frames decoded.
    pub frames: u64,
    /// Seconds decoded.
    pub duration_s: f64,
    /// Largest absolute sample.
    pub peak: f32,
    /// Root mean square of all samples.
    pub rms: f32,
    /// As [`audio::clipped_fraction`].
    pub clipped_fraction: f64,
}

/// Decodes `path` once and measures it, holding one chunk at a time.
///
/// # Errors
/// As [`AudioStream::next_chunk`].
pub fn summarize(path: &Path) -> Result<AudioSummary> {
    let mut stream = AudioStream::open(path)?;
    let mut meter = LevelMeter::default();
    let mut frames = 0u64;
    while let Some(chunk) = stream.next_chunk()? {
        frames += chunk.frames() as u64;
        meter.add(&chunk);
    }
    let info = stream.info().clone();
    Ok(AudioSummary {
        duration_s: frames as f64 / f64::from(info.sample_rate),
        info,
        frames,
        peak: meter.peak(),
        rms: meter.rms(),
        clipped_fraction: meter.clipped_fraction(),
    })
}

fn decode_error(path: &Path, reason: &str) -> DataError {
    DataError::Decode {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// [`DataError::UnsupportedAudio`] for `path`, by its extension.
pub(crate) fn unsupported(path: &Path) -> DataError {
    unsupported_reason(path, &extension(path).unwrap_or_default())
}

fn unsupported_reason(path: &Path, ext: &str) -> DataError {
    let reason = match ext {
        "opus" => "Opus audio is not supported (no pure-Rust Opus decoder)".to_string(),
        other => format!(".{other} audio is not supported"),
    };
    DataError::UnsupportedAudio {
        path: path.to_path_buf(),
        reason,
    }
}
