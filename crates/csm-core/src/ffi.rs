//! Direct mlx-c calls for what mlx-rs 0.33 does not wrap (distributed
//! collectives, this crate's CPU primitives in `kernels`, the loss's custom
//! gradient): error capture and array-vector helpers.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};
use std::sync::Once;

use mlx_rs::Array;

// mlx-rs 0.33 registers this handler (process-wide, via mlx_set_error_handler)
// and keeps the message in a thread-local for its own wrappers. Its Rust path
// is private but the symbol is `#[no_mangle] extern "C"`, so we can chain to it.
extern "C" {
    fn default_mlx_error_handler(msg: *const c_char, data: *mut c_void);
}

thread_local! {
    /// `Some(..)` while this thread runs an mlx-c call through [`mlx_call`].
    static CAPTURE: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

extern "C" fn chained_error_handler(msg: *const c_char, data: *mut c_void) {
    let captured = CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        match c.as_mut() {
            Some(slot) => {
                // Keep the first message: an error inside a callback is the
                // cause, the wrapper's "closure returned non-zero" the effect.
                if slot.is_none() {
                    let text = if msg.is_null() {
                        String::from("(no message)")
                    } else {
                        // SAFETY: mlx-c passes a NUL-terminated string valid
                        // for the duration of the call.
                        unsafe { CStr::from_ptr(msg) }
                            .to_string_lossy()
                            .into_owned()
                    };
                    *slot = Some(text);
                }
                true
            }
            None => false,
        }
    });
    if !captured {
        // SAFETY: forwards the exact arguments mlx-c gave us to the handler
        // mlx-rs registered, as if it had been called directly.
        unsafe { default_mlx_error_handler(msg, data) };
    }
}

static HANDLER: Once = Once::new();

/// Installs [`chained_error_handler`] once, after mlx-rs has installed its
/// own (so mlx-rs never overwrites ours). Without a handler mlx-c's default
/// prints the error and calls `exit()`.
fn install_error_handler() {
    HANDLER.call_once(|| {
        // Any fallible mlx-rs operation makes mlx-rs register its handler
        // (a `Once` inside mlx-rs); cloning an array is one.
        drop(Array::from_int(0).clone());
        // SAFETY: the handler is a plain `extern "C"` function with no data
        // pointer and no destructor; it lives for the whole program.
        unsafe {
            mlx_sys::mlx_set_error_handler(Some(chained_error_handler), std::ptr::null_mut(), None)
        };
    });
}

/// Runs one mlx-c call on this thread and turns a non-zero status into
/// MLX's error message instead of letting it reach mlx-rs's stash.
pub(crate) fn mlx_call(f: impl FnOnce() -> i32) -> Result<(), String> {
    install_error_handler();
    // Nested calls (an mlx-c call made from a callback of another) share the
    // outer slot, so the innermost message survives.
    let outer = CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        let was_set = c.is_some();
        if !was_set {
            *c = Some(None);
        }
        was_set
    });
    let status = f();
    let message = if outer {
        CAPTURE.with(|c| c.borrow().clone().flatten())
    } else {
        CAPTURE.with(|c| c.borrow_mut().take().flatten())
    };
    if status == 0 {
        Ok(())
    } else {
        Err(message.unwrap_or_else(|| format!("mlx-c returned status {status}")))
    }
}

/// Fills an mlx-c result vector with `arrays` (the vector takes its own
/// references).
///
/// # Safety
/// `res` must point to a live `mlx_vector_array` handle.
pub(crate) unsafe fn set_vector_arrays(
    res: *mut mlx_sys::mlx_vector_array,
    arrays: &[Array],
) -> Result<(), String> {
    let raw: Vec<mlx_sys::mlx_array> = arrays.iter().map(Array::as_ptr).collect();
    // SAFETY: `res` is live (caller); `raw` holds live handles for the call,
    // which the vector copies.
    mlx_call(|| unsafe { mlx_sys::mlx_vector_array_set_data(res, raw.as_ptr(), raw.len()) })
}

/// The arrays of an mlx-c vector, as owned [`Array`]s.
///
/// # Safety
/// `vec` must be a live `mlx_vector_array` handle.
pub(crate) unsafe fn vector_arrays(vec: mlx_sys::mlx_vector_array) -> Result<Vec<Array>, String> {
    // SAFETY: the caller guarantees `vec` is live.
    let n = unsafe { mlx_sys::mlx_vector_array_size(vec) };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: a fresh handle for mlx-c to fill.
        let mut raw = unsafe { mlx_sys::mlx_array_new() };
        // SAFETY: `i < n` and `raw` is a valid out-parameter.
        if let Err(e) = mlx_call(|| unsafe { mlx_sys::mlx_vector_array_get(&mut raw, vec, i) }) {
            // SAFETY: frees the handle created above, never handed out.
            unsafe { mlx_sys::mlx_array_free(raw) };
            return Err(e);
        }
        // SAFETY: `raw` now holds its own reference; the Array frees it.
        out.push(unsafe { Array::from_ptr(raw) });
    }
    Ok(out)
}

/// The forward of a function with a custom gradient: inputs to outputs.
pub(crate) type ForwardFn = fn(&[Array]) -> Result<Vec<Array>, mlx_rs::error::Exception>;
/// Its vector-Jacobian product: `(primals, cotangents, outputs)` to one
/// cotangent per primal.
pub(crate) type VjpFn =
    fn(&[Array], &[Array], &[Array]) -> Result<Vec<Array>, mlx_rs::error::Exception>;

/// The pair of functions a custom-gradient closure calls (its payload).
struct CustomFns {
    name: &'static str,
    forward: ForwardFn,
    vjp: VjpFn,
}

/// Runs `body` for an mlx-c callback, turning errors and panics into a
/// non-zero status (a panic must not unwind into C++).
fn callback(name: &str, what: &str, body: impl FnOnce() -> Result<(), String>) -> i32 {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(message)) => {
            tracing::error!("{name} {what}: {message}");
            1
        }
        Err(_) => {
            tracing::error!("{name} {what}: panicked");
            1
        }
    }
}

unsafe extern "C" fn custom_forward(
    res: *mut mlx_sys::mlx_vector_array,
    inputs: mlx_sys::mlx_vector_array,
    payload: *mut c_void,
) -> i32 {
    // SAFETY: `payload` is the `CustomFns` boxed in `apply_custom_vjp`, alive
    // until mlx-c calls `drop_custom_fns`.
    let fns = unsafe { &*payload.cast::<CustomFns>() };
    callback(fns.name, "forward", || {
        // SAFETY: mlx-c passes a live vector for the duration of the call.
        let inputs = unsafe { vector_arrays(inputs) }?;
        let outs = (fns.forward)(&inputs).map_err(|e| e.what().to_string())?;
        // SAFETY: `res` is the live result vector mlx-c created for us.
        unsafe { set_vector_arrays(res, &outs) }
    })
}

unsafe extern "C" fn custom_vjp(
    res: *mut mlx_sys::mlx_vector_array,
    primals: mlx_sys::mlx_vector_array,
    cotangents: mlx_sys::mlx_vector_array,
    outputs: mlx_sys::mlx_vector_array,
    payload: *mut c_void,
) -> i32 {
    // SAFETY: as in `custom_forward`.
    let fns = unsafe { &*payload.cast::<CustomFns>() };
    callback(fns.name, "vjp", || {
        // SAFETY: mlx-c passes live vectors for the duration of the call.
        let (p, c, o) = unsafe {
            (
                vector_arrays(primals)?,
                vector_arrays(cotangents)?,
                vector_arrays(outputs)?,
            )
        };
        let grads = (fns.vjp)(&p, &c, &o).map_err(|e| e.what().to_string())?;
        // SAFETY: `res` is the live result vector mlx-c created for us.
        unsafe { set_vector_arrays(res, &grads) }
    })
}

/// Frees a closure's `CustomFns` when mlx-c drops its last copy.
unsafe extern "C" fn drop_custom_fns(payload: *mut c_void) {
    // SAFETY: `payload` came from `Box::into_raw` in `apply_custom_vjp`, and
    // mlx-c calls this once per payload.
    drop(unsafe { Box::from_raw(payload.cast::<CustomFns>()) });
}

/// Owns mlx-c closure handles and frees them on drop (the graph keeps its
/// own references).
struct Closures {
    fun: mlx_sys::mlx_closure,
    vjp: mlx_sys::mlx_closure_custom,
    custom: mlx_sys::mlx_closure,
}

impl Drop for Closures {
    fn drop(&mut self) {
        // SAFETY: each handle was created by mlx-c in `apply_custom_vjp` and
        // is freed once.
        unsafe {
            mlx_sys::mlx_closure_free(self.custom);
            mlx_sys::mlx_closure_custom_free(self.vjp);
            mlx_sys::mlx_closure_free(self.fun);
        }
    }
}

/// Applies `forward` to `inputs` through MLX's `custom_vjp`, with `vjp` as
/// its gradient: the graph keeps what `vjp` reads (the primals and the
/// outputs), not `forward`'s intermediates. `name` labels errors.
pub(crate) fn apply_custom_vjp(
    name: &'static str,
    inputs: &[Array],
    forward: ForwardFn,
    vjp: VjpFn,
) -> Result<Vec<Array>, mlx_rs::error::Exception> {
    let fail = |what: &str, message: String| {
        mlx_rs::error::Exception::custom(format!("{name} {what}: {message}"))
    };
    let fns = || Box::into_raw(Box::new(CustomFns { name, forward, vjp })).cast::<c_void>();
    // SAFETY: the callbacks match the payload's type; each closure owns its
    // payload and frees it through `drop_custom_fns`.
    let mut closures = unsafe {
        Closures {
            fun: mlx_sys::mlx_closure_new_func_payload(
                Some(custom_forward),
                fns(),
                Some(drop_custom_fns),
            ),
            vjp: mlx_sys::mlx_closure_custom_new_func_payload(
                Some(custom_vjp),
                fns(),
                Some(drop_custom_fns),
            ),
            custom: mlx_sys::mlx_closure_new(),
        }
    };
    // SAFETY: all three handles are live; `custom` is the out-parameter.
    mlx_call(|| unsafe {
        mlx_sys::mlx_custom_vjp(&mut closures.custom, closures.fun, closures.vjp)
    })
    .map_err(|m| fail("custom_vjp", m))?;
    let handles: Vec<mlx_sys::mlx_array> = inputs.iter().map(Array::as_ptr).collect();
    // SAFETY: `handles` are live; the vector takes its own references.
    let input_vec = unsafe { mlx_sys::mlx_vector_array_new_data(handles.as_ptr(), handles.len()) };
    // SAFETY: a fresh empty vector for the result.
    let mut out_vec = unsafe { mlx_sys::mlx_vector_array_new() };
    // SAFETY: live closure and vectors; `out_vec` is the out-parameter.
    let applied = mlx_call(|| unsafe {
        mlx_sys::mlx_closure_apply(&mut out_vec, closures.custom, input_vec)
    });
    // SAFETY: `out_vec` is live until freed below.
    let outputs = applied.and_then(|()| unsafe { vector_arrays(out_vec) });
    // SAFETY: both vectors were created above and are freed once.
    unsafe {
        mlx_sys::mlx_vector_array_free(input_vec);
        mlx_sys::mlx_vector_array_free(out_vec);
    }
    outputs.map_err(|m| fail("apply", m))
}

/// [`apply_custom_vjp`] for a function whose result is its first output;
/// any others are kept for `vjp` only (a log-sum-exp, `x A`).
pub(crate) fn apply_custom_vjp_first(
    name: &'static str,
    inputs: &[Array],
    forward: ForwardFn,
    vjp: VjpFn,
) -> Result<Array, mlx_rs::error::Exception> {
    apply_custom_vjp(name, inputs, forward, vjp)?
        .into_iter()
        .next()
        .ok_or_else(|| mlx_rs::error::Exception::custom(format!("{name} returned nothing")))
}

/// `inputs` again, as new arrays (sharing their buffers) that MLX will
/// compute only after `dependencies` (MLX's `depends`).
///
/// A custom gradient that recomputes an intermediate from its primals
/// must read them through this: `mx.compile` merges an op with an
/// identical one on the same inputs, so the backward's `sigmoid(gate)`
/// would become the forward's, kept alive from the forward to the backward
/// (the very array the recomputation was meant to free). New arrays that
/// also wait for the cotangent are not the forward's inputs: nothing is
/// merged, and the recomputation runs in the backward. MLX's own
/// `checkpoint` guards its recomputation the same way.
pub(crate) fn depends(
    inputs: &[Array],
    dependencies: &[Array],
) -> Result<Vec<Array>, mlx_rs::error::Exception> {
    let handles = |arrays: &[Array]| {
        let raw: Vec<mlx_sys::mlx_array> = arrays.iter().map(Array::as_ptr).collect();
        // SAFETY: `raw` holds live handles; the vector takes its own
        // references.
        unsafe { mlx_sys::mlx_vector_array_new_data(raw.as_ptr(), raw.len()) }
    };
    let (ins, deps) = (handles(inputs), handles(dependencies));
    // SAFETY: a fresh empty vector for the result.
    let mut out = unsafe { mlx_sys::mlx_vector_array_new() };
    // SAFETY: live vectors; `out` is the out-parameter.
    let status = mlx_call(|| unsafe { mlx_sys::mlx_depends(&mut out, ins, deps) });
    // SAFETY: `out` is live until freed below.
    let arrays = status.and_then(|()| unsafe { vector_arrays(out) });
    // SAFETY: the three vectors were created above and are freed once.
    unsafe {
        mlx_sys::mlx_vector_array_free(ins);
        mlx_sys::mlx_vector_array_free(deps);
        mlx_sys::mlx_vector_array_free(out);
    }
    arrays.map_err(|m| mlx_rs::error::Exception::custom(format!("depends: {m}")))
}
