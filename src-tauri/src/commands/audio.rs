//! Playback (`list_output_devices`, `play_audio`, `stop_audio`, over
//! [`crate::player`]) and waveform peaks (`audio_peaks`).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use csm_core::data::decode::{read_audio, AudioStream};
use tauri::{AppHandle, Runtime, State};

use crate::error::{blocking, Error, Result};
use crate::player::{devices, play, AudioDevice, Player, Playing};
use crate::state::AllowedPaths;

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
    let flag = player.next_clip();
    let stop = flag.clone();
    let started = blocking("play_audio", move || {
        play(samples, rate, device_id.as_deref(), stop)
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

/// Mono samples and rate of an audio file of any format
/// `csm_core::data::decode` reads (WAV, FLAC, MP3, M4A, Ogg...).
pub fn load(path: &Path) -> Result<(Vec<f32>, u32)> {
    if !path.exists() {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    let audio = read_audio(path).map_err(|e| Error::UnsupportedFormat(e.to_string()))?;
    Ok((audio.to_mono(), audio.sample_rate))
}

/// Seconds of an audio file from its header, 0 when unreadable or not
/// stated there (samples the trainer spoke, listed by the Run and History
/// screens).
pub fn audio_secs(path: &Path) -> f32 {
    AudioStream::open(path).map_or(0.0, |s| {
        let info = s.info();
        info.frames
            .map_or(0.0, |f| f as f32 / info.sample_rate.max(1) as f32)
    })
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
