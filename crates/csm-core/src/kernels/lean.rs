//! Training forms that keep less for the backward pass: the same values and
//! gradients as MLX's autodiff of the plain ops (to rounding; tested), with
//! a gradient of their own (MLX's `custom_vjp`) that recomputes a cheap
//! elementwise intermediate instead of keeping it.
//!
//! - [`swiglu`]: autodiff of `silu(gate) * up` (`silu(g) = g sigmoid(g)`)
//!   keeps `gate`, `sigmoid(gate)`, `silu(gate)` and `up`, four arrays of
//!   the feed-forward's width per token; this keeps `gate` and `up` and
//!   recomputes the sigmoid in the backward. For CSM-1B that is 32 KB less
//!   per token and layer in bf16: about 2.2 GB for a 16 x 271-frame batch
//!   in the backbone, and about 17 GB for the depth decoder on every frame
//!   of it (4016 frames x 32 positions x 4 layers).
//! - [`lora_update`]: `((x A) B) s` with an f32 `A` promotes a bf16 `x` to
//!   an f32 copy, which autodiff keeps for `A`'s gradient; this keeps `x`
//!   as it is (and the small `x A`) and casts it again in the backward.
//!
//! Pure MLX ops, so every backend runs them; the trainer picks them on GPUs
//! (`model::TrainKernels`), where the memory matters and the recomputation
//! fuses into the backward's elementwise kernels under `mx.compile`. The
//! backward reads its primals through [`fresh`]: `mx.compile` merges
//! identical ops on identical inputs, so without it the recomputed
//! sigmoid (and the f32 cast of a LoRA input) became the forward's own,
//! kept from the forward to the backward, and the compiled step kept as
//! much as the plain ops do (CSM-1B 4 x 100 at 1/16 in f32 on the CPU:
//! 2.36 GB of activations compiled against 1.42 GB uncompiled; 1.58 GB
//! with [`fresh`]).

use mlx_rs::error::Exception;
use mlx_rs::{ops, Array, Dtype};

use crate::ffi::{apply_custom_vjp_first, depends, VjpFn};

/// `x` as a new array that MLX computes after `after` (the cotangent), so
/// that ops on it in a backward are not merged with the forward's ops on
/// `x` by `mx.compile` ([`depends`]).
pub(crate) fn fresh(x: &Array, after: &Array) -> Result<Array, Exception> {
    depends(std::slice::from_ref(x), std::slice::from_ref(after))?
        .pop()
        .ok_or_else(|| Exception::custom("depends returned nothing"))
}

/// `silu(gate) * up` keeping only `gate` and `up` for the backward.
///
/// # Shapes
/// `gate, up: [..., H]` (same shape and dtype) -> `[..., H]`
pub fn swiglu(gate: &Array, up: &Array) -> Result<Array, Exception> {
    swiglu_with(gate, up, false)
}

/// [`swiglu`], its gradient computed by one CUDA kernel when `cuda_grad`
/// ([`crate::kernels::cuda::swiglu_grad`]; outside macOS).
///
/// # Shapes
/// `gate, up: [..., H]` (same shape and dtype) -> `[..., H]`
pub fn swiglu_with(gate: &Array, up: &Array, cuda_grad: bool) -> Result<Array, Exception> {
    #[cfg(not(target_os = "macos"))]
    let vjp: VjpFn = if cuda_grad {
        swiglu_vjp_cuda
    } else {
        swiglu_vjp
    };
    #[cfg(target_os = "macos")]
    let vjp: VjpFn = {
        let _ = cuda_grad;
        swiglu_vjp
    };
    apply_custom_vjp_first(
        "lean swiglu",
        &[gate.clone(), up.clone()],
        swiglu_forward,
        vjp,
    )
}

/// `(gate, up, cotangent)` of a SwiGLU gradient's arguments.
fn swiglu_vjp_args<'a>(
    primals: &'a [Array],
    cotangents: &'a [Array],
) -> Result<(&'a Array, &'a Array, &'a Array), Exception> {
    match (primals, cotangents) {
        ([gate, up], [cot]) => Ok((gate, up, cot)),
        _ => Err(Exception::custom(format!(
            "expected 2 primals and 1 cotangent, got {} and {}",
            primals.len(),
            cotangents.len()
        ))),
    }
}

#[cfg(not(target_os = "macos"))]
fn swiglu_vjp_cuda(
    primals: &[Array],
    cotangents: &[Array],
    _outputs: &[Array],
) -> Result<Vec<Array>, Exception> {
    let (gate, up, cot) = swiglu_vjp_args(primals, cotangents)?;
    // A custom kernel is never merged with the forward's ops under
    // `mx.compile`: the primals need no `fresh`.
    Ok(crate::kernels::cuda::swiglu_grad(gate, up, cot)?.to_vec())
}

fn swiglu_forward(inputs: &[Array]) -> Result<Vec<Array>, Exception> {
    let [gate, up] = inputs else {
        return Err(Exception::custom(format!(
            "expected 2 inputs, got {}",
            inputs.len()
        )));
    };
    Ok(vec![mlx_rs::nn::silu(gate)?.multiply(up)?])
}

/// The gradients autodiff of `gate * sigmoid(gate) * up` gives, with the
/// sigmoid computed again, as two expressions that share no intermediate:
/// under `mx.compile` each then fuses into one kernel that reads the inputs
/// and writes its gradient. A shared sigmoid is a kernel of its own whose
/// output both gradients read back: on an H100 (16 x 250 frames, decoder on
/// every frame) that was 37 ms a step in three kernels, against 17 ms for
/// the peer's one kernel a layer (2026-12-07, bench/ktrace).
fn swiglu_vjp(
    primals: &[Array],
    cotangents: &[Array],
    _outputs: &[Array],
) -> Result<Vec<Array>, Exception> {
    let (gate, up, cot) = swiglu_vjp_args(primals, cotangents)?;
    // Read through `depends` on the cotangent: under `mx.compile` the
    // sigmoid and `gate * s` below would otherwise merge with the
    // forward's and be kept from the forward on (`ffi::depends`).
    let gate = &fresh(gate, cot)?;
    let d_up = cot.multiply(gate.multiply(ops::sigmoid(gate)?)?)?;
    // silu = gate s, so d silu / d gate = s (1 + gate (1 - s)). The sigmoid
    // is written out here: `mx.compile` merges identical ops on identical
    // inputs, and an `ops::sigmoid` would be the one above again.
    let one = Array::from_f32(1.0).as_dtype(gate.dtype())?;
    let s = one.divide(one.add(gate.negative()?.exp()?)?)?;
    let d_gate = cot
        .multiply(up)?
        .multiply(&s)?
        .multiply(one.add(gate.multiply(one.subtract(&s)?)?)?)?;
    Ok(vec![d_gate, d_up])
}

/// A LoRA adapter's update `((x A) B) scale`, cast to `x`'s dtype, keeping
/// `x` as it is (not an f32 copy) and `x A` for the backward. `a` and `b`
/// may be f32 whatever `x` is, as the adapters are.
///
/// # Shapes
/// `x: [..., in]`, `a: [in, r]`, `b: [r, out]` -> `[..., out]` (`x`'s dtype)
pub fn lora_update(x: &Array, a: &Array, b: &Array, scale: f32) -> Result<Array, Exception> {
    apply_custom_vjp_first(
        "lean lora update",
        &[x.clone(), a.clone(), b.clone(), Array::from_f32(scale)],
        lora_forward,
        lora_vjp,
    )
}

/// `[y, x A]`: the update in `x`'s dtype and the f32 `x A`, which the
/// backward reuses (`r` values per token).
pub(super) fn lora_forward(inputs: &[Array]) -> Result<Vec<Array>, Exception> {
    let [x, a, b, scale] = inputs else {
        return Err(Exception::custom(format!(
            "expected 4 inputs, got {}",
            inputs.len()
        )));
    };
    let xa = ops::matmul(x, a)?; // [..., r]
    let y = ops::matmul(&xa, b)?.multiply(scale)?.as_dtype(x.dtype())?; // [..., out]
    Ok(vec![y, xa])
}

/// Gradients of `y` (the second output is internal: its cotangent is never
/// read) with respect to `x`, `A` and `B`; none for the scale.
fn lora_vjp(
    primals: &[Array],
    cotangents: &[Array],
    outputs: &[Array],
) -> Result<Vec<Array>, Exception> {
    let ([x, a, b, scale], [cot, _], [_, xa]) = (primals, cotangents, outputs) else {
        return Err(Exception::custom(format!(
            "expected 4 primals, 2 cotangents and 2 outputs, got {}, {} and {}",
            primals.len(),
            cotangents.len(),
            outputs.len()
        )));
    };
    // The dtype the forward computed `x A` in (f32 with f32 adapters).
    let compute = xa.dtype();
    let (n_in, r) = (a.shape()[0], a.shape()[1]);
    let n_out = b.shape()[1];
    let g = cot
        .as_dtype(Dtype::Float32)?
        .multiply(scale)?
        .as_dtype(compute)?; // [..., out]
    let g2 = g.reshape(&[-1, n_out])?; // [T, out]
    let xa2 = xa.reshape(&[-1, r])?; // [T, r]
    let d_b = ops::matmul(xa2.t(), &g2)?; // [r, out]
    let d_xa = ops::matmul(&g, b.t())?; // [..., r]

    // Not the forward's cast of `x` (merged under `mx.compile`, it would
    // keep an f32 copy from the forward on; `ffi::depends`).
    let x2 = fresh(x, cot)?.as_dtype(compute)?.reshape(&[-1, n_in])?; // [T, in]
    let d_a = ops::matmul(x2.t(), d_xa.reshape(&[-1, r])?)?; // [in, r]
    let d_x = ops::matmul(&d_xa, a.t())?.as_dtype(x.dtype())?; // [..., in]
    Ok(vec![
        d_x,
        d_a.as_dtype(a.dtype())?,
        d_b.as_dtype(b.dtype())?,
        ops::zeros_like(scale)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_close;
    use mlx_rs::random;
    use mlx_rs::transforms::value_and_grad_with_argnums;

    type F = Box<dyn Fn(&[Array]) -> Result<Array, Exception>>;

    /// Value and gradients (with respect to every input) of `sum(f(x) w)`.
    fn grads(f: F, inputs: &[Array], w: &Array) -> (f32, Vec<Array>) {
        let w = w.clone();
        let n = inputs.len() as i32;
        let loss = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
            let y = f(args)?.as_dtype(Dtype::Float32)?;
            Ok(vec![y.multiply(&w)?.sum(None)?])
        };
        let argnums: Vec<i32> = (0..n).collect();
        let mut vg = value_and_grad_with_argnums(loss, &argnums[..]);
        let (v, g) = vg(inputs).unwrap();
        (v[0].item_cast::<f32>(), g)
    }

    /// Value and gradients equal autodiff of `silu(gate) * up`, in f32 and
    /// bf16, over gates from -12 to 12.
    #[test]
    fn swiglu_matches_autodiff() {
        random::seed(2).unwrap();
        let gate = random::uniform::<_, f32>(-12.0, 12.0, &[3, 5, 64], None).unwrap();
        let up = random::normal::<f32>(&[3, 5, 64], None, None, None).unwrap();
        let w = random::normal::<f32>(&[3, 5, 64], None, None, None).unwrap();
        for (dtype, tol) in [(Dtype::Float32, 1e-6), (Dtype::Bfloat16, 2e-2)] {
            let inputs = [gate.as_dtype(dtype).unwrap(), up.as_dtype(dtype).unwrap()];
            let plain: F = Box::new(|x| mlx_rs::nn::silu(&x[0])?.multiply(&x[1]));
            let lean: F = Box::new(|x| swiglu(&x[0], &x[1]));
            let (v0, g0) = grads(plain, &inputs, &w);
            let (v1, g1) = grads(lean, &inputs, &w);
            assert_eq!(v0, v1, "{dtype:?}: the forward is the same ops");
            assert_close("d gate", &g0[0], &g1[0], tol);
            assert_close("d up", &g0[1], &g1[1], tol);
        }
    }

    /// Value and gradients equal autodiff of the plain LoRA update (f32
    /// adapters, x in f32 or bf16, a leading batch axis).
    #[test]
    fn lora_update_matches_autodiff() {
        random::seed(4).unwrap();
        let x = random::normal::<f32>(&[2, 7, 16], None, None, None).unwrap();
        let a = random::normal::<f32>(&[16, 4], None, None, None).unwrap();
        let b = random::normal::<f32>(&[4, 12], None, None, None).unwrap();
        let w = random::normal::<f32>(&[2, 7, 12], None, None, None).unwrap();
        for (dtype, tol) in [(Dtype::Float32, 1e-5), (Dtype::Bfloat16, 2e-2)] {
            let inputs = [x.as_dtype(dtype).unwrap(), a.clone(), b.clone()];
            let plain: F = Box::new(|v| {
                ops::matmul(&ops::matmul(&v[0], &v[1])?, &v[2])?
                    .multiply(Array::from_f32(2.0))?
                    .as_dtype(v[0].dtype())
            });
            let lean: F = Box::new(|v| lora_update(&v[0], &v[1], &v[2], 2.0));
            let (v0, g0) = grads(plain, &inputs, &w);
            let (v1, g1) = grads(lean, &inputs, &w);
            assert!(
                (v0 - v1).abs() <= 1e-5 * v0.abs().max(1.0),
                "{dtype:?}: {v0} vs {v1}"
            );
            assert_close("d x", &g0[0], &g1[0], tol);
            // The adapters' gradients are f32 either way.
            assert_close("d A", &g0[1], &g1[1], 1e-5);
            assert_close("d B", &g0[2], &g1[2], 1e-5);
        }
    }
}
