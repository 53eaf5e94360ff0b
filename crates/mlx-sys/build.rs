//! Builds mlx-c against a prebuilt MLX from PyPI and generates its bindings.
//!
//! Steps, one function each:
//! 1. [`check_prerequisites`]: cmake, pip, libclang 19 and (Linux) OpenBLAS,
//!    with a message naming the package to install when one is missing.
//! 2. [`locate_mlx_c_source`]: the mlx-c sources shipped inside the crates.io
//!    package `mlx-sys-0.7.0`, found through a nested `cargo metadata`.
//! 3. [`prepare_wheel`]: `pip download` of the pinned MLX wheel into a cache,
//!    unpacked twice: as shipped (reference BLAS) and with Debian's OpenBLAS
//!    in place of the bundled reference BLAS.
//! 4. [`build_mlx_c`]: CMake build of mlx-c as a static library, linked to the
//!    wheel's `libmlx` (with two force-included shims for GCC 12 and x86).
//! 5. [`generate_bindings`]: bindgen over the mlx-c headers.
//! 6. [`emit_link_directives`] and [`publish_metadata`]: link lines, and the
//!    `DEP_MLX_*` values dependents use to set their rpath.
//!
//! Everything fetched comes from ordinary clients (cargo, pip) and is cached,
//! so a rebuild works offline. Nothing is fetched at run time.
//!
//! [`bindings_only`] mode (a macOS target on a non-macOS host, or
//! `MLX_SYS_BINDINGS_ONLY=1`) runs steps 2 and 5 only, so `cargo check` and
//! clippy work for a target this host cannot build MLX for
//! (`scripts/check-macos.sh`); nothing is linked.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// MLX version of the wheels; it must match the MLX that mlx-c 0.7.0 pins.
const MLX_VERSION: &str = "0.32.2";
/// Version of the crates.io mlx-sys whose bundled mlx-c sources we build.
const UPSTREAM_MLX_SYS: &str = "0.7.0";
/// Debian's OpenBLAS (package `libopenblas0-pthread`), BLAS + CBLAS ABI.
const DEBIAN_OPENBLAS: &str = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3";

/// Which prebuilt MLX to build against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Platform {
    /// Linux x86_64: the `mlx-cpu` wheel. The CUDA wheel is ABI-compatible and
    /// is selected at run time through the library path (see README).
    LinuxCpu,
    /// macOS arm64: the `mlx-metal` wheel (`libmlx.dylib` + `mlx.metallib`).
    MacMetal,
}

impl Platform {
    fn detect() -> Platform {
        match env::var("CARGO_CFG_TARGET_OS").as_deref() {
            Ok("macos") => Platform::MacMetal,
            Ok("linux") => Platform::LinuxCpu,
            other => fail(&format!(
                "unsupported target OS {other:?}: mlx-sys builds for Linux (CPU/CUDA) and macOS (Metal)"
            )),
        }
    }

    fn wheel_name(self) -> &'static str {
        match self {
            Platform::LinuxCpu => "mlx-cpu",
            Platform::MacMetal => "mlx-metal",
        }
    }
}

/// The unpacked wheel directories this build uses.
struct Wheel {
    /// Unpacked root with the library the program links and runs with.
    root: PathBuf,
    /// Same wheel as shipped (reference BLAS), kept for BLAS comparisons.
    reference_root: PathBuf,
}

impl Wheel {
    fn lib_dir(&self) -> PathBuf {
        self.root.join("mlx/lib")
    }
    fn include_dir(&self) -> PathBuf {
        self.root.join("mlx/include")
    }
    fn cmake_dir(&self) -> PathBuf {
        self.root.join("mlx/share/cmake/MLX")
    }
}

fn main() {
    for var in [
        "CSM_MLX_CACHE",
        "XDG_CACHE_HOME",
        "LIBCLANG_PATH",
        "MLX_WHEEL_FILE",
        "MLX_SYS_BINDINGS_ONLY",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=shim");

    let platform = Platform::detect();
    if bindings_only() {
        let mlx_c = locate_mlx_c_source();
        generate_bindings(&mlx_c, &bindings_only_includes());
        publish_bindings_only_metadata();
        return;
    }
    check_prerequisites(platform);
    let mlx_c = locate_mlx_c_source();
    let wheel = prepare_wheel(platform);
    let mlx_c_lib = build_mlx_c(&mlx_c, &wheel);
    build_platform_shims(platform);
    emit_link_directives(platform, &mlx_c_lib, &wheel);
    generate_bindings(&mlx_c, &Includes::Host(Some(wheel.include_dir())));
    publish_metadata(&wheel, &mlx_c);
}

/// Whether to generate the bindings alone: no wheel, no CMake, no link lines.
/// Automatic for a macOS target on a non-macOS host (the macOS type-check
/// from Linux); `MLX_SYS_BINDINGS_ONLY=1` forces it for any target.
fn bindings_only() -> bool {
    if env::var("MLX_SYS_BINDINGS_ONLY").as_deref() == Ok("1") {
        return true;
    }
    let host = env::var("HOST").unwrap_or_default();
    env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") && !host.contains("-apple-")
}

/// Where the headers that mlx-c includes from outside itself come from.
enum Includes {
    /// This host's C library, and the wheel's MLX headers (the C++ side of
    /// the half-type shim) when there is a wheel.
    Host(Option<PathBuf>),
    /// The target's C library is not on this host (macOS from Linux): clang's
    /// own headers, and small stand-ins in this folder for the rest.
    Stubs(PathBuf),
}

/// For [`bindings_only`]: clang's own headers give `stdint.h`, `stdbool.h`,
/// `stddef.h`, `float.h` and `arm_fp16.h`. Of `stdio.h`, `stdlib.h` and
/// `complex.h` mlx-c's declarations use only `FILE` (opaque, as macOS names
/// it), so small stand-ins replace them and no glibc declaration leaks into
/// macOS bindings.
fn bindings_only_includes() -> Includes {
    let host = env::var("HOST").unwrap_or_default();
    let target = env::var("TARGET").unwrap_or_default();
    let same_os = ["-linux", "-apple-"]
        .iter()
        .any(|os| host.contains(os) && target.contains(os));
    if same_os {
        return Includes::Host(None);
    }
    let stubs = PathBuf::from(env::var("OUT_DIR").unwrap()).join("stub-libc");
    fs::create_dir_all(&stubs).unwrap();
    let stdio = "#pragma once\n#include <stddef.h>\ntypedef struct __sFILE FILE;\n";
    for (header, text) in [
        ("stdio.h", stdio),
        ("stdlib.h", "#pragma once\n#include <stddef.h>\n"),
        ("complex.h", "#pragma once\n"),
    ] {
        fs::write(stubs.join(header), text).unwrap();
    }
    Includes::Stubs(stubs)
}

/// Aborts the build with one clear message.
fn fail(message: &str) -> ! {
    eprintln!("\nerror: mlx-sys: {message}\n");
    panic!("mlx-sys: {message}");
}

fn command_works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Fails early, naming the package, when a build prerequisite is missing.
fn check_prerequisites(platform: Platform) {
    if !command_works("cmake", &["--version"]) {
        fail("cmake not found. Install it: `apt-get install cmake` (Debian) or `brew install cmake` (macOS).");
    }
    if !command_works(&python(), &["-m", "pip", "--version"]) {
        fail("pip not found (needed to fetch the MLX wheel). Install it: `apt-get install python3-pip`, or set PYTHON to a Python with pip.");
    }
    if platform == Platform::LinuxCpu {
        if libclang_dir().is_none() {
            fail("libclang 19 not found (bindgen needs it for _Float16 on x86). Install it: `apt-get install libclang-19-dev`, or set LIBCLANG_PATH to its lib directory.");
        }
        if !Path::new(DEBIAN_OPENBLAS).exists() {
            fail(&format!(
                "OpenBLAS not found at {DEBIAN_OPENBLAS}. Install it: `apt-get install libopenblas0-pthread`."
            ));
        }
    }
}

fn python() -> String {
    env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Directory holding libclang 19: `LIBCLANG_PATH` or Debian's llvm-19 path.
fn libclang_dir() -> Option<PathBuf> {
    let candidates = env::var_os("LIBCLANG_PATH")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/usr/lib/llvm-19/lib")]);
    for dir in candidates {
        let found = fs::read_dir(&dir).ok().is_some_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libclang"))
        });
        if found {
            return Some(dir);
        }
    }
    None
}

/// clang's own headers (`stdint.h`, `float.h`, `arm_fp16.h`...), in
/// `<libclang dir>/clang/<version>/include`. libclang finds them by itself
/// only beside a clang executable, which `libclang-19-dev` does not install.
fn clang_builtin_headers() -> PathBuf {
    let found = libclang_dir().and_then(|lib| {
        fs::read_dir(lib.join("clang"))
            .ok()?
            .flatten()
            .map(|e| e.path().join("include"))
            .find(|dir| dir.join("stdint.h").exists())
    });
    found.unwrap_or_else(|| {
        fail("clang's builtin headers (clang/<version>/include beside libclang) not found. Install `libclang-19-dev`, or set LIBCLANG_PATH to the lib directory of a full LLVM install.")
    })
}

/// Finds mlx-c's sources inside the crates.io `mlx-sys` package.
///
/// A throw-away manifest depending on `mlx-sys =0.7.0` is resolved with the
/// same cargo; cargo downloads (or reuses from its cache) the package and
/// `cargo metadata` reports where it lives. No third-party source is
/// committed to this repository.
fn locate_mlx_c_source() -> PathBuf {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let probe = out.join("mlx-c-locator");
    fs::create_dir_all(probe.join("src")).unwrap();
    fs::write(
        probe.join("Cargo.toml"),
        format!(
            "[package]\nname = \"mlx-c-locator\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
             [dependencies]\nmlx-sys = {{ version = \"={UPSTREAM_MLX_SYS}\", default-features = false }}\n\n\
             [workspace]\n"
        ),
    )
    .unwrap();
    fs::write(probe.join("src/lib.rs"), "").unwrap();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(probe.join("Cargo.toml"))
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap_or_else(|e| fail(&format!("could not run cargo metadata: {e}")));
    if !output.status.success() {
        fail(&format!(
            "cargo could not fetch mlx-sys {UPSTREAM_MLX_SYS} (the mlx-c sources): {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "mlx-sys" && p["version"] == UPSTREAM_MLX_SYS)
        .and_then(|p| p["manifest_path"].as_str())
        .unwrap_or_else(|| fail("cargo metadata did not list mlx-sys 0.7.0"));
    let root = Path::new(manifest).parent().unwrap().join("src/mlx-c");
    if !root.join("CMakeLists.txt").exists() {
        fail(&format!("mlx-c sources missing at {}", root.display()));
    }
    root
}

/// Cache directory for wheels and their unpacked trees.
fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("CSM_MLX_CACHE") {
        return PathBuf::from(dir);
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| fail("neither CSM_MLX_CACHE, XDG_CACHE_HOME nor HOME is set"));
    base.join("csm-mlx")
}

/// Downloads (once) and unpacks the pinned MLX wheel for `platform`.
fn prepare_wheel(platform: Platform) -> Wheel {
    let cache = cache_dir().join(format!("{}-{MLX_VERSION}", platform.wheel_name()));
    let wheel_file = download_wheel(platform, &cache.join("wheel"));
    let reference_root = cache.join("reference");
    unpack_once(&wheel_file, &reference_root);
    let root = match platform {
        Platform::LinuxCpu => {
            let root = cache.join("openblas");
            unpack_once(&wheel_file, &root);
            swap_in_openblas(&root);
            root
        }
        Platform::MacMetal => reference_root.clone(),
    };
    Wheel {
        root,
        reference_root,
    }
}

/// Returns the wheel file, running `pip download` only when it is not cached.
fn download_wheel(platform: Platform, dir: &Path) -> PathBuf {
    if let Some(file) = env::var_os("MLX_WHEEL_FILE") {
        return PathBuf::from(file);
    }
    let find = || {
        fs::read_dir(dir).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "whl"))
        })
    };
    if let Some(found) = find() {
        return found;
    }
    fs::create_dir_all(dir).unwrap();
    let spec = format!("{}=={MLX_VERSION}", platform.wheel_name());
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
        ])
        .arg(dir)
        .arg(&spec)
        .status()
        .unwrap_or_else(|e| fail(&format!("could not run pip: {e}")));
    if !status.success() {
        fail(&format!(
            "`pip download {spec}` failed; check network access to PyPI, or set MLX_WHEEL_FILE to a downloaded wheel"
        ));
    }
    find().unwrap_or_else(|| {
        fail(&format!(
            "pip reported success but no wheel is in {}",
            dir.display()
        ))
    })
}

/// Unpacks a wheel (a zip file) into `dest` unless already done.
fn unpack_once(wheel: &Path, dest: &Path) {
    let stamp = dest.join(".unpacked");
    if stamp.exists() {
        return;
    }
    let tmp = dest.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).unwrap();
    let status = Command::new(python())
        .args(["-m", "zipfile", "-e"])
        .arg(wheel)
        .arg(&tmp)
        .status()
        .unwrap_or_else(|e| fail(&format!("could not unpack {}: {e}", wheel.display())));
    if !status.success() {
        fail(&format!("could not unpack {}", wheel.display()));
    }
    let _ = fs::remove_dir_all(dest);
    fs::rename(&tmp, dest).unwrap();
    fs::write(&stamp, wheel.display().to_string()).unwrap();
}

/// Puts Debian's OpenBLAS where libmlx's RPATH finds the bundled reference
/// BLAS (measured 26x faster for f32 matmul on the 2-core CI machine).
fn swap_in_openblas(root: &Path) {
    let libs = root.join("mlx_cpu.libs");
    let entries = fs::read_dir(&libs)
        .unwrap_or_else(|e| fail(&format!("{} unreadable: {e}", libs.display())));
    let blas = entries
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libblas-"))
        })
        .unwrap_or_else(|| fail(&format!("no bundled libblas-*.so in {}", libs.display())));
    if fs::read_link(&blas).is_ok_and(|t| t == Path::new(DEBIAN_OPENBLAS)) {
        return;
    }
    fs::remove_file(&blas).unwrap();
    std::os::unix::fs::symlink(DEBIAN_OPENBLAS, &blas).unwrap();
}

/// Builds mlx-c (static) against the wheel's libmlx; returns the lib dir.
fn build_mlx_c(mlx_c: &Path, wheel: &Wheel) -> PathBuf {
    let shim = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("shim");
    let mut config = cmake::Config::new(mlx_c);
    config
        .profile("Release")
        .define("MLX_C_USE_SYSTEM_MLX", "ON")
        .define("MLX_C_BUILD_EXAMPLES", "OFF")
        .define("BUILD_SHARED_LIBS", "OFF")
        .define("MLX_DIR", wheel.cmake_dir())
        // The shims are force-included everywhere, CMake's compiler probes too,
        // so MLX's headers must be on the path from the start.
        .cxxflag(format!("-I{}", wheel.include_dir().display()))
        .cxxflag(format!(
            "-include {}",
            shim.join("format_polyfill.h").display()
        ))
        .cxxflag(format!("-include {}", shim.join("half_types.h").display()));
    let dst = config.build();
    dst.join("lib")
}

/// Compiles the small C shims a non-macOS target needs.
fn build_platform_shims(platform: Platform) {
    if platform == Platform::LinuxCpu {
        cc::Build::new()
            .file("shim/mach_time.c")
            .compile("mlxsys_mach_time");
    }
}

fn emit_link_directives(platform: Platform, mlx_c_lib: &Path, wheel: &Wheel) {
    println!("cargo:rustc-link-search=native={}", mlx_c_lib.display());
    println!("cargo:rustc-link-lib=static=mlxc");
    println!(
        "cargo:rustc-link-search=native={}",
        wheel.lib_dir().display()
    );
    println!("cargo:rustc-link-lib=dylib=mlx");
    match platform {
        Platform::LinuxCpu => println!("cargo:rustc-link-lib=dylib=stdc++"),
        Platform::MacMetal => {
            println!("cargo:rustc-link-lib=dylib=c++");
            for framework in ["Foundation", "Metal", "Accelerate"] {
                println!("cargo:rustc-link-lib=framework={framework}");
            }
        }
    }
}

/// Runs bindgen over `mlx/c/*.h`, with the x86 half-type shim for C.
fn generate_bindings(mlx_c: &Path, includes: &Includes) {
    if let Some(dir) = libclang_dir() {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("LIBCLANG_PATH", dir) };
    }
    let shim = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("shim");
    let mut headers: Vec<PathBuf> = fs::read_dir(mlx_c.join("mlx/c"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "h"))
        .collect();
    headers.sort();
    let mut builder = bindgen::Builder::default()
        .rust_target("1.73.0".parse().expect("rust target"))
        .clang_arg(format!("-I{}", mlx_c.display()));
    builder = match includes {
        Includes::Host(wheel) => {
            builder.clang_args(wheel.iter().map(|d| format!("-I{}", d.display())))
        }
        // bindgen would otherwise add the host clang's search paths back.
        Includes::Stubs(dir) => builder
            .detect_include_paths(false)
            .clang_arg("-nostdlibinc")
            .clang_arg(format!("-isystem{}", clang_builtin_headers().display()))
            .clang_arg(format!("-I{}", dir.display())),
    };
    builder = builder
        .clang_arg(format!("-include{}", shim.join("half_types.h").display()))
        .blocklist_function("malloc")
        .blocklist_function("realloc");
    for header in &headers {
        builder = builder.header(header.to_string_lossy());
    }
    let bindings = builder
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen failed on mlx-c headers: {e}")));
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    bindings.write_to_file(out.join("bindings.rs")).unwrap();
}

/// Exposes `DEP_MLX_LIB_DIR`, `DEP_MLX_REFERENCE_LIB_DIR` and
/// `DEP_MLX_VERSION` to crates that depend on this one directly; their build
/// scripts set the rpath of the binaries they produce. `DEP_MLX_INCLUDE`
/// (MLX's headers, mlx-c's sources for its private headers, and this crate's
/// shims, `:`-separated) and `DEP_MLX_FORCE_INCLUDE` (the x86 half-type shim)
/// let them compile C++ against MLX's primitives the way mlx-c was compiled.
fn publish_metadata(wheel: &Wheel, mlx_c: &Path) {
    let shim = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("shim");
    println!("cargo:lib_dir={}", wheel.lib_dir().display());
    println!(
        "cargo:reference_lib_dir={}",
        wheel.reference_root.join("mlx/lib").display()
    );
    println!("cargo:version={MLX_VERSION}");
    println!(
        "cargo:include={}:{}:{}",
        wheel.include_dir().display(),
        mlx_c.display(),
        shim.display()
    );
    println!(
        "cargo:force_include={}",
        shim.join("half_types.h").display()
    );
}

/// [`bindings_only`]'s metadata: `DEP_MLX_BINDINGS_ONLY` tells dependents
/// there is no MLX to compile against or ship, and `DEP_MLX_LIB_DIR` is an
/// empty folder so their rpath lines (unused: nothing links) stay as they are.
fn publish_bindings_only_metadata() {
    let empty = PathBuf::from(env::var("OUT_DIR").unwrap()).join("no-mlx-bindings-only");
    fs::create_dir_all(&empty).unwrap();
    println!("cargo:bindings_only=1");
    println!("cargo:lib_dir={}", empty.display());
    println!("cargo:version={MLX_VERSION}");
}
