//! Audio output through cpal: the output devices, and [`Player`], the
//! managed state that lets one clip play at a time. Each clip plays on a
//! thread that owns the cpal stream (streams are not `Send` everywhere).
//! The commands over this are in `commands::audio`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};
use csm_core::data::audio::resample;
use serde::Serialize;

use crate::error::{Error, Result};

/// Mirrors `AudioDevice` in `ui/src/lib/api.ts`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AudioDevice {
    /// cpal device id, e.g. `alsa:null`.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Whether it is the host's default output.
    pub is_default: bool,
}

/// Result of `play_audio`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Playing {
    /// Length of the clip.
    pub duration_secs: f64,
}

/// Managed state: the stop flag of the clip playing now, if any.
#[derive(Debug, Default)]
pub struct Player(Mutex<Option<Arc<AtomicBool>>>);

impl Player {
    /// Stops what is playing (the playback thread drops its stream).
    pub fn stop(&self) {
        if let Some(flag) = self.0.lock().expect("player lock").take() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Stops what is playing and returns the stop flag of the next clip
    /// (pass it to [`play`]).
    pub fn next_clip(&self) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Some(old) = self.0.lock().expect("player lock").replace(flag.clone()) {
            old.store(true, Ordering::SeqCst);
        }
        flag
    }
}

/// Output devices of the default host (`list_output_devices`).
pub fn devices() -> Result<Vec<AudioDevice>> {
    let host = cpal::default_host();
    let default_id = host.default_output_device().and_then(|d| d.id().ok());
    let list: Vec<AudioDevice> = host
        .output_devices()
        .map_err(|e| Error::Audio(format!("cannot list output devices: {e}")))?
        .filter_map(|d| {
            let id = d.id().ok()?;
            let name = d
                .description()
                .map(|n| n.name().to_string())
                .unwrap_or_else(|_| id.to_string());
            Some(AudioDevice {
                is_default: Some(&id) == default_id.as_ref(),
                id: id.to_string(),
                name,
            })
        })
        .collect();
    if list.is_empty() {
        return Err(Error::NoAudioDevice("no audio output device found".into()));
    }
    Ok(list)
}

fn open_device(device_id: Option<&str>) -> Result<cpal::Device> {
    let host = cpal::default_host();
    match device_id {
        Some(id) => {
            let parsed: cpal::DeviceId = id
                .parse()
                .map_err(|e| Error::Audio(format!("`{id}` is not an audio device id: {e}")))?;
            host.device_by_id(&parsed)
                .ok_or_else(|| Error::NoAudioDevice(format!("audio device {id} is not available")))
        }
        None => host
            .default_output_device()
            .ok_or_else(|| Error::NoAudioDevice("there is no default audio output device".into())),
    }
}

/// Opens the device on a new thread, starts the stream and returns once it
/// plays; the thread keeps it until the clip ends or `stop` is set.
pub fn play(
    samples: Vec<f32>,
    rate: u32,
    device_id: Option<&str>,
    stop: Arc<AtomicBool>,
) -> Result<Playing> {
    let duration_secs = samples.len() as f64 / f64::from(rate.max(1));
    let device_id = device_id.map(str::to_string);
    let (tx, rx) = mpsc::channel::<Result<()>>();
    std::thread::Builder::new()
        .name("audio-out".into())
        .spawn(move || {
            let stream = match start_stream(&samples, rate, device_id.as_deref()) {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let end = Instant::now() + Duration::from_secs_f64(duration_secs + 0.25);
            while Instant::now() < end && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(stream);
        })
        .map_err(|e| Error::Audio(format!("cannot start the playback thread: {e}")))?;
    rx.recv()
        .map_err(|_| Error::Audio("the playback thread ended unexpectedly".into()))??;
    Ok(Playing { duration_secs })
}

fn start_stream(samples: &[f32], rate: u32, device_id: Option<&str>) -> Result<cpal::Stream> {
    let device = open_device(device_id)?;
    let name = device
        .id()
        .map_or_else(|_| "the audio device".to_string(), |i| i.to_string());
    let config = device.default_output_config().map_err(|e| {
        Error::NoAudioDevice(format!(
            "{name} cannot play: {e} (no usable audio output; choose another device)"
        ))
    })?;
    let out_rate = config.sample_rate();
    let channels = usize::from(config.channels());
    let mono = resample(samples, rate, out_rate).map_err(|e| Error::Audio(e.to_string()))?;
    let data: Arc<Vec<f32>> = Arc::new(mono);
    let stream_config: cpal::StreamConfig = config.config();
    let stream = match config.sample_format() {
        SampleFormat::F32 => build::<f32>(&device, stream_config, data, channels),
        SampleFormat::I16 => build::<i16>(&device, stream_config, data, channels),
        SampleFormat::U16 => build::<u16>(&device, stream_config, data, channels),
        SampleFormat::I32 => build::<i32>(&device, stream_config, data, channels),
        other => {
            return Err(Error::Audio(format!(
                "{name}: unsupported sample format {other}"
            )))
        }
    }
    .map_err(|e| Error::Audio(format!("{name}: cannot open an output stream: {e}")))?;
    stream
        .play()
        .map_err(|e| Error::Audio(format!("{name}: cannot start playback: {e}")))?;
    Ok(stream)
}

fn build<T: SizedSample + FromSample<f32>>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    data: Arc<Vec<f32>>,
    channels: usize,
) -> std::result::Result<cpal::Stream, cpal::Error> {
    let pos = AtomicUsize::new(0);
    device.build_output_stream(
        config,
        move |out: &mut [T], _| {
            let mut i = pos.load(Ordering::Relaxed);
            for frame in out.chunks_mut(channels.max(1)) {
                let s = data.get(i).copied().unwrap_or(0.0);
                for o in frame.iter_mut() {
                    *o = T::from_sample(s);
                }
                i += 1;
            }
            pos.store(i, Ordering::Relaxed);
        },
        |e| eprintln!("audio output error: {e}"),
        None,
    )
}
