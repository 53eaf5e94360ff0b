//! Kernels written for NVIDIA GPUs, run through MLX's `fast::cuda_kernel`
//! (compiled by NVRTC on first use and kept in MLX's kernel cache), where
//! MLX's own ops make two passes over memory for what is one:
//!
//! - [`swiglu_grad`]: both SwiGLU input gradients in one pass. Under
//!   `mx.compile` MLX fuses each gradient into a kernel of its own, which
//!   reads `gate`, `up` and the cotangent again: on an H100 (CSM-1B, 16 x
//!   250 frames, depth decoder on every frame) the two took 24.1 ms a step
//!   against 13.7 ms for PyTorch's one compiled kernel (2026-12-07,
//!   bench/ktrace).
//! - [`rope_transposed`]: RoPE that reads the projection's `[B, L, H, hd]`
//!   layout and writes attention's `[B, H, L, hd]` (and back, for the
//!   gradient). MLX's `fast::rope` copies a transposed 4-D input into place
//!   first and then rotates it there, two passes; with the Llama 3 periods
//!   its kernel also ran far from the card's bandwidth (7.6 ms a step over
//!   about 80 calls on the same H100 case).
//!
//! - [`cross_entropy`]: the loss's cross-entropy from one read of the
//!   logits, and its gradient in one pass, zero over padded columns.
//! - [`lora_expand_add`]: a LoRA adapter's rank-`r` product added to the
//!   frozen projection's output (and the adapters' share of the input
//!   gradient to the frozen one's), in f32 and rounded once. MLX runs it
//!   as an f32 GEMM with an inner dimension of `r`, then a scale, a cast
//!   and an add; on an H100 cuBLAS picked TF32 kernels for some of those
//!   GEMMs that launch in clusters MLX cannot update in a CUDA graph, so
//!   every step rebuilt 20 graphs on the host (2026-12-07, seventh
//!   session, bench/host_gaps.py). Its first form removed 16 of the 20 but
//!   was slower on the GPU than cuBLAS (each thread read `w` 8 values
//!   apart); this one reads `w` as 16-byte vectors. In a trace on an H100
//!   (eighth session, 8 x 130 frames on every frame) the GPU idled 5.8 ms
//!   within a step and was busy 55.2 ms, against 16.5-29 ms idle and 54.3
//!   ms busy without the kernel on other H100s (seventh session).
//!
//! Each kernel computes in f32 from the stored dtype and rounds once on
//! store. The unit tests run the bodies on the CPU through a C++ shim
//! against MLX's ops; `csm gpu-check` runs them compiled by NVRTC on a GPU
//! against MLX's ops there. On an H100 (2026-12-07, sixth session) the
//! first four agreed with MLX's ops, and with the aligned heads they took
//! that case's step from 0.232 s to 0.209 s, each paying when left out of
//! the four; the fifth paid in the eighth session:
//! [`crate::model::TrainKernels::for_device`] turns all five on under CUDA.
//! Metal has no twin: macOS keeps MLX's ops.

use std::ffi::CString;

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

use crate::ffi::{apply_custom_vjp_first, mlx_call, vector_arrays};

/// Threads per block for the kernels of this module.
const BLOCK: i32 = 256;

/// A CUDA kernel body and its arguments' names, for `fast::cuda_kernel`
/// (which writes the signature: inputs, their `_shape` and `_ndim` where
/// the body uses them, then outputs).
struct Kernel {
    name: &'static str,
    inputs: &'static [&'static str],
    outputs: &'static [&'static str],
    source: &'static str,
}

/// How one call of a [`Kernel`] runs.
struct Launch<'a> {
    /// Shape and dtype of each output.
    outputs: Vec<(Vec<i32>, Dtype)>,
    /// Threads in all (x only): MLX launches `ceil(threads / BLOCK)` blocks.
    threads: i64,
    /// Compile-time constants of the body, by name.
    template: &'a [(&'static str, Template)],
}

/// A compile-time constant of a kernel body.
#[derive(Clone, Copy)]
enum Template {
    /// `using NAME = <type>;`
    Type(Dtype),
    /// `constexpr bool NAME = ...;`
    Bool(bool),
    /// `constexpr int NAME = ...;`
    Int(i32),
}

/// FNV-1a of the source, in the kernel's name: MLX caches compiled kernels
/// by name (on disk too), so an edited body must not meet its old build.
fn source_tag(source: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in source.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}

fn c_string(s: &str) -> Result<CString, Exception> {
    CString::new(s).map_err(|_| Exception::custom(format!("NUL byte in {s:?}")))
}

/// Owns the mlx-c handles of one kernel call and frees them on drop.
struct Handles {
    kernel: mlx_sys::mlx_fast_cuda_kernel,
    config: mlx_sys::mlx_fast_cuda_kernel_config,
    names: [mlx_sys::mlx_vector_string; 2],
    inputs: mlx_sys::mlx_vector_array,
    outputs: mlx_sys::mlx_vector_array,
    stream: mlx_sys::mlx_stream,
}

impl Drop for Handles {
    fn drop(&mut self) {
        // SAFETY: every handle was created in `Kernel::apply` and is freed
        // once; mlx-c accepts freeing empty handles.
        unsafe {
            mlx_sys::mlx_fast_cuda_kernel_free(self.kernel);
            mlx_sys::mlx_fast_cuda_kernel_config_free(self.config);
            for n in self.names {
                mlx_sys::mlx_vector_string_free(n);
            }
            mlx_sys::mlx_vector_array_free(self.inputs);
            mlx_sys::mlx_vector_array_free(self.outputs);
            mlx_sys::mlx_stream_free(self.stream);
        }
    }
}

impl Kernel {
    /// Adds the kernel to the graph on the default GPU stream.
    fn apply(&self, inputs: &[Array], launch: &Launch<'_>) -> Result<Vec<Array>, Exception> {
        let fail = |what: &str, m: String| Exception::custom(format!("{} {what}: {m}", self.name));
        let name = c_string(&format!("{}_{}", self.name, source_tag(self.source)))?;
        let source = c_string(self.source)?;
        let header = c_string("")?;
        let names = |list: &[&str]| -> Result<mlx_sys::mlx_vector_string, Exception> {
            let owned = list
                .iter()
                .map(|s| c_string(s))
                .collect::<Result<Vec<_>, _>>()?;
            let mut ptrs: Vec<*const std::ffi::c_char> = owned.iter().map(|s| s.as_ptr()).collect();
            // SAFETY: `ptrs` point into `owned`, alive for the call; the
            // vector copies the strings.
            Ok(unsafe { mlx_sys::mlx_vector_string_new_data(ptrs.as_mut_ptr(), ptrs.len()) })
        };
        let handles: Vec<mlx_sys::mlx_array> = inputs.iter().map(Array::as_ptr).collect();
        // SAFETY: fresh handles, freed by `Handles::drop`; the input vector
        // takes its own references to the live arrays.
        let mut h = unsafe {
            Handles {
                kernel: mlx_sys::mlx_fast_cuda_kernel {
                    ctx: std::ptr::null_mut(),
                },
                config: mlx_sys::mlx_fast_cuda_kernel_config_new(),
                names: [names(self.inputs)?, names(self.outputs)?],
                inputs: mlx_sys::mlx_vector_array_new_data(handles.as_ptr(), handles.len()),
                outputs: mlx_sys::mlx_vector_array_new(),
                stream: mlx_sys::mlx_default_gpu_stream_new(),
            }
        };
        let (in_names, out_names) = (h.names[0], h.names[1]);
        let kernel = &mut h.kernel;
        // SAFETY: live name vectors and strings. `true`: MLX copies inputs
        // that are not row-contiguous, as the bodies index them so.
        mlx_call(|| {
            *kernel = unsafe {
                mlx_sys::mlx_fast_cuda_kernel_new(
                    name.as_ptr(),
                    in_names,
                    out_names,
                    source.as_ptr(),
                    header.as_ptr(),
                    true,
                    0,
                )
            };
            i32::from(kernel.ctx.is_null())
        })
        .map_err(|m| fail("new", m))?;
        let threads = i32::try_from(launch.threads)
            .map_err(|_| fail("launch", format!("{} threads is too many", launch.threads)))?;
        let config = h.config;
        for (shape, dtype) in &launch.outputs {
            // SAFETY: live config; the shape is copied.
            mlx_call(|| unsafe {
                mlx_sys::mlx_fast_cuda_kernel_config_add_output_arg(
                    config,
                    shape.as_ptr(),
                    shape.len(),
                    *dtype as mlx_sys::mlx_dtype,
                )
            })
            .map_err(|m| fail("output", m))?;
        }
        for (tname, value) in launch.template {
            let t = c_string(tname)?;
            let t = t.as_ptr();
            // SAFETY: live config and string.
            mlx_call(|| unsafe {
                match *value {
                    Template::Type(d) => {
                        mlx_sys::mlx_fast_cuda_kernel_config_add_template_arg_dtype(
                            config,
                            t,
                            d as mlx_sys::mlx_dtype,
                        )
                    }
                    Template::Bool(v) => {
                        mlx_sys::mlx_fast_cuda_kernel_config_add_template_arg_bool(config, t, v)
                    }
                    Template::Int(v) => {
                        mlx_sys::mlx_fast_cuda_kernel_config_add_template_arg_int(config, t, v)
                    }
                }
            })
            .map_err(|m| fail("template", m))?;
        }
        // SAFETY: live config.
        mlx_call(|| unsafe {
            mlx_sys::mlx_fast_cuda_kernel_config_set_grid(config, threads.max(1), 1, 1)
        })
        .map_err(|m| fail("grid", m))?;
        // SAFETY: live config.
        mlx_call(|| unsafe {
            mlx_sys::mlx_fast_cuda_kernel_config_set_thread_group(config, BLOCK, 1, 1)
        })
        .map_err(|m| fail("block", m))?;
        let (kernel, ins, stream) = (h.kernel, h.inputs, h.stream);
        let outs = &mut h.outputs;
        // SAFETY: live handles; `outs` is the out-parameter.
        mlx_call(|| unsafe {
            mlx_sys::mlx_fast_cuda_kernel_apply(outs, kernel, ins, config, stream)
        })
        .map_err(|m| fail("apply", m))?;
        // SAFETY: `h.outputs` was filled by the call above.
        unsafe { vector_arrays(h.outputs) }.map_err(|m| fail("outputs", m))
    }
}

/// Both gradients of `silu(gate) * up` for the cotangent `cot`, in one
/// pass: 16 bytes of each input per thread.
const SWIGLU_GRAD: Kernel = Kernel {
    name: "csm_swiglu_grad",
    inputs: &["gate", "up", "cot"],
    outputs: &["d_gate", "d_up"],
    source: r#"
  constexpr int V = 16 / sizeof(T);
  size_t n = 1;
  for (int d = 0; d < gate_ndim; ++d) n *= gate_shape[d];
  size_t i = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (i >= n) return;
  int m = n - i < V ? int(n - i) : V;
  bool aligned = ((size_t(gate) | size_t(up) | size_t(cot)) % 16) == 0;
  alignas(16) T g[V];
  alignas(16) T u[V];
  alignas(16) T c[V];
  alignas(16) T dg[V];
  alignas(16) T du[V];
  if (m == V && aligned) {
    *reinterpret_cast<uint4*>(g) = *reinterpret_cast<const uint4*>(gate + i);
    *reinterpret_cast<uint4*>(u) = *reinterpret_cast<const uint4*>(up + i);
    *reinterpret_cast<uint4*>(c) = *reinterpret_cast<const uint4*>(cot + i);
  } else {
    for (int k = 0; k < m; ++k) { g[k] = gate[i + k]; u[k] = up[i + k]; c[k] = cot[i + k]; }
  }
#pragma unroll
  for (int k = 0; k < V; ++k) {
    float x = static_cast<float>(g[k]);
    float s = 1.0f / (1.0f + expf(-x));
    float ct = static_cast<float>(c[k]);
    du[k] = static_cast<T>(ct * (x * s));
    dg[k] = static_cast<T>(ct * static_cast<float>(u[k]) * s * (1.0f + x * (1.0f - s)));
  }
  if (m == V) {
    *reinterpret_cast<uint4*>(d_gate + i) = *reinterpret_cast<const uint4*>(dg);
    *reinterpret_cast<uint4*>(d_up + i) = *reinterpret_cast<const uint4*>(du);
  } else {
    for (int k = 0; k < m; ++k) { d_gate[i + k] = dg[k]; d_up[i + k] = du[k]; }
  }
"#,
};

/// Interleaved RoPE at positions `0..L` (periods `[hd/2]`, f32) between
/// the layouts `[B, L, H, hd]` and `[B, H, L, hd]`: `FORWARD` rotates
/// `[B, L, H, hd]` into `[B, H, L, hd]`; otherwise the inverse rotation,
/// from `[B, H, L, hd]` back to `[B, L, H, hd]` (the forward's gradient).
/// Each thread moves 8 values of one head vector (hd a multiple of 8).
const ROPE_TRANSPOSED: Kernel = Kernel {
    name: "csm_rope_transposed",
    inputs: &["x", "periods"],
    outputs: &["out"],
    source: r#"
  constexpr int V = 8;
  int B = x_shape[0];
  int L = FORWARD ? x_shape[1] : x_shape[2];
  int H = FORWARD ? x_shape[2] : x_shape[1];
  int hd = x_shape[3];
  int chunks = hd / V;
  size_t t = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= size_t(B) * L * H * chunks) return;
  int c = t % chunks;
  size_t r = t / chunks;
  // r walks the input's rows: (b, l, h) forward, (b, h, l) backward.
  int b, l, h;
  if (FORWARD) { h = r % H; l = (r / H) % L; b = r / (size_t(H) * L); }
  else { l = r % L; h = (r / L) % H; b = r / (size_t(H) * L); }
  size_t blh = ((size_t(b) * L + l) * H + h) * hd + c * V;
  size_t bhl = ((size_t(b) * H + h) * L + l) * hd + c * V;
  size_t src = FORWARD ? blh : bhl;
  size_t dst = FORWARD ? bhl : blh;
  T v[V];
  T o[V];
#pragma unroll
  for (int k = 0; k < V; ++k) v[k] = x[src + k];
#pragma unroll
  for (int k = 0; k < V; k += 2) {
    float inv = 1.0f / periods[(c * V + k) / 2];
    float theta = static_cast<float>(l) * inv;
    float sn, cs;
    sincosf(theta, &sn, &cs);
    float x1 = static_cast<float>(v[k]);
    float x2 = static_cast<float>(v[k + 1]);
    if (FORWARD) {
      o[k] = static_cast<T>(x1 * cs - x2 * sn);
      o[k + 1] = static_cast<T>(x1 * sn + x2 * cs);
    } else {
      o[k] = static_cast<T>(x2 * sn + x1 * cs);
      o[k + 1] = static_cast<T>(x2 * cs - x1 * sn);
    }
  }
#pragma unroll
  for (int k = 0; k < V; ++k) out[dst + k] = o[k];
"#,
};

/// Cross-entropy of each row of logits `[..., W]` over its first `VALID`
/// columns (the rest are a padded head's, [`crate::model::TrainKernels::aligned_heads`]):
/// `ce = lse - logit[target]` and `lse`, in f32. One block per row; the
/// maximum and the sum of exponentials reduced in shared memory.
const CROSS_ENTROPY: Kernel = Kernel {
    name: "csm_cross_entropy",
    inputs: &["logits", "targets"],
    outputs: &["ce", "lse"],
    source: r#"
  __shared__ float red[256];
  int W = logits_shape[logits_ndim - 1];
  size_t row = blockIdx.x;
  int tid = threadIdx.x;
  const T* x = logits + row * W;
  float m = -cuda::std::numeric_limits<float>::infinity();
  for (int j = tid; j < VALID; j += blockDim.x) m = fmaxf(m, static_cast<float>(x[j]));
  red[tid] = m;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (tid < s) red[tid] = fmaxf(red[tid], red[tid + s]);
    __syncthreads();
  }
  m = red[0];
  __syncthreads();
  float acc = 0.0f;
  for (int j = tid; j < VALID; j += blockDim.x) acc += expf(static_cast<float>(x[j]) - m);
  red[tid] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (tid < s) red[tid] += red[tid + s];
    __syncthreads();
  }
  if (tid == 0) {
    float l = m + logf(red[0]);
    lse[row] = l;
    ce[row] = l - static_cast<float>(x[targets[row]]);
  }
"#,
};

/// The gradient of [`CROSS_ENTROPY`]'s `ce` for the cotangent `cot` (one
/// per row): `(softmax - onehot(target)) * cot` over the first `VALID`
/// columns, 0 over the rest, in the logits' dtype. `V` columns per thread
/// (8 where rows are a multiple of 8 long, else 1).
const CROSS_ENTROPY_GRAD: Kernel = Kernel {
    name: "csm_cross_entropy_grad",
    inputs: &["logits", "targets", "lse", "cot"],
    outputs: &["d_logits"],
    source: r#"
  int W = logits_shape[logits_ndim - 1];
  size_t n = 1;
  for (int d = 0; d < logits_ndim; ++d) n *= logits_shape[d];
  size_t i = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (i >= n) return;
  size_t row = i / W;
  int j0 = i % W;
  float l = lse[row];
  float c = cot[row];
  int t = targets[row];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    int j = j0 + k;
    float g = 0.0f;
    if (j < VALID) {
      g = expf(static_cast<float>(logits[i + k]) - l);
      if (j == t) g -= 1.0f;
      g *= c;
    }
    d_logits[i + k] = static_cast<T>(g);
  }
"#,
};

/// `out = base + scale * (u w)` over rows of `base` `[..., N]`, with `u`
/// `[..., R]` (one row of `R` per row of `base`) and `w` `[R, N]`, all f32
/// but `base` and `out`: the sum over `R` and the add in f32, one rounding
/// on store. Each thread writes `V` = 8 consecutive columns of one row (N a
/// multiple of 8) and reads the 8 values of each of `w`'s rows it needs as
/// two 16-byte vectors, so that a warp's reads of `w` are contiguous.
const LORA_EXPAND_ADD: Kernel = Kernel {
    name: "csm_lora_expand_add",
    inputs: &["base", "u", "w", "scale"],
    outputs: &["out"],
    source: r#"
  constexpr int V = 8;
  constexpr int CHUNKS = V * sizeof(T) / 16;
  int N = base_shape[base_ndim - 1];
  int R = u_shape[u_ndim - 1];
  size_t n = 1;
  for (int d = 0; d < base_ndim; ++d) n *= base_shape[d];
  size_t i = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (i >= n) return;
  size_t row = i / N;
  int col = int(i % N);
  float acc[V];
#pragma unroll
  for (int j = 0; j < V; ++j) acc[j] = 0.0f;
  const float* ur = u + row * R;
  // N is a multiple of 8: each row's 8 values start 16-byte aligned where
  // w does.
  bool w_aligned = (size_t(w) % 16) == 0;
  for (int k = 0; k < R; ++k) {
    float uk = ur[k];
    const float* wk = w + size_t(k) * N + col;
    float wv[V];
    if (w_aligned) {
      float4 lo = reinterpret_cast<const float4*>(wk)[0];
      float4 hi = reinterpret_cast<const float4*>(wk)[1];
      wv[0] = lo.x; wv[1] = lo.y; wv[2] = lo.z; wv[3] = lo.w;
      wv[4] = hi.x; wv[5] = hi.y; wv[6] = hi.z; wv[7] = hi.w;
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) wv[j] = wk[j];
    }
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = fmaf(uk, wv[j], acc[j]);
  }
  float s = scale[0];
  bool aligned = ((size_t(base + i) | size_t(out + i)) % 16) == 0;
  alignas(16) T b[V];
  alignas(16) T o[V];
  if (aligned) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c)
      reinterpret_cast<uint4*>(b)[c] = reinterpret_cast<const uint4*>(base + i)[c];
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) b[j] = base[i + j];
  }
#pragma unroll
  for (int j = 0; j < V; ++j) o[j] = static_cast<T>(static_cast<float>(b[j]) + s * acc[j]);
  if (aligned) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c)
      reinterpret_cast<uint4*>(out + i)[c] = reinterpret_cast<const uint4*>(o)[c];
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) out[i + j] = o[j];
  }
"#,
};

fn count(a: &Array) -> i64 {
    a.shape().iter().map(|&d| i64::from(d)).product()
}

/// Both gradients of `silu(gate) * up` (see the module docs): `[d_gate,
/// d_up]`, in the inputs' dtype.
///
/// # Shapes
/// `gate, up, cot: [..., H]` (one shape and dtype) -> `[..., H]` each
pub fn swiglu_grad(gate: &Array, up: &Array, cot: &Array) -> Result<[Array; 2], Exception> {
    let dtype = gate.dtype();
    let per_thread = 16 / gate.item_size() as i64;
    let shape = gate.shape().to_vec();
    let cot = cot.as_dtype(dtype)?;
    let mut out = SWIGLU_GRAD.apply(
        &[gate.clone(), up.as_dtype(dtype)?, cot],
        &Launch {
            outputs: vec![(shape.clone(), dtype), (shape, dtype)],
            threads: (count(gate) + per_thread - 1) / per_thread,
            template: &[("T", Template::Type(dtype))],
        },
    )?;
    match (out.pop(), out.pop()) {
        (Some(d_up), Some(d_gate)) => Ok([d_gate, d_up]),
        _ => Err(Exception::custom(
            "csm_swiglu_grad returned too few outputs",
        )),
    }
}

/// Per-row cross-entropy over the first `valid` columns of `logits`, with
/// its own gradient ([`CROSS_ENTROPY`] and [`CROSS_ENTROPY_GRAD`]): the
/// loss the plain form gives (`logsumexp - logit[target]` in f32) from one
/// read of the logits, and a gradient written in one pass, zero over
/// padded columns.
///
/// # Shapes
/// `logits: [..., W]` (W >= valid), `targets: [...]` int -> `[...]` f32
///
/// # Errors
/// MLX failures, and `valid` out of `1..=W`.
pub fn cross_entropy(logits: &Array, targets: &Array, valid: i32) -> Result<Array, Exception> {
    let w = *logits.shape().last().unwrap_or(&0);
    if valid < 1 || valid > w {
        return Err(Exception::custom(format!(
            "csm_cross_entropy: {valid} valid columns of rows {w} long"
        )));
    }
    let inputs = [
        logits.clone(),
        targets.as_dtype(Dtype::Int32)?,
        mlx_rs::ops::zeros::<u8>(&[valid, 0])?, // [valid, 0]: no data
    ];
    apply_custom_vjp_first("cuda cross-entropy", &inputs, ce_forward, ce_vjp)
}

/// The valid column count, carried in the shape of an empty input of the
/// custom gradient (a shape is known while `mx.compile` traces; a value
/// is not).
fn valid_columns(a: &Array) -> Result<i32, Exception> {
    a.shape()
        .first()
        .copied()
        .ok_or_else(|| Exception::custom("csm_cross_entropy: no column count"))
}

fn ce_forward(inputs: &[Array]) -> Result<Vec<Array>, Exception> {
    let [logits, targets, valid] = inputs else {
        return Err(Exception::custom(format!(
            "expected 3 inputs, got {}",
            inputs.len()
        )));
    };
    let rows = targets.shape().to_vec();
    let n_rows: i64 = rows.iter().map(|&d| i64::from(d)).product();
    CROSS_ENTROPY.apply(
        &[logits.clone(), targets.clone()],
        &Launch {
            outputs: vec![(rows.clone(), Dtype::Float32), (rows, Dtype::Float32)],
            threads: n_rows * i64::from(BLOCK),
            template: &[
                ("T", Template::Type(logits.dtype())),
                ("VALID", Template::Int(valid_columns(valid)?)),
            ],
        },
    )
}

fn ce_vjp(
    primals: &[Array],
    cotangents: &[Array],
    outputs: &[Array],
) -> Result<Vec<Array>, Exception> {
    // `lse` is internal: its cotangent is never read.
    let ([logits, targets, valid], [cot, _], [_, lse]) = (primals, cotangents, outputs) else {
        return Err(Exception::custom(format!(
            "expected 3 primals, 2 cotangents and 2 outputs, got {}, {} and {}",
            primals.len(),
            cotangents.len(),
            outputs.len()
        )));
    };
    let w = *logits.shape().last().unwrap_or(&1);
    let per_thread = if w % 8 == 0 { 8 } else { 1 };
    let mut d = CROSS_ENTROPY_GRAD.apply(
        &[
            logits.clone(),
            targets.clone(),
            lse.clone(),
            cot.as_dtype(Dtype::Float32)?,
        ],
        &Launch {
            outputs: vec![(logits.shape().to_vec(), logits.dtype())],
            threads: (count(logits) + per_thread - 1) / per_thread,
            template: &[
                ("T", Template::Type(logits.dtype())),
                ("VALID", Template::Int(valid_columns(valid)?)),
                ("V", Template::Int(per_thread as i32)),
            ],
        },
    )?;
    let d_logits = d
        .pop()
        .ok_or_else(|| Exception::custom("csm_cross_entropy_grad returned nothing"))?;
    // Integers: no gradient flows to them.
    Ok(vec![
        d_logits,
        mlx_rs::ops::zeros_like(targets)?,
        mlx_rs::ops::zeros_like(valid)?,
    ])
}

/// `base + scale * (u w)` in `base`'s dtype ([`LORA_EXPAND_ADD`]): the sum
/// over the rank and the add in f32, rounded once, as PEFT adds an f32
/// adapter's output to a bf16 projection's. MLX copies a transposed view
/// given for `w` (an adapter's `A^T`) into place first. Not
/// differentiable: it runs inside [`crate::kernels::group`]'s forward and
/// gradient.
///
/// # Shapes
/// `base: [..., N]` (N a multiple of 8), `u: [..., R]` f32 (as many rows),
/// `w: [R, N]` f32, `scale: []` f32 -> `[..., N]`
///
/// # Errors
/// MLX failures, and shapes or dtypes outside the above.
pub fn lora_expand_add(
    base: &Array,
    u: &Array,
    w: &Array,
    scale: &Array,
) -> Result<Array, Exception> {
    let fail = |m: String| Exception::custom(format!("csm_lora_expand_add: {m}"));
    let n = *base.shape().last().unwrap_or(&0);
    let r = *u.shape().last().unwrap_or(&0);
    let rows = |a: &Array| count(a) / i64::from((*a.shape().last().unwrap_or(&1)).max(1));
    if n % 8 != 0 || n == 0 {
        return Err(fail(format!("rows of {n} are not a multiple of 8")));
    }
    if u.dtype() != Dtype::Float32 || w.dtype() != Dtype::Float32 {
        return Err(fail(format!(
            "u and w must be f32, got {:?} and {:?}",
            u.dtype(),
            w.dtype()
        )));
    }
    if rows(u) != rows(base) || w.shape() != [r, n] {
        return Err(fail(format!(
            "shapes base {:?}, u {:?}, w {:?} do not fit",
            base.shape(),
            u.shape(),
            w.shape()
        )));
    }
    let mut out = LORA_EXPAND_ADD.apply(
        &[
            base.clone(),
            u.clone(),
            w.clone(),
            scale.as_dtype(Dtype::Float32)?.reshape(&[1])?,
        ],
        &Launch {
            outputs: vec![(base.shape().to_vec(), base.dtype())],
            threads: count(base) / 8,
            template: &[("T", Template::Type(base.dtype()))],
        },
    )?;
    out.pop()
        .ok_or_else(|| fail("returned nothing".to_string()))
}

fn rope_call(x: &Array, periods: &Array, forward: bool) -> Result<Array, Exception> {
    let s = x.shape();
    let [b, d1, d2, hd] = [s[0], s[1], s[2], s[3]];
    if hd % 8 != 0 {
        return Err(Exception::custom(format!(
            "csm_rope_transposed: head size {hd} is not a multiple of 8"
        )));
    }
    let periods = periods.as_dtype(Dtype::Float32)?;
    let mut out = ROPE_TRANSPOSED.apply(
        &[x.clone(), periods],
        &Launch {
            outputs: vec![(vec![b, d2, d1, hd], x.dtype())],
            threads: count(x) / 8,
            template: &[
                ("T", Template::Type(x.dtype())),
                ("FORWARD", Template::Bool(forward)),
            ],
        },
    )?;
    out.pop()
        .ok_or_else(|| Exception::custom("csm_rope_transposed returned nothing"))
}

/// Interleaved RoPE at positions `0..L` (as `fast::rope` with
/// `traditional` and these periods), from the projection's layout to
/// attention's, differentiable (the gradient is the inverse rotation,
/// back to the projection's layout).
///
/// # Shapes
/// `x: [B, L, H, hd]` (hd a multiple of 8), `periods: [hd/2]` ->
/// `[B, H, L, hd]`
pub fn rope_transposed(x: &Array, periods: &Array) -> Result<Array, Exception> {
    apply_custom_vjp_first(
        "rope transposed",
        &[x.clone(), periods.clone()],
        rope_forward,
        rope_vjp,
    )
}

fn rope_forward(inputs: &[Array]) -> Result<Vec<Array>, Exception> {
    let [x, periods] = inputs else {
        return Err(Exception::custom(format!(
            "expected 2 inputs, got {}",
            inputs.len()
        )));
    };
    Ok(vec![rope_call(x, periods, true)?])
}

fn rope_vjp(
    primals: &[Array],
    cotangents: &[Array],
    _outputs: &[Array],
) -> Result<Vec<Array>, Exception> {
    let ([_, periods], [cot]) = (primals, cotangents) else {
        return Err(Exception::custom(format!(
            "expected 2 primals and 1 cotangent, got {} and {}",
            primals.len(),
            cotangents.len()
        )));
    };
    // The periods are constants of the model: no gradient flows to them.
    Ok(vec![
        rope_call(cot, periods, false)?,
        mlx_rs::ops::zeros_like(periods)?,
    ])
}

/// One kernel's agreement with MLX's ops on the same inputs
/// ([`check_against_mlx`]).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelCheck {
    /// What was compared: kernel, dtype and which output.
    pub what: String,
    /// `max |kernel - reference| / max |reference|`.
    pub error: f32,
    /// The largest error that passes: f32 rounding, or bf16's for bf16
    /// outputs (the reference is computed in f32 from the same inputs).
    pub tolerance: f32,
}

impl KernelCheck {
    /// Whether the error is within the tolerance.
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance
    }
}

/// The loss's plain cross-entropy written out, as the kernels' reference:
/// `logsumexp(x) - x[target]` over the last axis, in f32.
///
/// # Shapes
/// `logits: [..., V]`, `targets: [...]` int -> `[...]` f32
fn reference_cross_entropy(logits: &Array, targets: &Array) -> Result<Array, Exception> {
    let x = logits.as_dtype(Dtype::Float32)?; // [..., V]
    let lse = super::pow_exp::logsumexp(&x)?; // [...]
    let idx = targets.as_dtype(Dtype::Int32)?.expand_dims(-1)?; // [..., 1]
    let picked = mlx_rs::ops::indexing::take_along_axis(&x, &idx, -1)?.squeeze_axes(&[-1])?; // [...]
    lse.subtract(&picked)
}

fn relative_error(got: &Array, want: &Array) -> Result<f32, Exception> {
    let (got, want) = (
        got.as_dtype(Dtype::Float32)?,
        want.as_dtype(Dtype::Float32)?,
    );
    let err = got.subtract(&want)?.abs()?.max(None)?;
    let scale = mlx_rs::ops::maximum(want.abs()?.max(None)?, Array::from_f32(1e-30))?;
    Ok(err.divide(&scale)?.item_cast::<f32>())
}

/// RoPE periods of Llama 3's form (base 500000) for heads of `hd`, as
/// the checks' inputs.
///
/// # Shapes
/// -> `[hd/2]` f32
fn rope_periods_for_checks(hd: i32) -> Result<Array, Exception> {
    let exponents = mlx_rs::ops::arange::<_, f32>(0.0, (hd / 2) as f32, 1.0)?
        .multiply(Array::from_f32(2.0 / hd as f32))?; // [hd/2]
    mlx_rs::ops::power(Array::from_f32(500_000.0), &exponents)
}

/// Runs every kernel of this module on the default device (a CUDA GPU)
/// with random inputs, in f32 and bf16, and compares values and gradients
/// with MLX's own ops: autodiff of `silu(gate) * up`, `fast::rope`
/// (interleaved, the given periods) on the transposed input with its
/// gradient, the loss's plain cross-entropy over a padded head's valid
/// columns (the padding's gradient must be 0), and a LoRA share added in
/// f32 elementwise ops. For `csm gpu-check`.
///
/// # Errors
/// MLX failures, such as a backend without CUDA.
pub fn check_against_mlx() -> Result<Vec<KernelCheck>, Exception> {
    use mlx_rs::ops::indexing::TryIndexOp;
    use mlx_rs::transforms::fallible_vjp as vjp;
    use mlx_rs::{fast, random};
    random::seed(11)?;
    let mut checks = Vec::new();
    let gate = random::uniform::<_, f32>(-12.0, 12.0, &[3, 37, 1000], None)?;
    let up = random::normal::<f32>(&[3, 37, 1000], None, None, None)?;
    let cot = random::normal::<f32>(&[3, 37, 1000], None, None, None)?;
    // Heads of 64 at 2 x 50 positions; Llama-3-like periods.
    let (b, l, h, hd) = (2, 50, 3, 64);
    let x = random::normal::<f32>(&[b, l, h, hd], None, None, None)?;
    let rcot = random::normal::<f32>(&[b, h, l, hd], None, None, None)?;
    let periods = rope_periods_for_checks(hd)?; // [hd/2]

    // The heads' 2051 words padded to 2056, over 3 x 70 rows.
    let (valid, wide) = (2051, 2056);
    let logits =
        random::normal::<f32>(&[3, 70, wide], None, None, None)?.multiply(Array::from_f32(4.0))?;
    let targets = random::randint::<_, i32>(0, valid, &[3, 70], None)?;
    let ce_cot = random::normal::<f32>(&[3, 70], None, None, None)?;
    // A rank-16 adapter's share over 3 x 37 rows of 1000, w both ways.
    let lb = random::normal::<f32>(&[3, 37, 1000], None, None, None)?;
    let lu = random::normal::<f32>(&[3, 37, 16], None, None, None)?;
    let lw = random::normal::<f32>(&[16, 1000], None, None, None)?;
    // w also as a transposed view of a [1000, 16] array (an adapter's A
    // in the gradient), which MLX makes row-major for the kernel.
    let lw_t = random::normal::<f32>(&[1000, 16], None, None, None)?.t(); // [16, 1000]
    let ls = Array::from_f32(0.5);
    // In f32 elementwise, not as a matmul: MLX's CUDA matmul rounds f32
    // inputs to TF32.
    let share = |w: &Array| -> Result<Array, Exception> {
        lu.expand_dims(-1)?
            .multiply(w)?
            .sum_axes(&[-2], false)?
            .multiply(&ls) // [3, 37, 1000]
    };
    let lora_shares = [share(&lw)?, share(&lw_t)?];
    for (dtype, tol) in [(Dtype::Float32, 2e-5), (Dtype::Bfloat16, 1.6e-2)] {
        let name = if dtype == Dtype::Float32 {
            "f32"
        } else {
            "bf16"
        };
        let [g, u, c] = [&gate, &up, &cot].map(|a| a.as_dtype(dtype));
        let (g, u, c) = (g?, u?, c?);
        let [d_gate, d_up] = swiglu_grad(&g, &u, &c)?;
        // The reference in f32 from the same (rounded) inputs.
        let f = |a: &[Array]| -> Result<Vec<Array>, Exception> {
            Ok(vec![mlx_rs::nn::silu(&a[0])?.multiply(&a[1])?])
        };
        let up32 = |a: &Array| a.as_dtype(Dtype::Float32);
        let (_, want) = vjp(f, &[up32(&g)?, up32(&u)?], &[up32(&c)?])?;
        for (what, got, want) in [("d gate", &d_gate, &want[0]), ("d up", &d_up, &want[1])] {
            checks.push(KernelCheck {
                what: format!("swiglu_grad {name} {what}"),
                error: relative_error(got, want)?,
                tolerance: tol,
            });
        }

        let xr = x.as_dtype(dtype)?;
        let cr = rcot.as_dtype(dtype)?;
        let rope_ref = |a: &[Array]| -> Result<Vec<Array>, Exception> {
            let t = a[0].transpose_axes(&[0, 2, 1, 3])?; // [B, H, L, hd]
            Ok(vec![fast::rope(&t, hd, true, None, 1.0, 0, &periods)?])
        };
        let (want_y, want_dx) = vjp(rope_ref, &[up32(&xr)?], &[up32(&cr)?])?;
        let mine = |a: &[Array]| -> Result<Vec<Array>, Exception> {
            Ok(vec![rope_transposed(&a[0], &periods)?])
        };
        let (got_y, got_dx) = vjp(mine, &[xr], &[cr])?;
        for (what, got, want) in [
            ("forward", &got_y[0], &want_y[0]),
            ("gradient", &got_dx[0], &want_dx[0]),
        ] {
            checks.push(KernelCheck {
                what: format!("rope_transposed {name} {what}"),
                error: relative_error(got, want)?,
                tolerance: tol,
            });
        }

        let lr = logits.as_dtype(dtype)?;
        let t = targets.clone();
        let plain = move |a: &[Array]| -> Result<Vec<Array>, Exception> {
            Ok(vec![reference_cross_entropy(&a[0], &t)?])
        };
        let cut = up32(&lr)?.try_index((.., .., ..valid))?;
        let (want_ce, want_d) = vjp(plain, &[cut], std::slice::from_ref(&ce_cot))?;
        let t = targets.clone();
        let mine = move |a: &[Array]| -> Result<Vec<Array>, Exception> {
            Ok(vec![cross_entropy(&a[0], &t, valid)?])
        };
        let (got_ce, got_d) = vjp(mine, &[lr], std::slice::from_ref(&ce_cot))?;
        let got_d = &got_d[0];
        let padding = got_d.try_index((.., .., valid..))?.abs()?.max(None)?;
        checks.extend([
            KernelCheck {
                what: format!("cross_entropy {name} loss"),
                error: relative_error(&got_ce[0], &want_ce[0])?,
                tolerance: 2e-5,
            },
            KernelCheck {
                what: format!("cross_entropy {name} gradient"),
                error: relative_error(&got_d.try_index((.., .., ..valid))?, &want_d[0])?,
                tolerance: tol,
            },
            KernelCheck {
                what: format!("cross_entropy {name} padding's gradient"),
                error: padding.as_dtype(Dtype::Float32)?.item_cast::<f32>(),
                tolerance: 0.0,
            },
        ]);

        if dtype == Dtype::Bfloat16 {
            // (In f32, MLX's CUDA matmul in the reference is TF32's.)
            checks.extend(check_grouped_lora(dtype, name, tol)?);
        }

        let base = lb.as_dtype(dtype)?;
        for ((form, w), lora_share) in [("w", &lw), ("w as a transposed view", &lw_t)]
            .into_iter()
            .zip(&lora_shares)
        {
            let want = up32(&base)?.add(lora_share)?;
            let got = lora_expand_add(&base, &lu, w, &ls)?;
            checks.push(KernelCheck {
                what: format!("lora_expand_add {name} {form}"),
                error: relative_error(&got, &want)?,
                tolerance: tol,
            });
        }
    }
    Ok(checks)
}

/// [`crate::kernels::group::grouped_linear`] with the adapters' products
/// added by [`lora_expand_add`] against MLX's ops (the same group without
/// it): outputs, and gradients for `x`, `A` and `B`, with an adapter on
/// the first and third of three members (as q, k, v), rows of 48, in bf16
/// (training's dtype on GPUs).
fn check_grouped_lora(dtype: Dtype, name: &str, tol: f32) -> Result<Vec<KernelCheck>, Exception> {
    use crate::kernels::group::{grouped_linear, GroupMember};
    use mlx_rs::random;
    use mlx_rs::transforms::fallible_vjp as vjp;
    let x = random::normal::<f32>(&[2, 9, 64], None, None, None)?.as_dtype(dtype)?;
    let ws = [48, 16, 48]
        .map(|o| random::normal::<f32>(&[o, 64], None, None, None).and_then(|w| w.as_dtype(dtype)));
    let [w0, w1, w2] = ws;
    let (w0, w1, w2) = (w0?, w1?, w2?);
    let a =
        |s: f32| random::uniform::<_, f32>(-0.5, 0.5, &[64, 4], None)?.multiply(Array::from_f32(s));
    let b = || random::normal::<f32>(&[4, 48], None, None, None);
    let primals = [x, a(1.0)?, b()?, a(2.0)?, b()?];
    let cots: Vec<Array> = [48, 16, 48]
        .iter()
        .map(|&o| random::normal::<f32>(&[2, 9, o], None, None, None)?.as_dtype(dtype))
        .collect::<Result<_, _>>()?;
    let run = |cuda: bool| {
        let (w0, w1, w2) = (w0.clone(), w1.clone(), w2.clone());
        let f = move |v: &[Array]| -> Result<Vec<Array>, Exception> {
            let members = [
                GroupMember {
                    weight: w0.clone(),
                    lora: Some((v[1].clone(), v[2].clone(), 2.0)),
                },
                GroupMember {
                    weight: w1.clone(),
                    lora: None,
                },
                GroupMember {
                    weight: w2.clone(),
                    lora: Some((v[3].clone(), v[4].clone(), 0.5)),
                },
            ];
            grouped_linear(&v[0], &members, cuda)
        };
        vjp(f, &primals, &cots)
    };
    let (want_y, want_g) = run(false)?;
    let (got_y, got_g) = run(true)?;
    let mut checks = Vec::new();
    for (i, (got, want)) in got_y.iter().zip(&want_y).enumerate() {
        checks.push(KernelCheck {
            what: format!("grouped lora {name} output {i}"),
            error: relative_error(got, want)?,
            tolerance: tol,
        });
    }
    for (i, what) in ["d x", "d A0", "d B0", "d A2", "d B2"].iter().enumerate() {
        checks.push(KernelCheck {
            what: format!("grouped lora {name} {what}"),
            error: relative_error(&got_g[i], &want_g[i])?,
            // The adapters' gradients are the same f32 products either way.
            tolerance: if i == 0 { tol } else { 2e-5 },
        });
    }
    Ok(checks)
}

/// The kernel bodies run on the CPU: each is pasted into a C++ function
/// whose parameters carry the names `fast::cuda_kernel` gives them, with
/// CUDA's few built-ins this module uses (thread indices, `uint4`, a bf16
/// that rounds to nearest even) defined in plain C++, and every thread run
/// in turn. This checks their indexing and arithmetic against MLX's ops
/// here; `csm gpu-check` checks them compiled by NVRTC on a GPU.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_close;
    use mlx_rs::ops::indexing::TryIndexOp;
    use mlx_rs::transforms::fallible_vjp;
    use mlx_rs::{fast, random};
    use std::path::Path;
    use std::process::Command;

    const SHIM: &str = r#"
#include <array>
#include <barrier>
#include <cmath>
#include <limits>
#include <thread>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
struct Dim { unsigned x = 0, y = 1, z = 1; };
thread_local Dim blockIdx, blockDim, threadIdx;
// MLX's kernels see libcu++ as cuda::std.
namespace cuda { namespace std = ::std; }
// A block's threads run as OS threads meeting at a barrier; its shared
// memory is a static of the kernel function (blocks run one at a time).
#define __shared__ static
static std::barrier<>* block_barrier;
#define __syncthreads() block_barrier->arrive_and_wait()
struct uint4 { unsigned x, y, z, w; };
struct float4 { float x, y, z, w; };
using Shape = std::array<int32_t, 10>;
struct bf16 {
  uint16_t bits;
  bf16() = default;
  explicit bf16(float f) {
    uint32_t u; std::memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    bits = uint16_t(u >> 16);
  }
  explicit operator float() const {
    uint32_t u = uint32_t(bits) << 16; float f; std::memcpy(&f, &u, 4); return f;
  }
};
template <typename F> void launch(size_t threads, F body) {
  blockDim.x = 256;
  for (size_t t = 0; t < threads; ++t) {
    blockIdx.x = unsigned(t / 256); threadIdx.x = unsigned(t % 256); body();
  }
}
template <typename F> void launch_blocks(size_t blocks, unsigned threads, F body) {
  for (size_t b = 0; b < blocks; ++b) {
    std::barrier<> bar(threads);
    block_barrier = &bar;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&, t] { blockIdx.x = unsigned(b); blockDim.x = threads; threadIdx.x = t; body(); });
    for (auto& th : pool) th.join();
  }
}
static std::vector<float> load(const std::string& dir, const char* name, size_t n) {
  std::vector<float> v(n);
  FILE* f = std::fopen((dir + "/" + name).c_str(), "rb");
  if (!f || std::fread(v.data(), 4, n, f) != n) { std::perror(name); std::exit(2); }
  std::fclose(f); return v;
}
template <typename T> static void save(const std::string& dir, const char* name, const T* p, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(p[i]);
  FILE* f = std::fopen((dir + "/" + name).c_str(), "wb");
  std::fwrite(v.data(), 4, n, f); std::fclose(f);
}
template <typename T> static std::vector<T> as(const std::vector<float>& v, size_t pad) {
  std::vector<T> out(v.size() + pad);
  for (size_t i = 0; i < v.size(); ++i) out[i + pad] = static_cast<T>(v[i]);
  return out;
}
"#;

    /// Cross-entropy rows, and their length padded and not (the heads'
    /// 2051 of 2056 in miniature).
    const CE_ROWS: i32 = 21;
    const CE_W: i32 = 24;
    const CE_VALID: i32 = 21;

    /// A LoRA share's rows, their length (a multiple of 8) and its rank
    /// (odd, so no vector width divides it).
    const LORA_ROWS: i32 = 14;
    const LORA_N: i32 = 24;
    const LORA_RANK: i32 = 5;

    /// The C++ program: the kernel bodies as functions, and a `main` that
    /// reads `DIR/{gate,up,cot,x,rcot,periods}` (f32), runs them in `T`
    /// (`f32` or `bf16`) and writes the results as f32.
    fn program(n: usize, (b, l, h, hd): (i32, i32, i32, i32)) -> String {
        format!(
            r#"{SHIM}
template <typename T>
void swiglu_grad(const T* gate, Shape gate_shape, int gate_ndim, const T* up, const T* cot,
                 T* d_gate, T* d_up) {{
{swiglu}
}}
template <typename T, bool FORWARD>
void rope(const T* x, Shape x_shape, const float* periods, T* out) {{
{rope}
}}
template <typename T, int VALID>
void cross_entropy(const T* logits, Shape logits_shape, int logits_ndim, const int32_t* targets,
                   float* ce, float* lse) {{
{ce}
}}
template <typename T, int VALID, int V>
void cross_entropy_grad(const T* logits, Shape logits_shape, int logits_ndim,
                        const int32_t* targets, const float* lse, const float* cot, T* d_logits) {{
{ce_grad}
}}
template <typename T>
void lora_expand_add(const T* base, Shape base_shape, int base_ndim, const float* u, Shape u_shape,
                     int u_ndim, const float* w, const float* scale, T* out) {{
{lora}
}}
// A LoRA share over LR rows of LN, w [LK, LN]: from 16-byte aligned
// buffers, and base, out and w from offset 1 (the element-wise paths).
template <typename T> static void run_lora(const std::string& dir, const char* tag) {{
  constexpr int LR = {lr_rows}, LN = {lr_n}, LK = {lr_k};
  constexpr size_t M = size_t(LR) * LN;
  auto padded = as<T>(load(dir, "lb", M), 1);
  auto u = load(dir, "lu", size_t(LR) * LK);
  auto w = load(dir, "lw", size_t(LK) * LN);
  auto sc = load(dir, "ls", 1);
  Shape bs{{}}; bs[0] = LR; bs[1] = LN;
  Shape us{{}}; us[0] = LR; us[1] = LK;
  alignas(16) static T base[M], out[M];
  alignas(16) static float wa[size_t(LK) * LN + 4];
  std::memcpy(base, padded.data() + 1, M * sizeof(T));
  std::memcpy(wa, w.data(), w.size() * 4);
  launch(M / 8, [&] {{ lora_expand_add<T>(base, bs, 2, u.data(), us, 2, wa, sc.data(), out); }});
  save(dir, (std::string(tag) + "_lora_w").c_str(), out, M);
  std::vector<T> shifted(M + 1);
  std::memcpy(wa + 1, w.data(), w.size() * 4);
  launch(M / 8, [&] {{ lora_expand_add<T>(padded.data() + 1, bs, 2, u.data(), us, 2, wa + 1, sc.data(), shifted.data() + 1); }});
  save(dir, (std::string(tag) + "_lora_unaligned").c_str(), shifted.data() + 1, M);
}}
// Rows of CE_W logits of which the first CE_VALID count, and the same
// rows cut to CE_VALID (unpadded, one column a thread in the gradient).
template <typename T, int W, int VLD, int PER>
static void run_ce(const std::string& dir, const char* tag) {{
  const size_t rows = {ce_rows};
  auto full = load(dir, "ce_logits", rows * {ce_w});
  std::vector<float> cut(rows * W);
  for (size_t r = 0; r < rows; ++r)
    for (int j = 0; j < W; ++j) cut[r * W + j] = full[r * {ce_w} + j];
  auto x = as<T>(cut, 0);
  auto tf = load(dir, "ce_targets", rows);
  std::vector<int32_t> t(rows);
  for (size_t r = 0; r < rows; ++r) t[r] = int32_t(tf[r]);
  auto cot = load(dir, "ce_cot", rows);
  std::vector<float> ce(rows), lse(rows);
  Shape s{{}}; s[0] = int(rows); s[1] = W;
  launch_blocks(rows, 256, [&] {{ cross_entropy<T, VLD>(x.data(), s, 2, t.data(), ce.data(), lse.data()); }});
  std::vector<T> d(rows * W);
  launch(rows * W / PER, [&] {{ cross_entropy_grad<T, VLD, PER>(x.data(), s, 2, t.data(), lse.data(), cot.data(), d.data()); }});
  save(dir, (std::string(tag) + "_ce").c_str(), ce.data(), rows);
  save(dir, (std::string(tag) + "_ce_grad").c_str(), d.data(), rows * W);
}}
template <typename T> static void run(const std::string& dir, const char* tag) {{
  run_lora<T>(dir, tag);
  run_ce<T, {ce_w}, {ce_valid}, 8>(dir, (std::string(tag) + "_padded").c_str());
  run_ce<T, {ce_valid}, {ce_valid}, 1>(dir, (std::string(tag) + "_cut").c_str());
  const size_t n = {n};
  Shape s{{}}; s[0] = int(n);
  auto gate = as<T>(load(dir, "gate", n), 1), up = as<T>(load(dir, "up", n), 1),
       cot = as<T>(load(dir, "cot", n), 1);
  std::vector<T> dg(n), du(n);
  size_t per = 16 / sizeof(T), threads = (n + per - 1) / per;
  // From offset 0 (16-byte aligned vectors) and from offset 1 (the
  // element-wise path); both must give the same values.
  for (int off = 0; off < 2; ++off) {{
    const T* g = gate.data() + 1 - off; const T* u = up.data() + 1 - off; const T* c = cot.data() + 1 - off;
    if (off == 0) {{
      // Realign: copy into buffers that start on 16 bytes.
      alignas(16) static T ga[{n}], ua[{n}], ca[{n}];
      std::memcpy(ga, gate.data() + 1, n * sizeof(T)); std::memcpy(ua, up.data() + 1, n * sizeof(T));
      std::memcpy(ca, cot.data() + 1, n * sizeof(T)); g = ga; u = ua; c = ca;
    }} else {{ g = gate.data() + 1; u = up.data() + 1; c = cot.data() + 1; }}
    launch(threads, [&] {{ swiglu_grad<T>(g, s, 1, u, c, dg.data(), du.data()); }});
    std::string a = std::string(tag) + (off ? "_unaligned" : "");
    save(dir, (a + "_d_gate").c_str(), dg.data(), n); save(dir, (a + "_d_up").c_str(), du.data(), n);
  }}
  const int B = {b}, L = {l}, H = {h}, HD = {hd};
  size_t m = size_t(B) * L * H * HD;
  auto x = as<T>(load(dir, "x", m), 0), rc = as<T>(load(dir, "rcot", m), 0);
  auto periods = load(dir, "periods", HD / 2);
  std::vector<T> y(m), dx(m);
  Shape xs{{}}; xs[0] = B; xs[1] = L; xs[2] = H; xs[3] = HD;
  launch(m / 8, [&] {{ rope<T, true>(x.data(), xs, periods.data(), y.data()); }});
  Shape cs{{}}; cs[0] = B; cs[1] = H; cs[2] = L; cs[3] = HD;
  launch(m / 8, [&] {{ rope<T, false>(rc.data(), cs, periods.data(), dx.data()); }});
  save(dir, (std::string(tag) + "_rope").c_str(), y.data(), m);
  save(dir, (std::string(tag) + "_rope_grad").c_str(), dx.data(), m);
}}
int main(int argc, char** argv) {{
  run<float>(argv[1], "f32");
  run<bf16>(argv[1], "bf16");
  return 0;
}}
"#,
            swiglu = SWIGLU_GRAD.source,
            rope = ROPE_TRANSPOSED.source,
            ce = CROSS_ENTROPY.source,
            ce_grad = CROSS_ENTROPY_GRAD.source,
            lora = LORA_EXPAND_ADD.source,
            lr_rows = LORA_ROWS,
            lr_n = LORA_N,
            lr_k = LORA_RANK,
            ce_rows = CE_ROWS,
            ce_w = CE_W,
            ce_valid = CE_VALID,
        )
    }

    fn write(dir: &Path, name: &str, a: &Array) {
        let v: Vec<f32> = a
            .as_dtype(Dtype::Float32)
            .unwrap()
            .as_slice::<f32>()
            .to_vec();
        let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn read(dir: &Path, name: &str, shape: &[i32]) -> Array {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Array::from_slice(&v, shape)
    }

    #[test]
    fn kernel_bodies_match_mlx_on_the_cpu() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        random::seed(5).unwrap();
        // 3 x 37 x 101: neither 4 nor 8 divides it, so the last thread
        // takes the element-wise tail in f32 and in bf16.
        let shape = [3, 37, 101];
        let n = shape.iter().product::<i32>() as usize;
        let gate = random::uniform::<_, f32>(-12.0, 12.0, &shape, None).unwrap();
        let up = random::normal::<f32>(&shape, None, None, None).unwrap();
        let cot = random::normal::<f32>(&shape, None, None, None).unwrap();
        let dims = (2, 50, 3, 64);
        let (b, l, h, hd) = dims;
        let x = random::normal::<f32>(&[b, l, h, hd], None, None, None).unwrap();
        let rcot = random::normal::<f32>(&[b, h, l, hd], None, None, None).unwrap();
        let periods = rope_periods_for_checks(hd).unwrap();
        let ce_logits = random::normal::<f32>(&[CE_ROWS, CE_W], None, None, None)
            .unwrap()
            .multiply(Array::from_f32(3.0))
            .unwrap();
        let ce_targets = random::randint::<_, i32>(0, CE_VALID, &[CE_ROWS], None).unwrap();
        let ce_cot = random::normal::<f32>(&[CE_ROWS], None, None, None).unwrap();
        let lb = random::normal::<f32>(&[LORA_ROWS, LORA_N], None, None, None).unwrap();
        let lu = random::normal::<f32>(&[LORA_ROWS, LORA_RANK], None, None, None).unwrap();
        let lw = random::normal::<f32>(&[LORA_RANK, LORA_N], None, None, None).unwrap();
        let ls = Array::from_slice(&[0.75f32], &[1]);
        for (name, a) in [
            ("lb", &lb),
            ("lu", &lu),
            ("lw", &lw),
            ("ls", &ls),
            ("ce_logits", &ce_logits),
            ("ce_targets", &ce_targets),
            ("ce_cot", &ce_cot),
            ("gate", &gate),
            ("up", &up),
            ("cot", &cot),
            ("x", &x),
            ("rcot", &rcot),
            ("periods", &periods),
        ] {
            write(d, name, a);
        }
        std::fs::write(d.join("kernels.cpp"), program(n, dims)).unwrap();
        let built = Command::new("c++")
            .args([
                "-std=c++20",
                "-O1",
                "-pthread",
                "-fno-strict-aliasing",
                "-w",
                "-o",
            ])
            .arg(d.join("kernels"))
            .arg(d.join("kernels.cpp"))
            .output()
            .expect("running c++ (a C++ compiler is part of the build's requirements)");
        assert!(
            built.status.success(),
            "the kernel bodies do not compile as C++:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let ran = Command::new(d.join("kernels")).arg(d).output().unwrap();
        assert!(
            ran.status.success(),
            "{}",
            String::from_utf8_lossy(&ran.stderr)
        );

        for (tag, dtype, tol) in [
            ("f32", Dtype::Float32, 1e-5),
            ("bf16", Dtype::Bfloat16, 1.6e-2),
        ] {
            // References in f32 from the inputs rounded to the kernel's dtype.
            let r = |a: &Array| a.as_dtype(dtype).unwrap().as_dtype(Dtype::Float32).unwrap();
            let f = |a: &[Array]| -> Result<Vec<Array>, Exception> {
                Ok(vec![mlx_rs::nn::silu(&a[0])?.multiply(&a[1])?])
            };
            // The LoRA share: the base rounded to the dtype, the rest f32.
            let want = r(&lb)
                .add(
                    mlx_rs::ops::matmul(&lu, &lw)
                        .unwrap()
                        .multiply(&ls)
                        .unwrap(),
                )
                .unwrap();
            for form in ["w", "unaligned"] {
                let got = read(d, &format!("{tag}_lora_{form}"), &[LORA_ROWS, LORA_N]);
                assert_close(&format!("{tag} lora {form}"), &want, &got, tol);
            }
            let (_, want) = fallible_vjp(f, &[r(&gate), r(&up)], &[r(&cot)]).unwrap();
            for sfx in ["", "_unaligned"] {
                let got_g = read(d, &format!("{tag}{sfx}_d_gate"), &shape);
                let got_u = read(d, &format!("{tag}{sfx}_d_up"), &shape);
                assert_close(&format!("{tag}{sfx} d gate"), &want[0], &got_g, tol);
                assert_close(&format!("{tag}{sfx} d up"), &want[1], &got_u, tol);
            }
            let rope_ref = |a: &[Array]| -> Result<Vec<Array>, Exception> {
                let t = a[0].transpose_axes(&[0, 2, 1, 3])?; // [B, H, L, hd]
                Ok(vec![fast::rope(&t, hd, true, None, 1.0, 0, &periods)?])
            };
            let (y, dx) = fallible_vjp(rope_ref, &[r(&x)], &[r(&rcot)]).unwrap();
            let got_y = read(d, &format!("{tag}_rope"), &[b, h, l, hd]);
            let got_dx = read(d, &format!("{tag}_rope_grad"), &[b, l, h, hd]);
            assert_close(&format!("{tag} rope"), &y[0], &got_y, tol);
            assert_close(&format!("{tag} rope gradient"), &dx[0], &got_dx, tol);

            // The plain loss over the valid columns, and its gradient
            // there (zero over the padding).
            let valid = r(&ce_logits).try_index((.., ..CE_VALID)).unwrap();
            let targets = ce_targets.clone();
            let plain = move |a: &[Array]| -> Result<Vec<Array>, Exception> {
                Ok(vec![reference_cross_entropy(&a[0], &targets)?])
            };
            let (ce, d_ce) = fallible_vjp(plain, &[valid], std::slice::from_ref(&ce_cot)).unwrap();
            let zeros = mlx_rs::ops::zeros::<f32>(&[CE_ROWS, CE_W - CE_VALID]).unwrap();
            let d_padded = mlx_rs::ops::concatenate(&[d_ce[0].clone(), zeros], 1).unwrap();
            for (form, w, d_want) in [("padded", CE_W, &d_padded), ("cut", CE_VALID, &d_ce[0])] {
                let got = read(d, &format!("{tag}_{form}_ce"), &[CE_ROWS]);
                let got_d = read(d, &format!("{tag}_{form}_ce_grad"), &[CE_ROWS, w]);
                // The loss is f32 from the rounded logits either way.
                assert_close(&format!("{tag} {form} cross-entropy"), &ce[0], &got, 1e-5);
                assert_close(
                    &format!("{tag} {form} cross-entropy gradient"),
                    d_want,
                    &got_d,
                    tol,
                );
            }
        }
    }

    /// `Kernel`'s source with the signature and constants MLX 0.32's
    /// `fast::cuda_kernel` writes around it (inputs, with `_shape`,
    /// `_strides` and `_ndim` where the body names them; outputs; template
    /// constants), after a prelude of the CUDA headers and MLX's `Shape`
    /// (in place of MLX's own device headers, which are not on PyPI).
    fn wrapped_source(
        k: &Kernel,
        inputs: &[&str],
        outputs: &[&str],
        template: &[(&str, String)],
    ) -> String {
        let mut s = String::from(
            "#include <cuda_bf16.h>\n#include <cuda_fp16.h>\n#include <cuda/std/array>\n\
             #include <cuda/std/cstdint>\n#include <cuda/std/limits>\n\
             using int32_t = cuda::std::int32_t;\nusing int64_t = cuda::std::int64_t;\n\
             namespace mlx::core::cu {\n\
             using Shape = cuda::std::array<int32_t, 10>;\n\
             using Strides = cuda::std::array<int64_t, 10>;\n\n",
        );
        s += &format!("__global__ void custom_kernel_{}(\n", k.name);
        let mut params = Vec::new();
        for (name, ty) in k.inputs.iter().zip(inputs) {
            params.push(format!("    const {ty}* {name}"));
            for (suffix, decl) in [
                ("_shape", "const __grid_constant__ Shape"),
                ("_strides", "const __grid_constant__ Strides"),
                ("_ndim", "const __grid_constant__ int"),
            ] {
                if k.source.contains(&format!("{name}{suffix}")) {
                    params.push(format!("    {decl} {name}{suffix}"));
                }
            }
        }
        for (name, ty) in k.outputs.iter().zip(outputs) {
            params.push(format!("    {ty}* {name}"));
        }
        s += &params.join(",\n");
        s += ") {\n";
        for (name, value) in template {
            s += &format!(
                "  {value_decl};\n",
                value_decl = value.replace("NAME", name)
            );
        }
        s += k.source;
        s += "\n}\n\n} // namespace mlx::core::cu\n";
        s
    }

    /// Compiles `files` with NVRTC (loaded at run time) as MLX does on an
    /// H100; prints each failure's log. Arguments: libnvrtc, the include
    /// folder, then the sources.
    const NVRTC_DRIVER: &str = r#"
#include <dlfcn.h>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
typedef int (*Create)(void**, const char*, const char*, int, const char* const*, const char* const*);
typedef int (*Compile)(void*, int, const char* const*);
typedef int (*LogSize)(void*, size_t*);
typedef int (*Log)(void*, char*);
int main(int argc, char** argv) {
  void* lib = dlopen(argv[1], RTLD_NOW);
  if (!lib) { std::fprintf(stderr, "%s\n", dlerror()); return 2; }
  auto create = (Create)dlsym(lib, "nvrtcCreateProgram");
  auto compile = (Compile)dlsym(lib, "nvrtcCompileProgram");
  auto log_size = (LogSize)dlsym(lib, "nvrtcGetProgramLogSize");
  auto get_log = (Log)dlsym(lib, "nvrtcGetProgramLog");
  std::string inc = std::string("--include-path=") + argv[2];
  std::string cccl = inc + "/cccl";
  const char* opts[] = {"--device-as-default-execution-space", "--gpu-architecture=sm_90a",
                        inc.c_str(), cccl.c_str()};
  int failed = 0;
  for (int i = 3; i < argc; ++i) {
    std::ifstream f(argv[i]);
    std::stringstream src;
    src << f.rdbuf();
    void* prog = nullptr;
    if (create(&prog, src.str().c_str(), argv[i], 0, nullptr, nullptr) != 0) return 2;
    if (compile(prog, 4, opts) != 0) {
      size_t n = 0;
      log_size(prog, &n);
      std::vector<char> log(n + 1, 0);
      get_log(prog, log.data());
      std::printf("== %s\n%s\n", argv[i], log.data());
      ++failed;
    }
  }
  return failed ? 1 : 0;
}
"#;

    /// NVRTC accepts every kernel in every dtype and constant it is
    /// launched with, wrapped as MLX wraps it: the CPU shim above checks
    /// the arithmetic, not what CUDA's compiler takes (it missed an
    /// undefined `inf` once, found only by NVRTC).
    #[test]
    #[ignore = "needs NVRTC 13 and the CUDA headers (about 240 MB unpacked): scripts/fetch-test-nvrtc.sh, \
                then CSM_TEST_NVRTC=$PWD/target/test-data/nvrtc cargo test -p csm-core --lib \
                kernels::cuda::tests::kernel_sources_compile_with_nvrtc -- --ignored"]
    fn kernel_sources_compile_with_nvrtc() {
        let nvrtc = std::env::var_os("CSM_TEST_NVRTC").map(std::path::PathBuf::from).expect(
            "CSM_TEST_NVRTC names the folder scripts/fetch-test-nvrtc.sh writes (an absolute path: tests run in the crate)",
        );
        let lib = nvrtc.join("lib/libnvrtc.so.13");
        assert!(
            lib.is_file(),
            "{} is missing: run scripts/fetch-test-nvrtc.sh",
            lib.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut files = Vec::new();
        let mut add = |tag: String, src: String| {
            let path = d.join(format!("{tag}.cu"));
            std::fs::write(&path, src).unwrap();
            files.push(path);
        };
        let ty = |t: &str| format!("using NAME = {t}");
        for (short, t) in [
            ("f32", "float"),
            ("bf16", "__nv_bfloat16"),
            ("f16", "__half"),
        ] {
            add(
                format!("swiglu_{short}"),
                wrapped_source(&SWIGLU_GRAD, &[t; 3], &[t; 2], &[("T", ty(t))]),
            );
            for forward in [true, false] {
                add(
                    format!("rope_{short}_{forward}"),
                    wrapped_source(
                        &ROPE_TRANSPOSED,
                        &[t, "float"],
                        &[t],
                        &[
                            ("T", ty(t)),
                            ("FORWARD", format!("constexpr bool NAME = {forward}")),
                        ],
                    ),
                );
            }
            add(
                format!("lora_{short}"),
                wrapped_source(
                    &LORA_EXPAND_ADD,
                    &[t, "float", "float", "float"],
                    &[t],
                    &[("T", ty(t))],
                ),
            );
            let valid = ("VALID", "constexpr int NAME = 2051".to_string());
            add(
                format!("ce_{short}"),
                wrapped_source(
                    &CROSS_ENTROPY,
                    &[t, "int32_t"],
                    &["float", "float"],
                    &[("T", ty(t)), valid.clone()],
                ),
            );
            for v in [8, 1] {
                add(
                    format!("ce_grad_{short}_{v}"),
                    wrapped_source(
                        &CROSS_ENTROPY_GRAD,
                        &[t, "int32_t", "float", "float"],
                        &[t],
                        &[
                            ("T", ty(t)),
                            valid.clone(),
                            ("V", format!("constexpr int NAME = {v}")),
                        ],
                    ),
                );
            }
        }
        std::fs::write(d.join("driver.cpp"), NVRTC_DRIVER).unwrap();
        let built = Command::new("c++")
            .args(["-std=c++17", "-O1", "-o"])
            .arg(d.join("driver"))
            .arg(d.join("driver.cpp"))
            .arg("-ldl")
            .output()
            .expect("running c++");
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let ran = Command::new(d.join("driver"))
            .env("LD_LIBRARY_PATH", nvrtc.join("lib"))
            .arg(&lib)
            .arg(nvrtc.join("include"))
            .args(&files)
            .output()
            .unwrap();
        assert!(
            ran.status.success(),
            "NVRTC rejects kernel sources:\n{}{}",
            String::from_utf8_lossy(&ran.stdout),
            String::from_utf8_lossy(&ran.stderr)
        );
    }

    /// Where MLX has no CUDA back-end (this CPU build), a kernel is an
    /// error that names it and says why, not an abort.
    #[test]
    fn without_cuda_a_kernel_is_an_error_naming_it() {
        let err = check_against_mlx().unwrap_err().to_string();
        assert!(
            err.contains("csm_swiglu_grad") && err.contains("CUDA"),
            "{err}"
        );
    }
}
