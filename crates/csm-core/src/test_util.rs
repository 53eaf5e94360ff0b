//! Helpers shared by the unit tests.

use mlx_rs::{Array, Dtype};

/// `max |a - b|`, compared in f32.
pub(crate) fn max_abs_diff(a: &Array, b: &Array) -> f32 {
    let f32 = |x: &Array| x.as_dtype(Dtype::Float32).unwrap();
    f32(a)
        .subtract(f32(b))
        .unwrap()
        .abs()
        .unwrap()
        .max(None)
        .unwrap()
        .item_cast::<f32>()
}

/// `max |a|`, in f32.
pub(crate) fn max_abs(a: &Array) -> f32 {
    a.as_dtype(Dtype::Float32)
        .unwrap()
        .abs()
        .unwrap()
        .max(None)
        .unwrap()
        .item_cast::<f32>()
}
