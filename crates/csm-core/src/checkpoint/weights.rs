use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use mlx_rs::module::ModuleParameters;
use mlx_rs::{Array, Dtype};
use safetensors::Dtype as StDtype;

/// Errors while reading checkpoints or loading them into a module.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read.
    #[error("cannot read checkpoint {path}: {source}")]
    Io {
        /// File at fault.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file.
    #[error("{path} is not a valid safetensors file: {message}")]
    Safetensors {
        /// File at fault.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A tensor has a dtype we cannot load.
    #[error("{path}: tensor `{key}` has unsupported dtype {dtype}; expected f32, f16, bf16 or an integer type")]
    UnsupportedDtype {
        /// File at fault.
        path: PathBuf,
        /// Tensor name.
        key: String,
        /// Dtype found.
        dtype: String,
    },
    /// Keys or shapes do not match what the model expects.
    #[error("{}", mismatch_message(.source_name, .missing, .unexpected, .misshaped))]
    Mismatch {
        /// Where the weights came from (file or directory).
        source_name: String,
        /// Parameters the model needs that the checkpoint lacks.
        missing: Vec<String>,
        /// Checkpoint tensors the model has no place for.
        unexpected: Vec<String>,
        /// `(key, expected shape, found shape)`.
        misshaped: Vec<(String, Vec<i32>, Vec<i32>)>,
    },
    /// A PyTorch checkpoint could not be read (or asked to run code).
    #[error(transparent)]
    Pickle(#[from] super::pickle::PickleError),
    /// An MLX operation failed while converting tensors.
    #[error("MLX error while loading {context}: {source}")]
    Mlx {
        /// What was being done.
        context: String,
        /// MLX's message.
        #[source]
        source: mlx_rs::error::Exception,
    },
}

fn mismatch_message(
    source: &str,
    missing: &[String],
    unexpected: &[String],
    misshaped: &[(String, Vec<i32>, Vec<i32>)],
) -> String {
    const SHOW: usize = 20;
    let mut m = format!("checkpoint {source} does not match the model:");
    let mut list = |title: &str, items: Vec<String>| {
        if items.is_empty() {
            return;
        }
        let _ = write!(m, "\n  {} {title}:", items.len());
        for item in items.iter().take(SHOW) {
            let _ = write!(m, "\n    {item}");
        }
        if items.len() > SHOW {
            let _ = write!(m, "\n    ... and {} more", items.len() - SHOW);
        }
    };
    list("missing", missing.to_vec());
    list("unexpected", unexpected.to_vec());
    list(
        "with the wrong shape (expected vs found)",
        misshaped
            .iter()
            .map(|(k, e, f)| format!("{k}: {e:?} vs {f:?}"))
            .collect(),
    );
    m.push_str(
        "\n  Check that --model-path points at the right model and that the config matches it.",
    );
    m
}

/// Tensors read from one checkpoint (possibly several shards), by name.
#[derive(Debug, Default)]
pub struct WeightMap {
    /// Human-readable origin, used in error messages.
    pub source: String,
    /// Tensors by (current) name.
    pub tensors: BTreeMap<String, Array>,
}

impl WeightMap {
    /// An empty map labelled with its origin.
    pub fn new(source: impl Into<String>) -> Self {
        WeightMap {
            source: source.into(),
            tensors: BTreeMap::new(),
        }
    }

    /// Reads every tensor of one or more safetensors files. Floating tensors
    /// are cast to `float_dtype` when given; integer tensors keep their type.
    pub fn from_safetensors(
        paths: &[PathBuf],
        float_dtype: Option<Dtype>,
    ) -> Result<Self, CheckpointError> {
        let label = match paths {
            [one] => one.display().to_string(),
            _ => paths
                .first()
                .and_then(|p| p.parent())
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
        };
        let mut map = WeightMap::new(label);
        for path in paths {
            map.read_safetensors(path, float_dtype)?;
        }
        Ok(map)
    }

    fn read_safetensors(
        &mut self,
        path: &Path,
        float_dtype: Option<Dtype>,
    ) -> Result<(), CheckpointError> {
        use std::io::{Read, Seek, SeekFrom};
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |message: String| CheckpointError::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        // Tensor by tensor, so loading never holds the file and its arrays
        // at once (a 6 GB checkpoint would otherwise need 12 GB).
        let mut file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len8 = [0u8; 8];
        file.read_exact(&mut len8)
            .map_err(|e| bad(format!("too short for a header ({e})")))?;
        let header_len = u64::from_le_bytes(len8);
        if header_len > 100_000_000 || 8 + header_len > file_len {
            return Err(bad(format!(
                "header length {header_len} does not fit the file ({file_len} bytes)"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(io)?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
        let data_start = 8 + header_len;
        for (key, info) in header {
            if key == "__metadata__" {
                continue;
            }
            let dtype = info["dtype"].as_str().unwrap_or_default();
            let st_dtype: StDtype = serde_json::from_value(info["dtype"].clone())
                .map_err(|_| bad(format!("tensor `{key}` has unknown dtype {dtype:?}")))?;
            let shape: Vec<i32> = info["shape"]
                .as_array()
                .ok_or_else(|| bad(format!("tensor `{key}` has no shape")))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as i32))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(format!("tensor `{key}` has a bad shape")))?;
            let offsets = info["data_offsets"].as_array();
            let (begin, end) = match offsets.map(|o| {
                (
                    o.first().and_then(|v| v.as_u64()),
                    o.get(1).and_then(|v| v.as_u64()),
                )
            }) {
                Some((Some(b), Some(e))) if b <= e && data_start + e <= file_len => (b, e),
                _ => {
                    return Err(bad(format!(
                        "tensor `{key}` has data offsets outside the file"
                    )))
                }
            };
            let numel: u64 = shape.iter().map(|&d| d as u64).product();
            if numel * (st_dtype.bitsize() as u64 / 8) != end - begin {
                return Err(bad(format!(
                    "tensor `{key}`: shape {shape:?} does not match its {} bytes",
                    end - begin
                )));
            }
            let mut data = vec![0u8; (end - begin) as usize];
            file.seek(SeekFrom::Start(data_start + begin)).map_err(io)?;
            file.read_exact(&mut data).map_err(io)?;
            let array = array_from_le_bytes(st_dtype, &data, &shape).ok_or_else(|| {
                CheckpointError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    dtype: format!("{st_dtype:?}"),
                }
            })?;
            let array = cast_float(array, float_dtype).map_err(|source| CheckpointError::Mlx {
                context: format!("{}: {key}", path.display()),
                source,
            })?;
            // Materialise now so the byte buffer is released tensor by tensor.
            array.eval().map_err(|source| CheckpointError::Mlx {
                context: format!("{}: {key}", path.display()),
                source,
            })?;
            self.tensors.insert(key, array);
        }
        Ok(())
    }

    /// Reads the tensors of a PyTorch `.pt`/`.bin` checkpoint (zip or
    /// legacy format) through the restricted pickle reader, which executes
    /// nothing and refuses any pickle that asks for more than tensor data.
    pub fn from_torch_checkpoint(
        path: &Path,
        float_dtype: Option<Dtype>,
    ) -> Result<Self, CheckpointError> {
        let ckpt = super::pickle::load_torch_checkpoint(path)?;
        if !ckpt.skipped.is_empty() {
            tracing::debug!(
                "{}: ignored {} non-tensor entries",
                path.display(),
                ckpt.skipped.len()
            );
        }
        let mut map = WeightMap::new(path.display().to_string());
        for (key, raw) in ckpt.tensors {
            let shape: Vec<i32> = raw.shape.iter().map(|&d| d as i32).collect();
            let array = array_from_le_bytes(raw.dtype.to_safetensors(), &raw.data, &shape)
                .ok_or_else(|| CheckpointError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    dtype: raw.dtype.to_string(),
                })?;
            let array = cast_float(array, float_dtype).map_err(|source| CheckpointError::Mlx {
                context: format!("{}: {key}", path.display()),
                source,
            })?;
            map.tensors.insert(key, array);
        }
        Ok(map)
    }

    /// Applies `rename` to every key; `None` drops the tensor. This is the
    /// one place a format's names become the model's names (`sanitize`).
    pub fn rename(&mut self, mut rename: impl FnMut(&str) -> Option<String>) {
        let old = std::mem::take(&mut self.tensors);
        for (key, value) in old {
            if let Some(new) = rename(&key) {
                self.tensors.insert(new, value);
            }
        }
    }

    /// Removes and returns one tensor.
    pub fn remove(&mut self, key: &str) -> Option<Array> {
        self.tensors.remove(key)
    }

    /// Inserts (or replaces) one tensor.
    pub fn insert(&mut self, key: impl Into<String>, value: Array) {
        self.tensors.insert(key.into(), value);
    }

    /// Whether any key starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors.keys().any(|k| k.starts_with(prefix))
    }

    /// Splits off every tensor whose key starts with `prefix`, with the
    /// prefix removed (e.g. `codec_model.` inside a transformers CSM).
    pub fn split_prefix(&mut self, prefix: &str) -> WeightMap {
        let mut out = WeightMap::new(format!("{} ({prefix}*)", self.source));
        let keys: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for key in keys {
            let value = self.tensors.remove(&key).expect("key listed above");
            out.tensors.insert(key[prefix.len()..].to_string(), value);
        }
        out
    }
}

/// Builds an MLX array from little-endian tensor bytes.
fn array_from_le_bytes(dtype: StDtype, data: &[u8], shape: &[i32]) -> Option<Array> {
    fn words<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        data.chunks_exact(N)
            .map(|c| c.try_into().expect("exact chunk"))
    }
    Some(match dtype {
        StDtype::F32 => {
            let v: Vec<f32> = words::<4>(data).map(f32::from_le_bytes).collect();
            Array::from_slice(&v, shape)
        }
        StDtype::F16 => {
            let v: Vec<half::f16> = words::<2>(data)
                .map(|b| half::f16::from_bits(u16::from_le_bytes(b)))
                .collect();
            Array::from_slice(&v, shape)
        }
        StDtype::BF16 => {
            let v: Vec<half::bf16> = words::<2>(data)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes(b)))
                .collect();
            Array::from_slice(&v, shape)
        }
        StDtype::F64 => {
            let v: Vec<f32> = words::<8>(data)
                .map(|b| f64::from_le_bytes(b) as f32)
                .collect();
            Array::from_slice(&v, shape)
        }
        StDtype::I64 => {
            let v: Vec<i64> = words::<8>(data).map(i64::from_le_bytes).collect();
            Array::from_slice(&v, shape)
        }
        StDtype::I32 => {
            let v: Vec<i32> = words::<4>(data).map(i32::from_le_bytes).collect();
            Array::from_slice(&v, shape)
        }
        StDtype::I16 => {
            let v: Vec<i16> = words::<2>(data).map(i16::from_le_bytes).collect();
            Array::from_slice(&v, shape)
        }
        StDtype::I8 => {
            let v: Vec<i8> = data.iter().map(|&b| b as i8).collect();
            Array::from_slice(&v, shape)
        }
        StDtype::U8 => Array::from_slice(data, shape),
        StDtype::BOOL => {
            let v: Vec<bool> = data.iter().map(|&b| b != 0).collect();
            Array::from_slice(&v, shape)
        }
        _ => return None,
    })
}

fn cast_float(array: Array, float_dtype: Option<Dtype>) -> Result<Array, mlx_rs::error::Exception> {
    match float_dtype {
        Some(dtype) if array.dtype().is_float() && array.dtype() != dtype => array.as_dtype(dtype),
        _ => Ok(array),
    }
}

/// Loads `weights` into `module`, failing (without touching it) unless the
/// key sets are equal and every shape matches. Floating tensors are cast to
/// the dtype of the parameter they replace.
pub fn load_strict<M: ModuleParameters>(
    module: &mut M,
    mut weights: WeightMap,
) -> Result<(), CheckpointError> {
    let expected: BTreeMap<String, (Vec<i32>, Dtype)> = module
        .parameters()
        .flatten()
        .into_iter()
        .map(|(k, v)| (k.to_string(), (v.shape().to_vec(), v.dtype())))
        .collect();
    let missing: Vec<String> = expected
        .keys()
        .filter(|k| !weights.tensors.contains_key(*k))
        .cloned()
        .collect();
    let unexpected: Vec<String> = weights
        .tensors
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();
    let misshaped: Vec<(String, Vec<i32>, Vec<i32>)> = weights
        .tensors
        .iter()
        .filter_map(|(k, v)| {
            let (shape, _) = expected.get(k)?;
            (shape.as_slice() != v.shape()).then(|| (k.clone(), shape.clone(), v.shape().to_vec()))
        })
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() || !misshaped.is_empty() {
        return Err(CheckpointError::Mismatch {
            source_name: weights.source,
            missing,
            unexpected,
            misshaped,
        });
    }
    let mut flat = std::collections::HashMap::new();
    for (key, (_, dtype)) in &expected {
        let value = weights.tensors.remove(key).expect("checked above");
        let value = if value.dtype().is_float() && value.dtype() != *dtype {
            value
                .as_dtype(*dtype)
                .map_err(|source| CheckpointError::Mlx {
                    context: key.clone(),
                    source,
                })?
        } else {
            value
        };
        flat.insert(Rc::<str>::from(key.as_str()), value);
    }
    module.update_flattened(flat);
    Ok(())
}
