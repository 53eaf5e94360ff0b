//! `app_info`: version and MLX backend, for the status line and bug reports.

use csm_core::mlx_rs::{Device, DeviceType};
use serde::Serialize;

use crate::error::{Error, Result};

/// Mirrors `AppInfo` in `ui/src/lib/api.ts`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppInfo {
    /// csm-app crate version.
    pub version: String,
    /// MLX version of the wheel mlx-sys linked against.
    pub mlx_version: String,
    /// "metal", "cuda" or "cpu".
    pub backend: String,
    /// `std::env::consts::OS`.
    pub os: String,
    /// `std::env::consts::ARCH`.
    pub arch: String,
}

/// The MLX default device decides the backend: a GPU is Metal on macOS and CUDA elsewhere.
#[tauri::command]
pub async fn app_info() -> Result<AppInfo> {
    tauri::async_runtime::spawn_blocking(info)
        .await
        .map_err(|e| Error::Internal(format!("app_info task failed: {e}")))?
}

/// Synchronous body of [`app_info`] (MLX calls may block briefly).
pub fn info() -> Result<AppInfo> {
    let device =
        Device::try_default().map_err(|e| Error::Internal(format!("MLX default device: {e}")))?;
    let kind = device
        .get_type()
        .map_err(|e| Error::Internal(format!("MLX device type: {e}")))?;
    let backend = match kind {
        DeviceType::Gpu if cfg!(target_os = "macos") => "metal",
        DeviceType::Gpu => "cuda",
        DeviceType::Cpu => "cpu",
    };
    Ok(AppInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        mlx_version: env!("CSM_MLX_VERSION").to_string(),
        backend: backend.to_string(),
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
    })
}
