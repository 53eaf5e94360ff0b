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
