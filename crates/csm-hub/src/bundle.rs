//! Named sets of hub files a feature needs (`csm download csm-1b`). Plain
//! data: a later model (Whisper, a speaker encoder) adds a [`Role`] and an
//! entry to [`BUNDLES`].

use crate::client::{Hub, Resolved};
use crate::progress::{Cancel, DownloadObserver};
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
}

/// One file of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleFile {
    /// What it is for.
    pub role: Role,
    /// `org/name` on the hub.
    pub repo: &'static str,
    /// Path inside the repo.
    pub file: &'static str,
}

/// A named set of files, all from the `main` revision of their repos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bundle {
    /// The name users type (`csm-1b`).
    pub name: &'static str,
    /// One line for listings.
    pub description: &'static str,
    /// Its files.
    pub files: &'static [BundleFile],
}

/// CSM-1B with the codec and tokenizer it needs. `sesame/csm-1b` is gated:
/// its licence must be accepted on the hub first. The Llama tokenizer comes
/// from `unsloth/Llama-3.2-1B`, an ungated copy of Meta's.
pub const CSM_1B: Bundle = Bundle {
    name: "csm-1b",
    description: "Sesame CSM-1B (gated), the Mimi codec and the Llama 3.2 tokenizer",
    files: &[
        BundleFile {
            role: Role::Model,
            repo: "sesame/csm-1b",
            file: "model.safetensors",
        },
        BundleFile {
            role: Role::Model,
            repo: "sesame/csm-1b",
            file: "config.json",
        },
        BundleFile {
            role: Role::Codec,
            repo: "kyutai/moshiko-pytorch-bf16",
            file: "tokenizer-e351c8d8-checkpoint125.safetensors",
        },
        BundleFile {
            role: Role::Tokenizer,
            repo: "unsloth/Llama-3.2-1B",
            file: "tokenizer.json",
        },
    ],
};

/// Every bundle `csm download NAME` knows.
pub const BUNDLES: &[Bundle] = &[CSM_1B];

/// The bundle called `name`.
pub fn find_bundle(name: &str) -> Option<&'static Bundle> {
    BUNDLES.iter().find(|b| b.name == name)
}

impl Bundle {
    /// Its files with `role`.
    pub fn files_for(&self, role: Role) -> impl Iterator<Item = &'static BundleFile> {
        self.files.iter().filter(move |f| f.role == role)
    }

    /// Its repos, each once, in order.
    pub fn repos(&self) -> Vec<&'static str> {
        let mut repos: Vec<&'static str> = Vec::new();
        for f in self.files {
            if !repos.contains(&f.repo) {
                repos.push(f.repo);
            }
        }
        repos
    }

    /// Downloads every file (repo by repo, each repo from one commit) and
    /// returns them in the bundle's order.
    pub fn download(
        &self,
        hub: &Hub,
        observer: &mut dyn DownloadObserver,
        cancel: &Cancel,
    ) -> Result<Vec<(BundleFile, Resolved)>, HubError> {
        let mut out = Vec::with_capacity(self.files.len());
        for repo in self.repos() {
            let files: Vec<&BundleFile> = self.files.iter().filter(|f| f.repo == repo).collect();
            let names: Vec<&str> = files.iter().map(|f| f.file).collect();
            let resolved = hub.download_files(repo, MAIN, &names, observer, cancel)?;
            out.extend(files.into_iter().copied().zip(resolved));
        }
        let order = |f: &BundleFile| self.files.iter().position(|g| g == f);
        out.sort_by_key(|(f, _)| order(f));
        Ok(out)
    }

    /// Where each file is in the cache, if all are there (no network).
    pub fn cached(&self, hub: &Hub) -> Option<Vec<(BundleFile, std::path::PathBuf)>> {
        self.files
            .iter()
            .map(|f| {
                hub.cache()
                    .cached_file(f.repo, MAIN, f.file)
                    .map(|p| (*f, p))
            })
            .collect()
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
        for f in b.files {
            crate::repo::validate_repo_id(f.repo).unwrap();
            crate::repo::validate_file_name(f.file).unwrap();
        }
        assert!(find_bundle("nope").is_none());
    }
}
