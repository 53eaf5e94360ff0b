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

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::take_along_axis;
use mlx_rs::{ops, Array, Dtype};

use crate::ffi::apply_custom_vjp;
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
    // Not the forward's f32 cast of the logits: under `mx.compile` that
    // one would be merged in and kept from the forward on
    // (`crate::ffi::depends`).
    let shifted = crate::kernels::lean::fresh(logits, cot)?
        .as_dtype(Dtype::Float32)?
        .subtract(lse.expand_dims(-1)?)?; // [..., V]
    let p = pow_exp::exp(&shifted)?; // softmax, [..., V]
    let classes = ops::arange::<_, i32>(0, v, 1)?; // [V]
    let hit = classes.eq(targets.expand_dims(-1)?)?; // [..., V]
    let g = ops::select(&hit, p.subtract(Array::from_f32(1.0))?, &p)?; // [..., V]
    g.multiply(cot.as_dtype(Dtype::Float32)?.expand_dims(-1)?)?
        .as_dtype(logits.dtype())
}

/// [`forward`] as `custom_vjp`'s forward.
fn forward_fn(inputs: &[Array]) -> Result<Vec<Array>, Exception> {
    let [logits, targets] = inputs else {
        return Err(Exception::custom(format!(
            "expected 2 inputs, got {}",
            inputs.len()
        )));
    };
    Ok(forward(logits, targets)?.to_vec())
}

/// [`backward`] as `custom_vjp`'s gradient.
fn vjp_fn(
    primals: &[Array],
    cotangents: &[Array],
    outputs: &[Array],
) -> Result<Vec<Array>, Exception> {
    // `lse` is internal: its cotangent (zeros) is never read.
    let ([logits, targets], [cot, _], [_, lse]) = (primals, cotangents, outputs) else {
        return Err(Exception::custom(format!(
            "expected 2 primals, 2 cotangents and 2 outputs, got {}, {} and {}",
            primals.len(),
            cotangents.len(),
            outputs.len()
        )));
    };
    let d_logits = backward(logits, targets, lse, cot)?;
    // The targets are integers: no gradient flows to them.
    Ok(vec![d_logits, ops::zeros_like(targets)?])
}

/// [`forward`] with [`backward`] as its gradient, through `custom_vjp`.
fn apply_custom(inputs: &[Array]) -> Result<Vec<Array>, Exception> {
    apply_custom_vjp("cross_entropy_fused", inputs, forward_fn, vjp_fn)
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
