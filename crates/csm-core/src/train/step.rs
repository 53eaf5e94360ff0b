//! Forward and backward pass of one micro-batch: one loss function, run
//! as is or through `mx.compile`.

use mlx_rs::error::Exception;
use mlx_rs::{nn, ops, Array};

use super::batch::Batch;
use super::trainer::TrainError;
use crate::model::{ArrayLossBatch, AttentionMask, Csm, LossWeights};

/// Frames per shape step of the compiled path: batch lengths and decoder
/// frame counts are rounded up to a multiple of this, so a run traces a few
/// shapes instead of one per batch.
const COMPILE_PAD: usize = 8;

/// Whether the training step goes through `mx.compile` when the caller
/// `asked` for it, and why (for the log).
///
/// Off by default: measured, it did not pay. On this CPU the compiled
/// CSM-1B step took 4.39 s against 4.26 s; on an H100 (bf16) it was within
/// run-to-run noise with 12% less peak memory at every frame, while the
/// demo run spent 5.1 s instead of 1.2 s on its first 30 steps tracing and
/// JIT-compiling a kernel set per new batch shape, and the same 0.015 s per
/// step afterwards (docs/benchmarks.md). Never with LoRA dropout: the
/// random mask would be frozen into the trace.
pub(super) fn compile_step(asked: bool, lora_dropout: f32) -> (bool, &'static str) {
    match (asked, lora_dropout > 0.0) {
        (true, true) => (
            false,
            "not compiled: CSM_COMPILE=1 ignored, LoRA dropout draws a new mask every step",
        ),
        (true, false) => (true, "compiled (CSM_COMPILE=1)"),
        (false, _) => (false, "not compiled (CSM_COMPILE=1 compiles it)"),
    }
}

/// The inputs of [`scaled_loss`] for one micro-batch: `[frames, mask, c0,
/// idx, scale_sem, scale_dec]`, plus `decoder_weights` when `padded`.
///
/// Padded (the compiled step): frames, mask and codebook-0 targets are
/// padded to a multiple of [`COMPILE_PAD`] frames (padding is masked and,
/// with causal attention at the end, invisible to real frames); the
/// depth-decoder indices are re-based on the padded length and padded to a
/// multiple of [`COMPILE_PAD`] with weight 0. Not padded (the plain step):
/// the batch as it is, every decoder frame of weight 1.
///
/// # Shapes
/// -> `[frames [B, S', K+1], mask [B, S', K+1], c0 [B, S'], idx [N'],
/// scale_sem [], scale_dec [], (weights [N'])]`, `S' = S`, `N' = N` unpadded
fn step_inputs(batch: &Batch, scales: (f32, f32), padded: bool) -> Result<Vec<Array>, Exception> {
    let scales = [Array::from_f32(scales.0), Array::from_f32(scales.1)];
    if !padded {
        let n = batch.decoder_frames.len() as i32;
        let idx = Array::from_slice(&batch.decoder_frames, &[n]); // [N]
        let [sem, dec] = scales;
        return Ok(vec![
            batch.frames.clone(),
            batch.mask.clone(),
            batch.c0_targets.clone(),
            idx,
            sem,
            dec,
        ]);
    }
    let shape = batch.frames.shape();
    let s = shape[1] as usize;
    let s_pad = s.div_ceil(COMPILE_PAD) * COMPILE_PAD;
    let extra = (s_pad - s) as i32;
    let pad3 = [(0, 0), (0, extra), (0, 0)];
    let frames = ops::pad(&batch.frames, &pad3[..], None, None)?; // [B, S', K+1]
    let mask = ops::pad(&batch.mask, &pad3[..], None, None)?; // [B, S', K+1]
    let c0 = ops::pad(&batch.c0_targets, &pad3[..2], None, None)?; // [B, S']
    let mut idx: Vec<i32> = batch
        .decoder_frames
        .iter()
        .map(|&f| (f as usize / s * s_pad + f as usize % s) as i32)
        .collect();
    let n = idx.len();
    let n_pad = n.div_ceil(COMPILE_PAD) * COMPILE_PAD;
    let mut w = vec![1f32; n];
    idx.resize(n_pad, idx[0]);
    w.resize(n_pad, 0.0);
    let [sem, dec] = scales;
    Ok(vec![
        frames,
        mask,
        c0,
        Array::from_slice(&idx, &[n_pad as i32]),
        sem,
        dec,
        Array::from_slice(&w, &[n_pad as i32]),
    ])
}

/// The training loss of one micro-batch given as [`step_inputs`]:
/// `[total, semantic, acoustic]`, each term scaled to this rank's share of
/// the global mean (see `Run::forward_backward`), the total weighted by
/// `--semantic-weight` / `--acoustic-weight`. Arrays in, arrays out, so
/// that `mx.compile` can trace it.
fn scaled_loss(
    model: &mut Csm,
    x: &[Array],
    weights: LossWeights,
) -> Result<Vec<Array>, Exception> {
    let l = model.loss_arrays(
        &ArrayLossBatch {
            tokens: &x[0],
            mask: &x[1],
            loss_mask: &x[2],
            decoder_frames: &x[3],
            decoder_weights: x.get(6),
            // Right padding: causal attention never lets a real frame see it.
            attention: AttentionMask::Causal,
        },
        weights,
    )?;
    let sem = l.semantic.multiply(&x[4])?;
    let aco = l.acoustic.multiply(&x[5])?;
    let total = sem
        .multiply(Array::from_f32(weights.semantic))?
        .add(aco.multiply(Array::from_f32(weights.acoustic))?)?;
    Ok(vec![total, sem, aco])
}

/// [`scaled_loss`] and its gradients: the three loss terms, then the
/// gradient of every trainable tensor in name order.
fn loss_and_grads(
    model: &mut Csm,
    x: &[Array],
    weights: LossWeights,
) -> Result<Vec<Array>, Exception> {
    let f = move |model: &mut Csm, x: &[Array]| scaled_loss(model, x, weights);
    let (values, grads) = nn::value_and_grad(f)(model, x)?;
    let mut grads: Vec<(String, Array)> =
        grads.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(values
        .into_iter()
        .chain(grads.into_iter().map(|g| g.1))
        .collect())
}

type StepFn = Box<dyn for<'x> FnMut(&mut Csm, &'x [Array]) -> Result<Vec<Array>, Exception>>;

/// Loss and gradients of a micro-batch, the same function run plain or
/// compiled.
pub(super) struct ForwardBackward {
    weights: LossWeights,
    /// Names of the trainable tensors, in the order of the gradients.
    grad_keys: Vec<String>,
    /// `mx.compile` of [`loss_and_grads`], when compiling.
    compiled: Option<StepFn>,
}

/// One micro-batch's result, not yet evaluated.
pub(super) struct MicroStep {
    /// `[total, semantic, acoustic]`, scaled as in [`scaled_loss`].
    pub(super) losses: Vec<Array>,
    /// Gradient of each trainable tensor, by name.
    pub(super) grads: Vec<(String, Array)>,
}

impl ForwardBackward {
    /// The step for the trainable tensors `grad_keys` (sorted), compiled
    /// when `compile`.
    pub(super) fn new(grad_keys: Vec<String>, weights: LossWeights, compile: bool) -> Self {
        let compiled = compile.then(|| {
            let step = move |model: &mut Csm, x: &[Array]| loss_and_grads(model, x, weights);
            Box::new(mlx_rs::transforms::compile::compile_with_state(step, false)) as StepFn
        });
        ForwardBackward {
            weights,
            grad_keys,
            compiled,
        }
    }

    /// Loss terms and gradients of `batch`, its terms scaled by `scales`
    /// (semantic, acoustic).
    pub(super) fn run(
        &mut self,
        model: &mut Csm,
        batch: &Batch,
        scales: (f32, f32),
    ) -> Result<MicroStep, TrainError> {
        let what = if self.compiled.is_some() {
            "the compiled forward/backward pass"
        } else {
            "the forward/backward pass"
        };
        let fail = |source| TrainError::Mlx {
            context: what.into(),
            source,
        };
        let inputs = step_inputs(batch, scales, self.compiled.is_some()).map_err(fail)?;
        let mut out = match self.compiled.as_mut() {
            Some(step) => step(model, &inputs),
            None => loss_and_grads(model, &inputs, self.weights),
        }
        .map_err(fail)?;
        if out.len() != 3 + self.grad_keys.len() {
            return Err(fail(Exception::custom(format!(
                "{} gradients for {} adapter tensors",
                out.len().saturating_sub(3),
                self.grad_keys.len()
            ))));
        }
        let grads = out.split_off(3);
        Ok(MicroStep {
            losses: out,
            grads: self.grad_keys.iter().cloned().zip(grads).collect(),
        })
    }
}
