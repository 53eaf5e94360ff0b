//! The loss's [`logsumexp`] through `powf`, where MLX's own `exp` is slow.
//!
//! MLX's PyPI CPU wheel for Linux x86_64 evaluates elementwise ops one
//! element at a time (`perf` shows its one-lane `simd::exp<float, 1>`; the
//! wheel is built without the SSE/AVX its SIMD types would need), and its
//! `exp` costs about 10 ns per element through its own polynomial, on the
//! one thread that runs all non-BLAS work. MLX's `power` is libm's `powf`,
//! about 3-4 ns per element, so here `e^x = power(e, x)`. The base `e`
//! rounded to f32 is off by at most 2^-24 relative, so `e^x` is off by at
//! most `|x| 2^-24` relative: within a few ulps for the values a model
//! produces. `powf` saturates to `inf` / `0` at the extremes, which gives
//! the exact limits.
//!
//! GPUs, macOS (whose CPU build does vectorize) and non-f32 dtypes keep
//! MLX's own `logsumexp`. The feed-forward's sigmoid, the other large
//! exponential, has its own fused primitive ([`super`]).

use mlx_rs::error::Exception;
use mlx_rs::Array;

/// Log-sum-exp over the last axis, differentiable.
///
/// # Shapes
/// `x: [..., V]` -> `[...]`
pub fn logsumexp(x: &Array) -> Result<Array, Exception> {
    if !super::scalar_mlx_cpu(x) {
        return x.logsumexp_axis(-1, false);
    }
    // The max only shifts the exponent; its gradient contributions cancel,
    // so it is held constant.
    let m = mlx_rs::stop_gradient(x.max_axis(-1, true)?)?; // [..., 1]
    let e = Array::from_f32(std::f64::consts::E as f32);
    let sum = e.power(x.subtract(&m)?)?.sum_axis(-1, false)?; // [...]
    m.squeeze_axes(&[-1])?.add(sum.log()?)
}

/// `e^x` elementwise: `power(e, x)` on MLX's scalar CPU kernels (see the
/// module docs), MLX's own `exp` elsewhere. Not for the gradient of `x`:
/// the loss's backward uses it on values that need none.
///
/// # Shapes
/// `x: [...]` -> `[...]`
pub fn exp(x: &Array) -> Result<Array, Exception> {
    if !super::scalar_mlx_cpu(x) {
        return x.exp();
    }
    Array::from_f32(std::f64::consts::E as f32).power(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use mlx_rs::transforms::value_and_grad_with_argnums;

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
}
