//! Playback through cpal (`list_output_devices`, `play_audio`, `stop_audio`)
//! and waveform peaks (`audio_peaks`). One clip plays at a time, on a
//! thread that owns the cpal stream (streams are not `Send` everywhere).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};
use csm_core::data::audio::{read_wav, resample};
use serde::Serialize;
use tauri::{AppHandle, Runtime, State};

use crate::error::{blocking, Error, Result};
use crate::state::AllowedPaths;

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

/// The clip playing now, if any.
#[derive(Debug, Default)]
pub struct Player(Mutex<Option<Arc<AtomicBool>>>);

impl Player {
    /// Stops what is playing (the playback thread drops its stream).
    pub fn stop(&self) {
        if let Some(flag) = self.0.lock().expect("player lock").take() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

/// Output devices of the default host.
///
/// # Errors
/// `noAudioDevice` when there is none, `audio` when the host cannot list them.
#[tauri::command]
pub async fn list_output_devices() -> Result<Vec<AudioDevice>> {
    blocking("list_output_devices", devices).await
}

/// Plays an audio file on `device_id` (or the default output).
///
/// # Errors
/// `notFound`, `unsupportedFormat`, `noAudioDevice`, `audio`.
#[tauri::command]
pub async fn play_audio<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    player: State<'_, Player>,
    path: PathBuf,
    device_id: Option<String>,
) -> Result<Playing> {
    allowed.check(&app, &path)?;
    player.stop();
    let (samples, rate) = blocking("play_audio", move || load(&path)).await?;
    let flag = Arc::new(AtomicBool::new(false));
    *player.0.lock().expect("player lock") = Some(flag.clone());
    let flag2 = flag.clone();
    let started = blocking("play_audio", move || {
        play(samples, rate, device_id.as_deref(), flag2)
    })
    .await;
    if started.is_err() {
        flag.store(true, Ordering::SeqCst);
    }
    started
}

/// Stops playback (no-op when nothing plays).
///
/// # Errors
/// Never in practice.
#[tauri::command]
pub async fn stop_audio(player: State<'_, Player>) -> Result<()> {
    player.stop();
    Ok(())
}

/// `buckets` absolute peaks in [0, 1] of an audio file, for waveforms.
///
/// # Errors
/// `notFound`, `unsupportedFormat`.
#[tauri::command]
pub async fn audio_peaks<R: Runtime>(
    app: AppHandle<R>,
    allowed: State<'_, AllowedPaths>,
    path: PathBuf,
    buckets: usize,
) -> Result<Vec<f32>> {
    allowed.check(&app, &path)?;
    blocking("audio_peaks", move || {
        let (samples, _) = load(&path)?;
        Ok(peaks(&samples, buckets))
    })
    .await
}

/// Mono samples and rate of a WAV file.
pub fn load(path: &Path) -> Result<(Vec<f32>, u32)> {
    if !path.exists() {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    let audio = read_wav(path).map_err(|e| Error::UnsupportedFormat(e.to_string()))?;
    Ok((audio.to_mono(), audio.sample_rate))
}

/// Max |sample| per bucket, clamped to [0, 1].
pub fn peaks(samples: &[f32], buckets: usize) -> Vec<f32> {
    let buckets = buckets.clamp(1, 100_000);
    if samples.is_empty() {
        return vec![0.0; buckets];
    }
    (0..buckets)
        .map(|b| {
            let lo = b * samples.len() / buckets;
            let hi = ((b + 1) * samples.len() / buckets)
                .max(lo + 1)
                .min(samples.len());
            samples[lo.min(samples.len() - 1)..hi]
                .iter()
                .fold(0f32, |m, s| m.max(s.abs()))
                .min(1.0)
        })
        .collect()
}

/// Synchronous body of [`list_output_devices`].
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_are_bucket_maxima() {
        let s = [0.1, -0.5, 0.2, 0.9, -0.3, 0.0];
        assert_eq!(peaks(&s, 3), vec![0.5, 0.9, 0.3]);
        assert_eq!(peaks(&[], 2), vec![0.0, 0.0]);
        assert_eq!(peaks(&s, 12).len(), 12);
    }
}
