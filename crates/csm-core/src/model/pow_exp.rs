//! Exponentials through `powf` where MLX's own are slow: the Llama
//! feed-forward gate `silu(gate) * up` ([`swiglu`]) and the loss's
//! [`logsumexp`].
//!
//! MLX's PyPI CPU wheel for Linux x86_64 evaluates elementwise ops one
//! element at a time (`perf` shows its one-lane `simd::exp<float, 1>`; the
//! wheel is built without the SSE/AVX its SIMD types would need), and its
//! `exp` and `sigmoid` cost about 10
//! and 14 ns per element through its own polynomial, on the one thread that
//! runs all non-BLAS work. With the depth decoder on every frame the
//! sigmoid alone was about 2.3 s of a 14.4 s CSM-1B step on this project's
//! 2-core machine (`perf`, docs/benchmarks.md). MLX's `power` is libm's
//! `powf`, about 3-4 ns per element, so here `e^x = power(e, x)` and
//! `e^-x = power(1/e, x)`. The base `e` or `1/e` rounded to f32 is off by at
//! most 2^-24 relative, so `e^x` is off by at most `|x| 2^-24` relative:
//! within a few ulps for the values a model produces. `powf` saturates to
//! `inf` / `0` at the extremes, which gives the exact limits.
//!
//! [`swiglu`]'s gradient is written out (a custom VJP) instead of
//! differentiated through the ops: the forward also returns `sigmoid(x)`,
//! which the backward reuses, so `powf` runs once per element and autodiff
//! keeps one activation-sized buffer for the backward instead of two.
//!
//! GPUs, macOS (whose CPU build does vectorize) and non-f32 dtypes keep
//! MLX's own `silu` and `logsumexp`.

use std::ffi::{c_int, c_void};

use mlx_rs::error::Exception;
use mlx_rs::{nn, Array, Device, DeviceType, Dtype};

use crate::ffi::{mlx_call, set_vector_arrays, vector_arrays};

/// `silu(gate) * up`, differentiable.
///
/// # Shapes
/// `gate: [..., H]`, `up: [..., H]` (same shape) -> `[..., H]`
pub fn swiglu(gate: &Array, up: &Array) -> Result<Array, Exception> {
    if uses_power_path(gate, up) {
        power_swiglu(gate, up)
    } else {
        nn::silu(gate)?.multiply(up)
    }
}

/// Log-sum-exp over the last axis, differentiable.
///
/// # Shapes
/// `x: [..., V]` -> `[...]`
pub fn logsumexp(x: &Array) -> Result<Array, Exception> {
    if !powf_is_faster(x) {
        return x.logsumexp_axis(-1, false);
    }
    // The max only shifts the exponent; its gradient contributions cancel,
    // so it is held constant.
    let m = mlx_rs::stop_gradient(x.max_axis(-1, true)?)?; // [..., 1]
    let e = Array::from_f32(std::f64::consts::E as f32);
    let sum = e.power(x.subtract(&m)?)?.sum_axis(-1, false)?; // [...]
    m.squeeze_axes(&[-1])?.add(sum.log()?)
}

/// Whether the `powf` forms beat MLX's own for an `x` of this dtype: on a
/// CPU default device, f32, outside macOS.
fn powf_is_faster(x: &Array) -> bool {
    if cfg!(target_os = "macos") || x.dtype() != Dtype::Float32 {
        return false;
    }
    matches!(
        Device::try_default().and_then(|d| d.get_type()),
        Ok(DeviceType::Cpu)
    )
}

/// Whether [`swiglu`] takes the `powf` path for these operands.
fn uses_power_path(gate: &Array, up: &Array) -> bool {
    powf_is_faster(gate) && up.dtype() == Dtype::Float32 && gate.shape() == up.shape()
}

/// `e^-x`, as `power(1/e, x)`.
fn exp_neg(x: &Array) -> Result<Array, Exception> {
    let inv_e = Array::from_f32((-1.0f64).exp() as f32);
    inv_e.power(x)
}

/// Forward: `(gate s up, s)` with `s = sigmoid(gate) = 1 / (1 + e^-gate)`.
fn forward(gate: &Array, up: &Array) -> Result<[Array; 2], Exception> {
    let s = exp_neg(gate)?.add(Array::from_f32(1.0))?.reciprocal()?;
    let out = gate.multiply(&s)?.multiply(up)?;
    Ok([out, s])
}

/// VJP of [`forward`]'s first output for the cotangent `cot`, given
/// `s = sigmoid(gate)`: `(d gate, d up)`.
///
/// `d up = cot * g s`, `d gate = cot * up * (s + g s (1 - s))`.
fn backward(gate: &Array, up: &Array, s: &Array, cot: &Array) -> Result<(Array, Array), Exception> {
    let silu = gate.multiply(s)?;
    let d_up = cot.multiply(&silu)?;
    // d silu / d g = s + silu - silu * s
    let d_silu = s.add(&silu)?.subtract(silu.multiply(s)?)?;
    let d_gate = cot.multiply(up)?.multiply(&d_silu)?;
    Ok((d_gate, d_up))
}

/// Runs `body` for an mlx-c callback, turning errors and panics into a
/// non-zero status (a panic must not unwind into C++).
fn callback(name: &str, body: impl FnOnce() -> Result<(), String>) -> c_int {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(message)) => {
            tracing::error!("swiglu {name}: {message}");
            1
        }
        Err(_) => {
            tracing::error!("swiglu {name}: panicked");
            1
        }
    }
}

extern "C" fn forward_callback(
    res: *mut mlx_sys::mlx_vector_array,
    inputs: mlx_sys::mlx_vector_array,
    _payload: *mut c_void,
) -> c_int {
    callback("forward", || {
        // SAFETY: mlx-c passes live vectors for the duration of the call.
        let inputs = unsafe { vector_arrays(inputs) }?;
        let [gate, up] = inputs.as_slice() else {
            return Err(format!("expected 2 inputs, got {}", inputs.len()));
        };
        let outs = forward(gate, up).map_err(|e| e.what().to_string())?;
        // SAFETY: `res` is the live result vector mlx-c created for us.
        unsafe { set_vector_arrays(res, &outs) }
    })
}

extern "C" fn vjp_callback(
    res: *mut mlx_sys::mlx_vector_array,
    primals: mlx_sys::mlx_vector_array,
    cotangents: mlx_sys::mlx_vector_array,
    outputs: mlx_sys::mlx_vector_array,
    _payload: *mut c_void,
) -> c_int {
    callback("vjp", || {
        // SAFETY: mlx-c passes live vectors for the duration of the call.
        let primals = unsafe { vector_arrays(primals) }?;
        // SAFETY: as above.
        let cotangents = unsafe { vector_arrays(cotangents) }?;
        // SAFETY: as above.
        let outputs = unsafe { vector_arrays(outputs) }?;
        // The second output, `s`, is internal: its cotangent (zeros MLX
        // fills in lazily) is never read, so never computed.
        let ([gate, up], [cot, _], [_, s]) = (
            primals.as_slice(),
            cotangents.as_slice(),
            outputs.as_slice(),
        ) else {
            return Err(format!(
                "expected 2 primals, 2 cotangents and 2 outputs, got {}, {} and {}",
                primals.len(),
                cotangents.len(),
                outputs.len()
            ));
        };
        let (d_gate, d_up) = backward(gate, up, s, cot).map_err(|e| e.what().to_string())?;
        // SAFETY: `res` is the live result vector mlx-c created for us.
        unsafe { set_vector_arrays(res, &[d_gate, d_up]) }
    })
}

/// Owns mlx-c closure handles and frees them on drop.
struct Closures {
    fun: mlx_sys::mlx_closure,
    vjp: mlx_sys::mlx_closure_custom,
    custom: mlx_sys::mlx_closure,
}

impl Drop for Closures {
    fn drop(&mut self) {
        // SAFETY: each handle was created by mlx-c below and is freed once.
        unsafe {
            mlx_sys::mlx_closure_free(self.custom);
            mlx_sys::mlx_closure_custom_free(self.vjp);
            mlx_sys::mlx_closure_free(self.fun);
        }
    }
}

/// [`forward`] with [`backward`] as its gradient, through MLX's
/// `custom_vjp`.
fn power_swiglu(gate: &Array, up: &Array) -> Result<Array, Exception> {
    let fail = |what: &str, message: String| Exception::custom(format!("swiglu {what}: {message}"));
    // SAFETY: plain `extern "C"` functions without payload or destructor.
    let mut closures = unsafe {
        Closures {
            fun: mlx_sys::mlx_closure_new_func_payload(
                Some(forward_callback),
                std::ptr::null_mut(),
                None,
            ),
            vjp: mlx_sys::mlx_closure_custom_new_func_payload(
                Some(vjp_callback),
                std::ptr::null_mut(),
                None,
            ),
            custom: mlx_sys::mlx_closure_new(),
        }
    };
    // SAFETY: all three handles are live; `custom` is the out-parameter.
    mlx_call(|| unsafe {
        mlx_sys::mlx_custom_vjp(&mut closures.custom, closures.fun, closures.vjp)
    })
    .map_err(|m| fail("custom_vjp", m))?;
    let inputs = [gate.as_ptr(), up.as_ptr()];
    // SAFETY: `inputs` holds live handles; the vector takes its own refs.
    let input_vec = unsafe { mlx_sys::mlx_vector_array_new_data(inputs.as_ptr(), inputs.len()) };
    // SAFETY: a fresh empty vector for the result.
    let mut out_vec = unsafe { mlx_sys::mlx_vector_array_new() };
    // SAFETY: live closure and vectors; `out_vec` is the out-parameter.
    let applied = mlx_call(|| unsafe {
        mlx_sys::mlx_closure_apply(&mut out_vec, closures.custom, input_vec)
    });
    // SAFETY: `out_vec` is live until freed below.
    let outputs = applied.and_then(|()| unsafe { vector_arrays(out_vec) });
    // SAFETY: both vectors were created above and are freed once.
    unsafe {
        mlx_sys::mlx_vector_array_free(input_vec);
        mlx_sys::mlx_vector_array_free(out_vec);
    }
    let mut outputs = outputs.map_err(|m| fail("apply", m))?;
    match outputs.len() {
        // Dropping the `s` handle keeps its buffer: the graph holds it for
        // the backward until the output is consumed.
        2 => Ok(outputs.swap_remove(0)),
        n => Err(fail("apply", format!("expected 2 outputs, got {n}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Backend;
    use crate::test_util::max_abs_diff;
    use mlx_rs::transforms::value_and_grad_with_argnums;

    fn reference(gate: &Array, up: &Array) -> Result<Array, Exception> {
        gate.multiply(mlx_rs::ops::sigmoid(gate)?)?.multiply(up)
    }

    /// Gate values from -100 to 100 (the saturated tails included) and an
    /// `up` of mixed signs.
    fn operands() -> (Array, Array) {
        let n = 4001;
        let gate: Vec<f32> = (0..n)
            .map(|i| -100.0 + 200.0 * i as f32 / (n - 1) as f32)
            .collect();
        let up: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        (
            Array::from_slice(&gate, &[1, n]),
            Array::from_slice(&up, &[1, n]),
        )
    }

    #[test]
    fn cpu_path_is_taken_for_f32() {
        let (gate, up) = operands();
        // The default device is the CPU on a CPU-only libmlx (CI's).
        if !cfg!(target_os = "macos") && Backend::detect() == Backend::Cpu {
            assert!(uses_power_path(&gate, &up));
            let bf = gate.as_dtype(Dtype::Bfloat16).unwrap();
            assert!(!uses_power_path(&bf, &bf));
            assert!(!uses_power_path(&gate, &up.reshape(&[4001, 1]).unwrap()));
        }
    }

    #[test]
    fn forward_matches_silu_times_up() {
        let (gate, up) = operands();
        let ours = power_swiglu(&gate, &up).unwrap();
        let want = reference(&gate, &up).unwrap();
        // |silu(g) up| reaches 200 here: a few f32 ulps of that.
        let diff = max_abs_diff(&ours, &want);
        assert!(diff < 1e-4, "max |diff| {diff}");
        // Relative to each value where it is not tiny.
        let rel = ours
            .subtract(&want)
            .unwrap()
            .abs()
            .unwrap()
            .divide(want.abs().unwrap().add(Array::from_f32(1e-6)).unwrap())
            .unwrap()
            .max(None)
            .unwrap()
            .item_exact::<f32>();
        assert!(rel < 1e-5, "max relative diff {rel}");
    }

    #[test]
    fn gradient_matches_autodiff_of_the_reference() {
        let (gate, up) = operands();
        let weights: Vec<f32> = (0..4001)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let w = Array::from_slice(&weights, &[1, 4001]);
        let grads = |f: fn(&Array, &Array) -> Result<Array, Exception>| {
            let w = w.clone();
            let loss = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
                Ok(vec![f(&args[0], &args[1])?.multiply(&w)?.sum(None)?])
            };
            let mut vg = value_and_grad_with_argnums(loss, &[0, 1][..]);
            let (value, grads) = vg(&[gate.clone(), up.clone()]).unwrap();
            (value[0].item_exact::<f32>(), grads)
        };
        let (ours_value, ours) = grads(power_swiglu);
        let (want_value, want) = grads(reference);
        assert!((ours_value - want_value).abs() < 1e-3 * want_value.abs().max(1.0));
        assert_eq!(ours.len(), 2);
        let d_gate = max_abs_diff(&ours[0], &want[0]);
        let d_up = max_abs_diff(&ours[1], &want[1]);
        assert!(d_gate < 1e-4, "d gate max |diff| {d_gate}");
        assert!(d_up < 1e-4, "d up max |diff| {d_up}");
        // d up = w silu(gate): about 0 at gate = -100, 100 w at gate = 100.
        let d_up: Vec<f32> = ours[1].as_slice::<f32>().to_vec();
        assert!(d_up[0].abs() < 1e-30, "{}", d_up[0]);
        assert!((d_up[4000] - 100.0 * weights[4000]).abs() < 1e-3);
    }

    #[test]
    fn logsumexp_and_its_gradient_match_mlx() {
        // Rows of very different scales, a saturated row, and a row whose
        // terms all underflow but the max.
        let rows: Vec<f32> = (0..6 * 50)
            .map(|i| {
                let (r, j) = (i / 50, (i % 50) as f32);
                match r {
                    0 => j / 10.0 - 2.5,
                    1 => (j * 0.37).sin() * 30.0,
                    2 => -j * 5.0,
                    3 => 80.0 + j,
                    4 => -200.0 - j,
                    _ => (j * 1.7).cos(),
                }
            })
            .collect();
        let x = Array::from_slice(&rows, &[2, 3, 50]);
        let ours = logsumexp(&x).unwrap();
        let want = x.logsumexp_axis(-1, false).unwrap();
        assert_eq!(ours.shape(), &[2, 3]);
        let diff = max_abs_diff(&ours, &want);
        assert!(diff < 2e-5, "max |diff| {diff}");
        let w = Array::from_slice(&[1.0f32, -2.0, 0.5, 3.0, 1.5, -1.0], &[2, 3]);
        let grad = |f: fn(&Array) -> Result<Array, Exception>| {
            let w = w.clone();
            let loss = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
                Ok(vec![f(&args[0])?.multiply(&w)?.sum(None)?])
            };
            let mut vg = value_and_grad_with_argnums(loss, &[0][..]);
            vg(std::slice::from_ref(&x)).unwrap().1.remove(0)
        };
        let ours = grad(logsumexp);
        let want = grad(|x| x.logsumexp_axis(-1, false));
        let diff = max_abs_diff(&ours, &want);
        assert!(diff < 1e-5, "gradient max |diff| {diff}");
    }

    #[test]
    fn nan_propagates() {
        let gate = Array::from_slice(&[f32::NAN, 1.0], &[2]);
        let up = Array::from_slice(&[1.0f32, 1.0], &[2]);
        let out = power_swiglu(&gate, &up).unwrap();
        let v = out.as_slice::<f32>();
        assert!(v[0].is_nan());
        assert!((v[1] - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
    }
}
