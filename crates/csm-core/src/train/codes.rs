//! The on-disk cache of Mimi codes: every utterance is encoded once, so a
//! second run (or `csm prepare` beforehand) starts training immediately.
//!
//! An entry is keyed by the utterance's content (24 kHz samples + text), the
//! codec's fingerprint and the number of codebooks; it holds the codes as
//! `[T, K]` int32 in a safetensors file written atomically.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use mlx_rs::Array;
use sha2::{Digest, Sha256};

use crate::checkpoint::write::save_safetensors;
use crate::checkpoint::{CheckpointError, WeightMap};
use crate::data::Utterance;

/// Mimi codes of one utterance, frame-major: `frames[t][k]`.
pub type Codes = Vec<Vec<u32>>;

/// A directory of cached codes for one codec and codebook count.
#[derive(Debug, Clone)]
pub struct CodesCache {
    dir: PathBuf,
    codec_fingerprint: String,
    num_codebooks: usize,
}

/// Outcome of [`CodesCache::encode_all`].
#[derive(Debug, Default)]
pub struct EncodeStats {
    /// Entries found in the cache.
    pub hits: usize,
    /// Utterances encoded now.
    pub encoded: usize,
    /// Cache entries that were unreadable and were re-encoded (named).
    pub repaired: Vec<String>,
}

impl CodesCache {
    /// A cache under `dir` for a codec with this fingerprint.
    pub fn new(dir: impl Into<PathBuf>, codec_fingerprint: &str, num_codebooks: usize) -> Self {
        CodesCache {
            dir: dir.into(),
            codec_fingerprint: codec_fingerprint.to_string(),
            num_codebooks,
        }
    }

    /// The default cache directory: `codes` in csm's cache folder
    /// ([`crate::runtime::cache_root`], from the variables `lookup` gives).
    pub fn default_dir(lookup: impl Fn(&str) -> Option<OsString>) -> PathBuf {
        crate::runtime::cache_root(lookup).join("codes")
    }

    /// The entry key of an utterance.
    pub fn key(&self, utterance: &Utterance) -> String {
        let mut h = Sha256::new();
        h.update(b"csm-codes-v1\0");
        h.update(utterance.content_key().as_bytes());
        h.update(self.codec_fingerprint.as_bytes());
        h.update((self.num_codebooks as u64).to_le_bytes());
        hex(&h.finalize())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.safetensors"))
    }

    /// Reads an entry; `Ok(None)` when absent.
    pub fn get(&self, key: &str) -> Result<Option<Codes>, CheckpointError> {
        let path = self.path(key);
        if !path.exists() {
            return Ok(None);
        }
        let map = WeightMap::from_safetensors(std::slice::from_ref(&path), None)?;
        let codes = map
            .tensors
            .get("codes")
            .ok_or_else(|| CheckpointError::Mismatch {
                source_name: path.display().to_string(),
                missing: vec!["codes".into()],
                unexpected: map.tensors.keys().cloned().collect(),
                misshaped: vec![],
            })?;
        let shape = codes.shape().to_vec();
        if shape.len() != 2 || shape[1] as usize != self.num_codebooks {
            return Err(CheckpointError::Mismatch {
                source_name: path.display().to_string(),
                missing: vec![],
                unexpected: vec![],
                misshaped: vec![("codes".into(), vec![-1, self.num_codebooks as i32], shape)],
            });
        }
        let flat = codes.as_slice::<i32>();
        Ok(Some(
            flat.chunks(self.num_codebooks)
                .map(|row| row.iter().map(|&c| c as u32).collect())
                .collect(),
        ))
    }

    /// Writes an entry atomically.
    pub fn put(&self, key: &str, codes: &Codes) -> Result<(), CheckpointError> {
        let path = self.path(key);
        let parent = path.parent().expect("entry paths have a parent");
        std::fs::create_dir_all(parent).map_err(|source| CheckpointError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        let flat: Vec<i32> = codes.iter().flatten().map(|&c| c as i32).collect();
        let tensors = BTreeMap::from([(
            "codes".to_string(),
            Array::from_slice(&flat, &[codes.len() as i32, self.num_codebooks as i32]),
        )]);
        save_safetensors(&path, &tensors, &HashMap::new())
    }

    /// Codes of every utterance, from the cache or from `encode` (whose
    /// results are stored). `progress(done, total)` is called after each.
    /// An unreadable entry is re-encoded and named in the stats.
    pub fn encode_all<E>(
        &self,
        utterances: &[&Utterance],
        mut encode: impl FnMut(&[f32]) -> Result<Codes, E>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(Vec<Codes>, EncodeStats), E>
    where
        E: From<CheckpointError>,
    {
        let mut stats = EncodeStats::default();
        let mut out = Vec::with_capacity(utterances.len());
        for (i, utt) in utterances.iter().enumerate() {
            let key = self.key(utt);
            let cached = match self.get(&key) {
                Ok(hit) => hit,
                Err(e) => {
                    tracing::warn!(
                        "re-encoding {} {}: cache entry unreadable ({e})",
                        utt.recording_id,
                        utt.index
                    );
                    stats.repaired.push(self.path(&key).display().to_string());
                    None
                }
            };
            let codes = match cached {
                Some(c) => {
                    stats.hits += 1;
                    c
                }
                None => {
                    let c = encode(utt.samples())?;
                    self.put(&key, &c)?;
                    stats.encoded += 1;
                    c
                }
            };
            out.push(codes);
            progress(i + 1, utterances.len());
        }
        Ok((out, stats))
    }
}

/// A cheap, stable fingerprint of weight files: for each file its name,
/// size, safetensors header (names, shapes, offsets) or first MiB, and last
/// MiB. Hashing multi-GB checkpoints in full on every run would cost tens
/// of seconds; these bytes change whenever the weights do in practice.
pub fn fingerprint_files(paths: &[PathBuf]) -> Result<String, CheckpointError> {
    let mut h = Sha256::new();
    for path in paths {
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        h.update(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        h.update(len.to_le_bytes());
        let chunk = 1 << 20;
        let mut head = vec![0u8; chunk.min(len as usize)];
        f.read_exact(&mut head).map_err(io)?;
        h.update(&head);
        if len as usize > chunk {
            f.seek(SeekFrom::Start(len - chunk as u64)).map_err(io)?;
            let mut tail = vec![0u8; chunk];
            f.read_exact(&mut tail).map_err(io)?;
            h.update(&tail);
        }
    }
    Ok(hex(&h.finalize())[..16].to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a codes cache for `fingerprint` lives under `root`.
pub fn cache_dir_for(root: &Path, fingerprint: &str) -> PathBuf {
    root.join(fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn utt(text: &str, n: usize) -> Utterance {
        let audio: Arc<[f32]> = (0..n).map(|i| (i as f32 * 0.01).sin()).collect();
        Utterance::new("rec", 0, text, audio, 0..n)
    }

    #[test]
    fn second_pass_hits_the_cache_and_keys_depend_on_codec() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CodesCache::new(dir.path(), "codec-a", 3);
        let (a, b) = (utt("one", 100), utt("two", 100));
        let mut calls = 0;
        let mut enc = |s: &[f32]| -> Result<Codes, CheckpointError> {
            calls += 1;
            Ok(vec![vec![s.len() as u32, 1, 2], vec![3, 4, 5]])
        };
        let (codes, stats) = cache.encode_all(&[&a, &b], &mut enc, |_, _| {}).unwrap();
        assert_eq!(stats.encoded, 2);
        assert_eq!(codes[0], vec![vec![100, 1, 2], vec![3, 4, 5]]);
        let (again, stats) = cache.encode_all(&[&a, &b], &mut enc, |_, _| {}).unwrap();
        assert_eq!((stats.hits, stats.encoded), (2, 0));
        assert_eq!(again, codes);
        assert_eq!(calls, 2);
        let other = CodesCache::new(dir.path(), "codec-b", 3);
        assert_ne!(other.key(&a), cache.key(&a));
    }

    #[test]
    fn corrupt_entry_is_reencoded_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CodesCache::new(dir.path(), "c", 2);
        let a = utt("x", 10);
        let key = cache.key(&a);
        cache.put(&key, &vec![vec![1, 2]]).unwrap();
        std::fs::write(cache.path(&key), b"garbage").unwrap();
        let enc = |_: &[f32]| -> Result<Codes, CheckpointError> { Ok(vec![vec![7, 8]]) };
        let (codes, stats) = cache.encode_all(&[&a], enc, |_, _| {}).unwrap();
        assert_eq!(codes[0], vec![vec![7, 8]]);
        assert_eq!(stats.repaired.len(), 1);
        assert_eq!(cache.get(&key).unwrap(), Some(vec![vec![7, 8]]));
    }

    #[test]
    fn fingerprint_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.bin");
        std::fs::write(&p, vec![1u8; 3 << 20]).unwrap();
        let a = fingerprint_files(std::slice::from_ref(&p)).unwrap();
        let mut bytes = vec![1u8; 3 << 20];
        bytes[(3 << 20) - 5] = 2;
        std::fs::write(&p, bytes).unwrap();
        assert_ne!(a, fingerprint_files(std::slice::from_ref(&p)).unwrap());
    }
}
