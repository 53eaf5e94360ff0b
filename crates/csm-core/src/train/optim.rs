//! AdamW with bias correction (as PyTorch's), over named parameters, with
//! its state exposed for checkpoints.
//!
//! mlx-rs ships an AdamW without bias correction; ours matches the optimizer
//! PEFT users know, and keeps `m`, `v` and the step count explicit so a
//! resumed run continues bit-for-bit. A parameter stored in less than f32
//! (bf16 weights of a full fine-tune on a GPU) is updated through an f32
//! master copy kept here: bf16 keeps 8 bits of mantissa, so an update
//! smaller than 1/256 of a weight would round away.

use std::collections::BTreeMap;

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

/// AdamW state and hyper-parameters.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// `beta1`, `beta2`.
    pub betas: (f32, f32),
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Optimizer steps taken.
    pub step: u64,
    /// First moments by parameter name (f32).
    pub m: BTreeMap<String, Array>,
    /// Second moments by parameter name (f32).
    pub v: BTreeMap<String, Array>,
    /// f32 master copies of the parameters that are stored in another
    /// dtype, by name.
    pub master: BTreeMap<String, Array>,
    /// Run the update of all parameters through one `mx.compile`d function
    /// (traced once per set of shapes): a fused kernel per parameter
    /// instead of about fourteen elementwise ones, which on a GPU are each
    /// a launch (LoRA r8 q/v of CSM-1B: 80 tensors, over 1100 launches a
    /// step uncompiled). Same ops in the same order; the trainer and
    /// `csm bench-train` set it when the training step is compiled.
    pub compiled: bool,
}

/// The scalars of one update, as arrays (inputs of the compiled update,
/// so that a trace serves every step and every optimizer):
/// `[b1, 1 - b1, b2, 1 - b2, bias correction 1, bias correction 2, eps,
/// 1 - lr * weight decay, lr]`.
const SCALARS: usize = 9;

/// One parameter's AdamW update from `s` ([`SCALARS`]): the new f32
/// value and moments.
///
/// # Shapes
/// `g, m_prev, v_prev, p32`: the parameter's shape (f32) -> `(p, m, v)`
fn adamw_math(
    s: &[Array],
    g: &Array,
    m_prev: &Array,
    v_prev: &Array,
    p32: &Array,
) -> Result<[Array; 3], Exception> {
    let [b1, nb1, b2, nb2, bc1, bc2, eps, decay, lr] = s else {
        return Err(Exception::custom(format!(
            "AdamW: {SCALARS} scalars expected, got {}",
            s.len()
        )));
    };
    let m = m_prev.multiply(b1)?.add(g.multiply(nb1)?)?;
    let v = v_prev.multiply(b2)?.add(g.square()?.multiply(nb2)?)?;
    let m_hat = m.divide(bc1)?;
    let v_hat = v.divide(bc2)?;
    let step = m_hat.divide(v_hat.sqrt()?.add(eps)?)?;
    let decayed = p32.multiply(decay)?;
    let new_p = decayed.subtract(step.multiply(lr)?)?;
    Ok([new_p, m, v])
}

/// [`adamw_math`] for every parameter: `[scalars.., then g, m, v, p32 for
/// each]` -> `[p, m, v for each]`.
fn adamw_all(x: &[Array]) -> Result<Vec<Array>, Exception> {
    if x.len() < SCALARS || !(x.len() - SCALARS).is_multiple_of(4) {
        return Err(Exception::custom(format!(
            "AdamW: {} inputs do not make {SCALARS} scalars and groups of 4",
            x.len()
        )));
    }
    let (s, t) = x.split_at(SCALARS);
    let mut out = Vec::with_capacity(t.len() / 4 * 3);
    for c in t.chunks(4) {
        out.extend(adamw_math(s, &c[0], &c[1], &c[2], &c[3])?);
    }
    Ok(out)
}

type UpdateFn = Box<dyn FnMut(&[Array]) -> Result<Vec<Array>, Exception>>;

thread_local! {
    /// The compiled [`adamw_all`] of this thread (its trace cache lives as
    /// long as the compiled function).
    static COMPILED_UPDATE: std::cell::RefCell<Option<UpdateFn>> = const { std::cell::RefCell::new(None) };
}

/// [`adamw_all`] through `mx.compile`.
fn adamw_all_compiled(x: &[Array]) -> Result<Vec<Array>, Exception> {
    COMPILED_UPDATE.with(|c| {
        let mut c = c.borrow_mut();
        let f = c.get_or_insert_with(|| {
            Box::new(mlx_rs::transforms::compile::compile(adamw_all, false)) as UpdateFn
        });
        f(x)
    })
}

impl AdamW {
    /// A fresh optimizer (betas 0.9/0.999, eps 1e-8).
    pub fn new(weight_decay: f32) -> Self {
        AdamW {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay,
            step: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
            master: BTreeMap::new(),
            compiled: false,
        }
    }

    /// Applies one step with learning rate `lr` and returns the new values
    /// of the given parameters. Moments are kept in f32 whatever the
    /// parameter dtype, and so is the parameter itself (its master copy)
    /// when it is stored in another dtype.
    pub fn update(
        &mut self,
        lr: f32,
        params: &BTreeMap<String, Array>,
        grads: &BTreeMap<String, Array>,
    ) -> Result<BTreeMap<String, Array>, Exception> {
        self.step += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        let scalars: Vec<Array> = [
            b1,
            1.0 - b1,
            b2,
            1.0 - b2,
            bc1,
            bc2,
            self.eps,
            1.0 - lr * self.weight_decay,
            lr,
        ]
        .into_iter()
        .map(Array::from_f32)
        .collect();
        // g, m, v, p32 of each parameter that has a gradient.
        let mut names = Vec::new();
        let mut inputs = scalars;
        for (name, p) in params {
            let Some(g) = grads.get(name) else {
                continue;
            };
            let g = g.as_dtype(Dtype::Float32)?;
            let m_prev = match self.m.get(name) {
                Some(m) => m.clone(),
                None => mlx_rs::ops::zeros_like(&g)?,
            };
            let v_prev = match self.v.get(name) {
                Some(v) => v.clone(),
                None => mlx_rs::ops::zeros_like(&g)?,
            };
            let p32 = match self.master.get(name) {
                Some(master) => master.clone(),
                None => p.as_dtype(Dtype::Float32)?,
            };
            inputs.extend([g, m_prev, v_prev, p32]);
            names.push((name, p.dtype()));
        }
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let results = if self.compiled {
            adamw_all_compiled(&inputs)?
        } else {
            adamw_all(&inputs)?
        };
        let mut out = BTreeMap::new();
        for ((name, dtype), r) in names.into_iter().zip(results.chunks(3)) {
            let [new_p, m, v] = r else {
                return Err(Exception::custom(
                    "AdamW: the update returned a partial group",
                ));
            };
            if dtype != Dtype::Float32 {
                self.master.insert(name.clone(), new_p.clone());
            }
            out.insert(name.clone(), new_p.as_dtype(dtype)?);
            self.m.insert(name.clone(), m.clone());
            self.v.insert(name.clone(), v.clone());
        }
        Ok(out)
    }

    /// Arrays to evaluate together with the parameters after a step.
    pub fn state_arrays(&self) -> impl Iterator<Item = &Array> {
        self.m
            .values()
            .chain(self.v.values())
            .chain(self.master.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: PyTorch AdamW's update written out in scalars.
    #[test]
    fn matches_scalar_reference() {
        let mut opt = AdamW::new(0.1);
        let mut p = 1.5f32;
        let (mut m, mut v) = (0f32, 0f32);
        let grads = [0.3f32, -0.2, 0.05];
        let mut params = BTreeMap::from([("w".to_string(), Array::from_f32(p))]);
        for (t, g) in grads.iter().enumerate() {
            let lr = 0.01;
            let gmap = BTreeMap::from([("w".to_string(), Array::from_f32(*g))]);
            params = opt.update(lr, &params, &gmap).unwrap();
            p *= 1.0 - lr * 0.1;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let mh = m / (1.0 - 0.9f32.powi(t as i32 + 1));
            let vh = v / (1.0 - 0.999f32.powi(t as i32 + 1));
            p -= lr * mh / (vh.sqrt() + 1e-8);
            let got = params["w"].item_cast::<f32>();
            assert!((got - p).abs() < 1e-6, "step {t}: {got} vs {p}");
        }
        assert_eq!(opt.step, 3);
    }

    /// The compiled update gives the plain one's parameters, moments and
    /// master copies, step after step (an f32 and a bf16 parameter, weight
    /// decay, one parameter without a gradient).
    #[test]
    fn compiled_update_matches_the_plain_one() {
        let w = |v: &[f32]| Array::from_slice(v, &[2, 2]);
        let params = BTreeMap::from([
            ("a".to_string(), w(&[1.0, -0.5, 0.25, 2.0])),
            (
                "b".to_string(),
                w(&[0.3, 0.1, -1.0, 4.0]).as_dtype(Dtype::Bfloat16).unwrap(),
            ),
            ("frozen".to_string(), w(&[7.0, 7.0, 7.0, 7.0])),
        ]);
        let (mut plain, mut compiled) = (AdamW::new(0.1), AdamW::new(0.1));
        compiled.compiled = true;
        let (mut p0, mut p1) = (params.clone(), params);
        for step in 0..4 {
            let g = w(&[0.1, -0.2, 0.3 * step as f32, 1.0]);
            let grads = BTreeMap::from([("a".to_string(), g.clone()), ("b".to_string(), g)]);
            let lr = 1e-2 / (1 + step) as f32;
            p0 = plain.update(lr, &p0, &grads).unwrap();
            p1 = compiled.update(lr, &p1, &grads).unwrap();
            assert_eq!(p0.len(), 2);
            let pairs = p0.iter().zip(&p1).chain(plain.m.iter().zip(&compiled.m));
            let pairs = pairs
                .chain(plain.v.iter().zip(&compiled.v))
                .chain(plain.master.iter().zip(&compiled.master));
            for ((k0, a), (k1, b)) in pairs {
                assert_eq!(k0, k1);
                assert_eq!(a.dtype(), b.dtype(), "{k0}");
                let d = crate::test_util::max_abs_diff(a, b);
                assert!(d <= 1e-6, "step {step}, {k0}: max diff {d}");
            }
            // The update returns the parameters it changed.
            p0.insert("frozen".into(), w(&[7.0, 7.0, 7.0, 7.0]));
            p1.insert("frozen".into(), w(&[7.0, 7.0, 7.0, 7.0]));
        }
        assert_eq!(compiled.master.len(), 1);
    }

    /// A bf16 parameter follows the f32 trajectory through its master copy
    /// (rounded once per step for the model), where updating the bf16
    /// value itself would lose every step smaller than its rounding.
    #[test]
    fn bf16_parameters_keep_an_f32_master_copy() {
        let start = [1.0f32, -0.5, 0.25, 2.0];
        let w32 = Array::from_slice(&start, &[4]);
        let mut p32 = BTreeMap::from([("w".to_string(), w32.clone())]);
        let mut p16 = BTreeMap::from([("w".to_string(), w32.as_dtype(Dtype::Bfloat16).unwrap())]);
        let (mut a, mut b) = (AdamW::new(0.0), AdamW::new(0.0));
        let g = Array::from_slice(&[0.1f32, -0.2, 0.3, 1.0], &[4]);
        let grads = BTreeMap::from([("w".to_string(), g)]);
        for _ in 0..200 {
            p32 = a.update(1e-4, &p32, &grads).unwrap();
            p16 = b.update(1e-4, &p16, &grads).unwrap();
        }
        assert!(a.master.is_empty());
        assert_eq!(p16["w"].dtype(), Dtype::Bfloat16);
        let master = b.master["w"].as_slice::<f32>().to_vec();
        let exact = p32["w"].as_slice::<f32>().to_vec();
        for (m, e) in master.iter().zip(&exact) {
            assert!((m - e).abs() < 1e-6, "master {m} vs f32 run {e}");
        }
        // Each step moves the weight at 2.0 by 1e-4, far below half a bf16
        // step there (7.8e-3): updated in bf16 it would round back to 2.0
        // every time; through the master copy it has moved by 0.02.
        let rounded = p16["w"].as_dtype(Dtype::Float32).unwrap();
        let rounded = rounded.as_slice::<f32>().to_vec();
        assert_ne!(rounded[3], start[3], "the bf16 weight never moved");
    }
}
