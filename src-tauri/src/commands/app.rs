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

/// Which BLAS kernels this process runs (mirrors `BlasStatus` in `api.ts`):
/// the start-up check of the app, as `csm info` prints it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BlasStatus {
    /// OpenBLAS's kernel set (`Haswell`, `SkylakeX`, `Prescott`...); `None`
    /// when the BLAS is not OpenBLAS (macOS Accelerate, MLX's reference BLAS).
    pub kernels: Option<String>,
    /// The CPU's model name, where the OS says.
    pub cpu: Option<String>,
    /// `fits`: OpenBLAS's own choice fits the CPU; `setByApp`: the app
    /// restarted itself with better kernels; `narrow`: narrower kernels
    /// than the CPU supports run; `notOpenblas`.
    pub origin: &'static str,
    /// `narrow`: the kernel set that fits the CPU (an `OPENBLAS_CORETYPE` value).
    pub recommended: Option<String>,
    /// `narrow`: the sentence the start-up banner shows.
    pub warning: Option<String>,
}

/// The BLAS kernels of this process and, when they are narrower than the
/// CPU allows, the warning for the start-up banner.
///
/// # Errors
/// `internal` when the check's task fails.
#[tauri::command]
pub async fn blas_status() -> Result<BlasStatus> {
    crate::error::blocking("blas_status", || Ok(blas())).await
}

/// Synchronous body of [`blas_status`], read from this process.
pub fn blas() -> BlasStatus {
    use csm_core::runtime::blas::{cpu_model, kernel_origin};
    blas_from(
        csm_core::runtime::openblas_core(),
        cpu_model(),
        kernel_origin(|k| std::env::var_os(k)),
    )
}

/// [`BlasStatus`] from OpenBLAS's core, the CPU name and how the kernels
/// were chosen.
pub fn blas_from(
    kernels: Option<String>,
    cpu: Option<String>,
    origin: csm_core::runtime::blas::KernelOrigin,
) -> BlasStatus {
    use csm_core::runtime::blas::KernelOrigin;
    let Some(core) = kernels else {
        return BlasStatus {
            kernels: None,
            cpu,
            origin: "notOpenblas",
            recommended: None,
            warning: None,
        };
    };
    let (origin, recommended, warning) = match origin {
        KernelOrigin::Fits => ("fits", None, None),
        KernelOrigin::SetByUs { .. } => ("setByApp", None, None),
        KernelOrigin::Narrow(a) => {
            let on = cpu.as_deref().unwrap_or("this CPU");
            let warning = format!(
                "OpenBLAS runs its {} kernels, but {on} supports the faster {} set: \
                 training and transcription on the CPU run several times slower. Unset \
                 OPENBLAS_CORETYPE so CSM Studio chooses, or set OPENBLAS_CORETYPE={}, then \
                 start the app again.",
                a.chosen, a.recommended, a.recommended
            );
            ("narrow", Some(a.recommended.to_string()), Some(warning))
        }
    };
    BlasStatus {
        kernels: Some(core),
        cpu,
        origin,
        recommended,
        warning,
    }
}
