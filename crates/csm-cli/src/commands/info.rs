//! `csm info`: the device/backend report for bug reports.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use csm_core::mlx_rs::Dtype;
use csm_core::runtime::{self, Backend};

/// Flags of `csm info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Seconds spent on each matmul benchmark.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Matrix size of the f32 benchmark.
    #[arg(long, default_value_t = 1024)]
    size: i32,
    /// Skip the comparison run against the wheel's bundled reference BLAS.
    #[arg(long)]
    no_compare: bool,
    /// Print only the f32 benchmark as JSON (used for the comparison run).
    #[arg(long, hide = true)]
    bench_json: bool,
    /// Print only the OPENBLAS_CORETYPE csm chose for this CPU (empty when
    /// OpenBLAS's own choice fits): scripts/test.sh gives it to the test
    /// binaries, which do not restart themselves as `csm` does.
    #[arg(long, hide = true)]
    print_blas_coretype: bool,
}

/// Runs `csm info`.
pub fn run(args: InfoArgs) -> Result<()> {
    if args.print_blas_coretype {
        use csm_core::runtime::blas::{kernel_origin, KernelOrigin};
        if let KernelOrigin::SetByUs { .. } = kernel_origin(|k| std::env::var_os(k)) {
            tell!("{}", runtime::openblas_core().unwrap_or_default());
        }
        return Ok(());
    }
    let backend = runtime::use_best_device();
    let budget = Duration::from_secs_f64(args.seconds.max(0.1));
    let f32_bench = runtime::matmul_gflops(args.size, Dtype::Float32, budget)
        .context("f32 matmul benchmark failed")?;
    if args.bench_json {
        tell!("{}", serde_json::to_string(&f32_bench)?);
        return Ok(());
    }
    let blas = runtime::blas_info();
    tell!("csm {}", env!("CARGO_PKG_VERSION"));
    tell!("MLX version     {}", runtime::mlx_version());
    tell!("backend         {}", backend.name());
    tell!("default device  {}", runtime::default_device());
    tell!(
        "BLAS            {}{}",
        blas.name,
        blas.path.map(|p| format!(" ({p})")).unwrap_or_default()
    );
    print_blas_kernels();
    tell!("libmlx          {}", libmlx_path());
    if backend == Backend::Cuda {
        // Set at start-up (runtime::set_process_defaults) unless the user
        // chose one: the CUDA kernels MLX compiles at run time live here.
        let dir = std::env::var_os("MLX_PTX_CACHE_DIR").unwrap_or_default();
        tell!("kernel cache    {}", std::path::Path::new(&dir).display());
    }
    if let Some(probe) = runtime::malloc_probe() {
        let from = |mmapped: bool| if mmapped { "mmap" } else { "heap" };
        tell!(
            "malloc          64 MB blocks from the {} (this thread), the {} (a new thread)",
            from(probe.this_thread_mmapped),
            from(probe.new_thread_mmapped)
        );
    }
    tell!(
        "matmul f32      {:.1} GFLOP/s  (n={}, {} iterations in {:.1} s)",
        f32_bench.gflops,
        f32_bench.n,
        f32_bench.iterations,
        args.seconds
    );
    // bf16 on the CPU backend takes a slow path (under 1 GFLOP/s): measure a
    // small size there so the report stays quick, and say so.
    let (bf16_n, note) = match backend {
        Backend::Cpu => (
            256,
            "  (CPU backend: bf16 is slow here; we train in f32 on CPU)",
        ),
        _ => (args.size.max(4096), ""),
    };
    let bf16 = runtime::matmul_gflops(bf16_n, Dtype::Bfloat16, budget)
        .context("bf16 matmul benchmark failed")?;
    tell!(
        "matmul bf16     {:.1} GFLOP/s  (n={}){note}",
        bf16.gflops,
        bf16.n
    );
    if backend == Backend::Cpu && !args.no_compare {
        compare_reference_blas(&args, f32_bench.gflops)?;
    }
    Ok(())
}

/// Which OpenBLAS kernels run, and a warning where they are narrower than
/// the CPU allows.
fn print_blas_kernels() {
    use csm_core::runtime::blas::{self, KernelOrigin};
    let Some(core) = runtime::openblas_core() else {
        return;
    };
    let cpu = blas::cpu_model().unwrap_or_else(|| "this CPU".into());
    match blas::kernel_origin(|k| std::env::var_os(k)) {
        KernelOrigin::Fits => tell!("BLAS kernels    {core} (OpenBLAS's choice for {cpu})"),
        KernelOrigin::SetByUs { chosen } => tell!(
            "BLAS kernels    {core} (set by csm: OpenBLAS chose its {chosen} kernels for {cpu})"
        ),
        KernelOrigin::Narrow(a) => {
            tell!("BLAS kernels    {core} on {cpu}");
            tracing::warn!(
                "OpenBLAS runs its {} kernels, but {cpu} supports the faster {} set: unset \
                 OPENBLAS_CORETYPE to let csm choose, or set OPENBLAS_CORETYPE={}",
                a.chosen,
                a.recommended,
                a.recommended
            );
        }
    }
}

/// Path of the libmlx this process loaded.
fn libmlx_path() -> String {
    std::fs::read_to_string("/proc/self/maps")
        .ok()
        .and_then(|maps| {
            maps.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .find(|p| p.contains("libmlx"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Re-runs the f32 benchmark in a child process whose libmlx is the wheel as
/// shipped (bundled reference BLAS), and prints both figures.
fn compare_reference_blas(args: &InfoArgs, ours: f64) -> Result<()> {
    let Some(dir) = option_env!("CSM_MLX_REFERENCE_LIB_DIR") else {
        tell!("reference BLAS  not compared (this build has no reference libmlx)");
        return Ok(());
    };
    if !std::path::Path::new(dir).join("libmlx.so").exists() {
        tell!("reference BLAS  not compared ({dir}/libmlx.so is missing)");
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot locate the csm executable")?;
    let output = Command::new(exe)
        .args(["info", "--bench-json", "--no-compare"])
        .arg("--seconds")
        .arg(args.seconds.to_string())
        .arg("--size")
        .arg(args.size.to_string())
        .env("LD_LIBRARY_PATH", dir)
        .output()
        .context("could not start the reference-BLAS benchmark")?;
    if !output.status.success() {
        anyhow::bail!(
            "reference-BLAS benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let bench: serde_json::Value = serde_json::from_slice(&output.stdout)
        .context("reference-BLAS benchmark printed no JSON")?;
    let reference = bench["gflops"].as_f64().unwrap_or(f64::NAN);
    tell!(
        "matmul f32 with the wheel's reference BLAS: {reference:.1} GFLOP/s -> this build is {:.1}x faster",
        ours / reference
    );
    Ok(())
}
