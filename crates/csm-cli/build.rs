//! Lets this crate's tests and examples find MLX's shared library, names
//! the commit a binary was built from, and turns on the tests that need
//! resemblyzer's weights when they are there.
use std::process::Command;

fn main() {
    csm_rpath();
    git_commit();
    test_speaker_encoder();
}

/// `CSM_GIT_COMMIT`: the commit checked out when this crate was built
/// (`csm --version`, and every `csm bench-train` JSON), so a benchmark's
/// numbers name the code that made them; `unknown` outside a git checkout.
/// Reruns when `HEAD` moves (a commit, a checkout).
fn git_commit() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(&manifest)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let commit = git(&["rev-parse", "--short=10", "HEAD"]);
    if commit.is_some() {
        // HEAD itself, the branch it points to, and packed refs: whichever
        // a commit or checkout rewrites.
        let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
        watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
        for name in watched {
            if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]) {
                if std::path::Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
        }
    }
    println!(
        "cargo:rustc-env=CSM_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
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
