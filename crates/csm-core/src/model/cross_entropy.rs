//! The loss's cross-entropy with a gradient of its own, so that no f32 copy
//! of the logits is kept for the backward pass.
//!
//! The plain form (`super::loss::cross_entropy`) casts the logits to f32 and
//! lets autodiff differentiate `logsumexp(x) - x[target]`: the f32 copy is
//! an input of both, so it stays alive from the forward to the end of the
//! backward, and the backward builds a scatter of the target's gradient
//! into a zero f32 array of the logits' size, a sum and a cast. For the
//! depth decoder on every frame of a 16 x 250 batch that is about 4000 x 31
//! x 2051 values: 1 GB per f32 copy.
//!
//! Here the forward returns `lse - x[target]` (and `lse`, which the backward
//! reuses) through MLX's `custom_vjp`; its f32 intermediates are freed as
//! soon as `lse` is computed. The backward computes
//! `(exp(x - lse) - onehot(target)) * cotangent` from the logits as they
//! are (bf16 on GPUs) and casts the result to their dtype once: the same
//! arithmetic, in the same f32, as autodiff of the plain form, so loss and
//! gradients agree with it to f32 rounding (tested). The forward's logits
//! are still materialised (they are the head's matmul output).

use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::take_along_axis;
use mlx_rs::{ops, Array, Dtype};

use crate::ffi::{mlx_call, set_vector_arrays, vector_arrays};
use crate::kernels::pow_exp;

/// Cross-entropy per position with its own gradient (see the module docs).
///
/// # Shapes
/// `logits: [..., V]` (any float dtype), `targets: [...]` (int) -> `[...]` f32
///
/// # Errors
/// MLX failures (shapes that do not fit).
pub fn cross_entropy_fused(logits: &Array, targets: &Array) -> Result<Array, Exception> {
    let targets = targets.as_dtype(Dtype::Int32)?;
    let mut out = apply_custom(&[logits.clone(), targets])?;
    match out.len() {
        // `lse` (the second output) stays referenced by the graph for the
        // backward.
        2 => Ok(out.swap_remove(0)),
        n => Err(Exception::custom(format!(
            "cross_entropy_fused: expected 2 outputs, got {n}"
        ))),
    }
}

/// Forward: `[ce, lse]`, both f32.
///
/// # Shapes
/// `logits: [..., V]`, `targets: [...]` int32 -> `([...], [...])`
fn forward(logits: &Array, targets: &Array) -> Result<[Array; 2], Exception> {
    let x = logits.as_dtype(Dtype::Float32)?; // [..., V], freed after lse
    let lse = pow_exp::logsumexp(&x)?; // [...]
    let idx = targets.expand_dims(-1)?; // [..., 1]
                                        // The picked logit is exact in f32 whatever the logits' dtype.
    let picked = take_along_axis(logits, &idx, -1)?
        .squeeze_axes(&[-1])?
        .as_dtype(Dtype::Float32)?; // [...]
    Ok([lse.subtract(&picked)?, lse])
}

/// Gradient of the first output with respect to the logits, for the
/// cotangent `cot`.
///
/// # Shapes
/// `logits: [..., V]`, `targets, lse, cot: [...]` -> `[..., V]` (logits' dtype)
fn backward(logits: &Array, targets: &Array, lse: &Array, cot: &Array) -> Result<Array, Exception> {
    let v = *logits.shape().last().unwrap_or(&1);
    let shifted = logits
        .as_dtype(Dtype::Float32)?
        .subtract(lse.expand_dims(-1)?)?; // [..., V]
    let p = pow_exp::exp(&shifted)?; // softmax, [..., V]
    let classes = ops::arange::<_, i32>(0, v, 1)?; // [V]
    let hit = classes.eq(targets.expand_dims(-1)?)?; // [..., V]
    let g = ops::select(&hit, p.subtract(Array::from_f32(1.0))?, &p)?; // [..., V]
    g.multiply(cot.as_dtype(Dtype::Float32)?.expand_dims(-1)?)?
        .as_dtype(logits.dtype())
}

/// Runs `body` for an mlx-c callback, turning errors and panics into a
/// non-zero status (a panic must not unwind into C++).
fn callback(name: &str, body: impl FnOnce() -> Result<(), String>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(message)) => {
            tracing::error!("cross_entropy_fused {name}: {message}");
            1
        }
        Err(_) => {
            tracing::error!("cross_entropy_fused {name}: panicked");
            1
        }
    }
}

unsafe extern "C" fn forward_callback(
    res: *mut mlx_sys::mlx_vector_array,
    inputs: mlx_sys::mlx_vector_array,
    _payload: *mut c_void,
) -> c_int {
    callback("forward", || {
        // SAFETY: mlx-c passes a live vector for the duration of the call.
        let inputs = unsafe { vector_arrays(inputs) }?;
        let [logits, targets] = inputs.as_slice() else {
            return Err(format!("expected 2 inputs, got {}", inputs.len()));
        };
        let outs = forward(logits, targets).map_err(|e| e.what().to_string())?;
        // SAFETY: `res` is the live result vector mlx-c created for us.
        unsafe { set_vector_arrays(res, &outs) }
    })
}

unsafe extern "C" fn vjp_callback(
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
        // `lse` is internal: its cotangent (zeros) is never read.
        let ([logits, targets], [cot, _], [_, lse]) = (
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
        let d_logits = backward(logits, targets, lse, cot).map_err(|e| e.what().to_string())?;
        // The targets are integers: no gradient flows to them.
        let d_targets = ops::zeros_like(targets).map_err(|e| e.what().to_string())?;
        // SAFETY: `res` is the live result vector mlx-c created for us.
        unsafe { set_vector_arrays(res, &[d_logits, d_targets]) }
    })
}

/// Owns the mlx-c closure handles and frees them on drop (the graph keeps
/// its own references).
struct Closures {
    fun: mlx_sys::mlx_closure,
    vjp: mlx_sys::mlx_closure_custom,
    custom: mlx_sys::mlx_closure,
}

impl Drop for Closures {
    fn drop(&mut self) {
        // SAFETY: each handle was created by mlx-c in `apply_custom` and is
        // freed once.
        unsafe {
            mlx_sys::mlx_closure_free(self.custom);
            mlx_sys::mlx_closure_custom_free(self.vjp);
            mlx_sys::mlx_closure_free(self.fun);
        }
    }
}

/// [`forward`] with [`backward`] as its gradient, through `custom_vjp`.
fn apply_custom(inputs: &[Array]) -> Result<Vec<Array>, Exception> {
    let fail = |what: &str, message: String| {
        Exception::custom(format!("cross_entropy_fused {what}: {message}"))
    };
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
    let handles: Vec<mlx_sys::mlx_array> = inputs.iter().map(Array::as_ptr).collect();
    // SAFETY: `handles` are live; the vector takes its own references.
    let input_vec = unsafe { mlx_sys::mlx_vector_array_new_data(handles.as_ptr(), handles.len()) };
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
    outputs.map_err(|m| fail("apply", m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::loss::cross_entropy;
    use crate::test_util::max_abs_diff;
    use mlx_rs::random;
    use mlx_rs::transforms::value_and_grad_with_argnums;

    /// Loss and gradient of `sum(ce * w)` through `f`.
    fn value_and_grad(
        f: fn(&Array, &Array) -> Result<Array, Exception>,
        logits: &Array,
        targets: &Array,
        w: &Array,
    ) -> (f32, Array) {
        let (t, w) = (targets.clone(), w.clone());
        let loss = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
            Ok(vec![f(&args[0], &t)?.multiply(&w)?.sum(None)?])
        };
        let mut vg = value_and_grad_with_argnums(loss, &[0][..]);
        let (v, mut g) = vg(std::slice::from_ref(logits)).unwrap();
        (v[0].item_cast::<f32>(), g.remove(0))
    }

    /// Values and gradients equal the plain form's (autodiff of
    /// `logsumexp - picked`) to f32 rounding, in f32 and in bf16, with
    /// logits of very different scales.
    #[test]
    fn matches_autodiff_of_the_plain_form() {
        random::seed(5).unwrap();
        let logits = random::normal::<f32>(&[3, 5, 67], None, None, None)
            .unwrap()
            .multiply(Array::from_slice(&[1.0f32, 10.0, 0.1], &[3, 1, 1]))
            .unwrap();
        let targets = random::randint::<_, i32>(0, 67, &[3, 5], None).unwrap();
        let w = random::uniform::<_, f32>(-1.0, 2.0, &[3, 5], None).unwrap();
        let plain = cross_entropy(&logits, &targets).unwrap();
        let fused = cross_entropy_fused(&logits, &targets).unwrap();
        assert_eq!(fused.shape(), &[3, 5]);
        assert!(max_abs_diff(&plain, &fused) < 1e-5);
        for dtype in [Dtype::Float32, Dtype::Bfloat16] {
            let x = logits.as_dtype(dtype).unwrap();
            let (v0, g0) = value_and_grad(cross_entropy, &x, &targets, &w);
            let (v1, g1) = value_and_grad(cross_entropy_fused, &x, &targets, &w);
            assert!(
                (v0 - v1).abs() <= 1e-5 * v0.abs(),
                "{dtype:?}: {v0} vs {v1}"
            );
            assert_eq!(g1.dtype(), dtype);
            // bf16 gradients: the same f32 value rounded once either way.
            let tol = if dtype == Dtype::Float32 { 1e-6 } else { 1e-2 };
            let d = max_abs_diff(&g0, &g1);
            assert!(d < tol, "{dtype:?}: gradient max |diff| {d}");
        }
    }
}
