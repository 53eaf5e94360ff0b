//! Lets this crate's tests and examples find MLX's shared library.
fn main() {
    csm_rpath();
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
