//! Forward and backward pass of one micro-batch: one loss function, run
//! as is or through `mx.compile` with shape buckets. `csm bench-train`
//! times this same step.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use mlx_rs::error::Exception;
use mlx_rs::module::ModuleParameters;
use mlx_rs::nested::NestedValue;
use mlx_rs::{nn, ops, Array};

use super::batch::Batch;
use super::trainer::TrainError;
use crate::model::{packed_causal_mask, ArrayLossBatch, AttentionMask, Csm, LossWeights};

/// The length a batch's frames (or its depth-decoder frames) are padded to
/// in the compiled step, so that a run traces a few shapes instead of one
/// per batch: a multiple of 8 up to 128, then 16 sizes per doubling (a
/// multiple of 8 up to 256, of 16 up to 512, of 32 up to 1024, ...). At
/// most 1/16 of the frames (7 below 128) are padding.
pub fn bucket_len(n: usize) -> usize {
    if n <= 128 {
        return n.div_ceil(8) * 8;
    }
    let octave = usize::BITS - 1 - n.leading_zeros(); // floor(log2 n) >= 7
    let step = 1usize << (octave - 4);
    n.div_ceil(step) * step
}

/// The row length of packed micro-batches (`--packing`,
/// [`super::batch::Layout::Packed`]): the longest training example rounded
/// up to its [`bucket_len`], at most the backbone's `max_seq_len` (never
/// less than the longest). Rows hold a few examples of the usual lengths
/// and are themselves of a bucketed length, so the compiled step still
/// traces a handful of shapes (the row count varies from batch to batch).
pub fn pack_row_len(longest: usize, max_seq_len: usize) -> usize {
    bucket_len(longest).min(max_seq_len).max(longest)
}

/// How the forward/backward pass of a micro-batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOptions {
    /// Through `mx.compile`.
    pub compile: bool,
    /// When compiled: pad frames and depth-decoder frames to
    /// [`bucket_len`] (masked out, so the loss is the unpadded one), so
    /// that batches of nearby lengths share a trace. Off: every new shape
    /// is traced as it comes.
    pub buckets: bool,
}

/// Whether the training step goes through `mx.compile`, and why (for the
/// log): as `asked` (`CSM_COMPILE=1` / `0`), else on GPUs and not on the
/// CPU.
///
/// On the CPU it did not pay: the compiled CSM-1B step took 4.39 s against
/// 4.26 s on the project's machine (docs/benchmarks.md). On GPUs it fuses
/// the elementwise work between the matmuls into fewer kernels and saved
/// 12% of the peak memory on an H100 at every frame; shape buckets
/// ([`bucket_len`]) keep the number of traces small (each new shape costs
/// a trace and MLX's kernel compilation once). Never with LoRA dropout:
/// the random mask would be frozen into the trace.
pub fn compile_step(asked: Option<bool>, gpu: bool, lora_dropout: f32) -> (bool, &'static str) {
    let want = asked.unwrap_or(gpu);
    match (want, lora_dropout > 0.0, asked.is_some()) {
        (true, true, true) => (
            false,
            "not compiled: CSM_COMPILE=1 ignored, LoRA dropout draws a new mask every step",
        ),
        (true, true, false) => (
            false,
            "not compiled: LoRA dropout draws a new mask every step",
        ),
        (true, false, true) => (true, "compiled (CSM_COMPILE=1), shape buckets"),
        (true, false, false) => (
            true,
            "compiled on the GPU, shape buckets (CSM_COMPILE=0 turns it off)",
        ),
        (false, _, true) => (false, "not compiled (CSM_COMPILE=0)"),
        (false, _, false) => (false, "not compiled on the CPU (CSM_COMPILE=1 compiles it)"),
    }
}

/// The inputs of [`scaled_loss`] for one micro-batch: `[frames, mask, c0,
/// idx, scale_sem, scale_dec]`, then `segments, positions` when the batch
/// is packed, then `decoder_weights` when padded to a bucket
/// ([`StepInputs`] reads them back).
///
/// Padded (`pad_to = Some(max_len)`, the bucketed compiled step): frames,
/// mask, codebook-0 targets (and a packed batch's segments, -1, and
/// positions, 0) are padded to [`bucket_len`] frames (at most `max_len`;
/// padding is masked and, with causal attention at the end or a segment of
/// its own, invisible to real frames); the depth-decoder indices are
/// re-based on the padded length and padded to [`bucket_len`] entries of
/// weight 0. Not padded: the batch as it is, every decoder frame of
/// weight 1.
///
/// # Shapes
/// -> `[frames [B, S', K+1], mask [B, S', K+1], c0 [B, S'], idx [N'],
/// scale_sem [], scale_dec [], (segments [B, S'], positions [B, S']),
/// (weights [N'])]`, `S' = S`, `N' = N` unpadded
fn step_inputs(
    batch: &Batch,
    scales: (f32, f32),
    pad_to: Option<usize>,
) -> Result<Vec<Array>, Exception> {
    let [sem, dec] = [Array::from_f32(scales.0), Array::from_f32(scales.1)];
    let packed = |out: &mut Vec<Array>, extra: i32| -> Result<(), Exception> {
        if let Some(p) = &batch.packed {
            let pad2 = [(0, 0), (0, extra)];
            let seg = ops::pad(&p.segments, &pad2[..], Array::from_int(-1), None)?; // [B, S']
            let pos = ops::pad(&p.positions, &pad2[..], None, None)?; // [B, S']
            out.extend([seg, pos]);
        }
        Ok(())
    };
    let Some(max_len) = pad_to else {
        let n = batch.decoder_frames.len() as i32;
        let idx = Array::from_slice(&batch.decoder_frames, &[n]); // [N]
        let mut out = vec![
            batch.frames.clone(),
            batch.mask.clone(),
            batch.c0_targets.clone(),
            idx,
            sem,
            dec,
        ];
        packed(&mut out, 0)?;
        return Ok(out);
    };
    let shape = batch.frames.shape();
    let s = shape[1] as usize;
    let s_pad = bucket_len(s).min(max_len.max(s));
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
    let n_pad = bucket_len(n);
    let mut w = vec![1f32; n];
    idx.resize(n_pad, idx[0]);
    w.resize(n_pad, 0.0);
    let mut out = vec![
        frames,
        mask,
        c0,
        Array::from_slice(&idx, &[n_pad as i32]),
        sem,
        dec,
    ];
    packed(&mut out, extra)?;
    out.push(Array::from_slice(&w, &[n_pad as i32]));
    Ok(out)
}

/// [`step_inputs`]' optional arrays, told apart by their count (fixed for
/// a trace: a compiled step sees the same count every time it sees a
/// shape).
struct StepInputs<'a> {
    /// `(segments, positions)` of a packed batch.
    packed: Option<(&'a Array, &'a Array)>,
    /// Depth-decoder frame weights of a bucket-padded batch.
    weights: Option<&'a Array>,
}

impl<'a> StepInputs<'a> {
    fn read(x: &'a [Array]) -> Self {
        let packed = (x.len() >= 8).then(|| (&x[6], &x[7]));
        let weights = (x.len() % 2 == 1).then(|| &x[x.len() - 1]);
        StepInputs { packed, weights }
    }
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
    let extra = StepInputs::read(x);
    let packed_mask = match extra.packed {
        Some((segments, _)) => {
            // Over the attention tile's length, as the causal flag is
            // padded (`TrainKernels::attention_tile`): the padding is a
            // segment of its own.
            let (s, tile) = (segments.shape()[1], model.kernels.attention_tile);
            let segments = if tile > 0 && s % tile != 0 {
                let widths = [(0, 0), (0, tile - s % tile)];
                ops::pad(segments, &widths[..], Array::from_int(-1), None)? // [B, S']
            } else {
                segments.clone()
            };
            Some(packed_causal_mask(&segments)?) // [B, 1, S', S']
        }
        None => None,
    };
    let attention = match (&packed_mask, extra.packed) {
        (Some(mask), Some((_, positions))) => AttentionMask::Packed { mask, positions },
        // Right padding: causal attention never lets a real frame see it.
        _ => AttentionMask::Causal,
    };
    let l = model.loss_arrays(
        &ArrayLossBatch {
            tokens: &x[0],
            mask: &x[1],
            loss_mask: &x[2],
            decoder_frames: &x[3],
            decoder_weights: extra.weights,
            attention,
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

/// Every array of `model`'s parameters, frozen and trainable, in one fixed
/// order (keys sorted level by level); with `names`, also each array's
/// flattened name, in the same order.
///
/// A compiled step takes these as inputs on every call. This walk builds
/// no names unless asked: the generic state handling of mlx-rs's
/// `compile_with_state` flattened and named the whole model three or four
/// times a call, about a third of the host's time to build a compiled
/// CSM-1B step (docs/benchmarks.md), time the device spends idle.
fn model_arrays(model: &Csm, mut names: Option<&mut Vec<Rc<str>>>) -> Vec<Array> {
    type Level<'a> = HashMap<Rc<str>, NestedValue<Rc<str>, &'a Array>>;
    fn walk(
        level: &Level<'_>,
        prefix: &str,
        names: &mut Option<&mut Vec<Rc<str>>>,
        out: &mut Vec<Array>,
    ) {
        let mut entries: Vec<_> = level.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (key, value) in entries {
            match value {
                NestedValue::Value(array) => {
                    if let Some(names) = names.as_deref_mut() {
                        names.push(format!("{prefix}{key}").into());
                    }
                    out.push((*array).clone());
                }
                NestedValue::Map(inner) => {
                    // Names are only built while tracing.
                    let prefix = if names.is_some() {
                        format!("{prefix}{key}.")
                    } else {
                        String::new()
                    };
                    walk(inner, &prefix, names, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&model.parameters().entries, "", &mut names, &mut out);
    out
}

/// A compiled function of arrays.
type CompiledFn = Box<dyn for<'a> FnMut(&'a [Array]) -> Result<Vec<Array>, Exception>>;

/// `mx.compile` of [`loss_and_grads`]: its inputs are a micro-batch's
/// [`step_inputs`] followed by [`model_arrays`], so the compiled graph
/// holds none of the model's arrays as constants (a frozen weight changed
/// between calls is seen) and a call needs no named state.
struct CompiledStep {
    call: CompiledFn,
    /// The model of the call in progress, for a trace; null between calls.
    model: Rc<Cell<*mut Csm>>,
    /// How many of the call's inputs are the micro-batch's.
    batch_inputs: Rc<Cell<usize>>,
}

impl CompiledStep {
    fn new(weights: LossWeights) -> Self {
        let model = Rc::new(Cell::new(std::ptr::null_mut::<Csm>()));
        let batch_inputs = Rc::new(Cell::new(0));
        let (slot, count) = (Rc::clone(&model), Rc::clone(&batch_inputs));
        // Runs only while MLX traces a new shape; later calls replay the
        // trace without it.
        let trace = move |inputs: &[Array]| -> Result<Vec<Array>, Exception> {
            // SAFETY: `run` stores the pointer of the `&mut Csm` it holds for
            // the whole call and does not touch that reference until the
            // call returns and the pointer is cleared; nothing else reads
            // the slot.
            let model = unsafe { slot.get().as_mut() }
                .ok_or_else(|| Exception::custom("the compiled step was traced outside a call"))?;
            let (batch, arrays) = inputs.split_at(count.get().min(inputs.len()));
            let mut names = Vec::new();
            let originals = model_arrays(model, Some(&mut names));
            if names.len() != arrays.len() {
                return Err(Exception::custom(format!(
                    "the compiled step got {} model arrays for {} parameters",
                    arrays.len(),
                    names.len()
                )));
            }
            // The model computes with the traced inputs, then gets its own
            // arrays back, whatever the trace's outcome.
            model.update_flattened(names.iter().cloned().zip(arrays.iter().cloned()).collect());
            let out = loss_and_grads(model, batch, weights);
            model.update_flattened(names.into_iter().zip(originals).collect());
            out
        };
        CompiledStep {
            call: Box::new(mlx_rs::transforms::compile::compile(trace, false)),
            model,
            batch_inputs,
        }
    }

    fn run(&mut self, model: &mut Csm, mut inputs: Vec<Array>) -> Result<Vec<Array>, Exception> {
        self.batch_inputs.set(inputs.len());
        inputs.extend(model_arrays(model, None));
        self.model.set(model as *mut Csm);
        let out = (self.call)(&inputs);
        self.model.set(std::ptr::null_mut());
        out
    }
}

/// Loss and gradients of a micro-batch, the same function run plain or
/// compiled.
pub struct ForwardBackward {
    weights: LossWeights,
    options: StepOptions,
    /// Names of the trainable tensors, in the order of the gradients.
    grad_keys: Vec<String>,
    /// The compiled [`loss_and_grads`], when compiling.
    compiled: Option<CompiledStep>,
}

/// One micro-batch's result, not yet evaluated.
pub struct MicroStep {
    /// `[total, semantic, acoustic]`, scaled as in [`scaled_loss`].
    pub losses: Vec<Array>,
    /// Gradient of each trainable tensor, by name.
    pub grads: Vec<(String, Array)>,
}

impl ForwardBackward {
    /// The step for the trainable tensors `grad_keys` (sorted), run as
    /// `options` say.
    pub fn new(grad_keys: Vec<String>, weights: LossWeights, options: StepOptions) -> Self {
        let compiled = options.compile.then(|| CompiledStep::new(weights));
        ForwardBackward {
            weights,
            options,
            grad_keys,
            compiled,
        }
    }

    /// Loss terms and gradients of `batch`, its terms scaled by `scales`
    /// (semantic, acoustic): each term's share of the global mean (1, 1 for
    /// a batch on its own).
    ///
    /// # Errors
    /// MLX failures, or a gradient count that does not match `grad_keys`.
    pub fn run(
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
        let pad_to = (self.compiled.is_some() && self.options.buckets)
            .then_some(model.config.backbone.max_seq_len as usize);
        let inputs = step_inputs(batch, scales, pad_to).map_err(fail)?;
        let mut out = match self.compiled.as_mut() {
            Some(step) => step.run(model, inputs),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use mlx_rs::module::ModuleParameters;
    use mlx_rs::random;

    use super::*;
    use crate::adapter::{self, LoraSpec, TargetLayers};
    use crate::model::{load_csm, LoadOptions, TrainKernels};
    use crate::rng::Rng;
    use crate::test_util::{max_abs, max_abs_diff};
    use crate::train::batch::{build_example, collate, collate_as, Layout, Turn};
    use crate::train::trainer::evaluate_as;

    /// The tiny fixture model (transformers layout) with LoRA on q/v/down
    /// of both stacks, every `lora_b` random so that every adapter tensor
    /// has a gradient.
    fn tiny_model() -> Csm {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/csm_tiny_hf");
        let mut model = load_csm(&dir, &LoadOptions::default()).unwrap().model;
        random::seed(11).unwrap();
        let spec = LoraSpec {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
            layers: TargetLayers::all(),
            bias: false,
        };
        adapter::attach(&mut model, &spec).unwrap();
        let b: std::collections::HashMap<_, _> = adapter::adapter_tensors(&model)
            .into_iter()
            .filter(|(k, _)| k.ends_with("lora_b"))
            .map(|(k, v)| {
                let r = random::normal::<f32>(v.shape(), None, None, None).unwrap();
                (
                    std::rc::Rc::from(k.as_str()),
                    r.multiply(Array::from_f32(0.1)).unwrap(),
                )
            })
            .collect();
        model.update_flattened(b);
        model
    }

    /// Three rows of 37, 29 and 21 frames (right padding), half the target
    /// frames through the depth decoder: 37 frames pad to a bucket of 40,
    /// and cross the attention tile of 16 used below.
    fn tiny_batch(model: &Csm) -> Batch {
        let k = model.config.audio_num_codebooks as usize;
        let vocab = model.config.audio_vocab_size as usize;
        let mut rng = Rng::new(4);
        let examples: Vec<_> = [(6, 30), (5, 23), (4, 16)]
            .iter()
            .map(|&(text, audio)| {
                let turn = Turn {
                    text_tokens: (0..text).map(|_| 5 + rng.below(290) as u32).collect(),
                    codes: (0..audio)
                        .map(|_| (0..k).map(|_| 1 + rng.below(vocab - 4) as u32).collect())
                        .collect(),
                    has_loss: true,
                };
                build_example(&[], &turn, k, 2048).unwrap()
            })
            .collect();
        let refs: Vec<_> = examples.iter().collect();
        collate(&refs, 0.5, &mut rng).unwrap()
    }

    type Result3 = (Vec<f32>, BTreeMap<String, Array>);

    fn run_step(
        model: &mut Csm,
        batch: &Batch,
        kernels: TrainKernels,
        options: StepOptions,
    ) -> Result3 {
        model.set_train_kernels(kernels);
        let keys: Vec<String> = adapter::adapter_tensors(model).into_keys().collect();
        let mut step = ForwardBackward::new(keys, LossWeights::default(), options);
        // Twice: a compiled step runs its trace once, then the compiled
        // graph; both must agree with the plain step.
        let mut last = None;
        for _ in 0..2 {
            let out = step.run(model, batch, (1.0, 1.0)).unwrap();
            let losses = out.losses.iter().map(|l| l.item_cast::<f32>()).collect();
            last = Some((losses, out.grads.into_iter().collect()));
        }
        last.unwrap()
    }

    fn assert_same(what: &str, a: &Result3, b: &Result3) {
        for (x, y) in a.0.iter().zip(&b.0) {
            assert!((x - y).abs() <= 2e-6 * x.abs(), "{what}: loss {x} vs {y}");
        }
        assert_eq!(a.1.len(), b.1.len(), "{what}");
        for (k, g) in &a.1 {
            let (d, scale) = (max_abs_diff(g, &b.1[k]), max_abs(g));
            assert!(scale > 0.0, "{what}: {k} has no gradient");
            assert!(
                d <= 1e-4 * scale,
                "{what}: {k}: max diff {d} (scale {scale})"
            );
        }
    }

    /// Every lever (fused cross-entropy, attention padded to a tile, lean
    /// SwiGLU and LoRA, grouped projections, heads padded to an aligned
    /// vocabulary, MLPs in pieces, the compiled step with and without shape
    /// buckets, all together) gives the plain step's loss terms and
    /// gradients on the tiny fixture model.
    #[test]
    fn every_lever_keeps_the_plain_loss_and_gradients() {
        let mut model = tiny_model();
        let batch = tiny_batch(&model);
        let plain = StepOptions {
            compile: false,
            buckets: false,
        };
        let reference = run_step(&mut model, &batch, TrainKernels::PLAIN, plain);
        let plain_kernels = TrainKernels::PLAIN;
        let fused = TrainKernels {
            fused_cross_entropy: true,
            ..plain_kernels
        };
        let tiled = TrainKernels {
            attention_tile: 16,
            ..plain_kernels
        };
        let lean = TrainKernels {
            lean_swiglu: true,
            lean_lora: true,
            ..plain_kernels
        };
        let grouped = TrainKernels {
            grouped_projections: true,
            ..lean
        };
        let all = TrainKernels {
            fused_cross_entropy: true,
            attention_tile: 16,
            lean_swiglu: true,
            lean_lora: true,
            lora_in_activation_dtype: true,
            grouped_projections: true,
            aligned_heads: true,
            // CUDA kernels: `csm gpu-check` compares them with MLX's ops.
            cuda_swiglu_grad: false,
            cuda_rope: false,
            cuda_cross_entropy: false,
            cuda_lora: false,
            // The decoder's MLPs in 3 pieces of its frames.
            decoder_mlp_pieces: 3,
            mlp_piece_min_rows: 16,
        };
        let pieces = TrainKernels {
            decoder_mlp_pieces: 3,
            mlp_piece_min_rows: 16,
            ..plain_kernels
        };
        let aligned = TrainKernels {
            aligned_heads: true,
            ..plain_kernels
        };
        let compiled = |buckets| StepOptions {
            compile: true,
            buckets,
        };
        let cases = [
            ("fused cross-entropy", fused, plain),
            ("attention tile 16", tiled, plain),
            ("lean SwiGLU and LoRA", lean, plain),
            ("grouped projections", grouped, plain),
            ("aligned heads", aligned, plain),
            ("MLPs in pieces", pieces, plain),
            (
                "MLPs in pieces, lean and grouped, compiled",
                TrainKernels {
                    decoder_mlp_pieces: 3,
                    mlp_piece_min_rows: 16,
                    ..grouped
                },
                compiled(true),
            ),
            ("grouped projections, compiled", grouped, compiled(true)),
            (
                "compiled, exact shapes",
                TrainKernels::PLAIN,
                compiled(false),
            ),
            (
                "compiled, shape buckets",
                TrainKernels::PLAIN,
                compiled(true),
            ),
            ("all levers", all, compiled(true)),
        ];
        for (what, kernels, options) in cases {
            let got = run_step(&mut model, &batch, kernels, options);
            assert_same(what, &reference, &got);
        }
    }

    /// The same utterances packed (several to a row: block-diagonal
    /// attention, positions restarting) give the padded batch's loss terms
    /// and LoRA gradients, plain and compiled with shape buckets.
    #[test]
    fn packed_batch_keeps_the_padded_loss_and_gradients() {
        let mut model = tiny_model();
        let k = model.config.audio_num_codebooks as usize;
        let vocab = model.config.audio_vocab_size as usize;
        let mut rng = Rng::new(8);
        // 37, 14, 21 and 4 frames: rows of up to 40 hold [37] and
        // [21, 14, 4] (39 frames, padded to a bucket of 40 when compiled);
        // padded, they take 4 rows of 37.
        let examples: Vec<_> = [(6, 30), (3, 10), (4, 16), (2, 1)]
            .iter()
            .map(|&(text, audio)| {
                let turn = Turn {
                    text_tokens: (0..text).map(|_| 5 + rng.below(290) as u32).collect(),
                    codes: (0..audio)
                        .map(|_| (0..k).map(|_| 1 + rng.below(vocab - 4) as u32).collect())
                        .collect(),
                    has_loss: true,
                };
                build_example(&[], &turn, k, 2048).unwrap()
            })
            .collect();
        let refs: Vec<_> = examples.iter().collect();
        let padded = collate(&refs, 0.5, &mut Rng::new(3)).unwrap();
        let row_len = pack_row_len(37, 2048);
        assert_eq!(row_len, 40);
        let packed = collate_as(&refs, 0.5, &mut Rng::new(3), Layout::Packed { row_len }).unwrap();
        assert_eq!(packed.frames.shape(), &[2, 39, k as i32 + 1]);
        assert!(packed.layout_frames() < padded.layout_frames());
        let plain = StepOptions {
            compile: false,
            buckets: false,
        };
        let reference = run_step(&mut model, &padded, TrainKernels::PLAIN, plain);
        let got = run_step(&mut model, &packed, TrainKernels::PLAIN, plain);
        assert_same("packed", &reference, &got);
        let compiled = StepOptions {
            compile: true,
            buckets: true,
        };
        let lean = TrainKernels {
            lean_swiglu: true,
            lean_lora: true,
            grouped_projections: true,
            ..TrainKernels::PLAIN
        };
        let got = run_step(&mut model, &packed, lean, compiled);
        assert_same("packed, compiled with shape buckets", &reference, &got);
        let tiled = TrainKernels {
            attention_tile: 16,
            ..lean
        };
        let got = run_step(&mut model, &packed, tiled, plain);
        assert_same("packed, attention tile 16", &reference, &got);
        let got = run_step(&mut model, &packed, tiled, compiled);
        assert_same("packed, attention tile 16, compiled", &reference, &got);
        // Validation: the same loss packed (every frame through the decoder).
        let w = LossWeights::default();
        let v = |model: &mut Csm, layout| evaluate_as(model, &examples, 4, w, layout).unwrap();
        let (a, b) = (
            v(&mut model, Layout::Padded),
            v(&mut model, Layout::Packed { row_len }),
        );
        for (x, y) in [(a.semantic, b.semantic), (a.acoustic, b.acoustic)] {
            assert!((x - y).abs() <= 2e-6 * x.abs(), "validation: {x} vs {y}");
        }
    }

    /// The compiled step takes the model's arrays as inputs: a trainable
    /// tensor and a frozen weight changed after the trace are both seen (the
    /// plain step's loss and gradients at the changed model), and a trace
    /// leaves the model's own arrays in place.
    #[test]
    fn the_compiled_step_sees_weights_changed_after_its_trace() {
        let mut model = tiny_model();
        let batch = tiny_batch(&model);
        let keys: Vec<String> = adapter::adapter_tensors(&model).into_keys().collect();
        let options = StepOptions {
            compile: true,
            buckets: true,
        };
        let mut step = ForwardBackward::new(keys.clone(), LossWeights::default(), options);
        let before = model_arrays(&model, None);
        step.run(&mut model, &batch, (1.0, 1.0)).unwrap();
        let after = model_arrays(&model, None);
        assert_eq!(before.len(), after.len());
        for (a, b) in before.iter().zip(&after) {
            assert_eq!(a.shape(), b.shape());
            assert_eq!(
                max_abs_diff(a, b),
                0.0,
                "a trace changed the model's arrays"
            );
        }
        let params = model.parameters().flatten();
        let frozen = params
            .keys()
            .find(|k| k.contains("backbone") && k.ends_with("down_proj.weight"))
            .expect("a frozen backbone weight")
            .clone();
        let trainable: Rc<str> = keys
            .iter()
            .find(|k| k.contains("lora_b"))
            .unwrap()
            .as_str()
            .into();
        let changed: HashMap<Rc<str>, Array> = [
            (
                frozen.clone(),
                params[&frozen].multiply(Array::from_f32(0.5)).unwrap(),
            ),
            (
                trainable.clone(),
                params[&trainable].add(Array::from_f32(0.01)).unwrap(),
            ),
        ]
        .into_iter()
        .collect();
        drop(params);
        model.update_flattened(changed);
        let out = step.run(&mut model, &batch, (1.0, 1.0)).unwrap();
        let losses: Vec<f32> = out.losses.iter().map(|l| l.item_cast::<f32>()).collect();
        let got = (losses, out.grads.into_iter().collect());
        let plain = StepOptions {
            compile: false,
            buckets: false,
        };
        let reference = run_step(&mut model, &batch, TrainKernels::PLAIN, plain);
        assert_same("compiled after changing two weights", &reference, &got);
        // The change mattered: the loss moved.
        let first = run_step(&mut tiny_model(), &batch, TrainKernels::PLAIN, plain);
        assert!((first.0[0] - reference.0[0]).abs() > 1e-4 * first.0[0].abs());
    }

    #[test]
    fn buckets_are_few_and_pad_little() {
        assert_eq!(bucket_len(1), 8);
        assert_eq!(bucket_len(121), 128);
        assert_eq!(bucket_len(129), 136);
        assert_eq!(bucket_len(151), 152);
        assert_eq!(bucket_len(257), 272);
        assert_eq!(bucket_len(271), 272);
        assert_eq!(bucket_len(1025), 1088);
        let mut sizes: Vec<usize> = (100..=2048).map(bucket_len).collect();
        for (n, b) in (100..=2048).zip(&sizes) {
            assert!(*b >= n && (*b - n) * 16 <= n.max(112), "{n} -> {b}");
        }
        sizes.dedup();
        // 100..2048: 4 multiples of 8 to 128, then 16 a doubling.
        assert_eq!(sizes.len(), 4 + 16 * 4);
    }

    #[test]
    fn compile_by_default_on_gpus_only() {
        assert!(compile_step(None, true, 0.0).0);
        assert!(!compile_step(None, false, 0.0).0);
        assert!(compile_step(Some(true), false, 0.0).0);
        assert!(!compile_step(Some(false), true, 0.0).0);
        assert!(!compile_step(None, true, 0.1).0);
        assert!(!compile_step(Some(true), true, 0.1).0);
    }
}
