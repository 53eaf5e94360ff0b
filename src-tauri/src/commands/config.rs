//! Run config files. Export writes a `TrainConfig` exactly as a run's
//! `config.json` is written (what `csm finetune-lora --config` reads);
//! import hands the UI the raw JSON object, so it can take older or
//! hand-written files, report unknown keys and validate field by field.

use std::path::{Path, PathBuf};

use csm_core::train::run_dir;
use csm_core::train::TrainConfig;
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

/// Writes `config` to `path` in `config.json`'s format, replacing it
/// atomically.
///
/// # Errors
/// `io` when the file cannot be written.
#[tauri::command]
pub async fn write_config_file(path: PathBuf, config: TrainConfig) -> Result<()> {
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
pub fn write(path: &Path, config: &TrainConfig) -> Result<()> {
    if path.file_name().is_none() {
        return Err(Error::InvalidInput(format!(
            "{} is not a file path",
            path.display()
        )));
    }
    Ok(run_dir::write_config_file(path, config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_configs_are_config_json_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run config.json");
        let config = TrainConfig {
            lora_r: 16,
            target_modules: vec!["q_proj".into()],
            ..TrainConfig::default()
        };
        write(&path, &config).unwrap();
        let run = run_dir::RunDir::new(dir.path());
        run.write_config(&config).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(run.config_path()).unwrap(),
            "an export is byte for byte a run's config.json"
        );
        assert_eq!(
            read(&path).unwrap(),
            // Through text, as f32 values are written (to_value widens them).
            serde_json::from_str::<Value>(&serde_json::to_string(&config).unwrap()).unwrap(),
            "import hands back the same object"
        );
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
            write(Path::new("/"), &TrainConfig::default())
                .unwrap_err()
                .kind(),
            "invalidInput"
        );
    }
}
