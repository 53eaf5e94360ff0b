//! Tauri codegen inputs, the command manifest for the ACL, the rpath to
//! MLX's shared library and, on macOS, the MLX files the bundle ships.

/// The app's own commands; `capabilities/main.json` grants each one to the
/// `main` window. Keep in sync with `generate_handler!` in `src/lib.rs`.
const COMMANDS: &[&str] = &[
    "app_info",
    "blas_status",
    "read_config_file",
    "write_config_file",
    "reveal_path",
    "scan_dataset",
    "dataset_usage",
    "dataset_speakers",
    "save_speakers",
    "scan_recordings",
    "whisper_models",
    "transcribe_recordings",
    "cancel_transcription",
    "save_transcript",
    "exclude_recording",
    "restore_recording",
    "list_excluded",
    "inspect_model",
    "demo_assets",
    "hub_status",
    "list_bundles",
    "download_bundle",
    "cancel_download",
    "list_cached_models",
    "delete_cached_model",
    "save_hub_token",
    "estimate_run",
    "start_training",
    "stop_training",
    "find_learning_rate",
    "cancel_lr_find",
    "generate_sample",
    "cancel_generation",
    "list_output_devices",
    "play_audio",
    "stop_audio",
    "audio_peaks",
    "list_runs",
    "run_metrics",
    "export_adapter",
    "voice_library",
    "rename_voice",
    "delete_voice",
    "export_voice",
    "start_voice",
    "cancel_voice",
];

fn main() {
    mlx_rpath();
    stage_macos_mlx();
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

/// macOS (UNVERIFIED: no Mac was available): tauri-build copies
/// `bundle.macOS.frameworks` (`mlx/libmlx.dylib`) into the target dir while it
/// builds, and the bundler ships `mlx/mlx.metallib` next to it in
/// `Contents/Frameworks` (`tauri.macos.conf.json`), where MLX looks first (it
/// loads the metallib colocated with libmlx). Both come from the mlx-metal wheel
/// that mlx-sys unpacked, which is ready before this script runs.
fn stage_macos_mlx() {
    // mlx-sys's bindings-only mode (scripts/check-macos.sh) has no wheel.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("macos")
        || std::env::var_os("DEP_MLX_BINDINGS_ONLY").is_some()
    {
        return;
    }
    let dir = std::env::var("DEP_MLX_LIB_DIR").expect("mlx-sys publishes DEP_MLX_LIB_DIR");
    let dest = std::path::Path::new("mlx");
    std::fs::create_dir_all(dest).expect("creating src-tauri/mlx");
    for file in ["libmlx.dylib", "mlx.metallib"] {
        let from = std::path::Path::new(&dir).join(file);
        println!("cargo:rerun-if-changed={}", from.display());
        if let Err(e) = std::fs::copy(&from, dest.join(file)) {
            panic!(
                "copying {} to src-tauri/mlx/{file}: {e}; the mlx-metal wheel unpacked by mlx-sys \
                 should hold it (delete its cache folder to unpack it again)",
                from.display()
            );
        }
    }
}
