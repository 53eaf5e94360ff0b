//! Quantized base weights for QLoRA: MLX's affine quantization of the
//! frozen projections of both Llama stacks.
//!
//! Each row of a weight `[out, in]` is cut into groups of
//! [`GROUP_SIZE`] values; a group stores `bits`-bit integers `q` with one
//! scale `s` and one offset `b`, and stands for `s * q + b` (MLX's
//! `quantize`, `mode = "affine"`). The layer then computes `x W^T` with
//! `quantized_matmul` straight from the packed form, so the full-precision
//! weight is never rebuilt; its gradient with respect to `x` is MLX's, and
//! the weight itself gets none (it is frozen). Embeddings, heads and the
//! decoder's input projection keep their precision.
//!
//! A LoRA adapter trained on top is an ordinary adapter: it applies to, and
//! merges into, the full-precision model.

use mlx_rs::error::Exception;
use mlx_rs::module::Param;
use mlx_rs::{ops, Array};
use serde::{Deserialize, Serialize};

use super::csm::Csm;
use super::error::ModelError;
use super::proj::Proj;

/// Values per quantization group (MLX's default, as mlx_lm uses it).
pub const GROUP_SIZE: i32 = 64;

/// Bit widths `--quantize` takes.
pub const SUPPORTED_BITS: [u8; 2] = [4, 8];

/// How a weight is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantSpec {
    /// Bits per value (4 or 8).
    pub bits: i32,
    /// Values sharing one scale and offset.
    pub group_size: i32,
}

impl QuantSpec {
    /// `bits`-bit affine quantization in groups of [`GROUP_SIZE`].
    ///
    /// # Errors
    /// A bit width other than those in [`SUPPORTED_BITS`], in words for the
    /// `--quantize` flag.
    pub fn new(bits: u8) -> Result<Self, String> {
        if SUPPORTED_BITS.contains(&bits) {
            Ok(QuantSpec {
                bits: i32::from(bits),
                group_size: GROUP_SIZE,
            })
        } else {
            Err(format!(
                "--quantize {bits}: the base weights can be quantized to 4 or 8 bits (MLX affine, \
                 groups of {GROUP_SIZE}); leave the flag out to train on full-precision weights"
            ))
        }
    }
}

/// Replaces the weight of `proj` by its quantized form (packed weight,
/// scales, offsets), lazily. A no-op on a weight that is already quantized.
///
/// # Errors
/// An input width that is not a multiple of the group size, or MLX's.
pub fn quantize_proj(proj: &mut Proj, spec: QuantSpec) -> Result<(), Exception> {
    if proj.quant.is_some() {
        return Ok(());
    }
    let (out, input) = proj.dims();
    if input % spec.group_size != 0 {
        return Err(Exception::custom(format!(
            "a [{out}, {input}] weight cannot be quantized in groups of {}: its input width is \
             not a multiple of it",
            spec.group_size
        )));
    }
    let (packed, scales, biases) = ops::quantize(&proj.weight.value, spec.group_size, spec.bits)?;
    proj.weight = Param::new(packed); // [out, in * bits / 32] uint32
    proj.scales = Param::new(Some(scales)); // [out, in / group]
    proj.biases = Param::new(Some(biases)); // [out, in / group]
    proj.quant = Some(spec);
    Ok(())
}

/// The full-precision weight a quantized projection stands for.
///
/// # Shapes
/// -> `[out, in]`
///
/// # Errors
/// A projection that is not quantized, or MLX's.
pub fn dequantized_weight(proj: &Proj) -> Result<Array, Exception> {
    let (Some(q), Some(scales), Some(biases)) =
        (proj.quant, &proj.scales.value, &proj.biases.value)
    else {
        return Err(Exception::custom("the projection is not quantized"));
    };
    ops::dequantize(&proj.weight.value, scales, biases, q.group_size, q.bits)
}

/// Rows of `x` from which a CPU product widens the weight instead of
/// running MLX's quantized matmul (a single generation step stays on the
/// quantized kernel, which reads 4-8x fewer weight bytes).
const WIDEN_FROM_ROWS: usize = 16;

/// `x W^T` with the quantized weight of `proj`: MLX's `quantized_matmul`,
/// except for many rows on the CPU (see [`widened_linear`]).
///
/// # Shapes
/// `x: [..., in]` -> `[..., out]`
pub(super) fn quantized_linear(x: &Array, proj: &Proj, q: QuantSpec) -> Result<Array, Exception> {
    let (Some(scales), Some(biases)) = (&proj.scales.value, &proj.biases.value) else {
        return Err(Exception::custom(
            "a quantized projection has lost its scales or offsets",
        ));
    };
    let rows = x.size() / x.shape().last().map_or(1, |&k| k.max(1) as usize);
    if rows >= WIDEN_FROM_ROWS && crate::runtime::default_device_is_cpu() {
        return widened_linear(x, [&proj.weight.value, scales, biases], q);
    }
    ops::quantized_matmul(
        x,
        &proj.weight.value,
        scales,
        biases,
        true,
        q.group_size,
        q.bits,
    )
}

/// `x W^T` through the full-precision product of `kernels::linear`, with
/// `W` widened from its quantized form for this product only.
///
/// MLX's CPU `quantized_matmul` is plain loops: a CSM-1B training step at
/// batch 1 took 260 s with it against 8 s unquantized (2-core AMD EPYC).
/// Widening one weight costs a pass over it; under
/// [`super::checkpointing::checkpointed`] the backward widens it again
/// instead of keeping it, so only the weight in use exists in full
/// precision and the memory stays the quantized model's.
///
/// # Shapes
/// `x: [..., in]` -> `[..., out]`
fn widened_linear(
    x: &Array,
    [packed, scales, biases]: [&Array; 3],
    q: QuantSpec,
) -> Result<Array, Exception> {
    let (packed, scales, biases) = (packed.clone(), scales.clone(), biases.clone());
    let body = Box::new(move |args: &[Array]| {
        let w = ops::dequantize(&packed, &scales, &biases, q.group_size, q.bits)?; // [out, in]
        Ok(vec![crate::kernels::linear(&args[0], &w)?])
    });
    super::checkpointing::checkpointed(body, std::slice::from_ref(x))?
        .pop()
        .ok_or_else(|| Exception::custom("the widened product returned nothing"))
}

/// What [`quantize_stacks`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantReport {
    /// Projections quantized.
    pub projections: usize,
    /// Their weight values.
    pub values: usize,
}

/// Quantizes every attention and MLP projection of the backbone and the
/// depth decoder, one layer at a time (each evaluated, so the
/// full-precision weights it replaces are freed as it goes). Call it
/// before attaching adapters.
///
/// # Errors
/// A projection whose input width is not a multiple of the group size
/// (named), or MLX's.
pub fn quantize_stacks(model: &mut Csm, spec: QuantSpec) -> Result<QuantReport, ModelError> {
    let mut report = QuantReport {
        projections: 0,
        values: 0,
    };
    for (stack, llama) in [
        ("backbone", &mut model.backbone),
        ("decoder", &mut model.decoder),
    ] {
        for (i, layer) in llama.layers.iter_mut().enumerate() {
            let attn = &mut layer.self_attn;
            let mlp = &mut layer.mlp;
            let projs: [(&str, &mut Proj); 7] = [
                ("self_attn.q_proj", &mut attn.q_proj),
                ("self_attn.k_proj", &mut attn.k_proj),
                ("self_attn.v_proj", &mut attn.v_proj),
                ("self_attn.o_proj", &mut attn.o_proj),
                ("mlp.gate_proj", &mut mlp.gate_proj),
                ("mlp.up_proj", &mut mlp.up_proj),
                ("mlp.down_proj", &mut mlp.down_proj),
            ];
            let mut fresh = Vec::new();
            for (name, proj) in projs {
                let context = format!("quantizing {stack}.layers.{i}.{name}");
                if proj.quant.is_none() {
                    let (out, input) = proj.dims();
                    report.values += (out as usize) * (input as usize);
                    report.projections += 1;
                }
                quantize_proj(proj, spec).map_err(ModelError::mlx(context))?;
                fresh.push(proj.weight.value.clone());
                fresh.extend(proj.scales.value.iter().cloned());
                fresh.extend(proj.biases.value.iter().cloned());
            }
            mlx_rs::transforms::eval(&fresh)
                .map_err(ModelError::mlx(format!("quantizing {stack}.layers.{i}")))?;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use mlx_rs::module::Module;
    use mlx_rs::random;

    /// The quantized matmul equals `x` times the dequantized weight (up to
    /// float rounding), and the dequantized weight is within half a
    /// quantization step of the original in every group.
    #[test]
    fn quantized_matmul_matches_the_dequantized_weight() {
        random::seed(5).unwrap();
        for bits in SUPPORTED_BITS {
            let spec = QuantSpec::new(bits).unwrap();
            let mut p = Proj::random(128, 48).unwrap();
            let w = p.weight.value.clone(); // [48, 128]
            let x = random::normal::<f32>(&[3, 5, 128], None, None, None).unwrap();
            quantize_proj(&mut p, spec).unwrap();
            assert_eq!(p.dims(), (48, 128));
            assert_eq!(p.weight.value.shape(), &[48, 128 * i32::from(bits) / 32]);
            let deq = dequantized_weight(&p).unwrap(); // [48, 128]
                                                       // Every value is within one step of its group (the step is the
                                                       // group's scale: rounding costs half a step, and MLX stretches
                                                       // the step so that 0 is exact, which can clip the far edge by
                                                       // up to one more half), and on average within a quarter step
                                                       // (uniform rounding error).
            let step = p.scales.value.as_ref().unwrap().abs().unwrap(); // [48, 2]
            let err = deq.subtract(&w).unwrap().abs().unwrap(); // [48, 128]
            let err = err.reshape(&[48, 2, 64]).unwrap(); // [48, 2, 64]
            let worst = err
                .max_axis(-1, None)
                .unwrap()
                .divide(&step)
                .unwrap()
                .max(None)
                .unwrap()
                .item_cast::<f32>();
            assert!(worst <= 1.0001, "{bits} bits: error of {worst} steps");
            let mean = err
                .mean_axis(-1, None)
                .unwrap()
                .divide(&step)
                .unwrap()
                .mean(None)
                .unwrap()
                .item_cast::<f32>();
            assert!(mean <= 0.3, "{bits} bits: mean error of {mean} steps");

            let y = p.forward(&x).unwrap(); // [3, 5, 48]
            let want = ops::matmul(&x, deq.t()).unwrap();
            let d = max_abs_diff(&y, &want);
            assert!(d < 1e-4, "{bits} bits: quantized matmul off by {d}");
            // And it is an approximation of the original product.
            let exact = ops::matmul(&x, w.t()).unwrap();
            let scale = crate::test_util::max_abs(&exact);
            let rel = max_abs_diff(&y, &exact) / scale;
            let bound = if bits == 8 { 0.02 } else { 0.3 };
            assert!(rel < bound, "{bits} bits: relative error {rel}");
        }
    }

    /// On the CPU, many rows go through the widened weight: the same
    /// product and the same gradients (to the input and to an adapter) as
    /// MLX's quantized matmul, to float rounding.
    #[test]
    fn the_widened_cpu_product_equals_the_quantized_matmul() {
        use mlx_rs::module::ModuleParameters;
        random::seed(8).unwrap();
        let spec = QuantSpec::new(4).unwrap();
        let mut p = Proj::random(128, 40).unwrap();
        quantize_proj(&mut p, spec).unwrap();
        p.freeze_parameters(true);
        p.attach_lora(4, 8.0, 0.0, false).unwrap();
        p.lora_b = Param::new(Some(
            random::normal::<f32>(&[4, 40], None, None, None).unwrap(),
        ));
        let x = random::normal::<f32>(&[4, 8, 128], None, None, None).unwrap(); // 32 rows
        assert!(crate::runtime::default_device_is_cpu());
        let loss = |p: &mut Proj, x: &Array| -> Result<Array, Exception> {
            p.forward(x)?.square()?.sum(None)
        };
        let (l_wide, g_wide) = mlx_rs::nn::value_and_grad(loss)(&mut p, &x).unwrap();
        let y_wide = p.forward(&x).unwrap();
        let gx_wide = mlx_rs::transforms::grad(|x: &Array| loss(&mut p.clone(), x))(&x).unwrap();
        // The same through MLX's kernel: quantized_matmul directly.
        let q_only = |p: &mut Proj, x: &Array| -> Result<Array, Exception> {
            let (s, b) = (
                p.scales.value.clone().unwrap(),
                p.biases.value.clone().unwrap(),
            );
            let base = ops::quantized_matmul(x, &p.weight.value, &s, &b, true, 64, 4)?;
            let a = p.lora_a.value.clone().unwrap();
            let lb = p.lora_b.value.clone().unwrap();
            let update =
                ops::matmul(&ops::matmul(x, &a)?, &lb)?.multiply(Array::from_f32(p.scale))?;
            base.add(update)?.square()?.sum(None)
        };
        let (l_q, g_q) = mlx_rs::nn::value_and_grad(q_only)(&mut p, &x).unwrap();
        let gx_q = mlx_rs::transforms::grad(|x: &Array| q_only(&mut p.clone(), x))(&x).unwrap();
        let (a, b) = (l_wide.item_cast::<f32>(), l_q.item_cast::<f32>());
        assert!((a - b).abs() <= 1e-5 * b.abs(), "loss {a} vs {b}");
        for (k, g) in &g_q {
            let d = max_abs_diff(g, &g_wide[k]);
            let scale = crate::test_util::max_abs(g);
            assert!(d <= 1e-4 * scale, "{k}: {d} (scale {scale})");
        }
        let d = max_abs_diff(&gx_wide, &gx_q);
        assert!(
            d <= 1e-4 * crate::test_util::max_abs(&gx_q),
            "input gradient off by {d}"
        );
        assert_eq!(y_wide.shape(), &[4, 8, 40]);
    }

    #[test]
    fn unsupported_widths_are_refused_in_the_flags_words() {
        let e = QuantSpec::new(3).unwrap_err();
        assert!(e.contains("--quantize 3") && e.contains("4 or 8"), "{e}");
        let mut p = Proj::random(96, 8).unwrap();
        let e = quantize_proj(&mut p, QuantSpec::new(4).unwrap()).unwrap_err();
        assert!(e.what().contains("[8, 96]"), "{e}");
    }

    /// A quantized stack keeps its parameter names and its adapter still
    /// trains: gradients reach the LoRA matrices through the quantized
    /// matmul, and merging refuses.
    #[test]
    fn lora_trains_through_the_quantized_matmul() {
        use mlx_rs::module::ModuleParameters;
        random::seed(6).unwrap();
        let mut p = Proj::random(64, 32).unwrap();
        quantize_proj(&mut p, QuantSpec::new(4).unwrap()).unwrap();
        p.freeze_parameters(true);
        p.attach_lora(4, 8.0, 0.0, false).unwrap();
        p.lora_b = Param::new(Some(
            random::normal::<f32>(&[4, 32], None, None, None).unwrap(),
        ));
        let keys: Vec<String> = p
            .trainable_parameters()
            .flatten()
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        let x = random::normal::<f32>(&[6, 64], None, None, None).unwrap();
        let loss = |p: &mut Proj, x: &Array| -> Result<Array, Exception> {
            p.forward(x)?.square()?.sum(None)
        };
        let (_, grads) = mlx_rs::nn::value_and_grad(loss)(&mut p, &x).unwrap();
        for (k, g) in grads {
            let norm = g.square().unwrap().sum(None).unwrap().item_cast::<f32>();
            assert!(norm > 0.0 && norm.is_finite(), "{k}: {norm}");
        }
        assert!(p.merge_lora().is_err());
    }
}
