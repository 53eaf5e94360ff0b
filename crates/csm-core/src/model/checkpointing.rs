//! Gradient checkpointing: a transformer block whose activations are not
//! kept for the backward pass but recomputed there (`mx.checkpoint`, which
//! mlx-rs 0.33 does not wrap; called through mlx-c here).
//!
//! MLX's checkpoint turns a function of arrays into one whose vector-Jacobian
//! product runs the function again. Gradients flow only to the function's
//! inputs, so the block's trainable parameters are passed in as inputs (as
//! mlx's `nn.utils.checkpoint` does) and set on a copy of the block inside;
//! frozen weights stay captured constants. Loss and gradients are those of
//! the plain forward; peak memory falls by the activations of every block
//! but the one being recomputed, for the price of one more forward pass.

use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use mlx_rs::error::Exception;
use mlx_rs::module::{Module, ModuleParameters};
use mlx_rs::Array;

use super::llama::{AttentionInput, AttentionMask, Block};
use crate::ffi::mlx_call;

/// The Rust side of a closure handed to mlx-c.
type Body = Box<dyn FnMut(&[Array]) -> Result<Vec<Array>, Exception>>;

/// Owns a vector of array handles from mlx-c.
struct VectorArray(mlx_sys::mlx_vector_array);

impl VectorArray {
    fn from_arrays(arrays: &[Array]) -> Self {
        let handles: Vec<mlx_sys::mlx_array> = arrays.iter().map(Array::as_ptr).collect();
        // SAFETY: `handles` are live array handles; mlx-c copies (and
        // reference-counts) them into the new vector.
        VectorArray(unsafe { mlx_sys::mlx_vector_array_new_data(handles.as_ptr(), handles.len()) })
    }

    /// The arrays of a vector owned by mlx-c (new references).
    ///
    /// # Safety
    /// `vec` must be a live vector handle.
    unsafe fn read(vec: mlx_sys::mlx_vector_array) -> Result<Vec<Array>, String> {
        // SAFETY: the caller guarantees `vec` is live.
        let n = unsafe { mlx_sys::mlx_vector_array_size(vec) };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: a fresh handle for mlx-c to fill with element `i`.
            let mut a = unsafe { mlx_sys::mlx_array_new() };
            // SAFETY: `vec` is live and `i` is in range.
            if unsafe { mlx_sys::mlx_vector_array_get(&mut a, vec, i) } != 0 {
                // SAFETY: frees the handle made above, never handed out.
                unsafe { mlx_sys::mlx_array_free(a) };
                return Err(format!("cannot read array {i} of {n}"));
            }
            // SAFETY: `a` holds its own reference now, owned by the Array.
            out.push(unsafe { Array::from_ptr(a) });
        }
        Ok(out)
    }
}

impl Drop for VectorArray {
    fn drop(&mut self) {
        // SAFETY: the handle is owned by this value and freed once.
        unsafe { mlx_sys::mlx_vector_array_free(self.0) };
    }
}

/// Owns a closure handle from mlx-c.
struct Closure(mlx_sys::mlx_closure);

impl Drop for Closure {
    fn drop(&mut self) {
        // SAFETY: the handle is owned by this value and freed once; mlx-c's
        // copies inside the graph keep the payload alive on their own.
        unsafe { mlx_sys::mlx_closure_free(self.0) };
    }
}

/// Calls the boxed [`Body`] behind `payload` for mlx-c.
unsafe extern "C" fn trampoline(
    res: *mut mlx_sys::mlx_vector_array,
    input: mlx_sys::mlx_vector_array,
    payload: *mut c_void,
) -> c_int {
    let run = || -> Result<Vec<Array>, String> {
        // SAFETY: mlx-c passes a live input vector for the call's duration.
        let inputs = unsafe { VectorArray::read(input) }?;
        // SAFETY: `payload` is the `Box<Body>` leaked in `checkpointed`, alive
        // until mlx-c calls `drop_body`; mlx-c calls a closure from one
        // thread at a time.
        let body = unsafe { &mut *payload.cast::<Body>() };
        body(&inputs).map_err(|e| e.what().to_string())
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(outputs)) => {
            let handles: Vec<mlx_sys::mlx_array> = outputs.iter().map(Array::as_ptr).collect();
            // SAFETY: `res` is mlx-c's out-parameter; the handles are live and
            // copied into it.
            unsafe {
                mlx_sys::mlx_vector_array_set_data(res, handles.as_ptr(), handles.len());
            }
            0
        }
        Ok(Err(message)) => {
            tracing::error!("checkpointed block failed: {message}");
            1
        }
        Err(_) => {
            tracing::error!("checkpointed block panicked");
            1
        }
    }
}

/// Frees the payload of a closure when mlx-c drops its last copy.
unsafe extern "C" fn drop_body(payload: *mut c_void) {
    // SAFETY: `payload` came from `Box::into_raw` in `checkpointed` and mlx-c
    // calls this once.
    drop(unsafe { Box::from_raw(payload.cast::<Body>()) });
}

/// Applies `body` to `inputs` under `mx.checkpoint`: the same outputs, with
/// a backward pass that recomputes `body` instead of keeping its
/// intermediate arrays. Only `inputs` receive gradients.
///
/// # Errors
/// Whatever `body` or MLX reports.
pub fn checkpointed(body: Body, inputs: &[Array]) -> Result<Vec<Array>, Exception> {
    let payload = Box::into_raw(Box::new(body)).cast::<c_void>();
    // SAFETY: the trampoline and destructor match the payload's type; mlx-c
    // owns the payload from here on.
    let plain = Closure(unsafe {
        mlx_sys::mlx_closure_new_func_payload(Some(trampoline), payload, Some(drop_body))
    });
    // SAFETY: a fresh closure handle for mlx-c to fill.
    let mut wrapped = Closure(unsafe { mlx_sys::mlx_closure_new() });
    // SAFETY: `plain` is live; `wrapped.0` is a valid out-parameter.
    mlx_call(|| unsafe { mlx_sys::mlx_checkpoint(&mut wrapped.0, plain.0) })
        .map_err(Exception::custom)?;
    let args = VectorArray::from_arrays(inputs);
    // SAFETY: a fresh vector handle for mlx-c to fill.
    let mut out = VectorArray(unsafe { mlx_sys::mlx_vector_array_new() });
    // SAFETY: `wrapped` and `args` are live; `out.0` is a valid out-parameter.
    mlx_call(|| unsafe { mlx_sys::mlx_closure_apply(&mut out.0, wrapped.0, args.0) })
        .map_err(Exception::custom)?;
    // SAFETY: `out` was filled by the call above.
    unsafe { VectorArray::read(out.0) }.map_err(Exception::custom)
}

/// One block's forward under [`checkpointed`]: its trainable parameters
/// (whatever is unfrozen: adapters, or the weights of a full fine-tune)
/// are inputs, so they get their gradients; no cache.
///
/// # Shapes
/// `x: [B, L, D]` -> `[B, L, D]`
pub(super) fn block_forward(
    block: &Block,
    x: &Array,
    mask: AttentionMask<'_>,
) -> Result<Array, Exception> {
    let trainable = block.trainable_parameters().flatten();
    let names: Vec<Rc<str>> = trainable.keys().cloned().collect();
    let mut inputs = vec![x.clone()];
    inputs.extend(names.iter().map(|k| trainable[k].clone()));
    // The mask is captured: an explicit mask carries no gradient.
    let mask = match mask {
        AttentionMask::None => OwnedMask::None,
        AttentionMask::Causal => OwnedMask::Causal,
        AttentionMask::Array(m) => OwnedMask::Array(m.clone()),
        AttentionMask::Packed { mask, positions } => {
            OwnedMask::Packed(mask.clone(), positions.clone())
        }
    };
    let mut copy = block.clone();
    let body: Body = Box::new(move |args: &[Array]| {
        copy.update_flattened(
            names
                .iter()
                .cloned()
                .zip(args[1..].iter().cloned())
                .collect(),
        );
        let mask = match &mask {
            OwnedMask::None => AttentionMask::None,
            OwnedMask::Causal => AttentionMask::Causal,
            OwnedMask::Array(m) => AttentionMask::Array(m),
            OwnedMask::Packed(mask, positions) => AttentionMask::Packed { mask, positions },
        };
        Ok(vec![copy.forward(AttentionInput {
            x: &args[0],
            mask,
            cache: None,
        })?])
    });
    let mut out = checkpointed(body, &inputs)?;
    out.pop()
        .ok_or_else(|| Exception::custom("the checkpointed block returned nothing"))
}

/// [`AttentionMask`] that owns its array, for a closure that outlives the
/// caller's borrow.
enum OwnedMask {
    None,
    Causal,
    Array(Array),
    Packed(Array, Array),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mlx_rs::module::{Param, Parameter};
    use mlx_rs::{nn, random};

    use super::super::csm::{tiny_config, Csm};
    use super::super::loss::{LossBatch, LossWeights};
    use super::*;
    use crate::test_util::{max_abs, max_abs_diff};

    /// Loss and gradients of the tiny model on a fixed batch.
    fn loss_and_grads(model: &mut Csm, checkpoint: bool) -> (f32, BTreeMap<String, Array>) {
        model.backbone.grad_checkpoint = checkpoint;
        model.decoder.grad_checkpoint = checkpoint;
        random::seed(9).unwrap();
        let tokens = random::randint::<_, i32>(0, 11, &[2, 6, 5], None).unwrap();
        let mask = mlx_rs::ops::ones::<bool>(&[2, 6, 5]).unwrap();
        let loss_mask = mlx_rs::ops::ones::<bool>(&[2, 6]).unwrap();
        let f = |m: &mut Csm, (t, k, l): (&Array, &Array, &Array)| -> Result<Array, Exception> {
            let batch = LossBatch {
                tokens: t,
                mask: k,
                loss_mask: l,
                decoder_frames: &[1, 3, 5, 8, 11],
                attention: AttentionMask::Causal,
            };
            Ok(m.loss(&batch, LossWeights::default())?.total)
        };
        let (loss, grads) = nn::value_and_grad(f)(model, (&tokens, &mask, &loss_mask)).unwrap();
        let grads = grads.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        (loss.item_cast::<f32>(), grads)
    }

    fn assert_same(a: &(f32, BTreeMap<String, Array>), b: &(f32, BTreeMap<String, Array>)) {
        assert!(
            (a.0 - b.0).abs() <= 1e-6 * a.0.abs(),
            "loss {} vs {}",
            a.0,
            b.0
        );
        assert_eq!(
            a.1.keys().collect::<Vec<_>>(),
            b.1.keys().collect::<Vec<_>>()
        );
        for (k, g) in &a.1 {
            let d = max_abs_diff(g, &b.1[k]);
            let scale = max_abs(g);
            assert!(scale > 0.0, "{k}: no gradient");
            assert!(d <= 1e-5 * scale, "{k}: max diff {d} (scale {scale})");
        }
    }

    /// Full fine-tuning: every parameter trainable.
    #[test]
    fn checkpointed_blocks_give_the_same_loss_and_gradients_full() {
        random::seed(4).unwrap();
        let mut model = Csm::new(&tiny_config()).unwrap();
        let plain = loss_and_grads(&mut model, false);
        let checkpointed = loss_and_grads(&mut model, true);
        assert_eq!(plain.1.len(), model.parameters().flatten().len());
        assert_same(&plain, &checkpointed);
    }

    /// LoRA: frozen weights, adapters (with a non-zero B) on q and v.
    #[test]
    fn checkpointed_blocks_give_the_same_loss_and_gradients_lora() {
        random::seed(5).unwrap();
        let mut model = Csm::new(&tiny_config()).unwrap();
        model.freeze_parameters(true);
        for llama in [&mut model.backbone, &mut model.decoder] {
            for layer in &mut llama.layers {
                for p in [&mut layer.self_attn.q_proj, &mut layer.self_attn.v_proj] {
                    p.attach_lora(2, 4.0, 0.0, false).unwrap();
                    let (out, _) = p.dims();
                    let b = random::normal::<f32>(&[2, out], None, None, None).unwrap();
                    p.lora_b = Param::new(Some(b));
                    p.lora_b.unfreeze(false);
                }
            }
        }
        let plain = loss_and_grads(&mut model, false);
        let checkpointed = loss_and_grads(&mut model, true);
        assert_eq!(plain.1.len(), 2 * 2 * 2 * 2);
        assert_same(&plain, &checkpointed);
    }
}
