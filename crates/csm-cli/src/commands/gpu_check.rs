//! `csm gpu-check`: proves the GPU backend works and agrees with the CPU,
//! and that this crate's CUDA kernels agree with MLX's ops on the GPU.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use csm_core::mlx_rs::{ops, random, transforms, with_device, Array, Device, DeviceType, Dtype};
use csm_core::runtime::{self, Backend};

/// Flags of `csm gpu-check`.
#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// Seconds per bf16 benchmark size.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

/// Runs the check; fails unless the default device is a GPU and results
/// match the CPU.
pub fn run(args: GpuCheckArgs) -> Result<()> {
    let backend = runtime::use_best_device();
    tell!("MLX {} backend {}", runtime::mlx_version(), backend.name());
    if backend == Backend::Cpu {
        bail!("no GPU backend in the loaded libmlx: point LD_LIBRARY_PATH at the mlx-cuda-13 wheel's mlx/lib (see scripts/gpu-check.sh)");
    }
    let device = Device::try_default().context("no default device")?;
    if !matches!(device.get_type()?, DeviceType::Gpu) {
        bail!("default device is {device}, not a GPU");
    }
    tell!("default device  {device}: OK");

    random::seed(7)?;
    let a = random::normal::<f32>(&[384, 512], None, None, None)?;
    let b = random::normal::<f32>(&[512, 256], None, None, None)?;
    let gpu = with_device(Device::gpu(), || a.matmul(&b))?;
    let cpu = with_device(Device::cpu(), || a.matmul(&b))?;
    let err = max_rel_error(&gpu, &cpu)?;
    tell!("matmul f32 384x512x256 GPU vs CPU: max rel error {err:.2e}");
    // TF32 tensor cores may be used for f32 on NVIDIA GPUs.
    if err > 5e-3 {
        bail!("GPU matmul disagrees with the CPU (max rel error {err:.2e})");
    }

    // d/dx sum(sin(x) * x) = cos(x) * x + sin(x)
    let x = random::uniform::<_, f32>(-3.0, 3.0, &[4096], None)?;
    let grad_on = |device: Device| -> Result<Array> {
        let f = |x: &Array| -> Result<Array, csm_core::mlx_rs::error::Exception> {
            x.sin()?.multiply(x)?.sum(None)
        };
        let mut g = transforms::grad(f);
        let out = with_device(device, || g(&x))?;
        out.eval()?;
        Ok(out)
    };
    let g_gpu = grad_on(Device::gpu())?;
    let g_cpu = grad_on(Device::cpu())?;
    let analytic = x.cos()?.multiply(&x)?.add(&x.sin()?)?;
    let e1 = max_rel_error(&g_gpu, &g_cpu)?;
    let e2 = max_rel_error(&g_gpu, &analytic)?;
    tell!("grad of sum(sin(x)*x): GPU vs CPU {e1:.2e}, GPU vs analytic {e2:.2e}");
    if e1 > 1e-4 || e2 > 1e-4 {
        bail!("GPU gradient disagrees (vs CPU {e1:.2e}, vs analytic {e2:.2e})");
    }

    #[cfg(not(target_os = "macos"))]
    {
        let checks = csm_core::kernels::cuda::check_against_mlx()
            .context("running this crate's CUDA kernels")?;
        for c in &checks {
            tell!(
                "kernel {:38} vs MLX: rel error {:.2e} (tolerance {:.0e})",
                c.what,
                c.error,
                c.tolerance
            );
        }
        if let Some(bad) = checks.iter().find(|c| !c.passed()) {
            bail!(
                "CUDA kernel disagrees with MLX's ops: {} (rel error {:.2e} > {:.0e})",
                bad.what,
                bad.error,
                bad.tolerance
            );
        }
    }

    let budget = Duration::from_secs_f64(args.seconds);
    for n in [1024, 4096, 8192] {
        let f32b = runtime::matmul_gflops(n, Dtype::Float32, budget)?;
        let bf16 = runtime::matmul_gflops(n, Dtype::Bfloat16, budget)?;
        tell!(
            "matmul n={n:5}: f32 {:7.1} TFLOP/s  bf16 {:7.1} TFLOP/s",
            f32b.gflops / 1e3,
            bf16.gflops / 1e3
        );
    }
    tell!("gpu-check passed");
    Ok(())
}

/// `max |a - b| / max |b|` in f32: the error relative to the result's scale
/// (element-wise ratios blow up on entries near zero).
fn max_rel_error(a: &Array, b: &Array) -> Result<f32> {
    let a = a.as_dtype(Dtype::Float32)?;
    let b = b.as_dtype(Dtype::Float32)?;
    let diff = a.subtract(&b)?.abs()?.max(None)?;
    let scale = ops::maximum(&b.abs()?.max(None)?, Array::from_f32(1e-12))?;
    let rel = diff.divide(&scale)?;
    rel.eval()?;
    Ok(rel.item_cast::<f32>())
}
