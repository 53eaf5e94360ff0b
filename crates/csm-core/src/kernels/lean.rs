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
//! - [`swiglu_halves`]: the same for gate and up computed as one product,
//!   with one gradient array written by one expression.
//! - [`rope`]: interleaved RoPE on the projections' `[B, L, H, hd]`
//!   layout as one elementwise expression each way, so no RoPE kernel reads
//!   a transposed view and no transposed gradient is copied back.
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

use crate::ffi::{apply_custom_vjp, depends};

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
    let mut out = apply_custom_vjp(
        "lean swiglu",
        &[gate.clone(), up.clone()],
        swiglu_forward,
        swiglu_vjp,
    )?;
    out.pop()
        .ok_or_else(|| Exception::custom("lean swiglu returned nothing"))
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
    let ([gate, up], [cot]) = (primals, cotangents) else {
        return Err(Exception::custom(format!(
            "expected 2 primals and 1 cotangent, got {} and {}",
            primals.len(),
            cotangents.len()
        )));
    };
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

/// [`swiglu`] of the two halves of one product: `silu(y[..., :H]) *
/// y[..., H:]`, for gate and up projections computed as one matmul (the
/// feed-forward's `gate_up`). Keeps `y` for the backward, whose gradient
/// is one `[..., 2H]` array written by one elementwise expression, so the
/// input's gradient is one matmul with no sum of two.
///
/// # Shapes
/// `y: [..., 2H]` -> `[..., H]`
pub fn swiglu_halves(y: &Array) -> Result<Array, Exception> {
    let mut out = apply_custom_vjp(
        "lean swiglu halves",
        std::slice::from_ref(y),
        halves_forward,
        halves_vjp,
    )?;
    out.pop()
        .ok_or_else(|| Exception::custom("lean swiglu halves returned nothing"))
}

/// `y` as `[..., 2, H]` (a view: the halves on their own axis).
fn halves(y: &Array) -> Result<Array, Exception> {
    let mut shape = y.shape().to_vec();
    let two_h = shape.pop().unwrap_or(0);
    if two_h % 2 != 0 {
        return Err(Exception::custom(format!(
            "gate_up width {two_h} is odd: expected the gate and up halves"
        )));
    }
    shape.extend([2, two_h / 2]);
    y.reshape(&shape) // [..., 2, H]
}

fn halves_forward(inputs: &[Array]) -> Result<Vec<Array>, Exception> {
    use mlx_rs::ops::indexing::{Ellipsis, TryIndexOp};
    let [y] = inputs else {
        return Err(Exception::custom(format!(
            "expected 1 input, got {}",
            inputs.len()
        )));
    };
    let pair = halves(y)?; // [..., 2, H]
    let gate = pair.try_index((Ellipsis, 0, ..))?; // [..., H]
    let up = pair.try_index((Ellipsis, 1, ..))?; // [..., H]
    Ok(vec![mlx_rs::nn::silu(&gate)?.multiply(&up)?])
}

/// The gradients of [`swiglu_vjp`], the gate's and the up's, chosen per
/// half by a select over broadcast views: one expression, one kernel under
/// `mx.compile`, writing the whole `[..., 2H]` gradient.
fn halves_vjp(
    primals: &[Array],
    cotangents: &[Array],
    _outputs: &[Array],
) -> Result<Vec<Array>, Exception> {
    use mlx_rs::ops::indexing::{Ellipsis, TryIndexOp};
    let ([y], [cot]) = (primals, cotangents) else {
        return Err(Exception::custom(format!(
            "expected 1 primal and 1 cotangent, got {} and {}",
            primals.len(),
            cotangents.len()
        )));
    };
    // Not the forward's reads of `y` (`fresh`).
    let pair = halves(&fresh(y, cot)?)?; // [..., 2, H]
    let gate = pair.try_index((Ellipsis, 0..1, ..))?; // [..., 1, H]
    let up = pair.try_index((Ellipsis, 1..2, ..))?; // [..., 1, H]
    let cot = cot.expand_dims(-2)?; // [..., 1, H]
    let one = Array::from_f32(1.0).as_dtype(gate.dtype())?;
    let s = ops::sigmoid(&gate)?;
    let d_up = cot.multiply(gate.multiply(&s)?)?;
    let d_gate = cot
        .multiply(&up)?
        .multiply(&s)?
        .multiply(one.add(gate.multiply(one.subtract(&s)?)?)?)?;
    let first = Array::from_slice(&[true, false], &[2, 1]); // [2, 1]
    let d_pair = ops::select(&first, &d_gate, &d_up)?; // [..., 2, H]
    Ok(vec![d_pair.reshape(y.shape())?]) // [..., 2H]
}

/// The angle tables of interleaved RoPE at given positions, in the forms
/// [`rope`] takes: the pair `(x[2i], x[2i+1])` of a token at position `p`
/// turns by `p / periods[i]`, as [`mlx_rs::fast::rope`] with `traditional`
/// and these periods. `sin` is signed per pair member, `(-s, s)`, so that
/// the rotation is `x cos + swap(x) sin`.
///
/// # Shapes
/// `positions: [L]` or `[B, L]` int, `periods: [hd/2]` ->
/// `(cos: [L, 1, hd/2, 1], sin: [L, 1, hd/2, 2])`, or with a leading `B`;
/// f32
pub fn rope_tables(positions: &Array, periods: &Array) -> Result<(Array, Array), Exception> {
    let mut lead = positions.shape().to_vec(); // [L] or [B, L]
    let half = periods.shape()[0];
    let inv = ops::reciprocal(periods.as_dtype(Dtype::Float32)?)?.reshape(&[half, 1])?; // [hd/2, 1]
    lead.extend([1, 1, 1]);
    let theta = positions
        .as_dtype(Dtype::Float32)?
        .reshape(&lead)? // [..., L, 1, 1, 1]
        .multiply(&inv)?; // [..., L, 1, hd/2, 1]
    let sign = Array::from_slice(&[-1.0f32, 1.0], &[2]); // [2]
    let sin = ops::sin(&theta)?.multiply(&sign)?; // [..., L, 1, hd/2, 2]
    Ok((ops::cos(&theta)?, sin))
}

/// Interleaved RoPE on `[B, L, H, hd]` (tokens before heads, as the
/// projections give them), with the tables of [`rope_tables`]: one
/// elementwise expression, and its gradient the inverse rotation of the
/// cotangent, also one. Under `mx.compile` each is a single kernel that
/// writes `[B, L, H, hd]` in order, so the backward's result feeds the
/// projection's gradient without the copy a transpose back from
/// `[B, H, L, hd]` costs, and no RoPE kernel reads a transposed view
/// (on an H100 those took 8.8 ms of a 16 x 250 step on every frame,
/// 2026-12-07, bench/ktrace). Computed in f32, returned in `x`'s dtype.
///
/// # Shapes
/// `x: [B, L, H, hd]`, `cos: [(B,) L, 1, hd/2, 1]`, `sin: [(B,) L, 1, hd/2, 2]`
/// -> `[B, L, H, hd]`
pub fn rope(x: &Array, cos: &Array, sin: &Array) -> Result<Array, Exception> {
    let mut out = apply_custom_vjp(
        "lean rope",
        &[x.clone(), cos.clone(), sin.clone()],
        rope_forward,
        rope_vjp,
    )?;
    out.pop()
        .ok_or_else(|| Exception::custom("lean rope returned nothing"))
}

/// `x cos + swap(x) sin`, `swap` exchanging the members of each pair.
fn rotate(x: &Array, cos: &Array, sin: &Array) -> Result<Array, Exception> {
    use mlx_rs::ops::indexing::TryIndexOp;
    let shape = x.shape().to_vec();
    let (b, l, h, hd) = (shape[0], shape[1], shape[2], shape[3]);
    let pairs = x.reshape(&[b, l, h, hd / 2, 2])?; // [B, L, H, hd/2, 2]
    let x0 = pairs.try_index((.., .., .., .., 0..1))?; // [B, L, H, hd/2, 1]
    let x1 = pairs.try_index((.., .., .., .., 1..2))?; // [B, L, H, hd/2, 1]
                                                       // A select over broadcast views rather than a stack: it stays one
                                                       // elementwise kernel under `mx.compile`.
    let first = Array::from_slice(&[true, false], &[2]); // [2]
    let swapped = ops::select(&first, &x1, &x0)?; // [B, L, H, hd/2, 2]
    pairs
        .as_dtype(Dtype::Float32)?
        .multiply(cos)?
        .add(swapped.as_dtype(Dtype::Float32)?.multiply(sin)?)?
        .as_dtype(x.dtype())?
        .reshape(&[b, l, h, hd]) // [B, L, H, hd]
}

fn rope_forward(inputs: &[Array]) -> Result<Vec<Array>, Exception> {
    let [x, cos, sin] = inputs else {
        return Err(Exception::custom(format!(
            "expected 3 inputs, got {}",
            inputs.len()
        )));
    };
    Ok(vec![rotate(x, cos, sin)?])
}

/// The rotation is orthogonal: its gradient turns the cotangent back (the
/// same tables, `sin` negated). The tables get no gradient.
fn rope_vjp(
    primals: &[Array],
    cotangents: &[Array],
    _outputs: &[Array],
) -> Result<Vec<Array>, Exception> {
    let ([_, cos, sin], [cot]) = (primals, cotangents) else {
        return Err(Exception::custom(format!(
            "expected 3 primals and 1 cotangent, got {} and {}",
            primals.len(),
            cotangents.len()
        )));
    };
    Ok(vec![
        rotate(cot, cos, &sin.negative()?)?,
        ops::zeros_like(cos)?,
        ops::zeros_like(sin)?,
    ])
}

/// A LoRA adapter's update `((x A) B) scale`, cast to `x`'s dtype, keeping
/// `x` as it is (not an f32 copy) and `x A` for the backward. `a` and `b`
/// may be f32 whatever `x` is, as the adapters are.
///
/// # Shapes
/// `x: [..., in]`, `a: [in, r]`, `b: [r, out]` -> `[..., out]` (`x`'s dtype)
pub fn lora_update(x: &Array, a: &Array, b: &Array, scale: f32) -> Result<Array, Exception> {
    let mut out = apply_custom_vjp(
        "lean lora update",
        &[x.clone(), a.clone(), b.clone(), Array::from_f32(scale)],
        lora_forward,
        lora_vjp,
    )?;
    out.truncate(1);
    out.pop()
        .ok_or_else(|| Exception::custom("lean lora update returned nothing"))
}

/// `[y, x A]`: the update in `x`'s dtype and the f32 `x A`, which the
/// backward reuses (`r` values per token).
fn lora_forward(inputs: &[Array]) -> Result<Vec<Array>, Exception> {
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
    use crate::test_util::{max_abs, max_abs_diff};
    use mlx_rs::ops::indexing::TryIndexOp;
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

    fn assert_close(what: &str, want: &Array, got: &Array, tol: f32) {
        assert_eq!(want.dtype(), got.dtype(), "{what}");
        let d = max_abs_diff(want, got);
        let scale = max_abs(want).max(1e-6);
        assert!(d <= tol * scale, "{what}: max diff {d} (scale {scale})");
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

    /// The halves form equals autodiff of `silu(gate) * up` on the two
    /// halves of one array, in f32 and bf16.
    #[test]
    fn swiglu_halves_matches_autodiff() {
        random::seed(3).unwrap();
        let y = random::uniform::<_, f32>(-12.0, 12.0, &[3, 5, 128], None).unwrap();
        let w = random::normal::<f32>(&[3, 5, 64], None, None, None).unwrap();
        for (dtype, tol) in [(Dtype::Float32, 1e-6), (Dtype::Bfloat16, 2e-2)] {
            let inputs = [y.as_dtype(dtype).unwrap()];
            let plain: F = Box::new(|x| {
                let (gate, up) = (
                    x[0].try_index((.., .., ..64))?,
                    x[0].try_index((.., .., 64..))?,
                );
                mlx_rs::nn::silu(&gate)?.multiply(&up)
            });
            let lean: F = Box::new(|x| swiglu_halves(&x[0]));
            let (v0, g0) = grads(plain, &inputs, &w);
            let (v1, g1) = grads(lean, &inputs, &w);
            assert_eq!(v0, v1, "{dtype:?}: the forward is the same ops");
            assert_close(&format!("{dtype:?} d y"), &g0[0], &g1[0], tol);
        }
    }

    /// Value and gradient equal autodiff of MLX's own RoPE (interleaved,
    /// given periods, on the `[B, H, L, hd]` layout it takes), positions
    /// from 0, in f32 and bf16; rows at their own positions equal MLX's
    /// RoPE at those offsets.
    #[test]
    fn rope_matches_mlx_rope() {
        use mlx_rs::fast;
        random::seed(5).unwrap();
        let (b, l, h, hd) = (2, 40, 3, 64);
        // Llama's geometric periods, with a base that turns the last pair
        // by a visible angle over 40 positions.
        let periods: Vec<f32> = (0..hd / 2)
            .map(|i| 500.0f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let periods = Array::from_slice(&periods, &[hd / 2]);
        let x = random::normal::<f32>(&[b, l, h, hd], None, None, None).unwrap();
        let w = random::normal::<f32>(&[b, l, h, hd], None, None, None).unwrap();
        let mlx_rope = |x: &Array, offset: i32| -> Result<Array, Exception> {
            let t = x.transpose_axes(&[0, 2, 1, 3])?; // [B, H, L, hd]
            fast::rope(&t, hd, true, None, 1.0, offset, &periods)?.transpose_axes(&[0, 2, 1, 3])
            // [B, L, H, hd]
        };
        let (cos, sin) = rope_tables(&ops::arange::<_, i32>(0, l, 1).unwrap(), &periods).unwrap();
        for (dtype, tol) in [(Dtype::Float32, 1e-5), (Dtype::Bfloat16, 1e-2)] {
            let inputs = [x.as_dtype(dtype).unwrap()];
            let p = periods.clone();
            let mlx: F = Box::new(move |v| {
                let t = v[0].transpose_axes(&[0, 2, 1, 3])?; // [B, H, L, hd]
                fast::rope(&t, hd, true, None, 1.0, 0, &p)?.transpose_axes(&[0, 2, 1, 3])
            });
            let (c, s) = (cos.clone(), sin.clone());
            let lean: F = Box::new(move |v| rope(&v[0], &c, &s));
            // Each output, not their weighted sum: bf16 rounds each one.
            let (y0, y1) = (mlx(&inputs).unwrap(), lean(&inputs).unwrap());
            assert_close(&format!("{dtype:?} y"), &y0, &y1, tol);
            let (_, g0) = grads(mlx, &inputs, &w);
            let (_, g1) = grads(lean, &inputs, &w);
            assert_close(&format!("{dtype:?} d x"), &g0[0], &g1[0], tol);
        }
        // Row 0 from position 0, row 1 from position 17.
        let positions = Array::from_slice(
            &(0..b * l)
                .map(|i| i % l + 17 * (i / l))
                .collect::<Vec<i32>>(),
            &[b, l],
        );
        let (cos, sin) = rope_tables(&positions, &periods).unwrap();
        let got = rope(&x, &cos, &sin).unwrap();
        for (row, offset) in [(0, 0), (1, 17)] {
            let xr = x.try_index(row..row + 1).unwrap();
            let want = mlx_rope(&xr, offset).unwrap();
            assert_close(
                &format!("row {row}"),
                &want,
                &got.try_index(row..row + 1).unwrap(),
                1e-5,
            );
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
