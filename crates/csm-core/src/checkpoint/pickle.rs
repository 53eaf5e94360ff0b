//! Safe reader for PyTorch `torch.save` checkpoints (`.pt`, `.pth`, `.bin`).
//!
//! Since PyTorch 1.6, `torch.save` writes a zip archive:
//!
//! ```text
//! <prefix>/data.pkl        the pickled object (a state dict)
//! <prefix>/data/<key>      raw bytes of one storage per key
//! <prefix>/byteorder       "little" or "big" (absent in old files: little)
//! <prefix>/version, <prefix>/.data/serialization_id, ...
//! ```
//!
//! Unpickling such a file in Python can run arbitrary code. This module
//! never executes anything: it interprets the pickle opcodes itself and
//! only understands the handful of globals that a plain state dict needs:
//!
//! * `collections.OrderedDict`
//! * `torch._utils._rebuild_tensor_v2`, `_rebuild_tensor`,
//!   `_rebuild_parameter`, `_rebuild_parameter_with_state`
//! * `torch._tensor._rebuild_from_type_v2`, together with the type markers
//!   `torch.Tensor` and `torch.nn.parameter.Parameter` it is passed
//! * the storage types `torch.{Float,Half,BFloat16,Double,Long,Int,Short,
//!   Char,Byte,Bool}Storage`
//!
//! Any other global (`os.system`, `builtins.eval`, `posix.system`,
//! `subprocess.Popen`, ...) stops the load with
//! [`PickleError::ForbiddenGlobal`]. Persistent ids
//! `('storage', <StorageType>, key, location, numel)` name the zip entry
//! `<prefix>/data/<key>`.
//!
//! # The legacy format
//!
//! Files written by PyTorch before 1.6 (or with
//! `_use_new_zipfile_serialization=False`) are one stream of pickles
//! instead of a zip, as `torch.serialization._legacy_save` writes them:
//!
//! ```text
//! pickle  magic number 0x1950a86a20f9469cfc6c
//! pickle  protocol version 1001
//! pickle  sys_info dict (little_endian, type sizes)
//! pickle  the object; storages are ('storage', type, key, location, numel, None)
//! pickle  the list of storage keys, in the order their data follows
//! then per key: numel as a little-endian u64, then numel elements (little-endian)
//! ```
//!
//! The same restricted machine reads the object pickle, so the same
//! allow-list applies. Storage views (a non-`None` sixth item, written only
//! by PyTorch before 1.0) and big-endian `sys_info` are refused, and so is
//! the still older tar layout. A pickle stream without the magic number (a
//! plain `pickle.dump`) is [`PickleError::LegacyFormat`].
//!
//! # What comes out
//!
//! [`load_torch_checkpoint`] returns a [`TorchCheckpoint`]: tensors in the
//! order of the pickled dict, each a [`RawTensor`] with contiguous,
//! row-major, little-endian bytes (storage offset and strides already
//! applied, so transposed views and views into shared storages come out as
//! independent copies).
//!
//! * The top-level object must be a dict (or `OrderedDict`).
//! * If none of its values is a tensor and it has a `"state_dict"` (checked
//!   first) or `"model"` key whose value is a dict, that inner dict is used
//!   and the wrapper key is reported in [`TorchCheckpoint::unwrapped`]; the
//!   other top-level entries (epoch, optimizer, ...) are listed as skipped.
//! * Nested dicts are flattened with `.`-joined names
//!   (`{"decoder": {"w": t}}` gives `decoder.w`).
//! * Non-tensor values (ints, strings, lists, ...) are not returned; their
//!   names are listed in [`TorchCheckpoint::skipped`].
//! * A name that occurs twice keeps its first position and its last value,
//!   as Python's dict does.
//!
//! # Example
//!
//! ```no_run
//! use csm_core::checkpoint::pickle::{load_torch_checkpoint, PickleError};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ckpt = load_torch_checkpoint("model.pt")?;
//! for (name, tensor) in &ckpt.tensors {
//!     println!("{name}: {} {:?}", tensor.dtype, tensor.shape);
//! }
//! for entry in &ckpt.skipped {
//!     println!("skipped {} ({})", entry.name, entry.kind);
//! }
//! // Re-save as safetensors.
//! let bytes = safetensors::serialize(ckpt.tensors.iter().map(|(n, t)| (n.as_str(), t)), None)?;
//! # let _ = (bytes, PickleError::LegacyFormat { file: String::new() });
//! # Ok(())
//! # }
//! ```
//!
//! # Limits
//!
//! [`PickleLimits`] bounds the size of `data.pkl`, the stack, the memo,
//! string lengths, container sizes, dict nesting and tensor sizes. Corrupt
//! or truncated input gives a typed [`PickleError`] naming the file; no input
//! makes this module panic.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Seek};
use std::path::Path;
use std::rc::Rc;

use thiserror::Error;

/// Element type of a [`RawTensor`], one per supported torch storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// `torch.float32` (`FloatStorage`).
    F32,
    /// `torch.float16` (`HalfStorage`).
    F16,
    /// `torch.bfloat16` (`BFloat16Storage`).
    BF16,
    /// `torch.float64` (`DoubleStorage`).
    F64,
    /// `torch.int64` (`LongStorage`).
    I64,
    /// `torch.int32` (`IntStorage`).
    I32,
    /// `torch.int16` (`ShortStorage`).
    I16,
    /// `torch.int8` (`CharStorage`).
    I8,
    /// `torch.uint8` (`ByteStorage`).
    U8,
    /// `torch.bool` (`BoolStorage`), one byte per element (0 or 1).
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Lower-case name as torch spells the dtype (`"float32"`, `"bfloat16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }

    /// The matching safetensors dtype.
    pub fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            DType::F32 => safetensors::Dtype::F32,
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
            DType::F64 => safetensors::Dtype::F64,
            DType::I64 => safetensors::Dtype::I64,
            DType::I32 => safetensors::Dtype::I32,
            DType::I16 => safetensors::Dtype::I16,
            DType::I8 => safetensors::Dtype::I8,
            DType::U8 => safetensors::Dtype::U8,
            DType::Bool => safetensors::Dtype::BOOL,
        }
    }

    /// The dtype of a `torch.<name>Storage` class, if it is one we accept.
    fn from_storage_name(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor read from a checkpoint: contiguous row-major little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    /// Element type.
    pub dtype: DType,
    /// Shape; empty for a 0-dimensional (scalar) tensor.
    pub shape: Vec<usize>,
    /// `numel() * dtype.size_in_bytes()` bytes, little-endian, row-major.
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements converted to `f32` (bool as 0/1; 64-bit values may lose
    /// precision).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let size = self.dtype.size_in_bytes();
        self.data
            .chunks_exact(size)
            .map(|b| match self.dtype {
                DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                DType::F64 => f64::from_le_bytes(eight(b)) as f32,
                DType::I64 => i64::from_le_bytes(eight(b)) as f32,
                DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
                DType::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
                DType::I8 => b[0] as i8 as f32,
                DType::U8 => b[0] as f32,
                DType::Bool => f32::from(u8::from(b[0] != 0)),
            })
            .collect()
    }
}

fn eight(b: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&b[..8]);
    out
}

/// Lets a checkpoint be written straight out with [`safetensors::serialize`].
impl safetensors::View for &RawTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.to_safetensors()
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A non-tensor entry of the state dict that was left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedEntry {
    /// Flattened name (`.`-joined for nested dicts).
    pub name: String,
    /// What the value was, in Python terms (`"int"`, `"str"`, `"list"`, ...).
    pub kind: String,
}

/// The tensors of a `torch.save` checkpoint.
#[derive(Clone, Debug, Default)]
pub struct TorchCheckpoint {
    /// Tensors by flattened name, in the order of the pickled dict.
    pub tensors: Vec<(String, RawTensor)>,
    /// Non-tensor entries that were left out, in order.
    pub skipped: Vec<SkippedEntry>,
    /// `Some("model")` / `Some("state_dict")` when the tensors came from
    /// inside that top-level wrapper key.
    pub unwrapped: Option<String>,
}

impl TorchCheckpoint {
    /// The tensor called `name`, if present.
    pub fn get(&self, name: &str) -> Option<&RawTensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Tensor names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensors as a map by name.
    pub fn into_map(self) -> HashMap<String, RawTensor> {
        self.tensors.into_iter().collect()
    }
}

/// Robustness bounds applied while reading a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickleLimits {
    /// Largest `data.pkl` accepted, in bytes (default 64 MiB; a state dict's
    /// pickle is a few KiB per thousand tensors).
    pub max_pickle_bytes: u64,
    /// Most values on the pickle stack, and most open MARKs (default 1 Mi).
    pub max_stack_depth: usize,
    /// Most memo entries (default 1 Mi).
    pub max_memo_entries: usize,
    /// Longest string, bytes object or text line (default 16 MiB).
    pub max_string_bytes: usize,
    /// Most elements in all lists, dicts and sets together (default 16 Mi).
    pub max_container_items: usize,
    /// Deepest nesting of dicts inside the state dict (default 32).
    pub max_nesting_depth: usize,
    /// Largest single storage or tensor, in bytes (default 16 GiB).
    pub max_tensor_bytes: u64,
}

impl Default for PickleLimits {
    fn default() -> Self {
        PickleLimits {
            max_pickle_bytes: 64 << 20,
            max_stack_depth: 1 << 20,
            max_memo_entries: 1 << 20,
            max_string_bytes: 16 << 20,
            max_container_items: 16 << 20,
            max_nesting_depth: 32,
            max_tensor_bytes: 16 << 30,
        }
    }
}

/// Why a checkpoint could not be read. Every message names the file.
#[derive(Debug, Error)]
pub enum PickleError {
    /// Reading the file failed.
    #[error("failed to read {file}: {source}")]
    Io {
        /// The checkpoint.
        file: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a readable zip archive.
    #[error(
        "{file} is not a readable torch.save zip archive ({source}); \
         only the zip format written by PyTorch >= 1.6 is supported"
    )]
    Zip {
        /// The checkpoint.
        file: String,
        /// The underlying error.
        #[source]
        source: zip::result::ZipError,
    },
    /// The file is a bare pickle stream without the header of the legacy
    /// (pre-1.6, non-zip) `torch.save` format: a plain `pickle.dump`.
    #[error(
        "{file} is a bare pickle stream without torch.save's header (a plain pickle.dump?), \
         which is not supported; re-save it with torch.save or convert it to safetensors"
    )]
    LegacyFormat {
        /// The checkpoint.
        file: String,
    },
    /// A record the checkpoint needs is missing from the archive.
    #[error("{file} has no `{record}` record; it is not a complete torch.save checkpoint")]
    MissingRecord {
        /// The checkpoint.
        file: String,
        /// The zip entry that was looked for.
        record: String,
    },
    /// The pickle references a global outside the allow-list.
    #[error(
        "refusing to load {file}: its pickle asks for {module}.{name}; only tensor data \
         (a state dict of float/int/bool tensors) is accepted. Convert it to safetensors \
         with a trusted PyTorch (torch.load(path, weights_only=True), then \
         safetensors.torch.save_file) and load that instead"
    )]
    ForbiddenGlobal {
        /// Module of the global (escaped for display, truncated to 200 chars).
        module: String,
        /// Name of the global (escaped for display, truncated to 200 chars).
        name: String,
        /// The checkpoint.
        file: String,
    },
    /// The pickle ended before STOP.
    #[error("{file}: pickle data ends unexpectedly at byte {offset} (truncated or corrupt file)")]
    Truncated {
        /// The checkpoint.
        file: String,
        /// Offset into `data.pkl`.
        offset: usize,
    },
    /// An opcode this reader does not implement (or deliberately refuses).
    #[error("{file}: unsupported pickle opcode 0x{opcode:02x} at byte {offset}")]
    UnsupportedOpcode {
        /// The checkpoint.
        file: String,
        /// Offset of the opcode in `data.pkl`.
        offset: usize,
        /// The opcode byte.
        opcode: u8,
    },
    /// The pickle is structurally invalid or not shaped like a torch checkpoint.
    #[error("{file}: malformed pickle at byte {offset}: {reason}")]
    Malformed {
        /// The checkpoint.
        file: String,
        /// Offset of the offending opcode in `data.pkl`.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// A [`PickleLimits`] bound was hit.
    #[error("{file}: {what} exceeds the limit of {limit}; refusing to continue")]
    LimitExceeded {
        /// The checkpoint.
        file: String,
        /// Which bound.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The unpickled object is not a dict.
    #[error("{file}: expected a dict of tensors at the top level, found {found}")]
    NotAStateDict {
        /// The checkpoint.
        file: String,
        /// The Python kind that was found.
        found: String,
    },
    /// A storage record does not match what the pickle declares.
    #[error("{file}: storage `{key}`: {reason}")]
    BadStorage {
        /// The checkpoint.
        file: String,
        /// The storage key (`data/<key>`).
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A tensor's shape, strides or offset do not fit its storage.
    #[error("{file}: tensor `{name}`: {reason}")]
    BadTensor {
        /// The checkpoint.
        file: String,
        /// Flattened tensor name.
        name: String,
        /// What was wrong.
        reason: String,
    },
}

impl PickleError {
    /// The checkpoint the error is about.
    pub fn file(&self) -> &str {
        match self {
            PickleError::Io { file, .. }
            | PickleError::Zip { file, .. }
            | PickleError::LegacyFormat { file }
            | PickleError::MissingRecord { file, .. }
            | PickleError::ForbiddenGlobal { file, .. }
            | PickleError::Truncated { file, .. }
            | PickleError::UnsupportedOpcode { file, .. }
            | PickleError::Malformed { file, .. }
            | PickleError::LimitExceeded { file, .. }
            | PickleError::NotAStateDict { file, .. }
            | PickleError::BadStorage { file, .. }
            | PickleError::BadTensor { file, .. } => file,
        }
    }
}

/// Read the checkpoint at `path` with the default [`PickleLimits`].
pub fn load_torch_checkpoint(path: impl AsRef<Path>) -> Result<TorchCheckpoint, PickleError> {
    load_torch_checkpoint_with_limits(path, &PickleLimits::default())
}

/// Read the checkpoint at `path` with explicit limits.
pub fn load_torch_checkpoint_with_limits(
    path: impl AsRef<Path>,
    limits: &PickleLimits,
) -> Result<TorchCheckpoint, PickleError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let handle = std::fs::File::open(path).map_err(|source| PickleError::Io {
        file: file.clone(),
        source,
    })?;
    read_torch_checkpoint(std::io::BufReader::new(handle), &file, limits)
}

/// Read a checkpoint from any seekable reader; `file` is the name used in
/// error messages.
pub fn read_torch_checkpoint<R: Read + Seek>(
    mut reader: R,
    file: &str,
    limits: &PickleLimits,
) -> Result<TorchCheckpoint, PickleError> {
    let io_err = |source| PickleError::Io {
        file: file.to_string(),
        source,
    };
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut reader, &mut magic).map_err(io_err)?;
    reader.rewind().map_err(io_err)?;
    if got == 2 && magic[0] == 0x80 && magic[1] <= 5 {
        return read_legacy(reader, file, limits);
    }

    let mut archive = zip::ZipArchive::new(reader).map_err(|source| PickleError::Zip {
        file: file.to_string(),
        source,
    })?;
    let prefix = find_prefix(&archive).ok_or_else(|| PickleError::MissingRecord {
        file: file.to_string(),
        record: "<archive>/data.pkl".to_string(),
    })?;

    let pkl_name = format!("{prefix}data.pkl");
    let pkl = read_record(&mut archive, file, &pkl_name, limits.max_pickle_bytes, None)?
        .ok_or_else(|| PickleError::MissingRecord {
            file: file.to_string(),
            record: pkl_name.clone(),
        })?;
    let big_endian = match read_record(&mut archive, file, &format!("{prefix}byteorder"), 64, None)?
    {
        None => false,
        Some(order) => match order.trim_ascii() {
            b"little" => false,
            b"big" => true,
            other => {
                return Err(PickleError::Malformed {
                    file: file.to_string(),
                    offset: 0,
                    reason: format!(
                        "byteorder record says {:?}",
                        String::from_utf8_lossy(&other[..other.len().min(32)])
                    ),
                })
            }
        },
    };

    let mut machine = Machine::new(&pkl, file, limits);
    let root = machine.run()?;
    let (entries, skipped, unwrapped) = machine.flatten(&root)?;

    let tensors = assemble(&entries, file, limits, big_endian, |key, bytes| {
        let record = format!("{prefix}data/{key}");
        read_record(&mut archive, file, &record, bytes, Some(bytes))?.ok_or_else(|| {
            PickleError::MissingRecord {
                file: file.to_string(),
                record: record.clone(),
            }
        })
    })?;
    Ok(TorchCheckpoint {
        tensors,
        skipped,
        unwrapped,
    })
}

/// Turns the flattened tensor references into [`RawTensor`]s; `fetch(key,
/// bytes)` returns a storage's bytes (at most `bytes`; fewer is an error).
fn assemble(
    entries: &[(String, Rc<TensorRef>)],
    file: &str,
    limits: &PickleLimits,
    big_endian: bool,
    mut fetch: impl FnMut(&str, u64) -> Result<Vec<u8>, PickleError>,
) -> Result<Vec<(String, RawTensor)>, PickleError> {
    // Bytes needed per storage key, and how many tensors still use it.
    let mut need: HashMap<&str, u64> = HashMap::new();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for (_, t) in entries {
        let bytes = (t.storage.numel as u64).saturating_mul(t.storage.dtype.size_in_bytes() as u64);
        let slot = need.entry(&t.storage.key).or_insert(0);
        *slot = (*slot).max(bytes);
        *uses.entry(&t.storage.key).or_insert(0) += 1;
    }

    let mut cache: HashMap<&str, Vec<u8>> = HashMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        let key = t.storage.key.as_str();
        if !cache.contains_key(key) {
            let bytes = need[key];
            if bytes > limits.max_tensor_bytes {
                return Err(limit(
                    file,
                    "storage size in bytes",
                    limits.max_tensor_bytes,
                ));
            }
            let data = fetch(key, bytes)?;
            if (data.len() as u64) < bytes {
                return Err(PickleError::BadStorage {
                    file: file.to_string(),
                    key: key.to_string(),
                    reason: format!(
                        "record holds {} bytes but the pickle declares {bytes}",
                        data.len()
                    ),
                });
            }
            cache.insert(key, data);
        }
        let left = uses.get_mut(key).map(|n| {
            *n -= 1;
            *n
        });
        let bad = |reason: String| PickleError::BadTensor {
            file: file.to_string(),
            name: name.clone(),
            reason,
        };
        let elem = t.storage.dtype.size_in_bytes();
        let mut data = if left == Some(0) {
            let storage = cache.remove(key).unwrap_or_default();
            if t.offset == 0
                && is_contiguous(&t.shape, &t.strides)
                && t.shape.iter().try_fold(elem, |a, &d| a.checked_mul(d)) == Some(storage.len())
            {
                storage
            } else {
                gather(&storage, elem, t, limits.max_tensor_bytes).map_err(bad)?
            }
        } else {
            let storage = cache.get(key).map(Vec::as_slice).unwrap_or_default();
            gather(storage, elem, t, limits.max_tensor_bytes).map_err(bad)?
        };
        if big_endian && elem > 1 {
            for chunk in data.chunks_exact_mut(elem) {
                chunk.reverse();
            }
        }
        tensors.push((
            name.clone(),
            RawTensor {
                dtype: t.storage.dtype,
                shape: t.shape.clone(),
                data,
            },
        ));
    }
    Ok(tensors)
}

/// torch's legacy magic number `0x1950a86a20f9469cfc6c`, little-endian, as
/// a LONG1 opcode carries it.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// The protocol version `_legacy_save` writes after the magic number.
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// End of the magic-number pickle (`PROTO n`, an optional FRAME, `LONG1`
/// with the magic, `STOP`), or `None` if `head` does not start with it.
fn legacy_magic_end(head: &[u8]) -> Option<usize> {
    let mut i = 0;
    if *head.first()? != 0x80 {
        return None;
    }
    i += 2;
    if head.get(i) == Some(&0x95) {
        i += 9;
    }
    if head.get(i..i + 2)? != [0x8a, 10] || head.get(i + 2..i + 12)? != LEGACY_MAGIC {
        return None;
    }
    i += 12;
    (*head.get(i)? == b'.').then_some(i + 1)
}

/// Reads the legacy (pre-1.6) stream of pickles; see the module docs.
fn read_legacy<R: Read + Seek>(
    mut reader: R,
    file: &str,
    limits: &PickleLimits,
) -> Result<TorchCheckpoint, PickleError> {
    let io_err = |source| PickleError::Io {
        file: file.to_string(),
        source,
    };
    // The pickles come first; the storages' bytes follow them.
    let mut head = Vec::new();
    (&mut reader)
        .take(limits.max_pickle_bytes)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    let head_is_cut = head.len() as u64 == limits.max_pickle_bytes;
    let mut pos = legacy_magic_end(&head).ok_or_else(|| PickleError::LegacyFormat {
        file: file.to_string(),
    })?;
    // One pickle from `pos`: its value, the machine (for its arenas) and its end.
    let run_at = |pos: usize, legacy: bool| {
        let mut machine = Machine::new(&head, file, limits);
        machine.pos = pos;
        machine.legacy = legacy;
        match machine.run() {
            Ok(v) => Ok((v, machine)),
            Err(PickleError::Truncated { .. }) if head_is_cut => Err(limit(
                file,
                "data.pkl size in bytes",
                limits.max_pickle_bytes,
            )),
            Err(e) => Err(e),
        }
    };
    let malformed = |offset: usize, reason: String| PickleError::Malformed {
        file: file.to_string(),
        offset,
        reason,
    };

    let (version, machine) = run_at(pos, false)?;
    if !matches!(version, Value::Int(LEGACY_PROTOCOL_VERSION)) {
        return Err(malformed(
            pos,
            format!("legacy protocol version is not {LEGACY_PROTOCOL_VERSION}"),
        ));
    }
    pos = machine.pos;

    let (sys_info, machine) = run_at(pos, false)?;
    let Value::Dict(id) = sys_info else {
        return Err(malformed(pos, "legacy sys_info is not a dict".into()));
    };
    let little = machine.dicts[id].iter().find_map(|(k, v)| match (k, v) {
        (Value::Str(k), Value::Bool(b)) if &**k == "little_endian" => Some(*b),
        _ => None,
    });
    if little != Some(true) {
        return Err(malformed(
            pos,
            "legacy sys_info does not say little_endian=True (big-endian files are not supported)"
                .into(),
        ));
    }
    pos = machine.pos;

    let (root, machine) = run_at(pos, true)?;
    let (entries, skipped, unwrapped) = machine.flatten(&root)?;
    let declared = machine.declared;
    pos = machine.pos;

    let (keys, machine) = run_at(pos, false)?;
    let keys: Vec<String> = match keys {
        Value::List(id) => machine.lists[id]
            .iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s.to_string()),
                Value::Int(i) => Ok(i.to_string()),
                other => Err(malformed(pos, format!("storage key is a {}", other.kind()))),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(malformed(
                pos,
                format!("storage key list is a {}", other.kind()),
            ))
        }
    };
    let mut offset = machine.pos as u64;

    // The storages' bytes, in key order; only those a tensor uses are kept.
    let used: std::collections::HashSet<&str> = entries
        .iter()
        .map(|(_, t)| t.storage.key.as_str())
        .collect();
    let bad = |key: &str, reason: String| PickleError::BadStorage {
        file: file.to_string(),
        key: key.to_string(),
        reason,
    };
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for key in &keys {
        let storage = declared
            .get(key)
            .ok_or_else(|| bad(key, "listed for data but never declared".into()))?;
        reader
            .seek(std::io::SeekFrom::Start(offset))
            .map_err(io_err)?;
        let mut header = [0u8; 8];
        if read_up_to(&mut reader, &mut header).map_err(io_err)? < 8 {
            return Err(bad(key, "the file ends before its size header".into()));
        }
        let numel = u64::from_le_bytes(header);
        if numel != storage.numel as u64 {
            return Err(bad(
                key,
                format!(
                    "size header says {numel} elements, the pickle {}",
                    storage.numel
                ),
            ));
        }
        let bytes = numel
            .checked_mul(storage.dtype.size_in_bytes() as u64)
            .filter(|&b| b <= limits.max_tensor_bytes)
            .ok_or_else(|| limit(file, "storage size in bytes", limits.max_tensor_bytes))?;
        if used.contains(key.as_str()) && !data.contains_key(key) {
            let mut buf = Vec::new();
            (&mut reader)
                .take(bytes)
                .read_to_end(&mut buf)
                .map_err(io_err)?;
            data.insert(key.clone(), buf);
        }
        offset = offset + 8 + bytes;
    }
    let tensors = assemble(&entries, file, limits, false, |key, _| {
        data.remove(key)
            .ok_or_else(|| bad(key, "has no data in the file".into()))
    })?;
    Ok(TorchCheckpoint {
        tensors,
        skipped,
        unwrapped,
    })
}

fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// `"<dir>/"` of the `<dir>/data.pkl` record (or `""` for a root `data.pkl`).
fn find_prefix<R: Read + Seek>(archive: &zip::ZipArchive<R>) -> Option<String> {
    let mut root = false;
    for name in archive.file_names() {
        if name == "data.pkl" {
            root = true;
        } else if let Some(dir) = name.strip_suffix("/data.pkl") {
            if !dir.is_empty() && !dir.contains('/') {
                return Some(format!("{dir}/"));
            }
        }
    }
    root.then(String::new)
}

/// Read zip entry `name` (None if absent). More than `max` bytes is an error;
/// with `exact`, only that many bytes are read.
fn read_record<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    file: &str,
    name: &str,
    max: u64,
    exact: Option<u64>,
) -> Result<Option<Vec<u8>>, PickleError> {
    let entry = match archive.by_name(name) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(source) => {
            return Err(PickleError::Zip {
                file: file.to_string(),
                source,
            })
        }
    };
    let size = entry.size();
    let want = match exact {
        Some(n) => n.min(size),
        None if size > max => {
            return Err(PickleError::LimitExceeded {
                file: file.to_string(),
                what: if name.ends_with("data.pkl") {
                    "data.pkl size in bytes"
                } else {
                    "record size in bytes"
                },
                limit: max,
            })
        }
        None => size,
    };
    let want_usize = usize::try_from(want).map_err(|_| limit(file, "record size in bytes", max))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(want_usize)
        .map_err(|_| PickleError::Io {
            file: file.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("cannot allocate {want} bytes for `{name}`"),
            ),
        })?;
    entry
        .take(want)
        .read_to_end(&mut buf)
        .map_err(|source| PickleError::Io {
            file: file.to_string(),
            source,
        })?;
    Ok(Some(buf))
}

fn limit(file: &str, what: &'static str, limit: u64) -> PickleError {
    PickleError::LimitExceeded {
        file: file.to_string(),
        what,
        limit,
    }
}

/// Row-major contiguity, ignoring dimensions of size 1.
fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&dim, &stride) in shape.iter().zip(strides).rev() {
        if dim != 1 {
            if stride != expected {
                return false;
            }
            expected = match expected.checked_mul(dim) {
                Some(e) => e,
                None => return false,
            };
        }
    }
    true
}

/// Copy the elements of `t` out of `storage` into a contiguous buffer.
fn gather(storage: &[u8], elem: usize, t: &TensorRef, max_bytes: u64) -> Result<Vec<u8>, String> {
    if t.shape.len() != t.strides.len() {
        return Err(format!(
            "shape {:?} and stride {:?} have different lengths",
            t.shape, t.strides
        ));
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows", t.shape))?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    let out_len = numel
        .checked_mul(elem)
        .filter(|&n| n as u64 <= max_bytes)
        .ok_or_else(|| {
            format!("{numel} elements exceed the tensor size limit of {max_bytes} bytes")
        })?;
    // Size-1 dimensions never move; give them stride 0 so the walk below
    // cannot overflow on a huge unused stride.
    let strides: Vec<usize> = t
        .shape
        .iter()
        .zip(&t.strides)
        .map(|(&d, &s)| if d == 1 { 0 } else { s })
        .collect();
    let mut last = t.offset;
    for (&d, &s) in t.shape.iter().zip(&strides) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|span| last.checked_add(span))
            .ok_or_else(|| "strides overflow".to_string())?;
    }
    let available = storage.len() / elem;
    if last >= available {
        return Err(format!(
            "shape {:?}, strides {:?} and offset {} reach element {last}, \
             but the storage holds {available}",
            t.shape, t.strides, t.offset
        ));
    }
    let mut out = Vec::new();
    out.try_reserve_exact(out_len)
        .map_err(|_| format!("cannot allocate {out_len} bytes"))?;
    if is_contiguous(&t.shape, &strides) {
        let start = t.offset * elem;
        out.extend_from_slice(&storage[start..start + out_len]);
        return Ok(out);
    }
    // Walk the outer dimensions like an odometer; copy runs of the innermost
    // dimension at once when it is dense.
    let nd = t.shape.len();
    let (outer, run) = if nd > 0 && strides[nd - 1] == 1 {
        (nd - 1, t.shape[nd - 1])
    } else {
        (nd, 1)
    };
    let mut index = vec![0usize; outer];
    let mut base = t.offset;
    loop {
        let start = base * elem;
        out.extend_from_slice(&storage[start..start + run * elem]);
        let mut d = outer;
        loop {
            if d == 0 {
                return Ok(out);
            }
            d -= 1;
            index[d] += 1;
            base += strides[d];
            if index[d] < t.shape[d] {
                break;
            }
            base -= strides[d] * t.shape[d];
            index[d] = 0;
        }
    }
}

// ---------------------------------------------------------------------------
// The restricted pickle machine
// ---------------------------------------------------------------------------

/// A storage named by a persistent id.
#[derive(Debug)]
struct StorageRef {
    dtype: DType,
    key: String,
    numel: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// The globals this reader understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    Storage(DType),
    /// `torch.Tensor` / `torch.nn.parameter.Parameter`: only ever an argument.
    TensorType,
}

/// A pickle value. Lists and dicts live in arenas so that shared and even
/// cyclic references are plain indices.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64 (kept opaque).
    BigInt,
    /// A float (its value is never needed).
    Float,
    Str(Rc<str>),
    /// A bytes object (its content is never needed).
    Bytes,
    Tuple(Rc<[Value]>),
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

type Flattened = (
    Vec<(String, Rc<TensorRef>)>,
    Vec<SkippedEntry>,
    Option<String>,
);

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed (for error messages).
    op_at: usize,
    file: &'a str,
    limits: &'a PickleLimits,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    lists: Vec<Vec<Value>>,
    dicts: Vec<Vec<(Value, Value)>>,
    items: usize,
    /// Legacy stream: persistent ids carry a sixth item (a view, or None).
    legacy: bool,
    /// Every storage a persistent id declared, by key.
    declared: HashMap<String, Rc<StorageRef>>,
}

/// Display-safe, bounded rendering of a module or name from the pickle.
fn sanitize(s: &str) -> String {
    let escaped: String = s.escape_debug().collect();
    if escaped.chars().count() > 200 {
        let cut: String = escaped.chars().take(200).collect();
        format!("{cut}...")
    } else {
        escaped
    }
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Global::TensorType,
        ("torch", storage) => Global::Storage(DType::from_storage_name(storage)?),
        _ => return None,
    })
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], file: &'a str, limits: &'a PickleLimits) -> Self {
        Machine {
            data,
            pos: 0,
            op_at: 0,
            file,
            limits,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            lists: Vec::new(),
            dicts: Vec::new(),
            items: 0,
            legacy: false,
            declared: HashMap::new(),
        }
    }

    // -- errors -------------------------------------------------------------

    fn malformed(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            file: self.file.to_string(),
            offset: self.op_at,
            reason: reason.into(),
        }
    }

    fn limit(&self, what: &'static str, limit: usize) -> PickleError {
        PickleError::LimitExceeded {
            file: self.file.to_string(),
            what,
            limit: limit as u64,
        }
    }

    // -- input --------------------------------------------------------------

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| PickleError::Truncated {
                file: self.file.to_string(),
                offset: self.data.len(),
            })?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(eight(self.take(8)?)))
    }

    /// A length-prefixed payload, checked against the string limit first.
    fn payload(&mut self, len: u64) -> Result<&'a [u8], PickleError> {
        let max = self.limits.max_string_bytes;
        match usize::try_from(len) {
            Ok(n) if n <= max => self.take(n),
            _ => Err(self.limit("string length in bytes", max)),
        }
    }

    /// A text line (protocol 0), without its `\n`.
    fn line(&mut self) -> Result<&'a [u8], PickleError> {
        let rest = &self.data[self.pos..];
        let max = self.limits.max_string_bytes;
        match rest
            .iter()
            .take(max.saturating_add(1))
            .position(|&b| b == b'\n')
        {
            Some(n) => {
                let line = &rest[..n];
                self.pos += n + 1;
                Ok(line)
            }
            None if rest.len() > max => Err(self.limit("text line length in bytes", max)),
            None => Err(PickleError::Truncated {
                file: self.file.to_string(),
                offset: self.data.len(),
            }),
        }
    }

    fn utf8(&self, bytes: &[u8]) -> Result<Rc<str>, PickleError> {
        std::str::from_utf8(bytes)
            .map(Rc::from)
            .map_err(|_| self.malformed("string is not valid UTF-8"))
    }

    fn ascii_line(&mut self) -> Result<&'a str, PickleError> {
        let line = self.line()?;
        std::str::from_utf8(line).map_err(|_| self.malformed("text line is not valid UTF-8"))
    }

    // -- stack --------------------------------------------------------------

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        if self.stack.len() >= self.limits.max_stack_depth {
            return Err(self.limit("pickle stack depth", self.limits.max_stack_depth));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    fn top(&self) -> Result<&Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .last()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed("no MARK on the stack"))?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn count_items(&mut self, n: usize) -> Result<(), PickleError> {
        self.items = self.items.saturating_add(n);
        if self.items > self.limits.max_container_items {
            return Err(self.limit("container items", self.limits.max_container_items));
        }
        Ok(())
    }

    fn new_list(&mut self, items: Vec<Value>) -> Result<Value, PickleError> {
        self.count_items(items.len().max(1))?;
        self.lists.push(items);
        Ok(Value::List(self.lists.len() - 1))
    }

    fn new_dict(&mut self, pairs: Vec<(Value, Value)>) -> Result<Value, PickleError> {
        self.count_items(pairs.len().max(1))?;
        self.dicts.push(pairs);
        Ok(Value::Dict(self.dicts.len() - 1))
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
        if items.len() & 1 == 1 {
            return Err(self.malformed("odd number of items for a dict"));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    fn extend_top_list(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let id = match self.top()? {
            Value::List(id) => *id,
            other => {
                let kind = other.kind();
                return Err(self.malformed(format!("APPEND/ADDITEMS on a {kind}")));
            }
        };
        self.count_items(items.len())?;
        self.lists[id].extend(items);
        Ok(())
    }

    fn extend_top_dict(&mut self, pairs: Vec<(Value, Value)>) -> Result<(), PickleError> {
        let id = match self.top()? {
            Value::Dict(id) => *id,
            other => {
                let kind = other.kind();
                return Err(self.malformed(format!("SETITEM on a {kind}")));
            }
        };
        self.count_items(pairs.len())?;
        self.dicts[id].extend(pairs);
        Ok(())
    }

    fn memo_put(&mut self, index: u32) -> Result<(), PickleError> {
        let v = self.top()?.clone();
        if self.memo.len() >= self.limits.max_memo_entries && !self.memo.contains_key(&index) {
            return Err(self.limit("memo entries", self.limits.max_memo_entries));
        }
        self.memo.insert(index, v);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), PickleError> {
        let v = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| self.malformed(format!("memo key {index} was never stored")))?;
        self.push(v)
    }

    fn global(&self, module: &str, name: &str) -> Result<Value, PickleError> {
        resolve_global(module, name)
            .map(Value::Global)
            .ok_or_else(|| PickleError::ForbiddenGlobal {
                module: sanitize(module),
                name: sanitize(name),
                file: self.file.to_string(),
            })
    }

    fn text_global(&mut self) -> Result<Value, PickleError> {
        let module = self.ascii_line()?;
        let name = self.ascii_line()?;
        self.global(module, name)
    }

    // -- the interpreter ----------------------------------------------------

    /// Run to STOP and return the unpickled object.
    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_at = self.pos;
            let op = self.byte()?;
            match op {
                // PROTO
                0x80 => {
                    let proto = self.byte()?;
                    if proto > 5 {
                        return Err(self.malformed(format!("unsupported pickle protocol {proto}")));
                    }
                }
                // FRAME: framing is only a read-ahead hint.
                0x95 => {
                    self.u64()?;
                }
                // STOP
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                // MARK
                b'(' => {
                    if self.marks.len() >= self.limits.max_stack_depth {
                        return Err(self.limit("MARK depth", self.limits.max_stack_depth));
                    }
                    self.marks.push(self.stack.len());
                }
                // POP
                b'0' => {
                    if self.stack.len() > self.marks.last().copied().unwrap_or(0) {
                        self.stack.pop();
                    } else {
                        // Python's POP of an empty frame drops the mark.
                        self.pop_mark()?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                // NONE, NEWTRUE, NEWFALSE
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()))?;
                }
                // LONG1, LONG4
                0x8a => {
                    let n = self.byte()?;
                    let bytes = self.take(n.into())?;
                    self.push(long_from_le(bytes))?;
                }
                0x8b => {
                    let n = self.u32()?;
                    let bytes = self.payload(n.into())?;
                    self.push(long_from_le(bytes))?;
                }
                // INT, LONG (text)
                b'I' => {
                    let line = self.ascii_line()?.trim();
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => self.text_int(s)?,
                    };
                    self.push(v)?;
                }
                b'L' => {
                    let line = self.ascii_line()?.trim();
                    let v = self.text_int(line.strip_suffix('L').unwrap_or(line))?;
                    self.push(v)?;
                }
                // FLOAT (text), BINFLOAT (big-endian)
                b'F' => {
                    let line = self.ascii_line()?.trim();
                    line.parse::<f64>()
                        .map_err(|_| self.malformed("invalid FLOAT literal"))?;
                    self.push(Value::Float)?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?;
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'X' => {
                    let n = self.u32()?;
                    let s = self.payload(n.into())?;
                    let v = self.utf8(s)?;
                    self.push(Value::Str(v))?;
                }
                0x8c => {
                    let n = self.byte()?;
                    let s = self.payload(n.into())?;
                    let v = self.utf8(s)?;
                    self.push(Value::Str(v))?;
                }
                0x8d => {
                    let n = self.u64()?;
                    let s = self.payload(n)?;
                    let v = self.utf8(s)?;
                    self.push(Value::Str(v))?;
                }
                // UNICODE (text, raw-unicode-escape)
                b'V' => {
                    let line = self.line()?;
                    let s = raw_unicode_escape(line)
                        .ok_or_else(|| self.malformed("invalid UNICODE literal"))?;
                    self.push(Value::Str(s.into()))?;
                }
                // STRING (text), BINSTRING, SHORT_BINSTRING: Python 2 str
                b'S' => {
                    let line = self.line()?;
                    let bytes = python_string_literal(line)
                        .ok_or_else(|| self.malformed("invalid STRING literal"))?;
                    self.push(bytes_or_str(bytes))?;
                }
                b'T' => {
                    let n = self.u32()?;
                    let b = self.payload(n.into())?;
                    self.push(bytes_or_str(b.to_vec()))?;
                }
                b'U' => {
                    let n = self.byte()?;
                    let b = self.payload(n.into())?;
                    self.push(bytes_or_str(b.to_vec()))?;
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' => {
                    let n = self.u32()?;
                    self.payload(n.into())?;
                    self.push(Value::Bytes)?;
                }
                b'C' => {
                    let n = self.byte()?;
                    self.payload(n.into())?;
                    self.push(Value::Bytes)?;
                }
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    self.payload(n)?;
                    self.push(Value::Bytes)?;
                }
                // READONLY_BUFFER: no-op on an in-band buffer
                0x98 => {
                    self.top()?;
                }
                // EMPTY_TUPLE, TUPLE, TUPLE1..3
                b')' => self.push(Value::Tuple(Rc::from(Vec::new())))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items.into()))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err(self.malformed("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items.into()))?;
                }
                // EMPTY_LIST, LIST, APPEND, APPENDS
                b']' => {
                    let v = self.new_list(Vec::new())?;
                    self.push(v)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.new_list(items)?;
                    self.push(v)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top_list(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_top_list(items)?;
                }
                // EMPTY_SET, ADDITEMS, FROZENSET: sets are kept as lists
                0x8f => {
                    let v = self.new_list(Vec::new())?;
                    self.push(v)?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_top_list(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.new_list(items)?;
                    self.push(v)?;
                }
                // EMPTY_DICT, DICT, SETITEM, SETITEMS
                b'}' => {
                    let v = self.new_dict(Vec::new())?;
                    self.push(v)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let v = self.new_dict(pairs)?;
                    self.push(v)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_top_dict(vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.extend_top_dict(pairs)?;
                }
                // PUT, BINPUT, LONG_BINPUT, MEMOIZE
                b'p' => {
                    let line = self.ascii_line()?;
                    let index = line
                        .trim()
                        .parse::<u32>()
                        .map_err(|_| self.malformed("invalid PUT index"))?;
                    self.memo_put(index)?;
                }
                b'q' => {
                    let index = self.byte()?;
                    self.memo_put(index.into())?;
                }
                b'r' => {
                    let index = self.u32()?;
                    self.memo_put(index)?;
                }
                0x94 => {
                    let index = u32::try_from(self.memo.len())
                        .map_err(|_| self.limit("memo entries", self.limits.max_memo_entries))?;
                    self.memo_put(index)?;
                }
                // GET, BINGET, LONG_BINGET
                b'g' => {
                    let line = self.ascii_line()?;
                    let index = line
                        .trim()
                        .parse::<u32>()
                        .map_err(|_| self.malformed("invalid GET index"))?;
                    self.memo_get(index)?;
                }
                b'h' => {
                    let index = self.byte()?;
                    self.memo_get(index.into())?;
                }
                b'j' => {
                    let index = self.u32()?;
                    self.memo_get(index)?;
                }
                // GLOBAL, STACK_GLOBAL
                b'c' => {
                    let v = self.text_global()?;
                    self.push(v)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let v = match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => self.global(m, n)?,
                        _ => return Err(self.malformed("STACK_GLOBAL needs two strings")),
                    };
                    self.push(v)?;
                }
                // INST (text global + call), OBJ (call class below the mark)
                b'i' => {
                    let callable = self.text_global()?;
                    let args = self.pop_mark()?;
                    let v = self.call(&callable, args)?;
                    self.push(v)?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.malformed("OBJ without a class"));
                    }
                    let callable = items.remove(0);
                    let v = self.call(&callable, items)?;
                    self.push(v)?;
                }
                // REDUCE
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = match args {
                        Value::Tuple(t) => t.to_vec(),
                        other => {
                            return Err(self.malformed(format!(
                                "REDUCE arguments are a {}, not a tuple",
                                other.kind()
                            )))
                        }
                    };
                    let v = self.call(&callable, args)?;
                    self.push(v)?;
                }
                // NEWOBJ, NEWOBJ_EX: cls.__new__(cls, *args) -- only OrderedDict
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?; // kwargs
                    }
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    match cls {
                        Value::Global(Global::OrderedDict) => {
                            let v = self.new_dict(Vec::new())?;
                            self.push(v)?;
                        }
                        other => {
                            return Err(self.malformed(format!(
                                "NEWOBJ on a {} that is not a constructible class",
                                other.kind()
                            )))
                        }
                    }
                }
                // BUILD: state for an OrderedDict (its `_metadata`) or a
                // tensor is not needed and is dropped.
                b'b' => {
                    let _state = self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => {
                            let kind = other.kind();
                            return Err(self.malformed(format!("BUILD on a {kind}")));
                        }
                    }
                }
                // BINPERSID, PERSID
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                b'P' => {
                    return Err(self
                        .malformed("text PERSID is not used by torch.save (its ids are tuples)"));
                }
                // EXT1/2/4 (copyreg extension registry), NEXT_BUFFER
                // (out-of-band data): never written by torch.save.
                _ => {
                    return Err(PickleError::UnsupportedOpcode {
                        file: self.file.to_string(),
                        offset: self.op_at,
                        opcode: op,
                    })
                }
            }
        }
    }

    fn text_int(&self, s: &str) -> Result<Value, PickleError> {
        if let Ok(v) = s.parse::<i64>() {
            return Ok(Value::Int(v));
        }
        let digits = s.strip_prefix('-').unwrap_or(s);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Value::BigInt)
        } else {
            Err(self.malformed("invalid INT/LONG literal"))
        }
    }

    /// `('storage', <StorageType>, key, location, numel)`, with a sixth item
    /// `None` in the legacy format.
    fn persistent_load(&mut self, pid: Value) -> Result<Value, PickleError> {
        let len = if self.legacy { 6 } else { 5 };
        let items = match &pid {
            Value::Tuple(items) if items.len() == len => items,
            _ => {
                return Err(self.malformed(format!(
                    "persistent id is a {} and not a {len}-tuple \
                     ('storage', type, key, location, numel{})",
                    pid.kind(),
                    if self.legacy { ", view" } else { "" }
                )))
            }
        };
        if self.legacy && !matches!(items[5], Value::None) {
            return Err(self.malformed("storage views (PyTorch < 1.0) are not supported"));
        }
        match &items[0] {
            Value::Str(s) if &**s == "storage" => {}
            _ => return Err(self.malformed("persistent id does not start with 'storage'")),
        }
        let dtype = match &items[1] {
            Value::Global(Global::Storage(dtype)) => *dtype,
            other => {
                return Err(self.malformed(format!(
                    "persistent id names a {} instead of a storage type",
                    other.kind()
                )))
            }
        };
        let key = match &items[2] {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            other => {
                return Err(self.malformed(format!("storage key is a {}", other.kind())));
            }
        };
        let safe = !key.is_empty()
            && key.len() <= 128
            && key != "."
            && key != ".."
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !safe {
            return Err(self.malformed(format!("unsafe storage key {:?}", sanitize(&key))));
        }
        let numel = match &items[4] {
            Value::Int(n) => {
                usize::try_from(*n).map_err(|_| self.malformed("negative storage element count"))?
            }
            other => {
                return Err(self.malformed(format!("storage size is a {}", other.kind())));
            }
        };
        let storage = Rc::new(StorageRef { dtype, key, numel });
        match self.declared.get(&storage.key) {
            Some(seen) if seen.dtype != dtype || seen.numel != numel => {
                return Err(self.malformed(format!(
                    "storage {:?} is declared twice with different types or sizes",
                    sanitize(&storage.key)
                )))
            }
            Some(_) => {}
            None => {
                if self.declared.len() >= self.limits.max_memo_entries {
                    return Err(self.limit("storages", self.limits.max_memo_entries));
                }
                self.declared.insert(storage.key.clone(), storage.clone());
            }
        }
        Ok(Value::Storage(storage))
    }

    fn usizes(&self, v: &Value, what: &str) -> Result<Vec<usize>, PickleError> {
        let items: Vec<Value> = match v {
            Value::Tuple(t) => t.to_vec(),
            Value::List(id) => self.lists[*id].clone(),
            other => {
                return Err(self.malformed(format!("tensor {what} is a {}", other.kind())));
            }
        };
        items
            .iter()
            .map(|item| match item {
                Value::Int(n) => usize::try_from(*n)
                    .map_err(|_| self.malformed(format!("negative value in tensor {what}"))),
                other => Err(self.malformed(format!(
                    "tensor {what} holds a {} instead of an int",
                    other.kind()
                ))),
            })
            .collect()
    }

    fn rebuild_tensor(&self, args: &[Value]) -> Result<Value, PickleError> {
        let storage = match &args[0] {
            Value::Storage(s) => s.clone(),
            other => {
                return Err(self.malformed(format!(
                    "tensor rebuilt from a {} instead of a storage",
                    other.kind()
                )))
            }
        };
        let offset = match &args[1] {
            Value::Int(n) => {
                usize::try_from(*n).map_err(|_| self.malformed("negative storage offset"))?
            }
            other => {
                return Err(self.malformed(format!("storage offset is a {}", other.kind())));
            }
        };
        let shape = self.usizes(&args[2], "size")?;
        let strides = self.usizes(&args[3], "stride")?;
        if shape.len() != strides.len() {
            return Err(self.malformed("tensor size and stride have different lengths"));
        }
        Ok(Value::Tensor(Rc::new(TensorRef {
            storage,
            offset,
            shape,
            strides,
        })))
    }

    /// Apply an allowed global to arguments.
    fn call(&mut self, callable: &Value, args: Vec<Value>) -> Result<Value, PickleError> {
        let global = match callable {
            Value::Global(g) => *g,
            other => {
                return Err(self.malformed(format!("call of a {}, not a global", other.kind())));
            }
        };
        let arity = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(self.malformed(format!("{what} called with {} arguments", args.len())))
            }
        };
        match global {
            Global::OrderedDict => {
                arity(args.len() <= 1, "OrderedDict")?;
                let pairs = match args.first() {
                    None => Vec::new(),
                    Some(Value::Dict(id)) => self.dicts[*id].clone(),
                    Some(Value::List(id)) => {
                        let items = self.lists[*id].clone();
                        let mut pairs = Vec::with_capacity(items.len());
                        for item in items {
                            let pair = match item {
                                Value::Tuple(t) => t.to_vec(),
                                Value::List(id) => self.lists[id].clone(),
                                _ => Vec::new(),
                            };
                            match <[Value; 2]>::try_from(pair) {
                                Ok([k, v]) => pairs.push((k, v)),
                                Err(_) => {
                                    return Err(self.malformed("OrderedDict item is not a pair"))
                                }
                            }
                        }
                        pairs
                    }
                    Some(other) => {
                        return Err(
                            self.malformed(format!("OrderedDict built from a {}", other.kind()))
                        )
                    }
                };
                self.new_dict(pairs)
            }
            Global::RebuildTensorV2 => {
                arity((6..=7).contains(&args.len()), "_rebuild_tensor_v2")?;
                self.rebuild_tensor(&args)
            }
            Global::RebuildTensor => {
                arity(args.len() == 4, "_rebuild_tensor")?;
                self.rebuild_tensor(&args)
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let n = if global == Global::RebuildParameter {
                    3
                } else {
                    4
                };
                arity(args.len() == n, "_rebuild_parameter")?;
                match &args[0] {
                    Value::Tensor(t) => Ok(Value::Tensor(t.clone())),
                    other => Err(self.malformed(format!(
                        "parameter rebuilt from a {} instead of a tensor",
                        other.kind()
                    ))),
                }
            }
            Global::RebuildFromTypeV2 => {
                arity(args.len() == 4, "_rebuild_from_type_v2")?;
                match (&args[0], &args[1], &args[2]) {
                    (
                        Value::Global(
                            inner @ (Global::RebuildTensorV2
                            | Global::RebuildTensor
                            | Global::RebuildParameter
                            | Global::RebuildParameterWithState),
                        ),
                        Value::Global(Global::TensorType),
                        Value::Tuple(inner_args),
                    ) => {
                        let inner = Value::Global(*inner);
                        let inner_args = inner_args.to_vec();
                        self.call(&inner, inner_args)
                    }
                    _ => Err(self.malformed(
                        "_rebuild_from_type_v2 needs (rebuild function, tensor type, args, state)",
                    )),
                }
            }
            Global::Storage(_) | Global::TensorType => {
                Err(self.malformed("storage and tensor types are not callable in a checkpoint"))
            }
        }
    }

    // -- state dict ---------------------------------------------------------

    /// Tensors of the unpickled root, flattened; see the module docs.
    fn flatten(&self, root: &Value) -> Result<Flattened, PickleError> {
        let root_id = match root {
            Value::Dict(id) => *id,
            other => {
                return Err(PickleError::NotAStateDict {
                    file: self.file.to_string(),
                    found: other.kind().to_string(),
                })
            }
        };
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        let mut index = HashMap::new();
        let root_pairs = &self.dicts[root_id];
        let has_tensor = root_pairs
            .iter()
            .any(|(_, v)| matches!(v, Value::Tensor(_)));
        let wrapper = if has_tensor {
            None
        } else {
            ["state_dict", "model"].into_iter().find_map(|w| {
                root_pairs.iter().rev().find_map(|(k, v)| match (k, v) {
                    (Value::Str(k), Value::Dict(id)) if &**k == w => Some((w, *id)),
                    _ => None,
                })
            })
        };
        match wrapper {
            None => self.walk(root_id, "", 0, &mut out, &mut skipped, &mut index)?,
            Some((w, inner)) => {
                for (k, v) in root_pairs {
                    if !matches!(k, Value::Str(s) if &**s == w) {
                        skipped.push(SkippedEntry {
                            name: key_name(k),
                            kind: v.kind().to_string(),
                        });
                    }
                }
                self.walk(inner, "", 0, &mut out, &mut skipped, &mut index)?;
            }
        }
        Ok((out, skipped, wrapper.map(|(w, _)| w.to_string())))
    }

    fn walk(
        &self,
        id: usize,
        prefix: &str,
        depth: usize,
        out: &mut Vec<(String, Rc<TensorRef>)>,
        skipped: &mut Vec<SkippedEntry>,
        index: &mut HashMap<String, usize>,
    ) -> Result<(), PickleError> {
        if depth > self.limits.max_nesting_depth {
            return Err(self.limit("state dict nesting depth", self.limits.max_nesting_depth));
        }
        for (k, v) in &self.dicts[id] {
            let name = format!("{prefix}{}", key_name(k));
            match v {
                Value::Tensor(t) => match index.get(&name) {
                    Some(&at) => out[at].1 = t.clone(),
                    None => {
                        index.insert(name.clone(), out.len());
                        out.push((name, t.clone()));
                    }
                },
                Value::Dict(inner) => {
                    self.walk(*inner, &format!("{name}."), depth + 1, out, skipped, index)?
                }
                other => skipped.push(SkippedEntry {
                    name,
                    kind: other.kind().to_string(),
                }),
            }
        }
        Ok(())
    }
}

/// A dict key as part of a flattened name.
fn key_name(k: &Value) -> String {
    match k {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Value::None => "None".to_string(),
        other => format!("<{} key>", other.kind()),
    }
}

/// Two's-complement little-endian integer (LONG1/LONG4).
fn long_from_le(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() > 8 {
        return Value::BigInt;
    }
    let fill = if bytes[bytes.len() - 1] & 0x80 != 0 {
        0xff
    } else {
        0
    };
    let mut buf = [fill; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(buf))
}

fn bytes_or_str(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(s) => Value::Str(s.into()),
        Err(_) => Value::Bytes,
    }
}

/// Decode a protocol-0 STRING literal: a quoted Python 2 `repr` of a str.
fn python_string_literal(line: &[u8]) -> Option<Vec<u8>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() < 2 {
        return None;
    }
    let quote = line[0];
    if !(quote == b'\'' || quote == b'"') || line[line.len() - 1] != quote {
        return None;
    }
    let body = &line[1..line.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let e = *body.get(i)?;
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'v' => out.push(0x0b),
            b'\\' | b'\'' | b'"' => out.push(e),
            b'\n' => {}
            b'x' => {
                let hex = body.get(i..i + 2)?;
                let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(v);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut n = 1;
                while n < 3 {
                    match body.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                            n += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

/// Decode a protocol-0 UNICODE line (raw-unicode-escape).
fn raw_unicode_escape(line: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if b == b'\\' {
            let width = match line.get(i + 1) {
                Some(b'u') => Some(4),
                Some(b'U') => Some(8),
                _ => None,
            };
            if let Some(width) = width {
                let hex = line.get(i + 2..i + 2 + width)?;
                let code = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(char::from_u32(code)?);
                i += 2 + width;
                continue;
            }
        }
        out.push(char::from(b));
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
