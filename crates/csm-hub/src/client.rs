//! The HTTP side: resolving a file on the hub, transferring it into the
//! cache with resume, lock, free-space check and digest verification.
//!
//! The protocol is huggingface_hub's (`file_download.py`): `HEAD
//! {endpoint}/{repo}/resolve/{revision}/{file}` without following redirects
//! off the hub, reading `X-Repo-Commit`, `X-Linked-Etag` (else `ETag`),
//! `X-Linked-Size` (else `Content-Length`) and `Location`; then `GET` of
//! that location into `blobs/{etag}.incomplete`, with `Range: bytes=N-`
//! when part of it is already there.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha1::Digest as _;
use ureq::http::Response;
use ureq::Body;

use crate::cache::{CachedFile, HubCache};
use crate::progress::{Cancel, DownloadEvent, DownloadObserver};
use crate::repo::{
    encode_path, is_commit_hash, resolve_url, validate_file_name, validate_repo_id,
    validate_revision,
};
use crate::{HubError, HubSettings};

const MAX_REDIRECTS: usize = 10;
const CHUNK: usize = 256 * 1024;
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// What the hub says about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMetadata {
    /// The commit the revision resolved to (`X-Repo-Commit`).
    pub commit: String,
    /// The blob's name in the cache: the sha256 for LFS files, the git blob
    /// sha1 for files kept in git (`X-Linked-Etag`, else `ETag`).
    pub etag: String,
    /// Size in bytes, when announced.
    pub size: Option<u64>,
    /// Where the bytes are: the resolve URL itself, or the CDN URL it
    /// redirects to.
    pub location: String,
}

/// The files of a repo at one commit.
#[derive(Debug, Clone)]
pub struct RepoFiles {
    /// The commit.
    pub commit: String,
    /// File names, as in the repo.
    pub files: Vec<String>,
}

/// A file resolved into the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The snapshot path (`snapshots/{commit}/{file}`).
    pub path: PathBuf,
    /// The commit it belongs to.
    pub commit: String,
}

/// A client for one hub and one cache.
#[derive(Debug)]
pub struct Hub {
    settings: HubSettings,
    cache: HubCache,
    pub(crate) packages: crate::pypi::PackageCache,
    agent: ureq::Agent,
}

/// One file to bring into the cache: from the hub (the token may go to
/// its origin; refusals are mapped to repo errors) or from a package index
/// (no token; see `crate::pypi`).
pub(crate) struct Transfer<'a> {
    /// `org/name`, or `pypi:project==version`, for events and errors.
    pub repo: &'a str,
    /// The file's name for events and errors.
    pub file: &'a str,
    /// Where the bytes are, their digest (ETag) and size.
    pub meta: &'a FileMetadata,
    /// The `.incomplete` file bytes go to (kept for resuming).
    pub partial: PathBuf,
    /// Where the verified file is renamed to.
    pub dest: &'a Path,
    /// From the hub (token allowed, hub error codes) or not.
    pub from_hub: bool,
}

/// Why one transfer attempt ended without the whole file.
enum Attempt {
    /// The connection broke or stalled: worth resuming.
    Broken(String),
    /// Retrying would not help.
    Fatal(HubError),
}

impl From<HubError> for Attempt {
    fn from(e: HubError) -> Self {
        Attempt::Fatal(e)
    }
}

/// The digest a blob is checked against.
enum Check {
    /// LFS files: the ETag is the content's sha256.
    Sha256(sha2::Sha256),
    /// Files in git: the ETag is the git blob id, sha1 of
    /// `blob {len}\0{content}`.
    GitSha1(sha1::Sha1, u64),
    /// Another hub's ETag format: size checked only.
    None,
}

struct Hashing {
    check: Check,
    hashed: u64,
}

impl Hashing {
    fn for_etag(etag: &str, size: Option<u64>) -> Self {
        let hex = |n| etag.len() == n && etag.bytes().all(|b| b.is_ascii_hexdigit());
        let check = if hex(64) {
            Check::Sha256(sha2::Sha256::new())
        } else if let (true, Some(len)) = (hex(40), size) {
            Check::GitSha1(sha1::Sha1::new(), len)
        } else {
            Check::None
        };
        let mut h = Self { check, hashed: 0 };
        h.reset();
        h
    }

    fn reset(&mut self) {
        self.hashed = 0;
        match &mut self.check {
            Check::Sha256(s) => *s = sha2::Sha256::new(),
            Check::GitSha1(s, len) => {
                *s = sha1::Sha1::new();
                s.update(format!("blob {len}\0").as_bytes());
            }
            Check::None => {}
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.hashed += data.len() as u64;
        match &mut self.check {
            Check::Sha256(s) => s.update(data),
            Check::GitSha1(s, _) => s.update(data),
            Check::None => {}
        }
    }

    /// Hashes what is on disk before `upto` that this hasher has not seen
    /// (a partial file left by an earlier run).
    /// Returns false when cancelled before the end.
    fn catch_up(&mut self, path: &Path, upto: u64, cancel: &Cancel) -> Result<bool, HubError> {
        if self.hashed == upto {
            return Ok(true);
        }
        self.reset();
        let mut f = File::open(path).map_err(|e| HubError::io("read", path, e))?;
        let mut buf = vec![0u8; CHUNK];
        while self.hashed < upto {
            if cancel.is_cancelled() {
                return Ok(false);
            }
            let want = CHUNK.min((upto - self.hashed) as usize);
            let n = f
                .read(&mut buf[..want])
                .map_err(|e| HubError::io("read", path, e))?;
            if n == 0 {
                break;
            }
            self.update(&buf[..n]);
        }
        Ok(true)
    }

    /// `(algorithm, hex digest)`, or `None` when there is nothing to check.
    fn finish(self) -> Option<(&'static str, String)> {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        match self.check {
            Check::Sha256(s) => Some(("sha256", hex(&s.finalize()))),
            Check::GitSha1(s, _) => Some(("git-sha1", hex(&s.finalize()))),
            Check::None => None,
        }
    }
}

/// `(scheme, host, port)` of an absolute http(s) URL.
fn origin(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || host_port.starts_with('[') => match p.parse() {
            Ok(p) => (h, p),
            Err(_) => (host_port, 0),
        },
        _ => (host_port, 0),
    };
    let port = match (port, scheme.as_str()) {
        (0, "http") => 80,
        (0, "https") => 443,
        (p, _) => p,
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// Whether `a` and `b` have the same scheme, host and port.
pub fn same_origin(a: &str, b: &str) -> bool {
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

/// Resolves a `Location` header against the URL that sent it.
fn join_url(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    if let Some(l) = location.strip_prefix("//") {
        return format!("{scheme}://{l}");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = rest[authority.len()..]
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    format!("{scheme}://{authority}{dir}/{location}")
}

fn header<'a>(resp: &'a Response<Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// ETags may come as `W/"x"` or `"x"` (huggingface_hub's `_normalize_etag`).
fn normalize_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

impl Hub {
    /// A client for `settings`. Fails only on a malformed endpoint, package
    /// index URL or proxy.
    pub fn new(settings: HubSettings) -> Result<Self, HubError> {
        let web = |url: &str| {
            origin(url).is_some_and(|(s, h, _)| (s == "http" || s == "https") && !h.is_empty())
        };
        if !web(&settings.endpoint) {
            return Err(HubError::InvalidEndpoint {
                endpoint: settings.endpoint.clone(),
            });
        }
        if !web(&settings.pypi_url) {
            return Err(HubError::InvalidPypiUrl {
                url: settings.pypi_url.clone(),
            });
        }
        let proxy = match &settings.proxy {
            Some(p) => Some(ureq::Proxy::new(p).map_err(|e| HubError::Network {
                url: p.clone(),
                source: Box::new(e),
            })?),
            None => None,
        };
        let timeout = Some(settings.timeout);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(timeout)
            .timeout_recv_response(timeout)
            .timeout_per_read(timeout)
            .user_agent(format!("csm-hub/{}", env!("CARGO_PKG_VERSION")))
            .proxy(proxy)
            .build()
            .into();
        Ok(Self {
            cache: HubCache::new(settings.cache_dir.clone()),
            packages: crate::pypi::PackageCache::new(settings.assets_dir.clone()),
            settings,
            agent,
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// The cache in use.
    pub fn cache(&self) -> &HubCache {
        &self.cache
    }

    /// The repo's page on the hub (where a gated repo's licence is
    /// accepted).
    pub fn repo_url(&self, repo: &str) -> String {
        format!("{}/{repo}", self.settings.endpoint)
    }

    fn token_source(&self) -> Option<String> {
        self.settings.token.as_ref().map(|t| t.source().to_string())
    }

    /// One request; the token goes only to the hub's own origin, and only
    /// when `token` (requests for the hub's files; never for a package
    /// index's).
    pub(crate) fn send(
        &self,
        head: bool,
        url: &str,
        range_from: Option<u64>,
        token: bool,
    ) -> Result<Response<Body>, HubError> {
        let mut req = if head {
            self.agent.head(url)
        } else {
            self.agent.get(url)
        };
        req = req.header("Accept-Encoding", "identity");
        if let Some(secret) = self.settings.token.as_ref().filter(|_| token) {
            if same_origin(url, &self.settings.endpoint) {
                req = req.header("Authorization", format!("Bearer {}", secret.secret()));
            }
        }
        if let Some(n) = range_from {
            req = req.header("Range", format!("bytes={n}-"));
        }
        req.call().map_err(|e| HubError::Network {
            url: url.to_string(),
            source: Box::new(e),
        })
    }

    /// Follows redirects; each request carries the token only if it goes to
    /// the hub's own origin (see [`Hub::send`]).
    pub(crate) fn get_following(
        &self,
        url: &str,
        range_from: Option<u64>,
        token: bool,
    ) -> Result<(String, Response<Body>), HubError> {
        let mut url = url.to_string();
        for _ in 0..MAX_REDIRECTS {
            let resp = self.send(false, &url, range_from, token)?;
            match (resp.status().is_redirection(), header(&resp, "location")) {
                (true, Some(loc)) => url = join_url(&url, loc),
                _ => return Ok((url, resp)),
            }
        }
        Err(HubError::Http {
            url,
            status: 310,
            message: "too many redirects".into(),
        })
    }

    /// Maps an error status of the hub to what it means for this repo.
    fn status_error(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
        url: &str,
        resp: &Response<Body>,
    ) -> HubError {
        let status = resp.status().as_u16();
        let code = header(resp, "x-error-code").unwrap_or("");
        match (status, code) {
            (_, "RepoNotFound") => HubError::RepoNotFound {
                repo: repo.into(),
                endpoint: self.settings.endpoint.clone(),
                status,
                token: self.token_source(),
            },
            (_, "RevisionNotFound") => HubError::RevisionNotFound {
                repo: repo.into(),
                revision: revision.into(),
                url: url.into(),
            },
            (404, "EntryNotFound") | (404, "") if !file.is_empty() => HubError::FileNotFound {
                repo: repo.into(),
                revision: revision.into(),
                file: file.into(),
                url: url.into(),
            },
            (401 | 403, _) | (_, "GatedRepo") => HubError::AccessDenied {
                repo: repo.into(),
                repo_url: self.repo_url(repo),
                status,
                code: if code.is_empty() {
                    String::new()
                } else {
                    format!(": {code}")
                },
                token: self.token_source(),
            },
            _ => HubError::Http {
                url: url.into(),
                status,
                message: header(resp, "x-error-message").unwrap_or("").to_string(),
            },
        }
    }

    /// Asks the hub about `file` (HEAD, following redirects that stay on
    /// the hub, stopping at the one to the CDN).
    pub fn file_metadata(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> Result<FileMetadata, HubError> {
        let mut url = resolve_url(&self.settings.endpoint, repo, revision, file);
        for _ in 0..MAX_REDIRECTS {
            let resp = self.send(true, &url, None, true)?;
            let status = resp.status();
            if status.is_redirection() {
                if let Some(loc) = header(&resp, "location") {
                    let target = join_url(&url, loc);
                    if same_origin(&url, &target) {
                        url = target;
                        continue;
                    }
                    return Self::metadata_from(&url, &resp, target, true);
                }
            }
            if status.as_u16() >= 400 {
                return Err(self.status_error(repo, revision, file, &url, &resp));
            }
            return Self::metadata_from(&url, &resp, url.clone(), false);
        }
        Err(HubError::Http {
            url,
            status: 310,
            message: "too many redirects".into(),
        })
    }

    fn metadata_from(
        url: &str,
        resp: &Response<Body>,
        location: String,
        redirected: bool,
    ) -> Result<FileMetadata, HubError> {
        let commit = header(resp, "x-repo-commit")
            .ok_or(HubError::NotAHub {
                url: url.into(),
                header: "X-Repo-Commit",
            })?
            .trim()
            .to_string();
        let etag = header(resp, "x-linked-etag")
            .or_else(|| header(resp, "etag"))
            .map(normalize_etag)
            .ok_or(HubError::NotAHub {
                url: url.into(),
                header: "ETag",
            })?;
        let safe = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        };
        if !is_commit_hash(&commit) || !safe(&etag) {
            return Err(HubError::BadResponse {
                url: url.into(),
                reason: format!("commit `{commit}` or ETag `{etag}` is not a plain hex name"),
            });
        }
        let size = header(resp, "x-linked-size")
            .or(if redirected {
                None
            } else {
                header(resp, "content-length")
            })
            .and_then(|s| s.trim().parse().ok());
        Ok(FileMetadata {
            commit,
            etag,
            size,
            location,
        })
    }

    /// Puts `file` of `repo` at `revision` (a branch, tag or commit) in the
    /// cache, downloading what is missing, and returns its snapshot path.
    ///
    /// Offline, or when the hub cannot be reached or refuses access (5xx,
    /// 401/403), a cached copy is used, as huggingface_hub does.
    ///
    /// # Errors
    /// Bad names; the hub's refusals (access, not found); a broken transfer
    /// after retries ([`HubError::Interrupted`], partial kept); a digest
    /// mismatch (partial deleted); too little disk; cancellation; an
    /// unwritable cache.
    pub fn download(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
        observer: &mut dyn DownloadObserver,
        cancel: &Cancel,
    ) -> Result<Resolved, HubError> {
        validate_repo_id(repo)?;
        validate_revision(revision)?;
        validate_file_name(file)?;
        observer.on_event(&DownloadEvent::Resolving { repo, file });
        let cached = |observer: &mut dyn DownloadObserver, path: PathBuf| {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            observer.on_event(&DownloadEvent::Cached {
                repo,
                file,
                path: &path,
                size,
            });
            let commit = self.cache.commit_for(repo, revision).unwrap_or_default();
            Ok(Resolved { path, commit })
        };
        let in_cache = self.cache.cached_file(repo, revision, file);
        if is_commit_hash(revision) || self.settings.offline {
            match (in_cache.clone(), self.settings.offline) {
                (Some(path), _) => return cached(observer, path),
                (None, true) => {
                    return Err(HubError::NotCachedOffline {
                        repo: repo.into(),
                        file: file.into(),
                        revision: revision.into(),
                        cache: self.cache.root().to_path_buf(),
                    })
                }
                (None, false) => {}
            }
        }
        let meta = match self.file_metadata(repo, revision, file) {
            Ok(m) => m,
            // As huggingface_hub: an unreachable or refusing hub still
            // serves what is cached; a missing revision or file does not.
            Err(e) if e.falls_back_to_cache() => {
                return match in_cache {
                    Some(path) => cached(observer, path),
                    None => Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let pointer = self.cache.snapshot_dir(repo, &meta.commit).join(file);
        if pointer.is_file() {
            // Best effort: a read-only cache still serves what it has.
            let _ = self.cache.write_ref(repo, revision, &meta.commit);
            return cached(observer, pointer);
        }
        self.cache.write_ref(repo, revision, &meta.commit)?;
        let blob = self.cache.blob_path(repo, &meta.etag);
        let blobs = blob.parent().expect("blob has a parent");
        std::fs::create_dir_all(blobs).map_err(|e| HubError::io("create", blobs, e))?;
        let lock = self.lock(
            &self.cache.lock_path(repo, &meta.etag),
            repo,
            file,
            observer,
            cancel,
        )?;
        if !blob.is_file() {
            let transfer = Transfer {
                repo,
                file,
                meta: &meta,
                partial: blob.with_file_name(format!("{}.incomplete", meta.etag)),
                dest: &blob,
                from_hub: true,
            };
            self.fetch_blob(&transfer, observer, cancel)?;
        }
        let path = self
            .cache
            .link_snapshot(repo, &meta.commit, file, &meta.etag)?;
        drop(lock);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        observer.on_event(&DownloadEvent::Finished {
            repo,
            file,
            path: &path,
            size,
        });
        Ok(Resolved {
            path,
            commit: meta.commit,
        })
    }

    /// [`Hub::download`] for several files of one repo, all from the same
    /// commit (the one `revision` resolves to for the first file).
    pub fn download_files(
        &self,
        repo: &str,
        revision: &str,
        files: &[&str],
        observer: &mut dyn DownloadObserver,
        cancel: &Cancel,
    ) -> Result<Vec<Resolved>, HubError> {
        let mut out: Vec<Resolved> = Vec::with_capacity(files.len());
        for file in files {
            let pinned = match out.first() {
                Some(first) if is_commit_hash(&first.commit) => first.commit.as_str(),
                _ => revision,
            };
            out.push(self.download(repo, pinned, file, observer, cancel)?);
        }
        Ok(out)
    }

    /// The files of `repo` at `revision`: from the hub's API
    /// (`/api/models/{repo}/revision/{revision}`), or offline from the cached
    /// snapshot.
    pub fn repo_files(&self, repo: &str, revision: &str) -> Result<RepoFiles, HubError> {
        validate_repo_id(repo)?;
        validate_revision(revision)?;
        let from_cache = || {
            self.cache
                .snapshot_files(repo, revision)
                .map(|(commit, files)| RepoFiles {
                    commit,
                    files: files.into_iter().map(|f: CachedFile| f.name).collect(),
                })
        };
        if self.settings.offline {
            return from_cache().ok_or_else(|| HubError::NotCachedOffline {
                repo: repo.into(),
                file: "(any file)".into(),
                revision: revision.into(),
                cache: self.cache.root().to_path_buf(),
            });
        }
        let url = format!(
            "{}/api/models/{repo}/revision/{}",
            self.settings.endpoint,
            encode_path(revision, false)
        );
        let (url, resp) = match self.get_following(&url, None, true) {
            Ok(r) => r,
            Err(e @ HubError::Network { .. }) => return from_cache().ok_or(e),
            Err(e) => return Err(e),
        };
        if resp.status().as_u16() >= 400 {
            return Err(self.status_error(repo, revision, "", &url, &resp));
        }
        #[derive(serde::Deserialize)]
        struct Sibling {
            rfilename: String,
        }
        #[derive(serde::Deserialize)]
        struct Info {
            sha: String,
            #[serde(default)]
            siblings: Vec<Sibling>,
        }
        let info: Info = serde_json::from_reader(resp.into_body().into_reader()).map_err(|e| {
            HubError::BadResponse {
                url: url.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(RepoFiles {
            commit: info.sha,
            files: info.siblings.into_iter().map(|s| s.rfilename).collect(),
        })
    }

    /// Takes the lock file at `path` (for hub files
    /// `.locks/models--org--name/{etag}.lock`, the lock huggingface_hub takes
    /// too), waiting while another download holds it.
    pub(crate) fn lock(
        &self,
        path: &Path,
        repo: &str,
        file: &str,
        observer: &mut dyn DownloadObserver,
        cancel: &Cancel,
    ) -> Result<File, HubError> {
        let dir = path.parent().expect("lock has a parent");
        std::fs::create_dir_all(dir).map_err(|e| HubError::io("create", dir, e))?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| HubError::io("create the lock", path, e))?;
        let mut announced = false;
        loop {
            match fs4::FileExt::try_lock(&f) {
                Ok(()) => return Ok(f),
                Err(fs4::TryLockError::WouldBlock) => {
                    if !announced {
                        observer.on_event(&DownloadEvent::WaitingForLock { repo, file });
                        announced = true;
                    }
                    if cancel.is_cancelled() {
                        return Err(HubError::Cancelled {
                            repo: repo.into(),
                            file: file.into(),
                            done: 0,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(fs4::TryLockError::Error(e)) => return Err(HubError::io("lock", path, e)),
            }
        }
    }

    /// Downloads into `t.partial` (resuming, retrying), verifies, and
    /// renames to `t.dest` (for hub files `blobs/{etag}.incomplete` and
    /// `blobs/{etag}`). Called with the lock held.
    pub(crate) fn fetch_blob(
        &self,
        t: &Transfer<'_>,
        observer: &mut dyn DownloadObserver,
        cancel: &Cancel,
    ) -> Result<(), HubError> {
        let (repo, file, meta, partial) = (t.repo, t.file, t.meta, t.partial.clone());
        let mut hashing = Hashing::for_etag(&meta.etag, meta.size);
        let mut attempt = 0;
        loop {
            match self.attempt(t, &mut hashing, observer, cancel) {
                Ok(()) => break,
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Broken(reason)) => {
                    if attempt >= self.settings.retries {
                        return Err(HubError::Interrupted {
                            repo: repo.into(),
                            file: file.into(),
                            done: std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0),
                            total: meta.size,
                            partial,
                            reason,
                        });
                    }
                    attempt += 1;
                    observer.on_event(&DownloadEvent::Retrying {
                        repo,
                        file,
                        attempt,
                        reason: &reason,
                    });
                    let pause = self.settings.retry_delay * 2u32.saturating_pow(attempt - 1);
                    let until = Instant::now() + pause;
                    while Instant::now() < until && !cancel.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        observer.on_event(&DownloadEvent::Verifying { repo, file });
        let done = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if let Some((algorithm, actual)) = hashing.finish() {
            if !actual.eq_ignore_ascii_case(&meta.etag) {
                let _ = std::fs::remove_file(&partial);
                return Err(HubError::ChecksumMismatch {
                    repo: repo.into(),
                    file: file.into(),
                    url: meta.location.clone(),
                    algorithm,
                    expected: meta.etag.clone(),
                    actual,
                    partial,
                });
            }
        }
        if let Some(total) = meta.size {
            if done != total {
                let _ = std::fs::remove_file(&partial);
                return Err(HubError::SizeMismatch {
                    repo: repo.into(),
                    file: file.into(),
                    url: meta.location.clone(),
                    expected: total,
                    actual: done,
                    partial,
                });
            }
        }
        std::fs::rename(&partial, t.dest).map_err(|e| HubError::io("move into place", t.dest, e))
    }

    /// One GET of the rest of the file, appended to `t.partial`.
    fn attempt(
        &self,
        t: &Transfer<'_>,
        hashing: &mut Hashing,
        observer: &mut dyn DownloadObserver,
        cancel: &Cancel,
    ) -> Result<(), Attempt> {
        let (repo, file, meta, partial) = (t.repo, t.file, t.meta, t.partial.as_path());
        let io = |action: &str, e| Attempt::Fatal(HubError::io(action, partial, e));
        let on_disk = std::fs::metadata(partial).map_or(0, |m| m.len());
        // Checked before the partial file is created, so a full disk leaves
        // nothing behind.
        if let Some(total) = meta.size {
            let needed = total.saturating_sub(on_disk);
            let dir = partial.parent().expect("partial has a parent");
            let available =
                fs4::available_space(dir).map_err(|e| io("measure free space at", e))?;
            if available < needed {
                return Err(Attempt::Fatal(HubError::NoSpace {
                    repo: repo.into(),
                    file: file.into(),
                    needed,
                    available,
                    dir: dir.to_path_buf(),
                }));
            }
        }
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(partial)
            .map_err(|e| io("create", e))?;
        let mut start = out.metadata().map_err(|e| io("read", e))?.len();
        if meta.size.is_some_and(|total| start > total) {
            out.set_len(0).map_err(|e| io("truncate", e))?;
            start = 0;
        }
        if !hashing.catch_up(partial, start, cancel)? {
            return Err(Attempt::Fatal(HubError::Cancelled {
                repo: repo.into(),
                file: file.into(),
                done: start,
            }));
        }
        if meta.size == Some(start) {
            return Ok(());
        }
        observer.on_event(&DownloadEvent::Started {
            repo,
            file,
            total: meta.size,
            resumed_from: start,
        });
        let range = (start > 0).then_some(start);
        let (url, resp) = match self.get_following(&meta.location, range, t.from_hub) {
            Ok(r) => r,
            Err(HubError::Network { source, .. }) => {
                return Err(Attempt::Broken(source.to_string()))
            }
            Err(e) => return Err(Attempt::Fatal(e)),
        };
        match resp.status().as_u16() {
            206 => {
                let range = header(&resp, "content-range").unwrap_or("");
                if !range.starts_with(&format!("bytes {start}-")) {
                    return Err(Attempt::Fatal(HubError::BadResponse {
                        url,
                        reason: format!("asked for bytes {start}- and got `{range}`"),
                    }));
                }
            }
            200 => {
                if start > 0 {
                    // The server ignored Range: start over.
                    out.set_len(0).map_err(|e| io("truncate", e))?;
                    hashing.reset();
                    start = 0;
                }
            }
            416 => {
                out.set_len(0).map_err(|e| io("truncate", e))?;
                hashing.reset();
                return Err(Attempt::Broken(format!(
                    "{url} refused the range from byte {start}; starting over"
                )));
            }
            s if s >= 500 => return Err(Attempt::Broken(format!("{url} answered HTTP {s}"))),
            s if s >= 400 && !t.from_hub => {
                return Err(Attempt::Fatal(HubError::Http {
                    url,
                    status: s,
                    message: "the package index's file server refused the download".into(),
                }))
            }
            s if s >= 400 && !same_origin(&url, &self.settings.endpoint) => {
                return Err(Attempt::Fatal(HubError::Http {
                    url,
                    status: s,
                    message: "the download link was refused (it may have expired); run again"
                        .into(),
                }))
            }
            _ => {
                return Err(Attempt::Fatal(self.status_error(
                    repo,
                    &meta.commit,
                    file,
                    &url,
                    &resp,
                )))
            }
        }
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; CHUNK];
        let mut done = start;
        let mut last = Instant::now();
        let mut report = |observer: &mut dyn DownloadObserver, done, force: bool| {
            if force || last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                observer.on_event(&DownloadEvent::Progress {
                    repo,
                    file,
                    done,
                    total: meta.size,
                });
            }
        };
        report(observer, done, true);
        loop {
            if cancel.is_cancelled() {
                out.flush().map_err(|e| io("write", e))?;
                return Err(Attempt::Fatal(HubError::Cancelled {
                    repo: repo.into(),
                    file: file.into(),
                    done,
                }));
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    report(observer, done, true);
                    return Err(Attempt::Broken(e.to_string()));
                }
            };
            if meta.size.is_some_and(|total| done + n as u64 > total) {
                drop(out);
                let _ = std::fs::remove_file(partial);
                return Err(Attempt::Fatal(HubError::SizeMismatch {
                    repo: repo.into(),
                    file: file.into(),
                    url,
                    expected: meta.size.unwrap_or(0),
                    actual: done + n as u64,
                    partial: partial.to_path_buf(),
                }));
            }
            out.write_all(&buf[..n]).map_err(|e| io("write", e))?;
            hashing.update(&buf[..n]);
            done += n as u64;
            report(observer, done, false);
        }
        report(observer, done, true);
        out.sync_all().map_err(|e| io("write", e))?;
        match meta.size {
            Some(total) if done < total => Err(Attempt::Broken(format!(
                "the connection closed at byte {done} of {total}"
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(same_origin(
            "https://huggingface.co/a",
            "https://HuggingFace.co:443/b"
        ));
        assert!(!same_origin(
            "https://huggingface.co/a",
            "https://cdn-lfs.hf.co/b"
        ));
        assert!(!same_origin(
            "http://127.0.0.1:1000/a",
            "http://127.0.0.1:1001/a"
        ));
        assert!(!same_origin("http://h/a", "https://h/a"));
        assert!(same_origin("http://u:p@h:80/a", "http://h/"));
    }

    #[test]
    fn locations() {
        assert_eq!(join_url("http://h:1/a/b?x", "/c"), "http://h:1/c");
        assert_eq!(join_url("http://h:1/a/b", "c"), "http://h:1/a/c");
        assert_eq!(join_url("https://h/a", "//cdn/x"), "https://cdn/x");
        assert_eq!(join_url("https://h/a", "http://o/x"), "http://o/x");
    }

    #[test]
    fn etags_and_digests() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        // `git hash-object` of "hello\n".
        let mut h = Hashing::for_etag("ce013625030ba8dba906f756967f9e9ca394464a", Some(6));
        h.update(b"hello\n");
        assert_eq!(
            h.finish(),
            Some((
                "git-sha1",
                "ce013625030ba8dba906f756967f9e9ca394464a".into()
            ))
        );
        let mut h = Hashing::for_etag(&"0".repeat(64), None);
        h.update(b"hello\n");
        assert_eq!(
            h.finish().unwrap().1,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert!(Hashing::for_etag("xyz", Some(1)).finish().is_none());
    }
}
