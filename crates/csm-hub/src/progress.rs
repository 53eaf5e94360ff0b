//! Progress reporting and cancellation. The library never prints: a
//! program shows [`DownloadEvent`]s its own way (a terminal bar, an IPC
//! channel) and stops a download with [`Cancel`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cancel flag shared between the downloading thread and whoever may stop
/// it. Cloning shares the flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag not yet raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the download to stop at its next chunk; the partial file is kept
    /// so the next call resumes it.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What happens to one file, in order: `Resolving`, then `Cached` (nothing
/// to fetch) or `Started`, `Progress`..., `Verifying`, `Finished`.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum DownloadEvent<'a> {
    /// Asking the hub (or the cache, offline) about the file.
    Resolving {
        /// `org/name`.
        repo: &'a str,
        /// File in the repo.
        file: &'a str,
    },
    /// Already in the cache: no transfer.
    Cached {
        /// `org/name`.
        repo: &'a str,
        /// File in the repo.
        file: &'a str,
        /// The snapshot path.
        path: &'a Path,
        /// Its size.
        size: u64,
    },
    /// Another process or thread is downloading the same file; waiting for
    /// it to finish.
    WaitingForLock {
        /// `org/name`.
        repo: &'a str,
        /// File in the repo.
        file: &'a str,
    },
    /// A transfer begins (or resumes from `resumed_from` bytes on disk).
    Started {
        /// `org/name`.
        repo: &'a str,
        /// File in the repo.
        file: &'a str,
        /// Total size, when the hub announced it.
        total: Option<u64>,
        /// Bytes already on disk from an earlier, interrupted transfer.
        resumed_from: u64,
    },
    /// Bytes on disk so far (sent at most every 100 ms, and at the end).
    Progress {
        /// `org/name`.
        repo: &'a str,
        /// File in the repo.
        file: &'a str,
        /// Bytes on disk.
        done: u64,
        /// Total size, when known.
        total: Option<u64>,
    },
    /// The transfer broke; resuming after a pause.
    Retrying {
        /// `org/name`.
        repo: &'a str,
        /// File in the repo.
        file: &'a str,
        /// 1 for the first retry.
        attempt: u32,
        /// What broke.
        reason: &'a str,
    },
    /// Checking the digest.
    Verifying {
        /// `org/name`.
        repo: &'a str,
        /// File in the repo.
        file: &'a str,
    },
    /// In the cache, verified.
    Finished {
        /// `org/name`.
        repo: &'a str,
        /// File in the repo.
        file: &'a str,
        /// The snapshot path.
        path: &'a Path,
        /// Its size.
        size: u64,
    },
}

/// Receives [`DownloadEvent`]s.
pub trait DownloadObserver {
    /// Called on the downloading thread; keep it quick.
    fn on_event(&mut self, event: &DownloadEvent<'_>);
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullObserver;

impl DownloadObserver for NullObserver {
    fn on_event(&mut self, _event: &DownloadEvent<'_>) {}
}

impl<F: FnMut(&DownloadEvent<'_>)> DownloadObserver for F {
    fn on_event(&mut self, event: &DownloadEvent<'_>) {
        self(event)
    }
}
