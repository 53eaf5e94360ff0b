//! The hub cache on disk, the layout huggingface_hub (Python), transformers
//! and `hf-hub` (Rust) share:
//!
//! ```text
//! {cache}/models--{org}--{name}/
//!     blobs/{etag}                  the files' bytes, named by ETag
//!     blobs/{etag}.incomplete       a transfer under way or interrupted
//!     snapshots/{commit}/{file}     relative symlinks to ../../blobs/{etag}
//!     refs/{revision}               the commit a branch or tag pointed to
//! {cache}/.locks/models--{org}--{name}/{etag}.lock
//! ```
//!
//! Folder names and snapshot paths come from `hf_hub::Repo` /
//! `hf_hub::CacheRepo`; reading refs, atomic writes, links, listing and
//! deletion are ours (see the crate docs for why).

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use crate::repo::is_commit_hash;
use crate::HubError;

/// A hub cache folder (`~/.cache/huggingface/hub` by default).
#[derive(Debug, Clone)]
pub struct HubCache {
    inner: hf_hub::Cache,
}

/// What kind of repo a cache folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// `models--*`.
    Model,
    /// `datasets--*`.
    Dataset,
    /// `spaces--*`.
    Space,
}

impl RepoKind {
    fn prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
            RepoKind::Space => "spaces",
        }
    }
}

/// One file of a cached snapshot.
#[derive(Debug, Clone)]
pub struct CachedFile {
    /// Path inside the repo (`/`-separated).
    pub name: String,
    /// The snapshot path (a symlink to the blob).
    pub path: PathBuf,
    /// Bytes (0 when the blob is missing).
    pub size: u64,
}

/// One cached commit of a repo.
#[derive(Debug, Clone)]
pub struct CachedRevision {
    /// The commit hash.
    pub commit: String,
    /// Branches or tags that pointed to it when last downloaded.
    pub refs: Vec<String>,
    /// Its files, sorted by name.
    pub files: Vec<CachedFile>,
}

/// One repo in the cache.
#[derive(Debug, Clone)]
pub struct CachedRepo {
    /// `org/name`.
    pub repo: String,
    /// Model, dataset or space.
    pub kind: RepoKind,
    /// `{cache}/models--org--name`.
    pub path: PathBuf,
    /// Bytes of its complete blobs (each counted once, however many
    /// snapshots link to it).
    pub size_on_disk: u64,
    /// Bytes of interrupted transfers (`*.incomplete`).
    pub incomplete_bytes: u64,
    /// Its cached commits.
    pub revisions: Vec<CachedRevision>,
}

/// What [`HubCache::delete_repo`] removed.
#[derive(Debug, Clone)]
pub struct DeletedRepo {
    /// The folder removed.
    pub path: PathBuf,
    /// Bytes freed (blobs and partial files).
    pub freed: u64,
}

impl HubCache {
    /// The cache at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            inner: hf_hub::Cache::new(root.into()),
        }
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        self.inner.path()
    }

    /// The `hf_hub::Cache` over the same folder, for code that uses hf-hub
    /// directly.
    pub fn hf_hub(&self) -> &hf_hub::Cache {
        &self.inner
    }

    fn model(repo: &str) -> Repo {
        Repo::new(repo.to_string(), RepoType::Model)
    }

    /// `{cache}/models--org--name`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root().join(Self::model(repo).folder_name())
    }

    /// `{cache}/models--org--name/snapshots/{commit}`.
    pub fn snapshot_dir(&self, repo: &str, commit: &str) -> PathBuf {
        self.inner.repo(Self::model(repo)).pointer_path(commit)
    }

    pub(crate) fn blob_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(etag)
    }

    pub(crate) fn lock_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.root()
            .join(".locks")
            .join(Self::model(repo).folder_name())
            .join(format!("{etag}.lock"))
    }

    fn ref_path(&self, repo: &str, revision: &str) -> PathBuf {
        self.repo_dir(repo).join("refs").join(revision)
    }

    /// The commit `revision` names in the cache: itself if it is a commit
    /// hash with a snapshot, else what `refs/{revision}` holds.
    pub fn commit_for(&self, repo: &str, revision: &str) -> Option<String> {
        if is_commit_hash(revision) && self.snapshot_dir(repo, revision).is_dir() {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.ref_path(repo, revision)).ok()?;
        let commit = text.trim();
        (!commit.is_empty()).then(|| commit.to_string())
    }

    /// The cached copy of `file` at `revision`, if complete (huggingface_hub's
    /// `try_to_load_from_cache`).
    pub fn cached_file(&self, repo: &str, revision: &str, file: &str) -> Option<PathBuf> {
        let commit = self.commit_for(repo, revision)?;
        let path = self.snapshot_dir(repo, &commit).join(file);
        path.is_file().then_some(path)
    }

    /// The files of the cached snapshot `revision` names, with its commit.
    pub fn snapshot_files(&self, repo: &str, revision: &str) -> Option<(String, Vec<CachedFile>)> {
        let commit = self.commit_for(repo, revision)?;
        let dir = self.snapshot_dir(repo, &commit);
        let mut files = Vec::new();
        walk_files(&dir, "", &mut files);
        files.sort_by(|a, b| a.name.cmp(&b.name));
        (!files.is_empty()).then_some((commit, files))
    }

    /// Records that `revision` points to `commit` (`refs/{revision}`),
    /// atomically; nothing to do for a commit hash or an unchanged ref.
    pub(crate) fn write_ref(
        &self,
        repo: &str,
        revision: &str,
        commit: &str,
    ) -> Result<(), HubError> {
        if revision == commit {
            return Ok(());
        }
        let path = self.ref_path(repo, revision);
        if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == commit) {
            return Ok(());
        }
        let dir = path.parent().expect("ref path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| HubError::io("create", dir, e))?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy(),
            unique_suffix()
        ));
        std::fs::write(&tmp, commit).map_err(|e| HubError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            HubError::io("write", &path, e)
        })
    }

    /// Makes `snapshots/{commit}/{file}` a relative symlink to
    /// `blobs/{etag}` (replacing whatever was there, atomically); a copy
    /// where symlinks are not available.
    pub(crate) fn link_snapshot(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
        etag: &str,
    ) -> Result<PathBuf, HubError> {
        let pointer = self.snapshot_dir(repo, commit).join(file);
        let dir = pointer.parent().expect("pointer has a parent");
        std::fs::create_dir_all(dir).map_err(|e| HubError::io("create", dir, e))?;
        let blob = self.blob_path(repo, etag);
        // snapshots/{commit}/a/b.json -> ../../../blobs/{etag}
        let depth = file.split('/').count() + 1;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        let tmp = dir.join(format!(".{etag}.{}.link", unique_suffix()));
        make_link(&target, &blob, &tmp).map_err(|e| HubError::io("create the link", &tmp, e))?;
        std::fs::rename(&tmp, &pointer).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            HubError::io("create the link", &pointer, e)
        })?;
        Ok(pointer)
    }

    /// Every repo in the cache, sorted by kind and name. A missing cache
    /// folder is an empty list.
    pub fn list(&self) -> Result<Vec<CachedRepo>, HubError> {
        let entries = match std::fs::read_dir(self.root()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HubError::io("read", self.root(), e)),
        };
        let mut repos: Vec<CachedRepo> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (kind, repo) = parse_folder_name(&name)?;
                e.path().is_dir().then(|| scan_repo(e.path(), kind, repo))
            })
            .collect();
        repos.sort_by(|a, b| {
            (a.kind.prefix(), a.repo.as_str()).cmp(&(b.kind.prefix(), b.repo.as_str()))
        });
        Ok(repos)
    }

    /// The cached model repo `repo`, if any.
    pub fn repo(&self, repo: &str) -> Option<CachedRepo> {
        let dir = self.repo_dir(repo);
        dir.is_dir()
            .then(|| scan_repo(dir, RepoKind::Model, repo.to_string()))
    }

    /// Deletes model repo `repo` from the cache (all its revisions, partial
    /// files and locks). The folder is first renamed aside, so a failure
    /// never leaves a half-deleted repo that looks usable.
    pub fn delete_repo(&self, repo: &str) -> Result<DeletedRepo, HubError> {
        crate::repo::validate_repo_id(repo)?;
        let scanned = self.repo(repo).ok_or_else(|| HubError::NotCached {
            repo: repo.to_string(),
            cache: self.root().to_path_buf(),
        })?;
        let folder = Self::model(repo).folder_name();
        let trash = self
            .root()
            .join(format!(".csm-deleting-{folder}-{}", unique_suffix()));
        std::fs::rename(&scanned.path, &trash)
            .map_err(|e| HubError::io("remove", &scanned.path, e))?;
        std::fs::remove_dir_all(&trash).map_err(|e| HubError::io("remove", &trash, e))?;
        let _ = std::fs::remove_dir_all(self.root().join(".locks").join(&folder));
        Ok(DeletedRepo {
            path: scanned.path,
            freed: scanned.size_on_disk + scanned.incomplete_bytes,
        })
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(unix)]
fn make_link(target: &Path, _blob: &Path, at: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

#[cfg(windows)]
fn make_link(target: &Path, blob: &Path, at: &Path) -> std::io::Result<()> {
    // Symlinks need developer mode or admin rights on Windows: copy instead,
    // as huggingface_hub does.
    std::os::windows::fs::symlink_file(target, at).or_else(|_| std::fs::copy(blob, at).map(|_| ()))
}

#[cfg(not(any(unix, windows)))]
fn make_link(_target: &Path, blob: &Path, at: &Path) -> std::io::Result<()> {
    std::fs::copy(blob, at).map(|_| ())
}

/// `models--org--name` -> (Model, `org/name`).
fn parse_folder_name(name: &str) -> Option<(RepoKind, String)> {
    let (prefix, rest) = name.split_once("--")?;
    let kind = match prefix {
        "models" => RepoKind::Model,
        "datasets" => RepoKind::Dataset,
        "spaces" => RepoKind::Space,
        _ => return None,
    };
    (!rest.is_empty()).then(|| (kind, rest.replace("--", "/")))
}

fn scan_repo(path: PathBuf, kind: RepoKind, repo: String) -> CachedRepo {
    let mut size_on_disk = 0;
    let mut incomplete_bytes = 0;
    for e in std::fs::read_dir(path.join("blobs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        if e.file_name().to_string_lossy().ends_with(".incomplete") {
            incomplete_bytes += len;
        } else {
            size_on_disk += len;
        }
    }
    let mut refs = Vec::new();
    walk_refs(&path.join("refs"), "", &mut refs);
    let mut revisions: Vec<CachedRevision> = std::fs::read_dir(path.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let commit = e.file_name().to_string_lossy().into_owned();
            let mut files = Vec::new();
            walk_files(&e.path(), "", &mut files);
            files.sort_by(|a, b| a.name.cmp(&b.name));
            let mut names: Vec<String> = refs
                .iter()
                .filter(|(_, c)| *c == commit)
                .map(|(r, _)| r.clone())
                .collect();
            names.sort();
            CachedRevision {
                commit,
                refs: names,
                files,
            }
        })
        .collect();
    // Revisions with a branch name first, then by commit.
    revisions.sort_by(|a, b| (a.refs.is_empty(), &a.commit).cmp(&(b.refs.is_empty(), &b.commit)));
    CachedRepo {
        repo,
        kind,
        path,
        size_on_disk,
        incomplete_bytes,
        revisions,
    }
}

fn walk_refs(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let full = format!("{prefix}{name}");
        if e.path().is_dir() {
            walk_refs(&e.path(), &format!("{full}/"), out);
        } else if let Ok(commit) = std::fs::read_to_string(e.path()) {
            out.push((full, commit.trim().to_string()));
        }
    }
}

fn walk_files(dir: &Path, prefix: &str, out: &mut Vec<CachedFile>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let full = format!("{prefix}{name}");
        let path = e.path();
        // A symlink to a blob is a file; a real folder holds more files.
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if is_dir {
            walk_files(&path, &format!("{full}/"), out);
        } else {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            out.push(CachedFile {
                name: full,
                path,
                size,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_round_trip() {
        let cache = HubCache::new("/c");
        assert_eq!(
            cache.repo_dir("sesame/csm-1b"),
            PathBuf::from("/c/models--sesame--csm-1b")
        );
        assert_eq!(
            parse_folder_name("models--sesame--csm-1b"),
            Some((RepoKind::Model, "sesame/csm-1b".into()))
        );
        assert_eq!(
            parse_folder_name("datasets--x"),
            Some((RepoKind::Dataset, "x".into()))
        );
        assert_eq!(parse_folder_name(".locks"), None);
        assert_eq!(
            cache.lock_path("a/b", "e1"),
            PathBuf::from("/c/.locks/models--a--b/e1.lock")
        );
    }

    #[test]
    fn links_refs_listing_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HubCache::new(dir.path());
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let blob = cache.blob_path("a/b", "e1");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"hello").unwrap();
        std::fs::write(blob.with_extension("incomplete"), b"xy").unwrap();
        let p = cache
            .link_snapshot("a/b", commit, "sub/x.json", "e1")
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_link(&p).unwrap(),
            PathBuf::from("../../../blobs/e1")
        );
        assert!(cache.cached_file("a/b", "main", "sub/x.json").is_none());
        cache.write_ref("a/b", "main", commit).unwrap();
        assert_eq!(
            cache.cached_file("a/b", "main", "sub/x.json"),
            Some(p.clone())
        );
        assert_eq!(cache.cached_file("a/b", commit, "sub/x.json"), Some(p));

        let listed = cache.list().unwrap();
        assert_eq!(listed.len(), 1);
        let r = &listed[0];
        assert_eq!(r.repo, "a/b");
        assert_eq!(r.size_on_disk, 5);
        assert_eq!(r.incomplete_bytes, 2);
        assert_eq!(r.revisions[0].refs, vec!["main".to_string()]);
        assert_eq!(r.revisions[0].files[0].name, "sub/x.json");
        assert_eq!(r.revisions[0].files[0].size, 5);

        let deleted = cache.delete_repo("a/b").unwrap();
        assert_eq!(deleted.freed, 7);
        assert!(cache.list().unwrap().is_empty());
        assert!(matches!(
            cache.delete_repo("a/b"),
            Err(HubError::NotCached { .. })
        ));
    }
}
