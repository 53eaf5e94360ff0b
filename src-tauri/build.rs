//! Tauri codegen inputs, the command manifest for the ACL, and the rpath to
//! MLX's shared library.

/// The app's own commands; `capabilities/main.json` grants each one to the
/// `main` window. Keep in sync with `generate_handler!` in `src/lib.rs`.
const COMMANDS: &[&str] = &[
    "app_info",
    "read_config_file",
    "write_config_file",
    "reveal_path",
    "scan_dataset",
    "inspect_model",
    "demo_assets",
    "estimate_run",
    "start_training",
    "stop_training",
    "generate_sample",
    "cancel_generation",
    "list_output_devices",
    "play_audio",
    "stop_audio",
    "audio_peaks",
    "list_runs",
    "run_metrics",
    "export_adapter",
];

fn main() {
    mlx_rpath();
    // tauri.conf.json is read through the src-tauri/tauri.conf.json symlink to
    // the repository root's file, so tauri-build, generate_context! and the
    // Tauri CLI all resolve its relative paths from this directory.
    let attributes = tauri_build::Attributes::new()
        .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS));
    tauri_build::try_build(attributes).expect("tauri-build failed");
}

/// Where the binary finds libmlx at run time. Bundles first: the `.deb` and
/// AppImage ship it in `usr/lib/csm-studio/` beside `usr/bin/csm-app`
/// (`tauri.linux.conf.json`, `scripts/stage-mlx-libs.sh`). Then, as
/// csm-core's build script does, the wheel that mlx-sys unpacked
/// (`DEP_MLX_LIB_DIR`), for `cargo run`, `tauri dev` and the tests.
fn mlx_rpath() {
    let dir = std::env::var("DEP_MLX_LIB_DIR").expect("mlx-sys publishes DEP_MLX_LIB_DIR");
    // macOS: tauri-build itself adds `@executable_path/../Frameworks` when
    // `bundle.macOS.frameworks` is set (and copies them there at build time).
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/csm-studio");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    let version = std::env::var("DEP_MLX_VERSION").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=CSM_MLX_VERSION={version}");
}
