//! Test helpers shared by csm-core's integration tests, its unit tests
//! (`crate::test_util`) and csm-cli's tests, which include this file by
//! path.
#![allow(dead_code)] // each test binary uses a subset

use std::path::Path;

use mlx_rs::{Array, Dtype};

/// `max |a - b|`, compared in f32; panics when the shapes differ.
pub fn max_abs_diff(a: &Array, b: &Array) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shape mismatch");
    let f32 = |x: &Array| x.as_dtype(Dtype::Float32).unwrap();
    max_abs(&f32(a).subtract(f32(b)).unwrap())
}

/// `max |a|`, in f32.
pub fn max_abs(a: &Array) -> f32 {
    a.as_dtype(Dtype::Float32)
        .unwrap()
        .abs()
        .unwrap()
        .max(None)
        .unwrap()
        .item_cast::<f32>()
}

/// Asserts `want` and `got` have one dtype and shape and differ by at most
/// `tol` times `max |want|` (`what` names them in the failure).
pub fn assert_close(what: &str, want: &Array, got: &Array, tol: f32) {
    assert_eq!(want.dtype(), got.dtype(), "{what}: dtype");
    assert_eq!(want.shape(), got.shape(), "{what}: shape");
    let d = max_abs_diff(want, got);
    let scale = max_abs(want).max(1e-6);
    assert!(d <= tol * scale, "{what}: max diff {d} (scale {scale})");
}

/// Deletes `root` when this test process exits: the demo is ~400 MB and
/// nextest runs every test in its own process, so the folders would pile up.
pub fn remove_at_exit(root: &Path) {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    extern "C" fn cleanup() {
        if let Some(p) = ROOT.get() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    if ROOT.set(root.to_path_buf()).is_ok() {
        // SAFETY: registers a function without arguments or captured state.
        unsafe { libc::atexit(cleanup) };
    }
}
