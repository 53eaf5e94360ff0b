//! The numeric kernels under the model and the codec: MLX CPU primitives of
//! this crate (C++ in `crates/csm-core/cpp`, compiled by `build.rs`) and the
//! exp/log forms of [`pow_exp`], for where MLX's own ops leave a lot on
//! the table on the Linux x86_64 CPU wheel (outside macOS): the Llama
//! feed-forward gate `silu(gate) * up` ([`swiglu`]), weight matmuls
//! ([`linear`]: a few rows, and many rows) and Mimi's ELU ([`elu`]).
//!
//! **SwiGLU.** On MLX's scalar CPU kernels (the Linux x86_64 wheel: see
//! [`pow_exp`]) it is one MLX primitive of this crate
//! (`cpp/swiglu.cpp`): one pass over memory forward and one backward,
//! vectorized (AVX2 + FMA when the CPU has them, checked at run time) and
//! split over the cores. MLX's own ops would make 5 single-threaded scalar
//! passes forward (the sigmoid's `exp` at about 14 ns per element) and 7
//! backward. With the depth decoder on every frame, replacing those ops (in
//! their faster `powf` form) took a CSM-1B step on the project's 2-core
//! machine from 12.62 to 12.00 s, with 0.13 GB less peak memory
//! (docs/benchmarks.md). As a primitive it runs when MLX evaluates the
//! graph, so a traced training step keeps the same buffers for the backward
//! (gate, up, `sigmoid(gate)`) as MLX's ops would.
//!
//! Its exponential is a polynomial accurate to about 1 ulp that saturates to
//! the exact limits; the result agrees with `silu(gate) * up` to a few f32
//! ulps. GPUs, macOS (whose CPU build vectorizes MLX's own ops) and other
//! dtypes use `silu(gate) * up`.
//!
//! **Few-row matmuls** (`cpp/small_matmul.cpp`). MLX hands every f32 matmul
//! to `cblas_sgemm`, and Debian's OpenBLAS packs the whole weight into a
//! scratch buffer even for one row: 23-29 GB/s of weights on the project's
//! 2-core machine, where dot products over each weight row stream 57-87
//! GB/s (`bench/one_row_matmul.cpp`). Generation is bound by that (about
//! 18 GB of f32 weights a frame, by the parameter count), so up to
//! [`SMALL_MATMUL_ROWS`] rows of `x` go through the primitive: each weight
//! row streams once, vectorized and split over the cores. CSM-1B generation
//! went from 728 to 456 ms a frame there. Its gradient is MLX's matmuls;
//! training's many-row matmuls never take it.
//!
//! **Many-row matmuls** (`cpp/gemm.cpp`, training and prefill). A CSM-1B
//! training step on the CPU was 82% OpenBLAS `sgemm` kernel plus about 8%
//! of OpenBLAS packing both operands of every call, the frozen weights
//! included. f32 products of more rows go through a primitive of this
//! crate on x86_64 CPUs with AVX2 (weight rows a multiple of 16 long):
//! `x @ W^T` forward and `g @ W` for the input gradient, each the other's
//! gradient, reading the weight in its stored layout and packing only the
//! activations. On the 2-core machine, for the backbone's shapes with 150
//! rows, 201-232 GFLOP/s against OpenBLAS's 183-206 (`bench/gemm.cpp`); a
//! 1/16 step went from 3.95 to 3.57 s, f32 prefill from 511 to 276 ms
//! (docs/benchmarks.md). Products of more than 384 rows (the depth decoder
//! on every frame) go to the BLAS from inside the primitive: its kernel
//! gains with the rows, these do not. Where OpenBLAS has AVX-512 kernels
//! (its own choice on such CPUs) it keeps every product: they are faster.
//! The weight's own gradient, where asked for, is MLX's matmul. Elsewhere
//! (macOS, GPUs, other CPUs, other shapes) it is MLX's matmul.
//!
//! **bf16 on the CPU.** MLX's own bf16 matmul there is a generic
//! single-threaded loop (97% of a bf16 generation profile: 3.5 s a frame,
//! 6 s of prefill). The few-row primitive also takes bf16 operands (the sum
//! in f32, the result rounded to bf16, as GPUs do it) and streams the
//! weights at half the bytes; more rows are widened to f32 for the
//! many-row primitive (or `cblas_sgemm`) and rounded back. bf16 CSM-1B
//! generation on the 2-core machine: 325-350 ms a frame, 0.5 s prefill,
//! 3.5 GiB peak (f32: 370-422 ms, 0.28 s, 6.2 GiB).
//!
//! **ELU** (`cpp/elu.cpp`), in Mimi's SEANet: one vectorized pass on all
//! cores instead of 4 scalar ones (`expm1f` and the select were 13% of a
//! Mimi decode's profile). Inference only: it has no gradient.
//!
//! **Embedding rows** ([`take_rows`], every backend): a frozen table's rows
//! gathered as 8- or 4-byte words, which MLX's gather moves with a quarter
//! of the index work for bf16 rows.
//!
//! **Projections of one input** ([`group::grouped_linear`], every backend):
//! q, k and v (gate and up) with one gradient for their shared input,
//! summed in the GEMMs' epilogues instead of separate adds.

#[cfg(not(target_os = "macos"))]
pub mod cuda;
pub mod group;
pub mod lean;
pub mod pow_exp;

use mlx_rs::error::Exception;
use mlx_rs::{nn, ops, Array, Dtype};

/// Most rows of `x` (all leading axes together) that [`linear`] sends to
/// the few-row primitive: a generated frame, or a small batch of them.
pub const SMALL_MATMUL_ROWS: usize = 8;

/// `silu(gate) * up`, differentiable.
///
/// # Shapes
/// `gate: [..., H]`, `up: [..., H]` (same shape) -> `[..., H]`
pub fn swiglu(gate: &Array, up: &Array) -> Result<Array, Exception> {
    #[cfg(not(target_os = "macos"))]
    if uses_primitive(gate, up) {
        return primitive::swiglu(gate, up);
    }
    nn::silu(gate)?.multiply(up)
}

/// Rows of a table at the given indices (an embedding lookup), gathered as
/// the widest unsigned words that tile a row (8 or 4 bytes) and viewed back
/// as the table's dtype: the same bytes as `table[indices]`, with a
/// quarter of the elements for bf16 rows. MLX's gather indexes each
/// element on its own: on an H100 the audio rows of 16 x 271 frames (32
/// codebooks, 2048 bf16 wide) took 2.5 ms a step that way (2026-12-07,
/// bench/ktrace). A bit-view has no gradient: for a table that is not
/// differentiated (a frozen embedding).
///
/// # Shapes
/// `table: [V, D]`, `indices: [...]` int -> `[..., D]`
pub fn take_rows(table: &Array, indices: &Array) -> Result<Array, Exception> {
    let d = table.shape()[1];
    let bytes = d as usize * table.item_size();
    let word = match (bytes % 8, bytes % 4) {
        (0, _) => Dtype::Uint64,
        (_, 0) => Dtype::Uint32,
        _ => return table.take_axis(indices, 0), // [..., D]
    };
    let mut shape = indices.shape().to_vec();
    shape.push(d);
    table
        .view_dtype(word)? // [V, bytes / word]
        .take_axis(indices.flatten(None, None)?, 0)? // [N, bytes / word]
        .view_dtype(table.dtype())? // [N, D]
        .reshape(&shape) // [..., D]
}

/// `x @ w^T` for a weight `w [N, K]` in PyTorch's layout (rows are
/// outputs).
///
/// # Shapes
/// `x: [..., K]`, `w: [N, K]` -> `[..., N]`
pub fn linear(x: &Array, w: &Array) -> Result<Array, Exception> {
    #[cfg(not(target_os = "macos"))]
    match linear_route(x, w) {
        LinearRoute::FewRows => return primitive::small_matmul(x, w),
        LinearRoute::Gemm => return primitive::gemm(x, w, true),
        LinearRoute::WidenBf16 => {
            let (x32, w32) = (x.as_dtype(Dtype::Float32)?, w.as_dtype(Dtype::Float32)?);
            let y = if gemm_fits(&w32) {
                primitive::gemm(&x32, &w32, true)?
            } else {
                ops::matmul(&x32, w32.t())?
            };
            return y.as_dtype(Dtype::Bfloat16);
        }
        LinearRoute::Mlx => {}
    }
    ops::matmul(x, w.t())
}

/// How [`linear`] computes a product.
#[cfg(not(target_os = "macos"))]
#[derive(Debug, PartialEq, Eq)]
enum LinearRoute {
    /// The few-row primitive (f32 or bf16 operands on the CPU).
    FewRows,
    /// The many-row primitive (`cpp/gemm.cpp`): f32 on an x86_64 CPU with
    /// AVX2, the weight's row length a multiple of 16.
    Gemm,
    /// bf16 on the CPU with more rows: widened to f32 for the many-row
    /// primitive (or `cblas_sgemm` where it does not apply), the result
    /// rounded back. MLX's own bf16 matmul there is a generic
    /// single-threaded loop, about 11 GFLOP/s for a CSM-1B prefill. Under
    /// autodiff the widened weight is kept for the backward: bf16 training
    /// on a CPU (which the trainer never picks: f32 is its CPU dtype) would
    /// hold f32 copies of the weights it multiplies.
    WidenBf16,
    /// MLX's matmul.
    Mlx,
}

/// Which way [`linear`] goes for these operands.
#[cfg(not(target_os = "macos"))]
fn linear_route(x: &Array, w: &Array) -> LinearRoute {
    let k = x.shape().last().copied().unwrap_or(0).max(0) as usize;
    let dtype = x.dtype();
    // The cheap checks first, the device query (an FFI call) last.
    if w.dtype() != dtype
        || w.ndim() != 2
        || !matches!(dtype, Dtype::Float32 | Dtype::Bfloat16)
        || k == 0
        || !cpu_outside_macos()
    {
        return LinearRoute::Mlx;
    }
    match (x.size() / k <= SMALL_MATMUL_ROWS, dtype) {
        (true, _) => LinearRoute::FewRows,
        (false, Dtype::Bfloat16) => LinearRoute::WidenBf16,
        (false, _) if gemm_fits(w) => LinearRoute::Gemm,
        (false, _) => LinearRoute::Mlx,
    }
}

/// Whether the many-row primitive takes this (f32, 2-D) weight: its rows a
/// multiple of 16 long, where [`gemm_is_preferred`].
#[cfg(not(target_os = "macos"))]
fn gemm_fits(w: &Array) -> bool {
    w.shape()[1] % 16 == 0 && gemm_is_preferred()
}

/// Whether the many-row primitive is used (given a CPU device): the CPU
/// runs its AVX2 kernels, and the BLAS has no AVX-512 kernels, which beat
/// them (OpenBLAS's own choice on AVX-512 CPUs; `OPENBLAS_CORETYPE=Haswell`
/// keeps it to AVX2). Asked once.
#[cfg(not(target_os = "macos"))]
fn gemm_is_preferred() -> bool {
    static PREFERRED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PREFERRED.get_or_init(|| {
        primitive::gemm_available() && !crate::runtime::openblas_has_avx512_kernels()
    })
}

/// Whether f32 weight products of many rows run on this crate's own
/// threads (the many-row primitive on a CPU device, see the module docs),
/// so that OpenBLAS's spinning idle workers would only get in their way:
/// the trainer and generation hold OpenBLAS to one thread then (see
/// [`crate::runtime::SingleThreadBlas`]).
pub fn many_row_products_are_ours() -> bool {
    #[cfg(not(target_os = "macos"))]
    {
        gemm_is_preferred() && cpu_outside_macos()
    }
    #[cfg(target_os = "macos")]
    false
}

/// ELU with `alpha = 1`: `x` where `x > 0`, else `e^x - 1` (computed
/// without cancellation near 0, like PyTorch's `expm1`). Not differentiable
/// on the CPU primitive's path.
///
/// # Shapes
/// any -> same
pub fn elu(x: &Array) -> Result<Array, Exception> {
    #[cfg(not(target_os = "macos"))]
    if scalar_mlx_cpu(x) {
        return primitive::elu(x);
    }
    let neg = ops::expm1(ops::minimum(x, Array::from_f32(0.0))?)?;
    ops::select(&x.gt(Array::from_f32(0.0))?, x, &neg)
}

/// Whether an op on `x` would run on MLX's scalar CPU kernels (the Linux
/// x86_64 wheel's, see [`pow_exp`]): a CPU default device, f32,
/// outside macOS. The primitives here and the `powf` log-sum-exp apply
/// exactly there.
pub(super) fn scalar_mlx_cpu(x: &Array) -> bool {
    x.dtype() == Dtype::Float32 && cpu_outside_macos()
}

/// Whether MLX's default device is the CPU, outside macOS.
fn cpu_outside_macos() -> bool {
    !cfg!(target_os = "macos") && crate::runtime::default_device_is_cpu()
}

/// Whether [`swiglu`] takes the fused primitive for these operands.
#[cfg(not(target_os = "macos"))]
fn uses_primitive(gate: &Array, up: &Array) -> bool {
    scalar_mlx_cpu(gate) && scalar_mlx_cpu(up) && gate.shape() == up.shape()
}

#[cfg(not(target_os = "macos"))]
mod primitive {
    use mlx_rs::error::Exception;
    use mlx_rs::Array;

    use crate::ffi::mlx_call;

    extern "C" {
        /// `cpp/swiglu.cpp`: `res <- silu(gate) * up` as a lazy MLX array;
        /// non-zero, with the message through mlx-c's error handler, for
        /// operands that are not f32 of one shape.
        fn csm_swiglu(
            res: *mut mlx_sys::mlx_array,
            gate: mlx_sys::mlx_array,
            up: mlx_sys::mlx_array,
        ) -> std::ffi::c_int;

        /// `cpp/small_matmul.cpp`: `res <- x @ w^T` as a lazy MLX array;
        /// non-zero, with the message through mlx-c's error handler, for
        /// operands that are not both f32 or both bf16, or do not fit.
        /// `baseline` non-zero runs the kernels compiled for the baseline
        /// target whatever the CPU has (tests).
        fn csm_small_matmul(
            res: *mut mlx_sys::mlx_array,
            x: mlx_sys::mlx_array,
            w: mlx_sys::mlx_array,
            baseline: std::ffi::c_int,
        ) -> std::ffi::c_int;

        /// `cpp/gemm.cpp`: `res <- x @ w^T` (`transpose_w` non-zero) or
        /// `x @ w` as a lazy MLX array; non-zero, with the message through
        /// mlx-c's error handler, for operands that are not f32, do not fit,
        /// or a CPU without AVX2.
        fn csm_gemm(
            res: *mut mlx_sys::mlx_array,
            x: mlx_sys::mlx_array,
            w: mlx_sys::mlx_array,
            transpose_w: std::ffi::c_int,
        ) -> std::ffi::c_int;

        /// `cpp/gemm.cpp`: 1 where this CPU runs `csm_gemm` (AVX2 and FMA,
        /// and `cblas_sgemm` for the many-row case).
        fn csm_gemm_available() -> std::ffi::c_int;

        /// `cpp/elu.cpp`: `res <- elu(x)` as a lazy MLX array; non-zero,
        /// with the message through mlx-c's error handler, unless f32.
        fn csm_elu(res: *mut mlx_sys::mlx_array, x: mlx_sys::mlx_array) -> std::ffi::c_int;
    }

    /// ELU through the primitive (f32).
    ///
    /// # Shapes
    /// any -> same
    pub(super) fn elu(x: &Array) -> Result<Array, Exception> {
        // SAFETY: `x` is a live handle; `res` is a valid out-parameter.
        build(|res| unsafe { csm_elu(res, x.as_ptr()) })
    }

    /// Runs one of the C entry points above into a new array.
    fn build(
        call: impl FnOnce(*mut mlx_sys::mlx_array) -> std::ffi::c_int,
    ) -> Result<Array, Exception> {
        // SAFETY: a fresh empty array handle for the call to fill.
        let mut res = unsafe { mlx_sys::mlx_array_new() };
        if let Err(message) = mlx_call(|| call(&mut res)) {
            // SAFETY: frees the handle created above, never handed out.
            unsafe { mlx_sys::mlx_array_free(res) };
            return Err(Exception::custom(message));
        }
        // SAFETY: `res` was filled by the call and is owned by nobody else.
        Ok(unsafe { Array::from_ptr(res) })
    }

    /// `x @ w^T` through the few-row primitive (f32 or bf16, `w` 2-D).
    ///
    /// # Shapes
    /// `x: [..., K]`, `w: [N, K]` -> `[..., N]`
    pub(super) fn small_matmul(x: &Array, w: &Array) -> Result<Array, Exception> {
        // SAFETY: `x` and `w` are live handles; `res` is a valid out-parameter.
        build(|res| unsafe { csm_small_matmul(res, x.as_ptr(), w.as_ptr(), 0) })
    }

    /// `x @ w^T` (`transpose_w`) or `x @ w` through the many-row primitive
    /// (f32, `w` 2-D with rows a multiple of 16 long).
    ///
    /// # Shapes
    /// `x: [..., K]`, `w: [N, K]` -> `[..., N]` (`transpose_w`);
    /// `x: [..., N]`, `w: [N, K]` -> `[..., K]`
    pub(super) fn gemm(x: &Array, w: &Array, transpose_w: bool) -> Result<Array, Exception> {
        // SAFETY: `x` and `w` are live handles; `res` is a valid out-parameter.
        build(|res| unsafe { csm_gemm(res, x.as_ptr(), w.as_ptr(), transpose_w.into()) })
    }

    /// Whether this CPU runs [`gemm`] (x86_64 with AVX2 and FMA, and a
    /// CBLAS in the process).
    pub(super) fn gemm_available() -> bool {
        // SAFETY: a query without arguments or side effects.
        unsafe { csm_gemm_available() == 1 }
    }

    /// [`small_matmul`] on the kernels compiled for the baseline target
    /// (what CPUs without AVX2 and non-x86 machines run).
    #[cfg(test)]
    pub(super) fn small_matmul_baseline(x: &Array, w: &Array) -> Result<Array, Exception> {
        // SAFETY: as in `small_matmul`.
        build(|res| unsafe { csm_small_matmul(res, x.as_ptr(), w.as_ptr(), 1) })
    }

    /// `silu(gate) * up` through the primitive (f32 operands of one shape).
    ///
    /// # Shapes
    /// `gate: [..., H]`, `up: [..., H]` -> `[..., H]`
    pub(super) fn swiglu(gate: &Array, up: &Array) -> Result<Array, Exception> {
        // SAFETY: `gate` and `up` are live handles; `res` is a valid
        // out-parameter.
        build(|res| unsafe { csm_swiglu(res, gate.as_ptr(), up.as_ptr()) })
    }
}

#[cfg(all(test, not(target_os = "macos")))]
mod tests {
    use super::*;
    use crate::runtime::Backend;
    use crate::test_util::{max_abs, max_abs_diff};
    use mlx_rs::transforms::value_and_grad_with_argnums;
    use mlx_rs::Dtype;

    fn reference(gate: &Array, up: &Array) -> Result<Array, Exception> {
        gate.multiply(mlx_rs::ops::sigmoid(gate)?)?.multiply(up)
    }

    fn fused(gate: &Array, up: &Array) -> Result<Array, Exception> {
        primitive::swiglu(gate, up)
    }

    /// `n` gate values from -100 to 100 (the saturated tails included) and
    /// an `up` of mixed signs, as `[1, n]`.
    fn operands(n: usize) -> (Array, Array) {
        let gate: Vec<f32> = (0..n)
            .map(|i| -100.0 + 200.0 * i as f32 / (n - 1) as f32)
            .collect();
        let up: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        (
            Array::from_slice(&gate, &[1, n as i32]),
            Array::from_slice(&up, &[1, n as i32]),
        )
    }

    /// Max |a - b| / (|b| + 1e-6).
    fn max_rel_diff(a: &Array, b: &Array) -> f32 {
        a.subtract(b)
            .unwrap()
            .abs()
            .unwrap()
            .divide(b.abs().unwrap().add(Array::from_f32(1e-6)).unwrap())
            .unwrap()
            .max(None)
            .unwrap()
            .item_exact::<f32>()
    }

    /// Value and gradients (d gate, d up) of `sum(f(gate, up) * w)`.
    fn value_and_grads(
        f: fn(&Array, &Array) -> Result<Array, Exception>,
        gate: &Array,
        up: &Array,
        w: &Array,
    ) -> (f32, Vec<Array>) {
        let w = w.clone();
        let loss = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
            Ok(vec![f(&args[0], &args[1])?.multiply(&w)?.sum(None)?])
        };
        let mut vg = value_and_grad_with_argnums(loss, &[0, 1][..]);
        let (value, grads) = vg(&[gate.clone(), up.clone()]).unwrap();
        (value[0].item_exact::<f32>(), grads)
    }

    #[test]
    fn primitive_is_taken_for_f32_on_the_cpu() {
        let (gate, up) = operands(64);
        // The default device is the CPU on a CPU-only libmlx (CI's).
        if Backend::detect() == Backend::Cpu {
            assert!(uses_primitive(&gate, &up));
            let bf = gate.as_dtype(Dtype::Bfloat16).unwrap();
            assert!(!uses_primitive(&bf, &bf));
            assert!(!uses_primitive(&gate, &up.reshape(&[64, 1]).unwrap()));
        }
    }

    #[test]
    fn forward_matches_silu_times_up() {
        // 4001: one thread and a tail past the last full vector; 3 x 70001:
        // several threads, with chunk edges inside rows.
        for (rows, n) in [(1, 4001), (3, 70001)] {
            let (gate, up) = operands(n * rows);
            let (gate, up) = (
                gate.reshape(&[rows as i32, n as i32]).unwrap(),
                up.reshape(&[rows as i32, n as i32]).unwrap(),
            );
            let ours = fused(&gate, &up).unwrap();
            let want = reference(&gate, &up).unwrap();
            assert_eq!(ours.shape(), want.shape());
            // |silu(g) up| reaches 200 here: a few f32 ulps of that.
            let diff = max_abs_diff(&ours, &want);
            assert!(diff < 1e-4, "max |diff| {diff}");
            let rel = max_rel_diff(&ours, &want);
            assert!(rel < 1e-5, "max relative diff {rel}");
        }
    }

    #[test]
    fn gradient_matches_autodiff_of_the_reference() {
        for n in [4001usize, 200_003] {
            let (gate, up) = operands(n);
            let weights: Vec<f32> = (0..n)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            let w = Array::from_slice(&weights, &[1, n as i32]);
            let (ours_value, ours) = value_and_grads(fused, &gate, &up, &w);
            let (want_value, want) = value_and_grads(reference, &gate, &up, &w);
            assert!((ours_value - want_value).abs() < 1e-4 * want_value.abs().max(1.0));
            assert_eq!(ours.len(), 2);
            let d_gate = max_abs_diff(&ours[0], &want[0]);
            let d_up = max_abs_diff(&ours[1], &want[1]);
            assert!(d_gate < 1e-4, "d gate max |diff| {d_gate}");
            assert!(d_up < 1e-4, "d up max |diff| {d_up}");
            // d up = w silu(gate): about 0 at gate = -100, 100 w at 100.
            let d_up: Vec<f32> = ours[1].as_slice::<f32>().to_vec();
            assert!(d_up[0].abs() < 1e-30, "{}", d_up[0]);
            assert!((d_up[n - 1] - 100.0 * weights[n - 1]).abs() < 1e-3);
        }
    }

    #[test]
    fn strided_operands_and_a_broadcast_cotangent() {
        // Transposed views and a plain sum (whose cotangent is a broadcast
        // scalar) go through the same primitive.
        let (gate, up) = operands(96 * 50);
        let gate = gate.reshape(&[96, 50]).unwrap().transpose().unwrap();
        let up = up.reshape(&[50, 96]).unwrap();
        let sum = |f: fn(&Array, &Array) -> Result<Array, Exception>| {
            let loss = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
                Ok(vec![f(&args[0], &args[1])?.sum(None)?])
            };
            let mut vg = value_and_grad_with_argnums(loss, &[0, 1][..]);
            vg(&[gate.clone(), up.clone()]).unwrap()
        };
        let (ours_value, ours) = sum(fused);
        let (want_value, want) = sum(reference);
        assert!(
            (ours_value[0].item_exact::<f32>() - want_value[0].item_exact::<f32>()).abs() < 1e-2
        );
        assert_eq!(ours[0].shape(), &[50, 96]);
        assert!(max_abs_diff(&ours[0], &want[0]) < 1e-4);
        assert!(max_abs_diff(&ours[1], &want[1]) < 1e-4);
    }

    #[test]
    fn nan_propagates_and_infinities_saturate() {
        let gate = Array::from_slice(&[f32::NAN, 1.0, f32::INFINITY, f32::NEG_INFINITY], &[4]);
        let up = Array::from_slice(&[1.0f32, 1.0, 2.0, 2.0], &[4]);
        let out = fused(&gate, &up).unwrap();
        let v = out.as_slice::<f32>();
        assert!(v[0].is_nan());
        assert!((v[1] - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
        // silu(inf) = inf; silu(-inf) = -inf * 0, NaN as in MLX's own.
        let want = reference(&gate, &up).unwrap();
        let want = want.as_slice::<f32>();
        assert_eq!(v[2], want[2]);
        assert_eq!(v[3].is_nan(), want[3].is_nan());
    }

    /// Deterministic values in [-1, 1) of the given shape.
    fn filled(shape: &[i32], seed: usize) -> Array {
        let n: i32 = shape.iter().product();
        let v: Vec<f32> = (0..n as usize)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0)
            .collect();
        Array::from_slice(&v, shape)
    }

    #[test]
    fn small_matmul_matches_mlx_matmul() {
        // A tail past the last 16 columns, several rows in 3-D, and a
        // weight big enough to be split over threads.
        for (x_shape, n) in [
            (vec![1, 100], 7),
            (vec![1, 3, 1024], 3000),
            (vec![2, 48], 64),
        ] {
            let k = *x_shape.last().unwrap();
            let x = filled(&x_shape, 1);
            let w = filled(&[n, k], 2);
            assert_eq!(linear_route(&x, &w), LinearRoute::FewRows);
            let want = ops::matmul(&x, w.t()).unwrap();
            let scale = max_abs(&want).max(1.0);
            for ours in [
                primitive::small_matmul(&x, &w).unwrap(),
                primitive::small_matmul_baseline(&x, &w).unwrap(),
            ] {
                assert_eq!(ours.shape(), want.shape());
                let diff = max_abs_diff(&ours, &want);
                assert!(
                    diff < 1e-6 * scale * k as f32,
                    "{x_shape:?} x {n}: max |diff| {diff}"
                );
            }
        }
        // A strided weight (a transposed view) is copied, then used; here a
        // lazy one, whose values exist only once MLX's queue has run.
        let x = filled(&[1, 40], 3);
        let w = filled(&[40, 24], 4)
            .multiply(Array::from_f32(2.0))
            .unwrap()
            .t();
        let diff = max_abs_diff(
            &primitive::small_matmul(&x, &w).unwrap(),
            &ops::matmul(&x, w.t()).unwrap(),
        );
        assert!(diff < 1e-4, "max |diff| {diff}");
    }

    /// Gradients (d x, d w) of `sum(f(x, w) * c)`.
    fn product_grads(
        f: fn(&Array, &Array) -> Result<Array, Exception>,
        x: &Array,
        w: &Array,
        c: &Array,
    ) -> Vec<Array> {
        let c = c.clone();
        let loss = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
            Ok(vec![f(&args[0], &args[1])?.multiply(&c)?.sum(None)?])
        };
        let mut vg = value_and_grad_with_argnums(loss, &[0, 1][..]);
        vg(&[x.clone(), w.clone()]).unwrap().1
    }

    #[test]
    fn small_matmul_gradients_match_mlx() {
        let x = filled(&[2, 1, 70], 5);
        let w = filled(&[33, 70], 6);
        let c = filled(&[2, 1, 33], 7);
        let grads =
            |f: fn(&Array, &Array) -> Result<Array, Exception>| product_grads(f, &x, &w, &c);
        let ours = grads(primitive::small_matmul);
        let want = grads(|x, w| ops::matmul(x, w.t()));
        assert_eq!(ours[0].shape(), &[2, 1, 70]);
        assert_eq!(ours[1].shape(), &[33, 70]);
        assert!(max_abs_diff(&ours[0], &want[0]) < 1e-4);
        assert!(max_abs_diff(&ours[1], &want[1]) < 1e-4);
    }

    /// `y` against `x @ w^T` summed in f32 from the same bf16 values and
    /// rounded to bf16: at most one bf16 rounding step apart (the sums
    /// differ in order only), for values of magnitude about `scale`.
    fn assert_bf16_product(y: &Array, x: &Array, w: &Array, what: &str) {
        assert_eq!(y.dtype(), Dtype::Bfloat16, "{what}");
        let f32 = |a: &Array| a.as_dtype(Dtype::Float32).unwrap();
        let want = f32(&ops::matmul(f32(x), f32(w).t())
            .unwrap()
            .as_dtype(Dtype::Bfloat16)
            .unwrap());
        let got = f32(y);
        assert_eq!(got.shape(), want.shape(), "{what}");
        let (g, wv) = (got.as_slice::<f32>(), want.as_slice::<f32>());
        let scale = wv.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(wv).enumerate() {
            // One bf16 step of b, plus f32 summation-order noise.
            let step = b.abs() / 128.0 + 1e-5 * scale;
            assert!((a - b).abs() <= step, "{what}: element {i}: {a} vs {b}");
        }
    }

    #[test]
    fn small_matmul_in_bf16_sums_in_f32() {
        let bf = |a: Array| a.as_dtype(Dtype::Bfloat16).unwrap();
        for (x_shape, n) in [
            (vec![1, 100], 7),
            (vec![1, 3, 1024], 3000),
            (vec![8, 48], 64),
        ] {
            let k = *x_shape.last().unwrap();
            let x = bf(filled(&x_shape, 1));
            let w = bf(filled(&[n, k], 2));
            assert_eq!(linear_route(&x, &w), LinearRoute::FewRows);
            let y = primitive::small_matmul(&x, &w).unwrap();
            assert_bf16_product(&y, &x, &w, &format!("{x_shape:?} x {n}"));
            let y = primitive::small_matmul_baseline(&x, &w).unwrap();
            assert_bf16_product(&y, &x, &w, &format!("{x_shape:?} x {n}, baseline"));
        }
        // A strided bf16 weight is copied, then used.
        let x = bf(filled(&[2, 40], 3));
        let w = bf(filled(&[40, 24], 4)).t();
        assert_bf16_product(&primitive::small_matmul(&x, &w).unwrap(), &x, &w, "strided");
        // More rows: widened to f32 for sgemm, rounded back.
        let x = bf(filled(&[3, 7, 96], 5));
        let w = bf(filled(&[50, 96], 6));
        assert_eq!(linear_route(&x, &w), LinearRoute::WidenBf16);
        assert_bf16_product(&linear(&x, &w).unwrap(), &x, &w, "21 rows");
        // Gradients in bf16 follow f32's to bf16 precision.
        let c = filled(&[2, 1, 33], 7);
        let grad_x = |x: &Array, w: &Array| {
            let (w, c) = (w.clone(), c.as_dtype(x.dtype()).unwrap());
            let loss = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
                let y = linear(&args[0], &w)?.multiply(&c)?;
                Ok(vec![y.as_dtype(Dtype::Float32)?.sum(None)?])
            };
            let mut vg = value_and_grad_with_argnums(loss, &[0][..]);
            vg(std::slice::from_ref(x)).unwrap().1.remove(0)
        };
        let (x, w) = (filled(&[2, 1, 70], 5), filled(&[33, 70], 6));
        let ours = grad_x(&bf(x.clone()), &bf(w.clone()))
            .as_dtype(Dtype::Float32)
            .unwrap();
        let want = grad_x(&x, &w);
        assert!(
            max_abs_diff(&ours, &want) < 0.05 * max_abs(&want),
            "bf16 gradient"
        );
    }

    /// `ours` against `want` (MLX's matmul of the same operands): within
    /// f32 summation-order noise of a sum of `k` terms of about `scale`.
    fn assert_close_product(ours: &Array, want: &Array, k: i32, what: &str) {
        assert_eq!(ours.shape(), want.shape(), "{what}");
        let scale = max_abs(want).max(1.0);
        let diff = max_abs_diff(ours, want);
        assert!(diff < 2e-7 * scale * k as f32, "{what}: max |diff| {diff}");
    }

    #[test]
    fn gemm_matches_mlx_matmul_in_both_forms() {
        if !primitive::gemm_available() {
            return;
        }
        let routed = gemm_is_preferred();
        // Rows: one 16-row panel, a partial one of 1..8 rows (one vector),
        // of 9..15 (two), 3-D; weight rows: tails of the 6-row tiles and
        // of the 8-wide transposition, enough to split over threads; row
        // length past one block of the forward and across the 64-wide
        // blocks of the backward; more rows than one pass takes.
        for (x_lead, r, c) in [
            (vec![16], 6, 16),
            (vec![9], 7, 48),
            (vec![3, 5], 13, 80),
            (vec![150], 64, 1040),
            (vec![2, 23], 530, 32),
            // Two passes over the weight (195 rows each).
            (vec![3, 130], 20, 64),
        ] {
            let what = format!("x {x_lead:?}, w [{r}, {c}]");
            let w = filled(&[r, c], 2);
            let mut shape = x_lead.clone();
            shape.push(c);
            let x = filled(&shape, 1);
            // Where OpenBLAS has AVX-512 kernels, `linear` keeps to them.
            if routed {
                assert_eq!(linear_route(&x, &w), LinearRoute::Gemm, "{what}");
            }
            let want = ops::matmul(&x, w.t()).unwrap();
            let ours = primitive::gemm(&x, &w, true).unwrap();
            assert_close_product(&ours, &want, c, &format!("x W^T, {what}"));
            *shape.last_mut().unwrap() = r;
            let x = filled(&shape, 3);
            let want = ops::matmul(&x, &w).unwrap();
            let ours = primitive::gemm(&x, &w, false).unwrap();
            assert_close_product(&ours, &want, r, &format!("x W, {what}"));
        }
        // A strided weight (a transposed view, here lazy: its values exist
        // only once MLX's queue has run) is copied, then used.
        let x = filled(&[20, 48], 3);
        let w = filled(&[48, 32], 4)
            .multiply(Array::from_f32(2.0))
            .unwrap()
            .t();
        let want = ops::matmul(&x, w.t()).unwrap();
        assert_close_product(
            &primitive::gemm(&x, &w, true).unwrap(),
            &want,
            48,
            "strided",
        );
        // Empty sums give zeros.
        let empty = primitive::gemm(&filled(&[20, 0], 1), &filled(&[5, 0], 1), true).unwrap();
        assert_eq!(empty.shape(), &[20, 5]);
        assert_eq!(max_abs(&empty), 0.0);
        let empty = primitive::gemm(&filled(&[20, 0], 1), &filled(&[0, 16], 1), false).unwrap();
        assert_eq!(empty.shape(), &[20, 16]);
        assert_eq!(max_abs(&empty), 0.0);
    }

    #[test]
    fn gemm_of_many_rows_borrows_the_cores_and_gives_them_back() {
        if !primitive::gemm_available() {
            return;
        }
        let Some(before) = crate::runtime::openblas_threads() else {
            return;
        };
        // 400 rows: past the kernels' limit, through OpenBLAS on all cores
        // even while a guard holds it to one thread.
        let x = filled(&[400, 32], 1);
        let w = filled(&[24, 32], 2);
        {
            let _one = crate::runtime::SingleThreadBlas::new();
            let y = primitive::gemm(&x, &w, true).unwrap();
            assert_close_product(&y, &ops::matmul(&x, w.t()).unwrap(), 32, "400 rows");
            assert_eq!(crate::runtime::openblas_threads(), Some(1));
        }
        assert_eq!(crate::runtime::openblas_threads(), Some(before));
    }

    #[test]
    fn gemm_gradients_match_mlx() {
        if !primitive::gemm_available() {
            return;
        }
        let x = filled(&[2, 11, 64], 5);
        let w = filled(&[40, 64], 6);
        let c = filled(&[2, 11, 40], 7);
        let grads =
            |f: fn(&Array, &Array) -> Result<Array, Exception>| product_grads(f, &x, &w, &c);
        let ours = grads(|x, w| primitive::gemm(x, w, true));
        let want = grads(|x, w| ops::matmul(x, w.t()));
        assert_close_product(&ours[0], &want[0], 40, "d x of x W^T");
        assert_close_product(&ours[1], &want[1], 22, "d W of x W^T");
        // The other form, through its own gradient.
        let x = filled(&[2, 11, 40], 8);
        let c = filled(&[2, 11, 64], 9);
        let grads =
            |f: fn(&Array, &Array) -> Result<Array, Exception>| product_grads(f, &x, &w, &c);
        let ours = grads(|x, w| primitive::gemm(x, w, false));
        let want = grads(|x, w| ops::matmul(x, w));
        assert_close_product(&ours[0], &want[0], 64, "d x of x W");
        assert_close_product(&ours[1], &want[1], 22, "d W of x W");
    }

    #[test]
    fn gemm_operand_errors_say_why() {
        if !primitive::gemm_available() {
            return;
        }
        let w = filled(&[16, 32], 8);
        let e = primitive::gemm(&filled(&[20, 31], 1), &w, true).unwrap_err();
        assert!(
            e.what().contains("31 columns, the product needs 32"),
            "{}",
            e.what()
        );
        let e = primitive::gemm(&filled(&[20, 32], 1), &w, false).unwrap_err();
        assert!(
            e.what().contains("32 columns, the product needs 16"),
            "{}",
            e.what()
        );
        let e = primitive::gemm(&filled(&[20, 24], 1), &filled(&[16, 24], 1), true).unwrap_err();
        assert!(
            e.what().contains("24 columns, not a multiple of 16"),
            "{}",
            e.what()
        );
        let bf = w.as_dtype(Dtype::Bfloat16).unwrap();
        let e = primitive::gemm(&filled(&[20, 32], 1), &bf, true).unwrap_err();
        assert!(e.what().contains("must both be float32"), "{}", e.what());
    }

    #[test]
    fn routes_and_operand_errors() {
        let w = filled(&[16, 32], 8);
        let rows = |m: usize| filled(&[m as i32, 32], 9);
        let bf = |a: &Array| a.as_dtype(Dtype::Bfloat16).unwrap();
        assert_eq!(
            linear_route(&rows(SMALL_MATMUL_ROWS), &w),
            LinearRoute::FewRows
        );
        let many = if gemm_is_preferred() {
            LinearRoute::Gemm
        } else {
            LinearRoute::Mlx
        };
        assert_eq!(linear_route(&rows(SMALL_MATMUL_ROWS + 1), &w), many);
        // Rows not a multiple of 16 long: MLX's matmul.
        let odd = filled(&[16, 24], 8);
        assert_eq!(
            linear_route(&filled(&[SMALL_MATMUL_ROWS as i32 + 1, 24], 9), &odd),
            LinearRoute::Mlx
        );
        assert_eq!(linear_route(&bf(&rows(1)), &bf(&w)), LinearRoute::FewRows);
        assert_eq!(
            linear_route(&bf(&rows(SMALL_MATMUL_ROWS + 1)), &bf(&w)),
            LinearRoute::WidenBf16
        );
        assert_eq!(linear_route(&rows(1), &bf(&w)), LinearRoute::Mlx);
        assert_eq!(linear_route(&bf(&rows(1)), &w), LinearRoute::Mlx);
        let e = primitive::small_matmul(&filled(&[1, 31], 1), &w).unwrap_err();
        assert!(e.what().contains("31 columns, w has 32"), "{}", e.what());
        // An empty sum (k = 0) gives zeros, not a crash.
        let empty = primitive::small_matmul(&filled(&[2, 0], 1), &filled(&[5, 0], 1)).unwrap();
        assert_eq!(empty.shape(), &[2, 5]);
        assert_eq!(max_abs(&empty), 0.0);
        let e = primitive::small_matmul(&rows(1), &bf(&w)).unwrap_err();
        assert!(
            e.what().contains("must both be float32 or both bfloat16"),
            "{}",
            e.what()
        );
        let f16 = w.as_dtype(Dtype::Float16).unwrap();
        let e =
            primitive::small_matmul(&rows(1).as_dtype(Dtype::Float16).unwrap(), &f16).unwrap_err();
        assert!(
            e.what().contains("must both be float32 or both bfloat16"),
            "{}",
            e.what()
        );
    }

    #[test]
    fn elu_matches_the_mlx_formula() {
        // -100..100 with the region near 0 (where expm1 matters) dense, over
        // enough elements for several threads.
        let n = 300_003usize;
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f32 / (n - 1) as f32 * 2.0 - 1.0; // -1..1
                if i % 3 == 0 {
                    t * 100.0
                } else {
                    t * t * t * 0.5
                }
            })
            .collect();
        let x = Array::from_slice(&v, &[3, n as i32 / 3]);
        let ours = primitive::elu(&x).unwrap();
        let neg = ops::expm1(ops::minimum(&x, Array::from_f32(0.0)).unwrap()).unwrap();
        let want = ops::select(x.gt(Array::from_f32(0.0)).unwrap(), &x, &neg).unwrap();
        assert!(max_abs_diff(&ours, &want) < 1e-6);
        // Relative accuracy near 0 (no cancellation): a few ulps.
        let rel = max_rel_diff(&ours, &want);
        assert!(rel < 1e-5, "max relative diff {rel}");
        let special = Array::from_slice(
            &[f32::NAN, f32::NEG_INFINITY, f32::INFINITY, -0.0, 1e-30],
            &[5],
        );
        let out = primitive::elu(&special).unwrap();
        let o = out.as_slice::<f32>();
        assert!(o[0].is_nan());
        assert_eq!(&o[1..], &[-1.0, f32::INFINITY, 0.0, 1e-30]);
        let e = primitive::elu(&x.as_dtype(Dtype::Bfloat16).unwrap()).unwrap_err();
        assert!(e.what().contains("float32"), "{}", e.what());
    }

    #[test]
    fn bad_operands_are_errors_that_say_why() {
        let (gate, up) = operands(8);
        let e = fused(&gate, &up.reshape(&[8, 1]).unwrap()).unwrap_err();
        assert!(e.what().contains("same shape"), "{}", e.what());
        let bf = gate.as_dtype(Dtype::Bfloat16).unwrap();
        let e = fused(&bf, &bf).unwrap_err();
        assert!(e.what().contains("float32"), "{}", e.what());
    }

    /// Rows gathered as words are the rows `take` gives, bit for bit, for
    /// bf16 and f32 tables whose rows take 8- and 4-byte words, and one
    /// whose rows take neither (6 bytes: the plain gather).
    #[test]
    fn take_rows_equals_take() {
        mlx_rs::random::seed(6).unwrap();
        let idx = Array::from_slice(&[3i32, 0, 7, 7, 1, 5], &[2, 3]);
        for (dtype, d) in [
            (Dtype::Bfloat16, 16),
            (Dtype::Bfloat16, 6),
            (Dtype::Bfloat16, 3),
            (Dtype::Float32, 5),
        ] {
            let table = mlx_rs::random::normal::<f32>(&[8, d], None, None, None)
                .unwrap()
                .as_dtype(dtype)
                .unwrap();
            let want = table.take_axis(&idx, 0).unwrap();
            let got = take_rows(&table, &idx).unwrap();
            assert_eq!(got.shape(), &[2, 3, d]);
            assert_eq!(got.dtype(), dtype);
            let same = want
                .eq(&got)
                .unwrap()
                .all(None)
                .unwrap()
                .item_exact::<bool>();
            assert!(same, "{dtype:?} x {d}");
        }
    }
}
