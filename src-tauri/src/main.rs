//! CSM Studio desktop app entry point.

// Prevents an extra console window on Windows in release. DO NOT REMOVE!!
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    // Before anything else: OpenBLAS picks its kernels when it loads, so a
    // CPU it does not know gets generic ones unless we start again with
    // OPENBLAS_CORETYPE set (the app's system info reports the outcome).
    let _ = csm_core::runtime::blas::reexec_with_better_kernels(|k| std::env::var_os(k));
    // Before Tauri starts its threads: MLX's CUDA cache settings.
    csm_core::runtime::set_process_defaults(|k| std::env::var_os(k));
    csm_app_lib::run();
}
