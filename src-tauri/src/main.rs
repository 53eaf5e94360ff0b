//! CSM Studio desktop app entry point.

// Prevents an extra console window on Windows in release. DO NOT REMOVE!!
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    // Before Tauri starts its threads: MLX's CUDA cache settings.
    csm_core::runtime::set_process_defaults();
    csm_app_lib::run();
}
