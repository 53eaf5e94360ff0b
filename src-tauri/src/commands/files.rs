//! `reveal_path`: show a run folder or file in the system file manager.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// Opens the file manager at `path` (selecting it on macOS and Windows).
///
/// # Errors
/// `notFound` when the path does not exist, `io` when no file manager can be started.
#[tauri::command]
pub async fn reveal_path(path: PathBuf) -> Result<()> {
    tauri::async_runtime::spawn_blocking(move || reveal(&path))
        .await
        .map_err(|e| Error::Internal(format!("reveal_path task failed: {e}")))?
}

/// Synchronous body of [`reveal_path`].
pub fn reveal(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mut cmd = reveal_command(path, meta.is_dir());
    // Spawn and forget: the file manager outlives this call.
    cmd.spawn()
        .map(drop)
        .map_err(|e| Error::io(Path::new(cmd.get_program()), e))
}

fn reveal_command(path: &Path, is_dir: bool) -> Command {
    if cfg!(target_os = "macos") {
        let mut c = Command::new("open");
        if !is_dir {
            c.arg("-R");
        }
        c.arg(path);
        c
    } else if cfg!(target_os = "windows") {
        let mut c = Command::new("explorer");
        if is_dir {
            c.arg(path);
        } else {
            c.arg(format!("/select,{}", path.display()));
        }
        c
    } else {
        // xdg-open cannot select a file: open its folder instead.
        let mut c = Command::new("xdg-open");
        c.arg(if is_dir {
            path
        } else {
            path.parent().unwrap_or(path)
        });
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_is_not_found() {
        assert_eq!(
            reveal(Path::new("/definitely/not/here"))
                .unwrap_err()
                .kind(),
            "notFound"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_opens_the_parent_of_a_file() {
        let c = reveal_command(Path::new("/runs/a/config.json"), false);
        assert_eq!(c.get_program(), "xdg-open");
        assert_eq!(c.get_args().collect::<Vec<_>>(), ["/runs/a"]);
    }
}
