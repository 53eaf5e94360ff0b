//! Projections that read one input (attention's q, k and v; the MLP's gate
//! and up), each frozen and with or without a LoRA adapter, under one
//! gradient of their own (MLX's `custom_vjp`).
//!
//! The forward is the ops each projection runs alone (bit for bit). The
//! backward differs in how it sums. MLX's autodiff computes one input
//! gradient per product and adds them in separate kernels. For q, k and v
//! with adapters on q and v, that is 4 sums over the input's width per
//! token. It also computes two f32 products and two casts for the adapters'
//! share. Here:
//! - the frozen products accumulate into one gradient through the GEMM's
//!   epilogue (`addmm`, beta = 1: cuBLAS and Metal read the running sum
//!   instead of a separate add);
//! - the adapters share one product for their input gradient and one for
//!   their `A` gradient (their `x A` gradients side by side, `[T, sum r]`),
//!   added to the frozen sum in one elementwise kernel.
//!
//! The result is the same gradient, summed in a different order: to
//! rounding, tested against autodiff. It means fewer kernels a step for a
//! host that launches them one by one, and fewer passes over the decoder's
//! activations when it runs on every frame.
//!
//! With `cuda_lora` (CUDA only) the adapters' rank-r products go through
//! [`super::cuda::lora_expand_add`]: each `scale (x A) B` added to its
//! frozen product's output, and the adapters' share `d(xA) A^T` added to
//! the frozen input gradient, in f32 and rounded once (PEFT adds its f32
//! adapter output to the bf16 projection so), instead of an f32 GEMM with
//! an inner dimension of r, a scale, casts and an add, and a bf16 add of
//! the rounded update. Where it cannot apply (adapters not f32, an output
//! width that is not a multiple of 8) the group runs MLX's ops as above.
//!
//! Like [`super::lean::lora_update`], the backward reads the input again
//! through [`super::lean::fresh`] and keeps `x A` (f32, `r` values per token)
//! from the forward, so no f32 copy of the input is kept.

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::TryIndexOp;
use mlx_rs::{ops, Array, Dtype};

use super::lean::{fresh, lora_forward};
use crate::ffi::apply_custom_vjp;

/// One projection of a group: a frozen weight `[out, in]` and an optional
/// LoRA adapter `(A [in, r], B [r, out], scale)`.
#[derive(Debug, Clone)]
pub struct GroupMember {
    /// The frozen weight `[out, in]` (no gradient is computed for it).
    pub weight: Array,
    /// `(A, B, scale)`; `A` and `B` may be f32 whatever `x` is.
    pub lora: Option<(Array, Array, f32)>,
}

/// Inputs per member in the custom function: weight, `A`, `B`, scale. A
/// member without an adapter passes rank-0 `A` and `B`: a function pointer
/// cannot capture the group's layout, but it can read shapes.
const PER_MEMBER: usize = 4;

/// Inputs before the members: `x`, and the `cuda_lora` switch as the first
/// dimension (0 or 1) of an empty array, which a traced shape carries.
const LEAD: usize = 2;

/// `x W_i^T + scale_i ((x A_i) B_i)` (the adapter's share cast to `x`'s
/// dtype) for every member, with one gradient for `x` (module docs);
/// `cuda_lora`: the adapters' products added by a CUDA kernel.
///
/// # Shapes
/// `x: [..., in]`, member `i`: `W_i: [out_i, in]` -> `[[..., out_i]; n]`
pub fn grouped_linear(
    x: &Array,
    members: &[GroupMember],
    cuda_lora: bool,
) -> Result<Vec<Array>, Exception> {
    let n_in = x.shape()[x.ndim() - 1];
    let mut inputs = Vec::with_capacity(LEAD + PER_MEMBER * members.len());
    inputs.push(x.clone());
    inputs.push(ops::zeros::<u8>(&[i32::from(cuda_lora), 0])?); // [0 or 1, 0]: no data
    for m in members {
        let out = m.weight.shape()[0];
        inputs.push(m.weight.clone());
        match &m.lora {
            Some((a, b, scale)) => {
                inputs.extend([a.clone(), b.clone(), Array::from_f32(*scale)]);
            }
            None => inputs.extend([
                ops::zeros_dtype(&[n_in, 0], Dtype::Float32)?, // [in, 0]
                ops::zeros_dtype(&[0, out], Dtype::Float32)?,  // [0, out]
                Array::from_f32(0.0),
            ]),
        }
    }
    let mut outputs = apply_custom_vjp("grouped linear", &inputs, group_forward, group_vjp)?;
    outputs.truncate(members.len());
    Ok(outputs)
}

/// Whether [`expand_add`] adds an f32 rank-r product to `base` (module
/// docs): switched on, outside macOS, f32 factors, and `base`'s last
/// axis a multiple of 8.
fn kernel_adds(cuda_lora: bool, base: &Array, factors: [&Array; 2]) -> bool {
    cfg!(not(target_os = "macos"))
        && cuda_lora
        && factors.iter().all(|f| f.dtype() == Dtype::Float32)
        && base.shape().last().is_some_and(|n| n % 8 == 0)
}

/// `base + scale (u w)` by [`super::cuda::lora_expand_add`].
#[cfg(not(target_os = "macos"))]
fn expand_add(base: &Array, u: &Array, w: &Array, scale: &Array) -> Result<Array, Exception> {
    super::cuda::lora_expand_add(base, u, w, scale)
}

/// macOS has no CUDA kernels ([`kernel_adds`] is false there).
#[cfg(target_os = "macos")]
fn expand_add(_base: &Array, _u: &Array, _w: &Array, _scale: &Array) -> Result<Array, Exception> {
    Err(Exception::custom("csm_lora_expand_add: CUDA only"))
}

/// `[y_1..y_n, xa_i for each member with an adapter]`.
fn group_forward(inputs: &[Array]) -> Result<Vec<Array>, Exception> {
    let (x, cuda_lora, members) = split_inputs(inputs)?;
    let mut ys = Vec::with_capacity(members.len());
    let mut xas = Vec::new();
    for [w, a, b, scale] in members {
        let y = super::linear(x, w)?; // [..., out]
        if a.shape()[1] == 0 {
            ys.push(y);
            continue;
        }
        if kernel_adds(cuda_lora, &y, [a, b]) {
            let xa = ops::matmul(x, a)?; // [..., r] f32
            ys.push(expand_add(&y, &xa, b, scale)?);
            xas.push(xa);
            continue;
        }
        // `lean::lora_update`'s forward: `[update, x A]`.
        let [update, xa]: [Array; 2] =
            lora_forward(&[x.clone(), a.clone(), b.clone(), scale.clone()])?
                .try_into()
                .map_err(|_| Exception::custom("grouped linear: the LoRA forward's outputs"))?;
        ys.push(y.add(update)?);
        xas.push(xa);
    }
    ys.extend(xas);
    Ok(ys)
}

/// `x`, the `cuda_lora` switch and the members' `[W, A, B, scale]`.
fn split_inputs(inputs: &[Array]) -> Result<(&Array, bool, Vec<&[Array; 4]>), Exception> {
    let (lead, rest) = inputs.split_at(LEAD.min(inputs.len()));
    let [x, switch] = lead else {
        return Err(Exception::custom("grouped linear: no inputs"));
    };
    if rest.is_empty() || rest.len() % PER_MEMBER != 0 {
        return Err(Exception::custom(format!(
            "grouped linear: expected x, a switch and {PER_MEMBER} inputs per member, got {} inputs",
            inputs.len()
        )));
    }
    let members = rest
        .chunks_exact(PER_MEMBER)
        .map(|c| <&[Array; 4]>::try_from(c).expect("chunks of PER_MEMBER"))
        .collect();
    Ok((x, switch.shape().first() == Some(&1), members))
}

/// Gradients for `x`, each `A` and each `B`; zeros (never evaluated unless
/// asked for) for the frozen weights and the scales.
fn group_vjp(
    primals: &[Array],
    cotangents: &[Array],
    outputs: &[Array],
) -> Result<Vec<Array>, Exception> {
    let (x, cuda_lora, members) = split_inputs(primals)?;
    let n = members.len();
    let lora_n = members.iter().filter(|m| m[1].shape()[1] > 0).count();
    if cotangents.len() != n + lora_n || outputs.len() != n + lora_n {
        return Err(Exception::custom(format!(
            "grouped linear: expected {} cotangents and outputs, got {} and {}",
            n + lora_n,
            cotangents.len(),
            outputs.len()
        )));
    }
    let n_in = x.shape()[x.ndim() - 1];
    let lead = &x.shape()[..x.ndim() - 1];

    // The frozen products' input gradient, summed in the GEMMs' epilogue.
    let mut d_x: Option<Array> = None;
    for ([w, ..], cot) in members.iter().zip(cotangents) {
        let g = cot.reshape(&[-1, w.shape()[0]])?; // [T, out]
        d_x = Some(match d_x {
            None => ops::matmul(&g, w)?,                       // [T, in]
            Some(acc) => ops::addmm(&acc, &g, w, None, None)?, // [T, in]
        });
    }
    let mut d_x = d_x.ok_or_else(|| Exception::custom("grouped linear: no members"))?;

    let mut grads: Vec<Array> = Vec::with_capacity(primals.len());
    grads.push(Array::from_f32(0.0)); // x's, set below
    grads.push(ops::zeros_like(&primals[1])?); // the switch's: none
    let mut d_xas = Vec::with_capacity(lora_n);
    let mut a_all = Vec::with_capacity(lora_n);
    let mut lora_at = Vec::with_capacity(lora_n); // (index of A's gradient, r, A's dtype)
    let mut xa_outputs = outputs[n..].iter();
    for ([w, a, b, scale], cot) in members.iter().zip(cotangents) {
        grads.push(ops::zeros_like(w)?);
        let r = a.shape()[1];
        if r == 0 {
            grads.extend([
                ops::zeros_like(a)?,
                ops::zeros_like(b)?,
                ops::zeros_like(scale)?,
            ]);
            continue;
        }
        let xa = xa_outputs
            .next()
            .ok_or_else(|| Exception::custom("grouped linear: an adapter's x A is missing"))?;
        let compute = xa.dtype();
        let n_out = b.shape()[1];
        let g = cot
            .as_dtype(Dtype::Float32)?
            .multiply(scale)?
            .as_dtype(compute)?
            .reshape(&[-1, n_out])?; // [T, out]
        let d_b = ops::matmul(xa.reshape(&[-1, r])?.t(), &g)?; // [r, out]
        d_xas.push(ops::matmul(&g, b.t())?); // [T, r]
        a_all.push(a);
        lora_at.push((grads.len(), r, a.dtype()));
        grads.extend([
            Array::from_f32(0.0), // A's, set below
            d_b.as_dtype(b.dtype())?,
            ops::zeros_like(scale)?,
        ]);
    }
    if !d_xas.is_empty() {
        // Every adapter's share in one product each: `[T, sum r]` against
        // the `A`s side by side `[in, sum r]`.
        let d_xa = ops::concatenate(&d_xas, 1)?; // [T, R]
        let compute = d_xa.dtype();
        let a_all = ops::concatenate(&a_all, 1)?.as_dtype(compute)?; // [in, R]

        // Not the forward's cast of `x` (merged under `mx.compile`, it
        // would keep an f32 copy from the forward on; `ffi::depends`).
        let x2 = fresh(x, &cotangents[0])?
            .as_dtype(compute)?
            .reshape(&[-1, n_in])?; // [T, in]
        let d_a_all = ops::matmul(x2.t(), &d_xa)?; // [in, R]
        let mut col = 0;
        for (slot, r, a_dtype) in lora_at {
            grads[slot] = d_a_all
                .try_index((.., col..col + r))? // [in, r]
                .as_dtype(a_dtype)?;
            col += r;
        }
        d_x = if compute == d_x.dtype() {
            ops::addmm(&d_x, &d_xa, a_all.t(), None, None)? // [T, in]
        } else if kernel_adds(cuda_lora, &d_x, [&d_xa, &a_all]) {
            expand_add(&d_x, &d_xa, &a_all.t(), &Array::from_f32(1.0))? // [T, in]
        } else {
            let d_x_lora = ops::matmul(&d_xa, a_all.t())?; // [T, in]
            d_x.as_dtype(compute)?.add(&d_x_lora)?.as_dtype(x.dtype())?
        };
    }
    let mut shape = lead.to_vec();
    shape.push(n_in);
    grads[0] = d_x.reshape(&shape)?; // [..., in]
    Ok(grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_close;
    use mlx_rs::random;
    use mlx_rs::transforms::value_and_grad_with_argnums;

    /// Three projections of one input (the second without an adapter, as
    /// attention's k is): the values equal the members' own ops bit for
    /// bit, and the gradients for `x`, the `A`s and the `B`s equal
    /// autodiff's, in f32 and bf16, with a leading batch axis.
    #[test]
    fn grouped_linear_matches_autodiff() {
        random::seed(6).unwrap();
        let (n_in, outs, r) = (16, [12, 8, 8], 4);
        let x = random::normal::<f32>(&[2, 7, n_in], None, None, None).unwrap();
        let ws: Vec<Array> = outs
            .iter()
            .map(|&o| random::normal::<f32>(&[o, n_in], None, None, None).unwrap())
            .collect();
        let a = |s| {
            random::uniform::<_, f32>(-0.5, 0.5, &[n_in, r], None)
                .unwrap()
                .multiply(Array::from_f32(s))
                .unwrap()
        };
        let (a0, a2) = (a(1.0), a(2.0));
        let b0 = random::normal::<f32>(&[r, outs[0]], None, None, None).unwrap();
        let b2 = random::normal::<f32>(&[r, outs[2]], None, None, None).unwrap();
        let probes: Vec<Array> = outs
            .iter()
            .map(|&o| random::normal::<f32>(&[2, 7, o], None, None, None).unwrap())
            .collect();
        for (dtype, tol) in [(Dtype::Float32, 1e-5), (Dtype::Bfloat16, 2e-2)] {
            let ws: Vec<Array> = ws.iter().map(|w| w.as_dtype(dtype).unwrap()).collect();
            // Differentiated: x, A0, B0, A2, B2.
            let inputs = [
                x.as_dtype(dtype).unwrap(),
                a0.clone(),
                b0.clone(),
                a2.clone(),
                b2.clone(),
            ];
            let run = |grouped: bool| {
                let (ws, probes) = (ws.clone(), probes.clone());
                let loss = move |v: &[Array]| -> Result<Vec<Array>, Exception> {
                    let ys = if grouped {
                        grouped_linear(
                            &v[0],
                            &[
                                GroupMember {
                                    weight: ws[0].clone(),
                                    lora: Some((v[1].clone(), v[2].clone(), 2.0)),
                                },
                                GroupMember {
                                    weight: ws[1].clone(),
                                    lora: None,
                                },
                                GroupMember {
                                    weight: ws[2].clone(),
                                    lora: Some((v[3].clone(), v[4].clone(), 0.5)),
                                },
                            ],
                            false,
                        )?
                    } else {
                        let update = |a: &Array, b: &Array, s: f32| {
                            ops::matmul(&ops::matmul(&v[0], a)?, b)?
                                .multiply(Array::from_f32(s))?
                                .as_dtype(v[0].dtype())
                        };
                        vec![
                            crate::kernels::linear(&v[0], &ws[0])?
                                .add(update(&v[1], &v[2], 2.0)?)?,
                            crate::kernels::linear(&v[0], &ws[1])?,
                            crate::kernels::linear(&v[0], &ws[2])?
                                .add(update(&v[3], &v[4], 0.5)?)?,
                        ]
                    };
                    let mut total = Array::from_f32(0.0);
                    for (y, p) in ys.iter().zip(&probes) {
                        total = total.add(y.as_dtype(Dtype::Float32)?.multiply(p)?.sum(None)?)?;
                    }
                    Ok(vec![total])
                };
                let mut vg = value_and_grad_with_argnums(loss, &[0, 1, 2, 3, 4][..]);
                let (v, g) = vg(&inputs).unwrap();
                (v[0].item_cast::<f32>(), g)
            };
            let (v0, g0) = run(false);
            let (v1, g1) = run(true);
            assert_eq!(v0, v1, "{dtype:?}: the forward is the members' own ops");
            assert_close("d x", &g0[0], &g1[0], tol);
            // The adapters' gradients are f32 either way.
            for (i, what) in [(1, "d A0"), (2, "d B0"), (3, "d A2"), (4, "d B2")] {
                assert_close(what, &g0[i], &g1[i], 1e-5);
            }
        }
    }
}
