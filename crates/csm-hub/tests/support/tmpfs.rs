//! Small or read-only file systems for the full-disk and read-only-cache
//! checks: a tmpfs mounted in a private mount namespace (`unshare -m` as
//! root, `unshare -rm` through a user namespace otherwise), so nothing
//! outside the test sees it and it goes away with the process, even when
//! the test fails. Root writes through permission bits, so a read-only
//! mount is the only honest read-only cache for it. Linux only; where the
//! namespace cannot be made the test fails with unshare's reason.
//!
//! Shared with csm-cli's tests through `#[path]`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD: &str = "CSM_HUB_TEST_TMPFS";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A command running `program` in a new mount namespace where a tmpfs
/// with `options` (`size=1m`, `ro`) is mounted on `dir` first.
pub fn on_tmpfs(dir: &Path, options: &str, program: &Path) -> Command {
    let mut cmd = Command::new("unshare");
    if !is_root() {
        cmd.arg("-r");
    }
    cmd.args([
        "-m",
        "sh",
        "-c",
        r#"mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@""#,
    ])
    .arg("sh")
    .arg(options)
    .arg(dir)
    .arg(program);
    cmd
}

/// Runs `body` with a folder that is a tmpfs mounted with `options`: this
/// test (`name`, its full path as the harness names it) runs again in a
/// private mount namespace, and `body` runs there.
pub fn run_in_tmpfs(name: &str, options: &str, body: impl FnOnce(&Path)) {
    if let Some(dir) = std::env::var_os(CHILD) {
        body(&PathBuf::from(dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = on_tmpfs(dir.path(), options, &exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, dir.path())
        .output()
        .expect("runs unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} on a tmpfs ({options}) failed; it needs a private mount namespace (root, or \
         unprivileged user namespaces):\n{stdout}\n{stderr}"
    );
    // The filter must have run the test, not matched nothing.
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in the namespace:\n{stdout}\n{stderr}"
    );
}
