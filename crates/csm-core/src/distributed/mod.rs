//! Data-parallel training across processes with MLX's own distributed layer.
//!
//! This is a small safe wrapper over mlx-c's `mlx_distributed_*` functions. It
//! adds no networking of its own: the bytes travel over MLX's backends only.
//!
//! | backend | transport | environment MLX reads (set by `csm launch`) |
//! |---------|-----------|---------------------------------------------|
//! | `ring`  | TCP sockets between neighbours in a ring | `MLX_HOSTFILE` (JSON: one list of `"ip:port"` per rank, e.g. `[["10.0.0.1:5000"],["10.0.0.2:5000"]]`), `MLX_RANK`; `MLX_RING_VERBOSE` for connection logs |
//! | `nccl`  | NCCL (CUDA builds of MLX) | `NCCL_HOST_IP` + `NCCL_PORT` (rank 0's address for the bootstrap), `MLX_RANK`, `MLX_WORLD_SIZE`; MLX picks GPU `rank % visible_gpus` |
//! | `mpi`   | an MPI library found at run time (`mpirun`) | MPI's own (`OMPI_COMM_WORLD_*`, `PMI_*`); `MLX_MPI_LIBNAME` to name libmpi |
//! | `jaccl` | RDMA over Thunderbolt 5 (macOS 26.2+) | `MLX_IBV_DEVICES` (JSON device matrix), `MLX_JACCL_COORDINATOR` (`ip:port` of rank 0), `MLX_RANK` |
//!
//! These names come from MLX's sources (`mlx/distributed/{ring,nccl,jaccl}/*.cpp`
//! and `python/mlx/_distributed_utils/launch.py`). MLX itself does little
//! checking (a non-numeric `MLX_RANK` silently becomes rank 0, a broken
//! hostfile gives a bare JSON error), so [`Group::init`] validates the
//! variables first and names the variable, file or rank at fault.
//!
//! The library reads no environment itself: the caller captures these
//! variables into a [`DistEnv`] (the `csm` tool does, at its edge) and
//! passes it to [`Group::init`] or to training (`train::RunSettings`).
//!
//! The module has three parts: `plan.rs` (what the variables say: backend,
//! rank, size; pure logic), `watchdog.rs` (the thread that ends a process
//! stuck in a collective) and `group.rs` (MLX's group: set-up and the
//! collectives).
//!
//! When nothing is configured, [`Group::init`] (non-strict) returns a
//! single-process group whose collectives return their input unchanged, so
//! the trainer needs no special case.
//!
//! # Failure model and the watchdog
//!
//! MLX collectives are blocking calls into C++ and cannot be cancelled. With
//! the ring backend, a peer that dies mid-collective makes the survivors'
//! socket worker threads give up after a few failed `send`/`recv` calls
//! without completing the pending transfer, so the surviving ranks block
//! forever (see `docs/distributed.md` for what was observed). NCCL also hangs
//! by default. So every collective (and the group set-up, which waits in
//! `accept`) runs under a [`Watchdog`]: a thread per group that is armed
//! before the blocking call and disarmed after it. If a call exceeds the bound
//! (`CSM_DIST_TIMEOUT_SECS`, default [`DEFAULT_TIMEOUT_SECS`]; `0` turns it
//! off), the watchdog prints which rank stopped responding and ends the
//! process with exit status [`WATCHDOG_EXIT_CODE`]. Ending the process is the
//! only way out: the blocked thread can neither be resumed nor unwound.
//!
//! To name the culprit, each rank records the sequence number of the last
//! collective it entered in `$CSM_DIST_PROGRESS_DIR/rank-N` when that
//! variable is set (`csm launch` sets it for local runs; point it at a shared
//! directory for multi-host runs). A rank that is behind is the one that
//! stopped responding. Without it, the message names the only peer of a
//! two-rank group, or the ring neighbours otherwise.
//!
//! # MLX errors
//!
//! mlx-c reports errors through one process-wide handler, which mlx-rs sets
//! to stash the message for its own wrappers (and mlx-c's default would
//! `exit()`). The first call into mlx-c from this module installs a handler
//! that keeps the message when the call came from here, so it becomes a
//! [`DistError`], and forwards every other error to mlx-rs's handler
//! (`default_mlx_error_handler`, exported by mlx-rs 0.33 with `#[no_mangle]`),
//! so mlx-rs behaves as before. A collective that fails while evaluating (a
//! peer's socket closed) surfaces through mlx-rs's `eval` and is also turned
//! into [`DistError::Collective`].

mod group;
mod plan;
mod watchdog;

pub use group::{Group, ReduceStats};
pub use plan::{read_ring_hostfile, DistEnv};
pub use watchdog::{WatchGuard, Watchdog};

use std::path::PathBuf;

use mlx_rs::error::Exception;

/// Default bound on one collective (and on group set-up), in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;

/// Exit status of a process ended by the [`Watchdog`] (like `timeout(1)`).
pub const WATCHDOG_EXIT_CODE: i32 = 124;

/// Environment variable bounding each collective, in seconds (`0` = no bound).
pub const TIMEOUT_ENV: &str = "CSM_DIST_TIMEOUT_SECS";

/// Environment variable naming a directory where each rank records its
/// progress so that a stuck rank's watchdog can name the rank that is behind.
pub const PROGRESS_DIR_ENV: &str = "CSM_DIST_PROGRESS_DIR";

/// Environment variable choosing the backend when [`Group::init`] gets none
/// (also set by `mlx.launch` for JACCL).
pub const BACKEND_ENV: &str = "MLX_DISTRIBUTED_BACKEND";

/// Errors of the distributed layer. Each names the environment variable,
/// file or rank at fault.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A required environment variable is missing.
    #[error("the {backend} backend needs {var} but it is not set{hint}")]
    MissingEnv {
        /// The backend that needs it.
        backend: String,
        /// The variable.
        var: &'static str,
        /// Extra context (may be empty).
        hint: String,
    },
    /// An environment variable has a value that cannot be used.
    #[error("{var}={value:?}: {reason}")]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The ring hostfile cannot be read or has the wrong shape.
    #[error("hostfile {} (MLX_HOSTFILE): {reason}", path.display())]
    Hostfile {
        /// The hostfile.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `MLX_RANK` is not below the number of ranks.
    #[error("MLX_RANK={rank} but {source_of_size} lists only {size} ranks (0..{size})")]
    RankOutOfRange {
        /// The rank asked for.
        rank: usize,
        /// The number of ranks.
        size: usize,
        /// Where the size came from (hostfile path or `MLX_WORLD_SIZE`).
        source_of_size: String,
    },
    /// The backend name is not one MLX knows.
    #[error(
        "unknown distributed backend {0:?} (expected ring, mpi, nccl, jaccl, jaccl-ring or any)"
    )]
    UnknownBackend(String),
    /// The loaded libmlx was built without this backend.
    #[error("the {0} backend is not available in this libmlx (the CPU wheel has ring and mpi; nccl needs the CUDA wheel, jaccl macOS 26.2+)")]
    Unavailable(String),
    /// Strict initialisation found no distributed configuration.
    #[error("no distributed configuration found: set MLX_HOSTFILE and MLX_RANK (ring), NCCL_HOST_IP, NCCL_PORT, MLX_RANK and MLX_WORLD_SIZE (nccl), or run under mpirun; `csm launch` sets these")]
    NotConfigured,
    /// MLX failed to set up the group.
    #[error("initialising the {backend} backend as rank {rank} failed: {message}")]
    Init {
        /// The backend.
        backend: String,
        /// The rank (`?` if unknown).
        rank: String,
        /// MLX's message.
        message: String,
    },
    /// MLX ran a collective and reported an error.
    #[error("{op} on rank {rank} of {size} ({backend}) failed: {message}")]
    Collective {
        /// The collective (`all_sum`, ...).
        op: &'static str,
        /// This rank.
        rank: usize,
        /// The group size.
        size: usize,
        /// The backend.
        backend: String,
        /// MLX's message.
        message: String,
    },
    /// Ranks passed different gradient sets to `average_gradients`.
    #[error("gradient sets differ between ranks (names, shapes or dtypes; rank {rank} has {tensors} tensors): every rank must average the same parameters")]
    LayoutMismatch {
        /// This rank.
        rank: usize,
        /// Number of gradients on this rank.
        tensors: usize,
    },
    /// A local MLX operation around a collective (pack, cast, split) failed.
    #[error("{what}: {source}")]
    Mlx {
        /// What was being done.
        what: String,
        /// MLX's error.
        #[source]
        source: Exception,
    },
}

fn mlx_err(what: impl Into<String>) -> impl FnOnce(Exception) -> DistError {
    let what = what.into();
    move |source| DistError::Mlx { what, source }
}
