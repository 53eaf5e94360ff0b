//! Lets this crate's tests and examples find MLX's shared library, and
//! turns on the tests that need resemblyzer's weights when they are there.
fn main() {
    csm_rpath();
    test_speaker_encoder();
}

/// resemblyzer's `pretrained.pt` at `target/test-data/` (fetched by
/// `scripts/fetch-test-speaker-encoder.sh`) turns on the tests that need
/// the real weights, as in csm-core's build script. Only a file that
/// exists is watched (`touch crates/csm-cli/build.rs` after a fetch).
fn test_speaker_encoder() {
    println!("cargo::rustc-check-cfg=cfg(csm_test_speaker_encoder)");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let path =
        std::path::Path::new(&manifest).join("../../target/test-data/resemblyzer-pretrained.pt");
    if path.is_file() {
        println!("cargo:rerun-if-changed={}", path.display());
        println!("cargo:rustc-cfg=csm_test_speaker_encoder");
    }
}

/// rpath to the wheel's libmlx (published by mlx-sys as `DEP_MLX_LIB_DIR`).
/// `--enable-new-dtags` makes it a RUNPATH, so `LD_LIBRARY_PATH` can point
/// the same binary at another libmlx (the CUDA wheel) at run time.
fn csm_rpath() {
    let dir = std::env::var("DEP_MLX_LIB_DIR").expect("mlx-sys publishes DEP_MLX_LIB_DIR");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    println!("cargo:rustc-env=CSM_MLX_LIB_DIR={dir}");
    if let Ok(reference) = std::env::var("DEP_MLX_REFERENCE_LIB_DIR") {
        println!("cargo:rustc-env=CSM_MLX_REFERENCE_LIB_DIR={reference}");
    }
    if let Ok(version) = std::env::var("DEP_MLX_VERSION") {
        println!("cargo:rustc-env=CSM_MLX_WHEEL_VERSION={version}");
    }
}
