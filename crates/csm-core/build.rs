//! Lets this crate's tests and examples find MLX's shared library, and
//! compiles the CPU primitives in `cpp/` outside macOS.
fn main() {
    csm_rpath();
    test_tokenizer();
    test_speaker_encoder();
    cpu_primitives();
}

/// `cpp/swiglu.cpp`, `cpp/small_matmul.cpp`, `cpp/elu.cpp` and `cpp/gemm.cpp` (see
/// `kernels`), compiled against MLX's and
/// mlx-c's headers as mlx-sys compiled mlx-c. macOS keeps MLX's own ops: its
/// CPU build vectorizes them, and Metal is the device there anyway.
fn cpu_primitives() {
    println!("cargo:rerun-if-changed=cpp");
    // mlx-sys's bindings-only mode (scripts/check-macos.sh) has no MLX
    // headers to compile against, and a type-check needs no objects.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos")
        || std::env::var_os("DEP_MLX_BINDINGS_ONLY").is_some()
    {
        return;
    }
    let include = std::env::var("DEP_MLX_INCLUDE").expect("mlx-sys publishes DEP_MLX_INCLUDE");
    let force =
        std::env::var("DEP_MLX_FORCE_INCLUDE").expect("mlx-sys publishes DEP_MLX_FORCE_INCLUDE");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .opt_level(3)
        .file("cpp/swiglu.cpp")
        .file("cpp/small_matmul.cpp")
        .file("cpp/elu.cpp")
        .file("cpp/gemm.cpp")
        .flag("-include")
        .flag(&force)
        // Comparisons may not raise FP exceptions, so GCC can turn the
        // selects in the kernels into vector blends.
        .flag("-fno-trapping-math")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-unused-variable");
    for dir in include.split(':') {
        build.include(dir);
    }
    build.compile("csm_cpu_primitives");
}

/// `CSM_TEST_TOKENIZER` (a Llama-3.2 `tokenizer.json`, relative paths taken
/// from the workspace root) turns on the tokenizer tests that need it; see
/// `scripts/fetch-test-tokenizer.sh`.
fn test_tokenizer() {
    println!("cargo::rustc-check-cfg=cfg(csm_test_tokenizer)");
    println!("cargo:rerun-if-env-changed=CSM_TEST_TOKENIZER");
    let Some(path) = std::env::var_os("CSM_TEST_TOKENIZER") else {
        return;
    };
    let mut path = std::path::PathBuf::from(path);
    if path.is_relative() {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
        path = std::path::Path::new(&manifest).join("../..").join(path);
    }
    println!("cargo:rerun-if-changed={}", path.display());
    println!("cargo:rustc-cfg=csm_test_tokenizer");
    println!("cargo:rustc-env=CSM_TEST_TOKENIZER_PATH={}", path.display());
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

/// resemblyzer's `pretrained.pt` at `target/test-data/` (fetched by
/// `scripts/fetch-test-speaker-encoder.sh`, which `scripts/test.sh` runs
/// first) turns on the speaker tests that need the real weights. Only a file
/// that exists is watched, so a later fetch is seen at the next rebuild of
/// this crate (`touch crates/csm-core/build.rs` forces one).
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
