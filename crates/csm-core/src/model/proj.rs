//! The model's linear layer: a projection that can carry a LoRA adapter.
//!
//! Every attention and MLP projection of the CSM backbone and depth decoder
//! is a [`Proj`]. Without an adapter it is a plain bias-free linear layer;
//! [`Proj::attach_lora`] adds `lora_a`/`lora_b` (mlx_lm layout) so that
//! `y = x W^T + b + scale * dropout(x) A B`, with `B = 0` at start so the
//! adapted model equals the base model exactly. A frozen projection can
//! also be quantized ([`super::quant`], QLoRA): its weight is then MLX's
//! packed affine form and the adapter trains on top of the quantized
//! matmul.

use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::{Module, Param, Parameter};
use mlx_rs::{ops, random, Array, Dtype};

use crate::kernels::group::{grouped_linear, GroupMember};

/// A linear projection `[out, in]` with an optional LoRA adapter and bias.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Proj {
    /// Base weight, PyTorch layout `[out, in]`; frozen during LoRA training.
    /// Quantized ([`Proj::quant`] set): MLX's packed `uint32`
    /// `[out, in * bits / 32]`.
    #[param]
    pub weight: Param<Array>,
    /// Per-group scales `[out, in / group_size]` of a quantized weight.
    #[param]
    pub scales: Param<Option<Array>>,
    /// Per-group offsets `[out, in / group_size]` of a quantized weight
    /// (MLX's affine `biases`; not the layer's `bias`).
    #[param]
    pub biases: Param<Option<Array>>,
    /// Optional bias `[out]` (trained when `--lora-bias` is set).
    #[param]
    pub bias: Param<Option<Array>>,
    /// LoRA down-projection `[in, r]`.
    #[param]
    pub lora_a: Param<Option<Array>>,
    /// LoRA up-projection `[r, out]`, zero at initialisation.
    #[param]
    pub lora_b: Param<Option<Array>>,
    /// `alpha / r`.
    pub scale: f32,
    /// Dropout probability on the adapter's input.
    pub dropout: f32,
    /// Dropout is only active in training mode.
    pub training: bool,
    /// How the weight is quantized, if it is.
    pub quant: Option<super::quant::QuantSpec>,
    /// The adapter's update keeps its input as it is for the backward, not
    /// an f32 copy ([`crate::kernels::lean::lora_update`]; set by
    /// `Csm::set_train_kernels`).
    pub lean_lora: bool,
    /// The adapter's products run in the activation dtype (bf16 on GPUs,
    /// f32 accumulation), its f32 weights cast each step, instead of in
    /// f32 ([`super::csm::TrainKernels::lora_in_activation_dtype`]).
    pub lora_in_activation_dtype: bool,
}

impl Proj {
    /// A bias-free projection with the given weight `[out, in]`.
    pub fn new(weight: Array) -> Self {
        Proj {
            weight: Param::new(weight),
            scales: Param::new(None),
            biases: Param::new(None),
            bias: Param::new(None),
            lora_a: Param::new(None),
            lora_b: Param::new(None),
            scale: 0.0,
            dropout: 0.0,
            training: false,
            quant: None,
            lean_lora: false,
            lora_in_activation_dtype: false,
        }
    }

    /// A projection with uniform random weights (`±1/sqrt(in)`), used before
    /// loading a checkpoint (MLX is lazy, so replaced weights are never
    /// materialised).
    pub fn random(input_dims: i32, output_dims: i32) -> Result<Self, Exception> {
        let bound = (1.0 / input_dims as f32).sqrt();
        let weight = random::uniform::<_, f32>(-bound, bound, &[output_dims, input_dims], None)?;
        Ok(Proj::new(weight))
    }

    /// `(out, in)` of the base weight (unpacked, when quantized).
    pub fn dims(&self) -> (i32, i32) {
        let shape = self.weight.value.shape();
        match self.quant {
            Some(q) => (shape[0], shape[1] * 32 / q.bits),
            None => (shape[0], shape[1]),
        }
    }

    /// Dtype of the layer's activations: the weight's, or the scales' of a
    /// quantized weight.
    pub fn compute_dtype(&self) -> Dtype {
        match &self.scales.value {
            Some(s) if self.quant.is_some() => s.dtype(),
            _ => self.weight.value.dtype(),
        }
    }

    /// Whether an adapter is attached.
    pub fn has_lora(&self) -> bool {
        self.lora_a.value.is_some()
    }

    /// Attaches a fresh adapter of rank `r`: `A ~ U(±1/sqrt(in))`, `B = 0`,
    /// `scale = alpha / r`. With `train_bias`, a zero bias is added (if the
    /// layer has none) and left trainable.
    pub fn attach_lora(
        &mut self,
        r: i32,
        alpha: f32,
        dropout: f32,
        train_bias: bool,
    ) -> Result<(), Exception> {
        let (out, input) = self.dims();
        let bound = (1.0 / input as f32).sqrt();
        let dtype = self.compute_dtype();
        // A and B stay f32 whatever the base dtype (as mlx_lm and PEFT do):
        // bf16 would round small updates away; the forward casts their
        // product back to the activation dtype.
        let a = random::uniform::<_, f32>(-bound, bound, &[input, r], None)?;
        let b = ops::zeros_dtype(&[r, out], Dtype::Float32)?;
        self.lora_a = Param::new(Some(a));
        self.lora_b = Param::new(Some(b));
        self.scale = alpha / r as f32;
        self.dropout = dropout;
        if train_bias && self.bias.value.is_none() {
            self.bias = Param::new(Some(ops::zeros_dtype(&[out], dtype)?));
        }
        self.weight.freeze(false);
        self.lora_a.unfreeze(false);
        self.lora_b.unfreeze(false);
        if train_bias {
            self.bias.unfreeze(false);
        } else {
            self.bias.freeze(false);
        }
        Ok(())
    }

    /// Folds the adapter into the base weight (`W += scale * (A B)^T`) and
    /// removes it. A no-op without an adapter.
    ///
    /// # Errors
    /// A quantized weight: merge into the full-precision model instead (the
    /// adapter of a quantized run applies to it unchanged).
    pub fn merge_lora(&mut self) -> Result<(), Exception> {
        if let (Some(a), Some(b)) = (&self.lora_a.value, &self.lora_b.value) {
            if self.quant.is_some() {
                return Err(Exception::custom(
                    "cannot merge an adapter into quantized weights: load the full-precision \
                     model, apply the adapter to it and merge there (`csm merge`)",
                ));
            }
            let delta = ops::matmul(a, b)?.multiply(Array::from_f32(self.scale))?; // [in, out]
            let delta = delta.t(); // [out, in]
            let merged = self
                .weight
                .value
                .add(&delta.as_dtype(self.weight.value.dtype())?)?;
            self.weight = Param::new(merged);
            self.lora_a = Param::new(None);
            self.lora_b = Param::new(None);
        }
        Ok(())
    }

    /// The adapter's `A` and `B` for its lean form with input dtype
    /// `dtype`: cast to it with [`Proj::lora_in_activation_dtype`] (the
    /// casts' gradients bring A's and B's back to f32), else as they are.
    fn lean_adapter(
        &self,
        a: &Array,
        b: &Array,
        dtype: Dtype,
    ) -> Result<(Array, Array), Exception> {
        if self.lora_in_activation_dtype && a.dtype() != dtype {
            Ok((a.as_dtype(dtype)?, b.as_dtype(dtype)?))
        } else {
            Ok((a.clone(), b.clone()))
        }
    }

    /// A dense weight and nothing else: no adapter, bias or quantization.
    pub fn is_plain(&self) -> bool {
        self.quant.is_none()
            && self.bias.value.is_none()
            && self.lora_a.value.is_none()
            && self.lora_b.value.is_none()
    }

    /// This projection as a member of a group of one input `x`
    /// ([`grouped_linear`]); `None` where it must run alone: quantized,
    /// with a bias, a trained weight, `x` of another dtype than the weight,
    /// or an adapter outside the lean form or with dropout in training.
    fn group_member(&self, x: &Array) -> Result<Option<GroupMember>, Exception> {
        let weight = &self.weight.value;
        if self.quant.is_some()
            || self.bias.value.is_some()
            || self.weight.is_frozen() != Some(true)
            || x.dtype() != weight.dtype()
        {
            return Ok(None);
        }
        let lora = match (&self.lora_a.value, &self.lora_b.value) {
            (Some(a), Some(b)) => {
                if !self.lean_lora || (self.training && self.dropout > 0.0) {
                    return Ok(None);
                }
                let (a, b) = self.lean_adapter(a, b, x.dtype())?;
                Some((a, b, self.scale))
            }
            _ => None,
        };
        Ok(Some(GroupMember {
            weight: weight.clone(),
            lora,
        }))
    }
}

/// The projections of one input `x` (attention's q, k and v; the MLP's gate
/// and up): with `grouped`, as one [`grouped_linear`] where every one can
/// join (the same values, fewer kernels in the backward), else each on its
/// own. `cuda_lora`: the group adds its adapters' products with a CUDA
/// kernel (see [`grouped_linear`]).
///
/// # Shapes
/// `x: [..., in]` -> `[[..., out_i]; n]`
pub fn forward_shared(
    projs: &mut [&mut Proj],
    x: &Array,
    grouped: bool,
    cuda_lora: bool,
) -> Result<Vec<Array>, Exception> {
    if grouped {
        let members: Option<Vec<GroupMember>> = projs
            .iter()
            .map(|p| p.group_member(x))
            .collect::<Result<_, _>>()?;
        if let Some(members) = members {
            return grouped_linear(x, &members, cuda_lora);
        }
    }
    projs.iter_mut().map(|p| p.forward(x)).collect()
}

impl Module<&Array> for Proj {
    type Error = Exception;
    type Output = Array;

    /// # Shapes
    /// `x: [..., in]` -> `[..., out]`
    fn forward(&mut self, x: &Array) -> Result<Array, Exception> {
        let mut y = match self.quant {
            Some(q) => super::quant::quantized_linear(x, self, q)?, // [..., out]
            None => crate::kernels::linear(x, &self.weight.value)?, // [..., out]
        };
        if let Some(bias) = &self.bias.value {
            y = y.add(bias)?;
        }
        if let (Some(a), Some(b)) = (&self.lora_a.value, &self.lora_b.value) {
            let input = if self.training && self.dropout > 0.0 {
                let keep = 1.0 - self.dropout;
                let mask = random::bernoulli(&Array::from_f32(keep), x.shape(), None)?;
                ops::select(
                    &mask,
                    &x.divide(Array::from_f32(keep))?,
                    Array::from_f32(0.0),
                )?
                .as_dtype(x.dtype())?
            } else {
                x.clone()
            };
            // Back to y's dtype: an f32 update would promote the residual
            // stream, and with it every later matmul, to f32.
            let update = if self.lean_lora && input.dtype() == y.dtype() {
                let (a, b) = self.lean_adapter(a, b, input.dtype())?;
                crate::kernels::lean::lora_update(&input, &a, &b, self.scale)? // [..., out]
            } else {
                ops::matmul(&ops::matmul(&input, a)?, b)? // [..., out], f32
                    .multiply(Array::from_f32(self.scale))?
                    .as_dtype(y.dtype())?
            };
            y = y.add(update)?;
        }
        Ok(y)
    }

    fn training_mode(&mut self, mode: bool) {
        self.training = mode;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bf16 layer with an adapter stays bf16 (an f32 update would promote
    /// the whole residual stream) while A and B are kept in f32, and the
    /// output is `x W^T + scale x A B` up to bf16 rounding.
    #[test]
    fn bf16_layer_keeps_its_dtype_and_f32_adapter() {
        random::seed(3).unwrap();
        let mut p = Proj::random(16, 8).unwrap();
        p.weight = Param::new(p.weight.value.as_dtype(Dtype::Bfloat16).unwrap());
        p.attach_lora(4, 8.0, 0.0, false).unwrap();
        let a = p.lora_a.value.clone().unwrap();
        assert_eq!(a.dtype(), Dtype::Float32);
        let b = random::normal::<f32>(&[4, 8], None, None, None).unwrap();
        p.lora_b = Param::new(Some(b.clone()));

        let x = random::normal::<f32>(&[3, 16], None, None, None)
            .unwrap()
            .as_dtype(Dtype::Bfloat16)
            .unwrap();
        let y = p.forward(&x).unwrap();
        assert_eq!(y.dtype(), Dtype::Bfloat16);

        let x32 = x.as_dtype(Dtype::Float32).unwrap();
        let w32 = p.weight.value.as_dtype(Dtype::Float32).unwrap();
        let want = ops::matmul(&x32, w32.t())
            .unwrap()
            .add(
                ops::matmul(ops::matmul(&x32, &a).unwrap(), &b)
                    .unwrap()
                    .multiply(Array::from_f32(2.0))
                    .unwrap(),
            )
            .unwrap();
        let err = crate::test_util::max_abs_diff(&y, &want);
        let scale = crate::test_util::max_abs(&want);
        assert!(err <= 2e-2 * scale, "max error {err} (scale {scale})");
    }

    /// LoRA's products in bf16 (`lora_in_activation_dtype`) give the f32
    /// products' output and adapter gradients to bf16 rounding, and the
    /// gradients stay f32, as the adapters are.
    #[test]
    fn bf16_products_match_f32_products_to_rounding() {
        use mlx_rs::transforms::value_and_grad_with_argnums;
        random::seed(5).unwrap();
        let mut p = Proj::random(64, 32).unwrap();
        p.weight = Param::new(p.weight.value.as_dtype(Dtype::Bfloat16).unwrap());
        p.attach_lora(8, 16.0, 0.0, false).unwrap();
        p.lean_lora = true;
        let a = p.lora_a.value.clone().unwrap();
        let b = random::normal::<f32>(&[8, 32], None, None, None).unwrap();
        let x = random::normal::<f32>(&[3, 5, 64], None, None, None)
            .unwrap()
            .as_dtype(Dtype::Bfloat16)
            .unwrap();
        let w = random::normal::<f32>(&[3, 5, 32], None, None, None).unwrap();
        let run = |bf16: bool| {
            let mut p = p.clone();
            p.lora_in_activation_dtype = bf16;
            let (x, w) = (x.clone(), w.clone());
            let loss = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
                p.lora_a = Param::new(Some(args[0].clone()));
                p.lora_b = Param::new(Some(args[1].clone()));
                let y = p.forward(&x)?.as_dtype(Dtype::Float32)?;
                Ok(vec![y.multiply(&w)?.sum(None)?])
            };
            let mut vg = value_and_grad_with_argnums(loss, &[0, 1][..]);
            let (v, g) = vg(&[a.clone(), b.clone()]).unwrap();
            (v[0].item_cast::<f32>(), g)
        };
        let (v32, g32) = run(false);
        let (v16, g16) = run(true);
        // Not the same computation: bf16 products round.
        assert!(crate::test_util::max_abs_diff(&g32[0], &g16[0]) > 0.0);
        assert!(
            (v32 - v16).abs() <= 1e-2 * v32.abs().max(1.0),
            "{v32} vs {v16}"
        );
        for (what, want, got) in [("d A", &g32[0], &g16[0]), ("d B", &g32[1], &g16[1])] {
            assert_eq!(got.dtype(), Dtype::Float32, "{what}");
            let err = crate::test_util::max_abs_diff(want, got);
            let scale = crate::test_util::max_abs(want);
            assert!(
                err <= 2e-2 * scale,
                "{what}: max error {err} (scale {scale})"
            );
        }
    }
}
