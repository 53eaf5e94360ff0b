//! What MLX runs on: version, backend, device, BLAS, memory, and a matmul
//! micro-benchmark. `csm info` prints these for bug reports.

pub mod blas;

use std::ffi::{CStr, OsString};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mlx_rs::{random, Array, Device, Dtype};

/// The compute backend of the loaded libmlx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// CPU only (Linux `mlx-cpu` wheel).
    Cpu,
    /// NVIDIA GPU (Linux `mlx-cuda-13` wheel).
    Cuda,
    /// Apple GPU (macOS `mlx-metal` wheel).
    Metal,
}

impl Backend {
    /// Asks libmlx which GPU backend it was built with, if any.
    pub fn detect() -> Backend {
        let mut metal = false;
        let mut cuda = false;
        // SAFETY: both functions only write a bool through the pointer.
        unsafe {
            mlx_sys::mlx_metal_is_available(&mut metal);
            mlx_sys::mlx_cuda_is_available(&mut cuda);
        }
        if metal {
            Backend::Metal
        } else if cuda {
            Backend::Cuda
        } else {
            Backend::Cpu
        }
    }

    /// Lower-case name (`cpu`, `cuda`, `metal`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Metal => "metal",
        }
    }

    /// Whether a GPU device is available.
    pub fn has_gpu(self) -> bool {
        self != Backend::Cpu
    }

    /// The compute dtype we train and generate in by default: f32 on CPU,
    /// bf16 on GPUs. On a CPU, bf16 training would widen every weight for
    /// its products and keep the copies for the backward; bf16 generation
    /// is faster and leaner there (`csm generate --dtype bf16`), but f32
    /// stays the default so that CPU results are the ones the f32 parity
    /// tests check.
    pub fn default_dtype(self) -> Dtype {
        if self.has_gpu() {
            Dtype::Bfloat16
        } else {
            Dtype::Float32
        }
    }
}

/// Version string of the loaded libmlx (e.g. `0.32.2`).
pub fn mlx_version() -> String {
    // SAFETY: mlx_string_new/mlx_version/mlx_string_data/mlx_string_free are
    // used as documented: the string is owned here and freed once.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        mlx_sys::mlx_version(&mut s);
        let text = CStr::from_ptr(mlx_sys::mlx_string_data(s))
            .to_string_lossy()
            .into_owned();
        mlx_sys::mlx_string_free(s);
        text
    }
}

/// The default device as MLX prints it (e.g. `Device(gpu, 0)`).
pub fn default_device() -> String {
    match Device::try_default() {
        Ok(device) => format!("{device}"),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Whether MLX's default device is the CPU.
pub fn default_device_is_cpu() -> bool {
    matches!(
        Device::try_default().and_then(|d| d.get_type()),
        Ok(mlx_rs::DeviceType::Cpu)
    )
}

/// MLX settings this program needs, as `(variable, value)`: see
/// [`set_process_defaults`].
#[cfg(not(target_os = "macos"))]
pub const MLX_ENV_DEFAULTS: [(&str, &str); 3] = [
    // Commit GPU work more often than MLX's default, so intermediate
    // buffers are freed sooner (MLX 0.31-0.32's CUDA backend counts this
    // limit in input elements of the ops, weights included, despite the
    // name). H100, bf16, CSM-1B
    // step with the depth decoder on every frame: peak 7.56 -> 5.33 GB at
    // the same speed (docs/benchmarks.md). No effect on the CPU.
    ("MLX_MAX_MB_PER_BUFFER", "32"),
    // Mimi runs its ~30 convs on inputs of every utterance's length; MLX's
    // CUDA backend keeps 128 conv plans by default and aborts the whole
    // computation ("Cache thrashing is happening") once shapes start to
    // cycle through that cache, e.g. while encoding a dataset.
    ("MLX_CUDA_CONV_CACHE_SIZE", "2048"),
    // Thrashing costs speed, never correctness: report nothing rather than
    // fail a run with it.
    ("MLX_ENABLE_CACHE_THRASHING_CHECK", "0"),
];

/// MLX settings this program needs (macOS: Metal's own buffer sizing is
/// kept, as it could not be measured here).
#[cfg(target_os = "macos")]
pub const MLX_ENV_DEFAULTS: [(&str, &str); 0] = [];

/// csm's cache folder, from the variables `lookup` gives (the `csm` tool
/// and the app pass `|k| std::env::var_os(k)`): `$CSM_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/csm`, else `$HOME/.cache/csm`, else `csm` in the
/// temporary directory (`$TMPDIR`, else `/tmp`).
pub fn cache_root(lookup: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    if let Some(d) = lookup("CSM_CACHE_DIR") {
        return PathBuf::from(d);
    }
    lookup("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| lookup("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .or_else(|| lookup("TMPDIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("csm")
}

/// Where MLX's CUDA backend keeps the kernels it compiles at run time
/// (`MLX_PTX_CACHE_DIR`): `mlx-ptx/<MLX version>` in [`cache_root`]. MLX's
/// own default is under the temporary directory, which a reboot empties:
/// the first compiled training step then spent 94-133 s compiling kernels
/// again on an H100 (docs/benchmarks.md), and under a second once they
/// were cached. The version keeps one MLX's kernels from another's.
pub fn mlx_kernel_cache_dir(lookup: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    cache_root(lookup).join("mlx-ptx").join(mlx_version())
}

/// Sets [`MLX_ENV_DEFAULTS`] in this process's environment, and outside
/// macOS `MLX_PTX_CACHE_DIR` to [`mlx_kernel_cache_dir`], leaving any the
/// user already set (`lookup` reads the environment: the `csm` tool and the
/// app pass `|k| std::env::var_os(k)`), and tunes glibc's allocator for
/// MLX's CPU backend (the private `keep_freed_memory`). MLX reads the
/// variables when a backend cache is first built, so call this first thing
/// in `main`, before any MLX work and before other threads start (the `csm`
/// tool and the app do).
///
/// This is the one function of csm-core that touches the environment, on
/// purpose: it is process set-up that only a binary's `main` calls, not
/// something a job does. MLX takes these settings from environment
/// variables only (mlx-c has no API for them), so the library that knows
/// the values writes them for its dependency, once, before MLX starts; it
/// reads `GLIBC_TUNABLES` only to leave a user's own malloc tuning alone.
/// Jobs (training, preparing, evaluating, generating) read no variables:
/// their settings are passed in (see `train::RunSettings`).
pub fn set_process_defaults(lookup: impl Fn(&str) -> Option<OsString>) {
    for (key, value) in MLX_ENV_DEFAULTS {
        if lookup(key).is_none() {
            std::env::set_var(key, value);
        }
    }
    if cfg!(not(target_os = "macos")) && lookup("MLX_PTX_CACHE_DIR").is_none() {
        std::env::set_var("MLX_PTX_CACHE_DIR", mlx_kernel_cache_dir(&lookup));
    }
    keep_freed_memory();
}

/// Makes glibc's `malloc` keep freed memory for reuse instead of handing it
/// back to the kernel, unless the user tuned malloc through
/// `GLIBC_TUNABLES`.
///
/// MLX's CPU allocator hands every array to `malloc`, and glibc serves
/// blocks over 32 MB with a fresh `mmap` that it unmaps on `free`. A
/// training step's activations are such blocks, so every step faulted in
/// (and the kernel zeroed) gigabytes of new pages. Serving them from the
/// heap and trimming its top only past 2 GB: CSM-1B step with the depth
/// decoder on every frame on this project's 2-core machine, 15.75 -> 14.40
/// s, 6.98 M -> 2.57 M page faults over a 4-step run, peak RSS 10.07 ->
/// 10.40 GB
/// (docs/benchmarks.md). Disabling `mmap` alone gave 14.03 s: the trim
/// threshold matters too. The freed memory stays with the process until
/// [`release_free_memory`].
///
/// One arena for all threads: glibc caps every other arena's heap at 64 MB
/// and `mmap`s larger blocks there whatever the settings, so the app's
/// training thread would not benefit. This must run before other threads
/// allocate (first thing in `main`); [`malloc_probe`] checks the result.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
        if !tuned {
            // SAFETY: mallopt only changes allocator parameters; it is safe
            // to call at any time.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 1);
                libc::mallopt(libc::M_MMAP_MAX, 0);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
        }
    }
}

/// Where glibc's `malloc` takes a 64 MB block from: [`malloc_probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MallocProbe {
    /// The block came from a fresh `mmap` on the calling thread.
    pub this_thread_mmapped: bool,
    /// The block came from a fresh `mmap` on a thread started for the probe.
    pub new_thread_mmapped: bool,
}

/// Allocates a 64 MB block on this thread and on a new one and reports
/// whether glibc `mmap`ed them (its default) or served them from the heap
/// (after [`set_process_defaults`]). `None` where the C library is not
/// glibc.
pub fn malloc_probe() -> Option<MallocProbe> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        fn mmapped_64_mb() -> bool {
            // SAFETY: mallinfo2 only reads allocator statistics.
            let before = unsafe { libc::mallinfo2() }.hblkhd;
            let block = std::hint::black_box(vec![1u8; 64 << 20]);
            // SAFETY: as above.
            let during = unsafe { libc::mallinfo2() }.hblkhd;
            drop(block);
            during.saturating_sub(before) >= 64 << 20
        }
        let this_thread_mmapped = mmapped_64_mb();
        let new_thread_mmapped = std::thread::spawn(mmapped_64_mb).join().ok()?;
        Some(MallocProbe {
            this_thread_mmapped,
            new_thread_mmapped,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Hands the free memory the allocator keeps (see [`set_process_defaults`])
/// back to the kernel; the app calls it when a training or generation job
/// ends. A no-op where there is nothing to release.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes the GPU the default device when the backend has one, otherwise the
/// CPU. Returns the backend.
pub fn use_best_device() -> Backend {
    use_device(DeviceChoice::Best)
}

/// Which device a job runs on; the caller chooses (the library never
/// guesses from the environment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The GPU when libmlx has one, otherwise the CPU.
    #[default]
    Best,
    /// The CPU, even where a GPU is available.
    Cpu,
}

/// Makes `choice` MLX's default device. Returns the backend the job runs
/// on ([`Backend::Cpu`] for [`DeviceChoice::Cpu`]), whose
/// [`Backend::default_dtype`] is the one to compute in.
pub fn use_device(choice: DeviceChoice) -> Backend {
    let backend = match choice {
        DeviceChoice::Best => Backend::detect(),
        DeviceChoice::Cpu => Backend::Cpu,
    };
    if backend.has_gpu() {
        Device::set_default(&Device::gpu());
    } else {
        Device::set_default(&Device::cpu());
    }
    backend
}

/// Memory MLX currently holds in arrays, in bytes.
pub fn active_memory() -> usize {
    let mut n = 0usize;
    // SAFETY: writes one usize.
    unsafe { mlx_sys::mlx_get_active_memory(&mut n) };
    n
}

/// Peak of [`active_memory`] since start or the last [`reset_peak_memory`].
pub fn peak_memory() -> usize {
    let mut n = 0usize;
    // SAFETY: writes one usize.
    unsafe { mlx_sys::mlx_get_peak_memory(&mut n) };
    n
}

/// Resets the peak memory counter.
pub fn reset_peak_memory() {
    // SAFETY: no arguments.
    unsafe { mlx_sys::mlx_reset_peak_memory() };
}

/// MLX's memory limit, set for a scope and restored on drop. Over the
/// limit, `eval` waits for tasks in flight before it starts another, so a
/// limit under what is resident runs the graph one task at a time: tests
/// use that to make peaks repeatable.
#[cfg(test)]
pub(crate) struct MemoryLimit(usize);

#[cfg(test)]
impl MemoryLimit {
    /// Sets the limit to `bytes`, keeping the previous one to restore.
    pub(crate) fn set(bytes: usize) -> Self {
        let mut previous = 0usize;
        // SAFETY: writes one usize.
        unsafe { mlx_sys::mlx_set_memory_limit(&mut previous, bytes) };
        MemoryLimit(previous)
    }
}

#[cfg(test)]
impl Drop for MemoryLimit {
    fn drop(&mut self) {
        let mut ignored = 0usize;
        // SAFETY: writes one usize.
        unsafe { mlx_sys::mlx_set_memory_limit(&mut ignored, self.0) };
    }
}

/// Frees the buffers MLX's allocator keeps for reuse (not the arrays in
/// use): between jobs, or before measuring what one needs.
pub fn clear_mlx_cache() {
    // SAFETY: no arguments.
    unsafe { mlx_sys::mlx_clear_cache() };
}

/// Memory of the device MLX computes on, in bytes, and where the figure
/// comes from: a GPU's own memory as MLX reports it (`total_memory` on
/// CUDA; on Metal the recommended working set, the most a process should
/// use of the shared memory), or the machine's RAM for the CPU.
pub fn device_memory() -> Option<(u64, &'static str)> {
    if default_device_is_cpu() {
        return system_memory().map(|b| (b, "system RAM"));
    }
    let keys: [(&str, &'static str); 3] = [
        (
            "max_recommended_working_set_size",
            "Metal recommended working set",
        ),
        ("total_memory", "GPU memory"),
        ("memory_size", "GPU memory"),
    ];
    // SAFETY: fresh device and info handles, filled by mlx-c for the
    // default device, read and freed here.
    unsafe {
        let mut dev = mlx_sys::mlx_device_new();
        let mut info = mlx_sys::mlx_device_info_new();
        let found = if mlx_sys::mlx_get_default_device(&mut dev) == 0
            && mlx_sys::mlx_device_info_get(&mut info, dev) == 0
        {
            keys.iter().find_map(|(key, what)| {
                let name = std::ffi::CString::new(*key).ok()?;
                let mut has = false;
                mlx_sys::mlx_device_info_has_key(&mut has, info, name.as_ptr());
                if !has {
                    return None;
                }
                let mut size = 0usize;
                (mlx_sys::mlx_device_info_get_size(&mut size, info, name.as_ptr()) == 0 && size > 0)
                    .then_some((size as u64, *what))
            })
        } else {
            None
        };
        mlx_sys::mlx_device_info_free(info);
        mlx_sys::mlx_device_free(dev);
        found
    }
}

/// Physical memory of the machine, in bytes.
fn system_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system parameters.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && size > 0).then(|| pages as u64 * size as u64)
}

/// The BLAS library the process actually has mapped, resolved through
/// symlinks (Linux: from `/proc/self/maps`), with a short human label.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlasInfo {
    /// `OpenBLAS`, `reference BLAS`, `Accelerate`, or `unknown`.
    pub name: String,
    /// Path of the mapped library, when known.
    pub path: Option<String>,
}

/// Detects the BLAS behind libmlx (call after any MLX operation has run).
pub fn blas_info() -> BlasInfo {
    if cfg!(target_os = "macos") {
        return BlasInfo {
            name: "Accelerate".into(),
            path: None,
        };
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            let file = p.rsplit('/').next().unwrap_or(p);
            file.contains("blas")
        })
        .collect();
    libs.sort();
    libs.dedup();
    if let Some(p) = libs.iter().find(|p| p.contains("cublas")) {
        return BlasInfo {
            name: "cuBLAS (GPU)".into(),
            path: Some(p.to_string()),
        };
    }
    let open = libs.iter().find(|p| p.contains("openblas"));
    let reference = libs.iter().find(|p| p.contains("mlx_cpu.libs"));
    match (open, reference) {
        (Some(p), _) => BlasInfo {
            name: "OpenBLAS".into(),
            path: Some(p.to_string()),
        },
        (None, Some(p)) => BlasInfo {
            name: "reference BLAS (bundled with the mlx-cpu wheel)".into(),
            path: Some(p.to_string()),
        },
        _ => BlasInfo {
            name: if libs.is_empty() {
                "none mapped"
            } else {
                "other"
            }
            .into(),
            path: libs.first().map(|p| p.to_string()),
        },
    }
}

/// OpenBLAS's entry points for its thread count, found at run time so
/// that a process whose BLAS is something else (Accelerate, the wheel's
/// reference BLAS) simply has none.
#[cfg(target_os = "linux")]
#[derive(Debug, Clone, Copy)]
struct OpenblasThreads {
    get: unsafe extern "C" fn() -> std::ffi::c_int,
    set: unsafe extern "C" fn(std::ffi::c_int),
}

#[cfg(target_os = "linux")]
impl OpenblasThreads {
    fn find() -> Option<Self> {
        // SAFETY: dlsym with RTLD_DEFAULT only looks symbols up in the
        // libraries already loaded; the names are NUL-terminated.
        let (get, set) = unsafe {
            (
                libc::dlsym(libc::RTLD_DEFAULT, c"openblas_get_num_threads".as_ptr()),
                libc::dlsym(libc::RTLD_DEFAULT, c"openblas_set_num_threads".as_ptr()),
            )
        };
        if get.is_null() || set.is_null() {
            return None;
        }
        // SAFETY: OpenBLAS declares these as `int openblas_get_num_threads(void)`
        // and `void openblas_set_num_threads(int)`.
        unsafe {
            Some(Self {
                get: std::mem::transmute::<
                    *mut libc::c_void,
                    unsafe extern "C" fn() -> std::ffi::c_int,
                >(get),
                set: std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn(std::ffi::c_int)>(
                    set,
                ),
            })
        }
    }
}

/// The kernel set OpenBLAS picked for this CPU (`openblas_get_corename`:
/// "Haswell", "Zen", "SkylakeX", "Cooperlake"...; `OPENBLAS_CORETYPE`
/// overrides it) when it is the process's BLAS (Linux).
pub fn openblas_core() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: dlsym with RTLD_DEFAULT only looks symbols up in the
        // libraries already loaded; the name is NUL-terminated.
        let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"openblas_get_corename".as_ptr()) };
        if f.is_null() {
            return None;
        }
        // SAFETY: OpenBLAS declares `char *openblas_get_corename(void)`,
        // returning a static NUL-terminated name.
        let name = unsafe {
            let f = std::mem::transmute::<
                *mut libc::c_void,
                unsafe extern "C" fn() -> *const std::ffi::c_char,
            >(f);
            let p = f();
            if p.is_null() {
                return None;
            }
            std::ffi::CStr::from_ptr(p)
        };
        Some(name.to_string_lossy().into_owned())
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Whether OpenBLAS runs AVX-512 kernels (its SkylakeX, Cooperlake and
/// SapphireRapids kernel sets). Those are about 1.5x faster than AVX2 ones
/// (377 against 220 GFLOP/s for a 1024 product on the project's EPYC).
pub fn openblas_has_avx512_kernels() -> bool {
    openblas_core().is_some_and(|core| blas::tier_of(&core) == blas::Tier::Avx512)
}

/// The thread count of OpenBLAS when it is the process's BLAS (Linux).
pub fn openblas_threads() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a plain getter.
        OpenblasThreads::find().map(|t| unsafe { (t.get)() }.max(0) as usize)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Runs OpenBLAS on one thread while alive, then gives it back the thread
/// count it had. Nothing happens where OpenBLAS is not the BLAS.
///
/// For the CPU's frame-by-frame generation and training: their weight
/// products go through this crate's matmul primitives (`kernels`),
/// which have their own threads, and what is left for OpenBLAS is small
/// (attention, LoRA's rank-r factors). After a threaded call, OpenBLAS's
/// idle workers spin in `sched_yield` for a while, on the cores the next
/// product needs: 38% of a CSM-1B generation profile on 2 cores; without
/// them 513-533 -> 444-469 ms a frame (docs/benchmarks.md). Next to the
/// many-row primitive they took half its speed. One-row products keep their
/// bits; products of many rows may round differently, as OpenBLAS blocks
/// the sum over K differently on one thread (a test checks both).
///
/// The count is process-wide. Guards may overlap (the app can speak two
/// samples at once, or while it trains): the first sets one thread, the
/// last gives the count back. OpenBLAS reads the count when a call starts,
/// so a call already running on another thread keeps its threads.
#[must_use = "OpenBLAS gets its threads back when the guard drops"]
#[derive(Debug)]
pub struct SingleThreadBlas {
    #[cfg(target_os = "linux")]
    threads: Option<OpenblasThreads>,
}

/// Live [`SingleThreadBlas`] guards and the count to give back after the
/// last one.
#[cfg(target_os = "linux")]
static SINGLE_THREAD_BLAS: std::sync::Mutex<(usize, std::ffi::c_int)> =
    std::sync::Mutex::new((0, 0));

impl SingleThreadBlas {
    /// Sets OpenBLAS to one thread (if it is the BLAS and no guard already did).
    pub fn new() -> Self {
        #[cfg(target_os = "linux")]
        {
            let threads = OpenblasThreads::find();
            if let Some(t) = threads {
                let mut live = SINGLE_THREAD_BLAS.lock().unwrap_or_else(|e| e.into_inner());
                if live.0 == 0 {
                    // SAFETY: plain getter and setter of OpenBLAS's count.
                    live.1 = unsafe { (t.get)() };
                    unsafe { (t.set)(1) };
                }
                live.0 += 1;
            }
            Self { threads }
        }
        #[cfg(not(target_os = "linux"))]
        Self {}
    }
}

impl Default for SingleThreadBlas {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SingleThreadBlas {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(t) = self.threads {
            let mut live = SINGLE_THREAD_BLAS.lock().unwrap_or_else(|e| e.into_inner());
            live.0 -= 1;
            if live.0 == 0 {
                // SAFETY: as in `new`.
                unsafe { (t.set)(live.1) };
            }
        }
    }
}

/// Result of [`matmul_gflops`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct MatmulBench {
    /// Matrix size (n x n times n x n).
    pub n: i32,
    /// Dtype of the operands.
    pub dtype: String,
    /// Timed iterations.
    pub iterations: u32,
    /// Achieved GFLOP/s (2 n^3 flops per matmul).
    pub gflops: f64,
}

/// Times `n x n` matmuls of `dtype` on the default device for about
/// `budget` (after one warm-up) and reports GFLOP/s.
pub fn matmul_gflops(
    n: i32,
    dtype: Dtype,
    budget: Duration,
) -> Result<MatmulBench, mlx_rs::error::Exception> {
    let a = random::normal::<f32>(&[n, n], None, None, None)?.as_dtype(dtype)?;
    let b = random::normal::<f32>(&[n, n], None, None, None)?.as_dtype(dtype)?;
    a.eval()?;
    b.eval()?;
    a.matmul(&b)?.eval()?;
    let start = Instant::now();
    let mut iterations = 0u32;
    while start.elapsed() < budget || iterations == 0 {
        // Chain a few matmuls per eval so launch overhead does not dominate
        // on GPUs.
        let mut outs: Vec<Array> = Vec::with_capacity(4);
        for _ in 0..4 {
            outs.push(a.matmul(&b)?);
        }
        mlx_rs::transforms::eval(outs.iter())?;
        iterations += 4;
    }
    let secs = start.elapsed().as_secs_f64();
    let flops = 2.0 * (n as f64).powi(3) * iterations as f64;
    Ok(MatmulBench {
        n,
        dtype: format!("{dtype:?}"),
        iterations,
        gflops: flops / secs / 1e9,
    })
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use mlx_rs::{random, Array};
    use std::ffi::OsString;
    use std::path::PathBuf;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    /// csm's cache folder follows `CSM_CACHE_DIR`, then the XDG folder, then
    /// `~/.cache`, then the temporary directory; the codes cache and MLX's
    /// kernel cache live in it, the kernels under MLX's version.
    #[test]
    fn cache_folders_follow_the_variables_in_order() {
        let all = vars(&[
            ("CSM_CACHE_DIR", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
            ("TMPDIR", "/t"),
        ]);
        assert_eq!(super::cache_root(&all), PathBuf::from("/c"));
        let cases = [
            (vars(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]), "/x/csm"),
            (vars(&[("HOME", "/h"), ("TMPDIR", "/t")]), "/h/.cache/csm"),
            (vars(&[("TMPDIR", "/t")]), "/t/csm"),
            (vars(&[]), "/tmp/csm"),
        ];
        for (lookup, want) in cases {
            assert_eq!(super::cache_root(lookup), PathBuf::from(want));
        }
        let version = super::mlx_version();
        assert!(!version.is_empty());
        assert_eq!(
            super::mlx_kernel_cache_dir(&all),
            PathBuf::from("/c/mlx-ptx").join(&version)
        );
        assert_eq!(
            crate::train::codes::CodesCache::default_dir(vars(&[("HOME", "/h")])),
            PathBuf::from("/h/.cache/csm/codes")
        );
    }

    /// The guard sets one thread and the last of overlapping guards gives
    /// the count back; one-row products (a frame step's) keep their bits
    /// and products of many rows differ in rounding only.
    #[test]
    fn single_thread_blas_restores_the_count_and_keeps_one_row_bits() {
        let t = super::OpenblasThreads::find()
            .expect("OpenBLAS is this project's BLAS on Linux, but its thread API was not found");
        // Two threads to start with, so that giving the count back shows.
        // SAFETY: OpenBLAS's setter.
        unsafe { (t.set)(2) };
        let before = super::openblas_threads();
        assert_eq!(before, Some(2));
        let shapes = [
            (151, 2048, 512),
            (33, 1024, 2051),
            (1, 64, 151),
            (1, 300, 64),
        ];
        let operands: Vec<(Array, Array)> = shapes
            .iter()
            .map(|&(m, k, n)| {
                let x = random::normal::<f32>(&[m, k], None, None, None).unwrap();
                let w = random::normal::<f32>(&[n, k], None, None, None).unwrap();
                (x, w)
            })
            .collect();
        let products = || -> Vec<Vec<f32>> {
            operands
                .iter()
                .map(|(x, w)| {
                    let y = x.matmul(w.t()).unwrap();
                    y.eval().unwrap();
                    y.as_slice::<f32>().to_vec()
                })
                .collect()
        };
        let many = products();
        let one = {
            let first = super::SingleThreadBlas::new();
            assert_eq!(super::openblas_threads(), Some(1));
            // Overlapping guards: the first one to end leaves one thread.
            let second = super::SingleThreadBlas::new();
            drop(first);
            assert_eq!(super::openblas_threads(), Some(1));
            let one = products();
            drop(second);
            one
        };
        for ((m, k, n), (a, b)) in shapes.iter().zip(many.iter().zip(&one)) {
            let worst = a
                .iter()
                .zip(b)
                .map(|(a, b)| ((a - b) / a.abs().max(1.0)).abs())
                .fold(0f32, f32::max);
            // One row (a frame step's attention) is bit-equal; more rows may
            // round differently, since OpenBLAS blocks K differently.
            let tolerance = if *m == 1 { 0.0 } else { 1e-4 };
            assert!(
                worst <= tolerance,
                "[{m}, {k}] x [{k}, {n}]: one OpenBLAS thread differs by {worst:e} (relative)"
            );
        }
        assert_eq!(super::openblas_threads(), before);
    }

    /// The probe sees glibc's default (the test harness never calls
    /// `set_process_defaults`; `csm info`'s test checks the tuned case).
    #[test]
    fn malloc_probe_sees_glibc_mmap_big_blocks_by_default() {
        let probe = super::malloc_probe().unwrap();
        assert!(
            probe.this_thread_mmapped && probe.new_thread_mmapped,
            "{probe:?}"
        );
    }
}
