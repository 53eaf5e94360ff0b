//! Writing tensors: safetensors files written atomically (temp file, fsync,
//! rename), so a crash or a full disk never leaves a half-written
//! checkpoint where a good one was.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};
use safetensors::tensor::TensorView;
use safetensors::Dtype as StDtype;

use super::CheckpointError;

/// Little-endian bytes of an array (evaluated on the way), with its
/// safetensors dtype and shape.
pub fn array_bytes(a: &Array) -> Result<(StDtype, Vec<usize>, Vec<u8>), mlx_rs::error::Exception> {
    // Reading data needs a row-contiguous buffer.
    let a = a.contiguous()?;
    a.eval()?;
    let shape: Vec<usize> = a.shape().iter().map(|&d| d as usize).collect();
    fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(|&x| f(x)).collect()
    }
    let (dtype, bytes) = match a.dtype() {
        Dtype::Float32 => (StDtype::F32, le(a.as_slice::<f32>(), f32::to_le_bytes)),
        Dtype::Float16 => (
            StDtype::F16,
            le(a.as_slice::<half::f16>(), |x| x.to_bits().to_le_bytes()),
        ),
        Dtype::Bfloat16 => (
            StDtype::BF16,
            le(a.as_slice::<half::bf16>(), |x| x.to_bits().to_le_bytes()),
        ),
        Dtype::Int32 => (StDtype::I32, le(a.as_slice::<i32>(), i32::to_le_bytes)),
        Dtype::Int64 => (StDtype::I64, le(a.as_slice::<i64>(), i64::to_le_bytes)),
        Dtype::Int16 => (StDtype::I16, le(a.as_slice::<i16>(), i16::to_le_bytes)),
        Dtype::Uint8 => (StDtype::U8, a.as_slice::<u8>().to_vec()),
        Dtype::Uint32 => (StDtype::U32, le(a.as_slice::<u32>(), u32::to_le_bytes)),
        other => {
            let f = a.as_dtype(Dtype::Float32)?;
            f.eval()?;
            tracing::debug!("storing {other:?} tensor as f32");
            (StDtype::F32, le(f.as_slice::<f32>(), f32::to_le_bytes))
        }
    };
    Ok((dtype, shape, bytes))
}

/// Serialises `tensors` (+ string `metadata`) to safetensors bytes.
pub fn safetensors_bytes(
    tensors: &BTreeMap<String, Array>,
    metadata: &HashMap<String, String>,
    path_for_errors: &Path,
) -> Result<Vec<u8>, CheckpointError> {
    let mut raw = Vec::with_capacity(tensors.len());
    for (name, a) in tensors {
        let (dtype, shape, bytes) = array_bytes(a).map_err(|source| CheckpointError::Mlx {
            context: format!("saving `{name}` to {}", path_for_errors.display()),
            source,
        })?;
        raw.push((name.clone(), dtype, shape, bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                TensorView::new(*d, s.clone(), b).expect("sizes come from the array itself"),
            )
        })
        .collect();
    let meta = (!metadata.is_empty()).then(|| metadata.clone());
    safetensors::serialize(views, meta).map_err(|e| CheckpointError::Safetensors {
        path: path_for_errors.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory,
/// flushed to disk, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Unique per process and call: two threads may write the same file.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}-{call}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Saves tensors + metadata to a safetensors file atomically.
pub fn save_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Array>,
    metadata: &HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let bytes = safetensors_bytes(tensors, metadata, path)?;
    write_atomic(path, &bytes)
}

/// Reads only the string metadata (`__metadata__`) of a safetensors file.
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        CheckpointError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_is_atomic_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        let mut t = BTreeMap::new();
        t.insert(
            "x".to_string(),
            Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2]).t(),
        );
        t.insert("i".to_string(), Array::from_slice(&[5i32, 6], &[2]));
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        save_safetensors(&path, &t, &meta).unwrap();
        let back =
            super::super::WeightMap::from_safetensors(std::slice::from_ref(&path), None).unwrap();
        // The transposed view was written in logical (row-major) order.
        assert_eq!(back.tensors["x"].as_slice::<f32>(), &[1.0, 3.0, 2.0, 4.0]);
        assert_eq!(back.tensors["i"].as_slice::<i32>(), &[5, 6]);
        assert_eq!(read_safetensors_metadata(&path).unwrap()["k"], "v");
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn failed_write_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keep.bin");
        write_atomic(&path, b"good").unwrap();
        // Renaming onto a path whose parent does not exist fails; the old
        // file is untouched.
        let bad = dir.path().join("missing-dir").join("keep.bin");
        assert!(write_atomic(&bad, b"bad").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"good");
    }
}

#[cfg(test)]
mod concurrency_tests {
    use super::*;

    #[test]
    fn concurrent_writers_of_one_file_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("same.bin");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let path = path.clone();
                s.spawn(move || {
                    for _ in 0..50 {
                        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                        write_atomic(&path, &[t; 1000]).unwrap();
                    }
                });
            }
        });
        assert_eq!(std::fs::read(&path).unwrap().len(), 1000);
    }
}
