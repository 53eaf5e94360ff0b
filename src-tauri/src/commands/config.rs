//! Run config files: the UI validates the fields (same names as the CLI
//! flags, snake_case); this side only reads and writes JSON objects.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// Config files are small; anything bigger is not a run config.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a run config JSON file and returns the parsed object.
///
/// # Errors
/// `notFound`, `io`, or `invalidInput` when the file is too big, not JSON, or not an object.
#[tauri::command]
pub async fn read_config_file(path: PathBuf) -> Result<Value> {
    tauri::async_runtime::spawn_blocking(move || read(&path))
        .await
        .map_err(|e| Error::Internal(format!("read_config_file task failed: {e}")))?
}

/// Writes `config` (a JSON object) as pretty JSON to `path`, replacing it atomically.
///
/// # Errors
/// `invalidInput` when `config` is not an object, `io` when the file cannot be written.
#[tauri::command]
pub async fn write_config_file(path: PathBuf, config: Value) -> Result<()> {
    tauri::async_runtime::spawn_blocking(move || write(&path, &config))
        .await
        .map_err(|e| Error::Internal(format!("write_config_file task failed: {e}")))?
}

/// Synchronous body of [`read_config_file`].
pub fn read(path: &Path) -> Result<Value> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::InvalidInput(format!(
            "{} is not a file",
            path.display()
        )));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(Error::InvalidInput(format!(
            "{} is {} bytes; a run config is at most {MAX_CONFIG_BYTES}",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::InvalidInput(format!("{} is not valid JSON: {e}", path.display())))?;
    if !value.is_object() {
        return Err(Error::InvalidInput(format!(
            "{} does not hold a JSON object",
            path.display()
        )));
    }
    Ok(value)
}

/// Synchronous body of [`write_config_file`].
pub fn write(path: &Path, config: &Value) -> Result<()> {
    if !config.is_object() {
        return Err(Error::InvalidInput("config must be a JSON object".into()));
    }
    let mut text =
        serde_json::to_string_pretty(config).map_err(|e| Error::Internal(e.to_string()))?;
    text.push('\n');
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run config.json");
        let config = serde_json::json!({ "lora_r": 16, "learning_rate": 2e-4, "target_modules": ["q_proj"] });
        write(&path, &config).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("}\n"));
        assert_eq!(read(&path).unwrap(), config);
    }

    #[test]
    fn errors_have_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        assert_eq!(read(&missing).unwrap_err().kind(), "notFound");
        let array = dir.path().join("a.json");
        std::fs::write(&array, "[1, 2]").unwrap();
        assert_eq!(read(&array).unwrap_err().kind(), "invalidInput");
        let broken = dir.path().join("b.json");
        std::fs::write(&broken, "{").unwrap();
        assert!(read(&broken)
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        assert_eq!(
            write(&array, &serde_json::json!(3)).unwrap_err().kind(),
            "invalidInput"
        );
    }
}
