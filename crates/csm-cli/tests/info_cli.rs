//! `csm info` on this machine: the report's lines, and that `csm`'s
//! start-up (`runtime::set_process_defaults`) makes glibc serve big blocks
//! from the heap on every thread (the probe reports `mmap` without it; see
//! the csm-core unit test).

use std::process::Command;

#[test]
fn info_reports_backend_blas_and_heap_served_big_blocks() {
    let out = Command::new(env!("CARGO_BIN_EXE_csm"))
        .args(["info", "--seconds", "0.1", "--size", "256", "--no-compare"])
        .env_remove("GLIBC_TUNABLES")
        .output()
        .expect("runs the csm binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for label in ["MLX version", "backend", "BLAS", "matmul f32"] {
        assert!(stdout.contains(label), "no {label:?} in\n{stdout}");
    }
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert!(
            stdout.contains(
                "malloc          64 MB blocks from the heap (this thread), the heap (a new thread)"
            ),
            "{stdout}"
        );
    }
}

#[test]
fn malloc_tunables_of_the_user_win() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_csm"))
        .args(["info", "--seconds", "0.1", "--size", "256", "--no-compare"])
        .env("GLIBC_TUNABLES", "glibc.malloc.mmap_max=65536")
        .output()
        .expect("runs the csm binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "malloc          64 MB blocks from the mmap (this thread), the mmap (a new thread)"
        ),
        "{stdout}"
    );
}

/// The CPU's flags as the kernel lists them (Linux), an independent reading
/// of what `std::arch` detects.
fn cpu_flags() -> Vec<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().skip(2).map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
fn generic_blas_kernels_on_a_better_cpu_are_named_with_the_fix() {
    let flags = cpu_flags();
    let has = |f: &str| flags.iter().any(|x| x == f);
    let avx512 = ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"]
        .iter()
        .all(|f| has(f));
    let want = if avx512 && has("avx512_bf16") {
        "Cooperlake"
    } else if avx512 {
        "SkylakeX"
    } else if has("avx2") && has("fma") {
        "Haswell"
    } else {
        eprintln!("this CPU has nothing better than OpenBLAS's generic kernels");
        return;
    };
    // The user's own OPENBLAS_CORETYPE is kept (no restart), and `csm info`
    // names the faster set this CPU supports.
    let out = Command::new(env!("CARGO_BIN_EXE_csm"))
        .args(["info", "--seconds", "0.1", "--size", "256", "--no-compare"])
        .env("OPENBLAS_CORETYPE", "Prescott")
        .env("NO_COLOR", "1")
        .output()
        .expect("runs the csm binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("BLAS kernels    Prescott"), "{stdout}");
    assert!(
        stderr.contains(&format!("supports the faster {want} set")),
        "{stderr}"
    );
    // Told which kernels to use, the test helper prints nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_csm"))
        .args(["info", "--print-blas-coretype"])
        .env("OPENBLAS_CORETYPE", "Prescott")
        .output()
        .expect("runs the csm binary");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

#[test]
fn blas_kernels_that_fit_the_cpu_are_reported_without_a_warning() {
    let out = Command::new(env!("CARGO_BIN_EXE_csm"))
        .args(["info", "--seconds", "0.1", "--size", "256", "--no-compare"])
        .env_remove("OPENBLAS_CORETYPE")
        .env("NO_COLOR", "1")
        .output()
        .expect("runs the csm binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Either OpenBLAS knew this CPU, or csm restarted itself with the right
    // set; in both cases no warning.
    assert!(
        stdout.contains("(OpenBLAS's choice for") || stdout.contains("(set by csm: OpenBLAS chose"),
        "{stdout}"
    );
    assert!(!stderr.contains("supports the faster"), "{stderr}");
}
