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
//! environment first and names the variable, file or rank at fault.
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

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype, Stream};

use crate::ffi::mlx_call;

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

// ---------------------------------------------------------------------------
// Environment

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

fn parse_usize(var: &'static str, value: &str) -> Result<usize, DistError> {
    value
        .trim()
        .parse::<usize>()
        .map_err(|_| DistError::BadEnv {
            var,
            value: value.to_string(),
            reason: "expected a non-negative integer".into(),
        })
}

/// Reads and checks a ring hostfile: a JSON list with, per rank, a non-empty
/// list of `"host:port"` strings (all ranks the same count). Returns the
/// addresses by rank.
pub fn read_ring_hostfile(path: &Path) -> Result<Vec<Vec<String>>, DistError> {
    let bad = |reason: String| DistError::Hostfile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let ranks = value.as_array().ok_or_else(|| {
        bad("expected a JSON list with one list of \"host:port\" per rank".into())
    })?;
    if ranks.is_empty() {
        return Err(bad("it lists no ranks".into()));
    }
    let mut out = Vec::with_capacity(ranks.len());
    for (rank, entry) in ranks.iter().enumerate() {
        let addrs = entry.as_array().ok_or_else(|| {
            bad(format!(
                "rank {rank}: expected a list of \"host:port\" strings, found {entry}"
            ))
        })?;
        if addrs.is_empty() {
            return Err(bad(format!("rank {rank} has no address")));
        }
        let mut list = Vec::with_capacity(addrs.len());
        for a in addrs {
            let s = a
                .as_str()
                .ok_or_else(|| bad(format!("rank {rank}: {a} is not a \"host:port\" string")))?;
            let port_ok = s
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(bad(format!("rank {rank}: {s:?} is not \"host:port\"")));
            }
            list.push(s.to_string());
        }
        out.push(list);
    }
    if out.iter().any(|l| l.len() != out[0].len()) {
        return Err(bad(
            "every rank must list the same number of addresses (one ring connection each)".into(),
        ));
    }
    Ok(out)
}

/// What [`Group::init`] found in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Not launched distributed (or a one-rank configuration).
    Single,
    /// Initialise MLX with this backend name; `rank` when known up front.
    Backend { name: String, rank: Option<usize> },
}

const KNOWN_BACKENDS: &[&str] = &["ring", "mpi", "nccl", "jaccl", "jaccl-ring", "any"];

fn under_mpi() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MV2_COMM_WORLD_SIZE",
    ]
    .iter()
    .any(|v| env(v).is_some())
}

/// Picks the backend from the environment when none was given.
fn detect_backend() -> Option<&'static str> {
    if env("MLX_HOSTFILE").is_some() {
        Some("ring")
    } else if env("MLX_IBV_DEVICES").is_some() || env("MLX_JACCL_COORDINATOR").is_some() {
        Some("jaccl")
    } else if env("NCCL_HOST_IP").is_some() || env("MLX_WORLD_SIZE").is_some() {
        Some("nccl")
    } else if under_mpi() {
        Some("mpi")
    } else {
        None
    }
}

fn require(backend: &str, var: &'static str, hint: &str) -> Result<String, DistError> {
    env(var).ok_or_else(|| DistError::MissingEnv {
        backend: backend.into(),
        var,
        hint: hint.into(),
    })
}

/// Validates the environment for `backend` (before MLX sees it).
fn plan(backend: Option<&str>, strict: bool) -> Result<Plan, DistError> {
    let from_env = env(BACKEND_ENV);
    let name = match backend.map(str::to_string).or(from_env) {
        Some(n) => n,
        None => match detect_backend() {
            Some(n) => n.to_string(),
            None if strict => return Err(DistError::NotConfigured),
            None => return Ok(Plan::Single),
        },
    };
    if !KNOWN_BACKENDS.contains(&name.as_str()) {
        return Err(DistError::UnknownBackend(name));
    }
    let launcher = " (`csm launch` sets it)";
    match name.as_str() {
        "ring" => {
            let rank_s = env("MLX_RANK");
            let hostfile = env("MLX_HOSTFILE");
            let (hostfile, rank_s) = match (hostfile, rank_s) {
                (Some(h), Some(r)) => (h, r),
                (None, None) if !strict && backend.is_none() => return Ok(Plan::Single),
                (None, _) => {
                    return Err(DistError::MissingEnv {
                        backend: name,
                        var: "MLX_HOSTFILE",
                        hint: launcher.into(),
                    })
                }
                (_, None) => {
                    return Err(DistError::MissingEnv {
                        backend: name,
                        var: "MLX_RANK",
                        hint: launcher.into(),
                    })
                }
            };
            let rank = parse_usize("MLX_RANK", &rank_s)?;
            let path = PathBuf::from(&hostfile);
            let nodes = read_ring_hostfile(&path)?;
            if rank >= nodes.len() {
                return Err(DistError::RankOutOfRange {
                    rank,
                    size: nodes.len(),
                    source_of_size: format!("hostfile {}", path.display()),
                });
            }
            if nodes.len() == 1 {
                // MLX's ring would try to connect to itself; one rank needs
                // no communication.
                return Ok(Plan::Single);
            }
            Ok(Plan::Backend {
                name,
                rank: Some(rank),
            })
        }
        "nccl" => {
            require(
                &name,
                "NCCL_HOST_IP",
                " (rank 0's IP address, reachable from every rank)",
            )?;
            let port = require(&name, "NCCL_PORT", " (a free TCP port on rank 0)")?;
            if port.trim().parse::<u16>().is_err() {
                return Err(DistError::BadEnv {
                    var: "NCCL_PORT",
                    value: port,
                    reason: "expected a TCP port number".into(),
                });
            }
            let rank = parse_usize("MLX_RANK", &require(&name, "MLX_RANK", launcher)?)?;
            let size = parse_usize(
                "MLX_WORLD_SIZE",
                &require(&name, "MLX_WORLD_SIZE", launcher)?,
            )?;
            if rank >= size {
                return Err(DistError::RankOutOfRange {
                    rank,
                    size,
                    source_of_size: "MLX_WORLD_SIZE".into(),
                });
            }
            if size == 1 {
                return Ok(Plan::Single);
            }
            Ok(Plan::Backend {
                name,
                rank: Some(rank),
            })
        }
        "jaccl" | "jaccl-ring" => {
            let devices = require(
                &name,
                "MLX_IBV_DEVICES",
                " (a JSON file of RDMA device names)",
            )?;
            if !Path::new(&devices).is_file() {
                return Err(DistError::BadEnv {
                    var: "MLX_IBV_DEVICES",
                    value: devices,
                    reason: "no such file".into(),
                });
            }
            require(&name, "MLX_JACCL_COORDINATOR", " (ip:port of rank 0)")?;
            let rank = parse_usize("MLX_RANK", &require(&name, "MLX_RANK", launcher)?)?;
            Ok(Plan::Backend {
                name,
                rank: Some(rank),
            })
        }
        _ => Ok(Plan::Backend { name, rank: None }),
    }
}

/// The collective bound from `CSM_DIST_TIMEOUT_SECS` (`None` = unbounded).
pub fn timeout_from_env() -> Result<Option<Duration>, DistError> {
    match env(TIMEOUT_ENV) {
        None => Ok(Some(Duration::from_secs(DEFAULT_TIMEOUT_SECS))),
        Some(v) => {
            let secs: f64 = v.trim().parse().map_err(|_| DistError::BadEnv {
                var: TIMEOUT_ENV,
                value: v.clone(),
                reason: "expected a number of seconds (0 = no bound)".into(),
            })?;
            if !secs.is_finite() || secs < 0.0 {
                return Err(DistError::BadEnv {
                    var: TIMEOUT_ENV,
                    value: v,
                    reason: "expected a non-negative number of seconds".into(),
                });
            }
            Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
        }
    }
}

// ---------------------------------------------------------------------------
// Watchdog

/// Who this process is, for the watchdog's message.
#[derive(Debug, Clone)]
struct Identity {
    rank: Option<usize>,
    size: Option<usize>,
    backend: String,
    progress_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Armed {
    what: String,
    seq: u64,
    started: Instant,
}

#[derive(Debug, Default)]
struct WatchState {
    armed: Option<Armed>,
    shutdown: bool,
}

#[derive(Debug)]
struct WatchShared {
    state: Mutex<WatchState>,
    wake: Condvar,
    identity: Mutex<Identity>,
}

/// Bounds blocking MLX calls: a thread that ends the process, naming the
/// rank that stopped responding, if an armed call runs past the timeout.
///
/// MLX's collectives block the calling thread in C++ and cannot be
/// cancelled, so the watchdog lives on its own thread. [`Watchdog::arm`]
/// returns a guard; dropping it disarms.
#[derive(Debug)]
pub struct Watchdog {
    shared: Arc<WatchShared>,
    timeout: Duration,
    thread: Option<JoinHandle<()>>,
}

/// Disarms the [`Watchdog`] when dropped.
#[derive(Debug)]
pub struct WatchGuard<'a> {
    dog: Option<&'a Watchdog>,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        if let Some(dog) = self.dog {
            let mut st = dog.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.armed = None;
            dog.shared.wake.notify_all();
        }
    }
}

impl Watchdog {
    fn new(timeout: Duration, identity: Identity) -> Watchdog {
        let shared = Arc::new(WatchShared {
            state: Mutex::new(WatchState::default()),
            wake: Condvar::new(),
            identity: Mutex::new(identity),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("csm-dist-watchdog".into())
            .spawn(move || watch(worker, timeout))
            .ok();
        Watchdog {
            shared,
            timeout,
            thread,
        }
    }

    /// The bound on one armed call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Starts timing `what` (collective number `seq`) until the guard drops.
    pub fn arm(&self, what: impl Into<String>, seq: u64) -> WatchGuard<'_> {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.armed = Some(Armed {
            what: what.into(),
            seq,
            started: Instant::now(),
        });
        self.shared.wake.notify_all();
        WatchGuard { dog: Some(self) }
    }

    fn set_identity(&self, rank: usize, size: usize) {
        let mut id = self
            .shared
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        id.rank = Some(rank);
        id.size = Some(size);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.shutdown = true;
            self.shared.wake.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(shared: Arc<WatchShared>, timeout: Duration) {
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if st.shutdown {
            return;
        }
        match st.armed.clone() {
            None => {
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            Some(armed) => {
                let elapsed = armed.started.elapsed();
                if elapsed >= timeout {
                    let identity = shared
                        .identity
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    fire(&identity, &armed, elapsed);
                }
                st = shared
                    .wake
                    .wait_timeout(st, timeout - elapsed)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

/// Ends the process after a collective overran its bound.
fn fire(id: &Identity, armed: &Armed, elapsed: Duration) -> ! {
    let me = id.rank.map_or("?".to_string(), |r| r.to_string());
    let size = id.size.map_or("?".to_string(), |s| s.to_string());
    let culprit = blame(id, armed.seq);
    let msg = format!(
        "csm distributed watchdog: rank {me} of {size} ({backend}) has waited {secs:.0} s in {what}\
         {seq}; {culprit}. Ending this process (exit {code}); raise {TIMEOUT_ENV} \
         if steps are legitimately this slow.",
        backend = id.backend,
        secs = elapsed.as_secs_f64(),
        what = armed.what,
        seq = if armed.seq > 0 {
            format!(" (collective #{})", armed.seq)
        } else {
            String::new()
        },
        code = WATCHDOG_EXIT_CODE,
    );
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{msg}");
    let _ = err.flush();
    // SAFETY: `_exit` ends the process without running atexit handlers or
    // C++ static destructors, which could block on the MLX threads that are
    // stuck in the collective. Nothing here needs unwinding.
    unsafe { libc::_exit(WATCHDOG_EXIT_CODE) }
}

/// Names the rank(s) most likely at fault, from the progress files when
/// available, else from the group's shape.
fn blame(id: &Identity, my_seq: u64) -> String {
    let (Some(me), Some(size)) = (id.rank, id.size) else {
        return "the group was still being set up: a peer never connected (not started, crashed, \
                wrong address or port blocked)"
            .into();
    };
    if let Some(dir) = &id.progress_dir {
        let mut behind = Vec::new();
        for r in (0..size).filter(|&r| r != me) {
            match read_progress(dir, r) {
                None => behind.push(format!("rank {r} (never reached a collective)")),
                Some(seq) if seq < my_seq => {
                    behind.push(format!("rank {r} (last entered collective #{seq})"))
                }
                Some(_) => {}
            }
        }
        if !behind.is_empty() {
            return format!("stopped responding: {}", behind.join(", "));
        }
    }
    if size == 2 {
        format!(
            "rank {} stopped responding (crashed, hung or unreachable)",
            1 - me
        )
    } else {
        format!(
            "some other rank stopped responding; this rank's ring neighbours are rank {} and rank {} \
             (set {PROGRESS_DIR_ENV} to a shared directory to pinpoint it)",
            (me + size - 1) % size,
            (me + 1) % size
        )
    }
}

fn progress_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank-{rank}"))
}

fn read_progress(dir: &Path, rank: usize) -> Option<u64> {
    let text = std::fs::read_to_string(progress_path(dir, rank)).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------
// Group

/// Statistics of one [`Group::average_gradients`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReduceStats {
    /// Collectives issued (one per gradient dtype; 0 on a single process).
    pub collectives: usize,
    /// Gradient tensors averaged.
    pub tensors: usize,
    /// Bytes of gradient data reduced per rank (the packed buffers' size).
    pub payload_bytes: u64,
    /// Estimated bytes each rank sends: a ring all-reduce sends
    /// `2 (n - 1) / n` times the payload (reduce-scatter + all-gather).
    pub bytes_sent_per_rank: u64,
    /// Wall time of the collectives alone (packing is evaluated first).
    pub elapsed: Duration,
}

/// A set of processes that reduce arrays together: MLX's distributed group,
/// plus this crate's watchdog.
///
/// Create it once per process with [`Group::init`]. MLX keeps the
/// connections of an initialised backend for the life of the process, so
/// dropping a `Group` frees only this handle.
pub struct Group {
    raw: mlx_sys::mlx_distributed_group,
    rank: usize,
    size: usize,
    backend: String,
    stream: Option<Stream>,
    watchdog: Option<Watchdog>,
    seq: AtomicU64,
    layout_checked: AtomicBool,
    progress_dir: Option<PathBuf>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("backend", &self.backend)
            .field("timeout", &self.timeout())
            .finish()
    }
}

impl Group {
    /// A group of one: collectives return their input.
    pub fn single() -> Group {
        Group {
            // SAFETY: creates an empty handle (null context); Drop frees it.
            raw: unsafe { mlx_sys::mlx_distributed_group_new() },
            rank: 0,
            size: 1,
            backend: "none".into(),
            stream: None,
            watchdog: None,
            seq: AtomicU64::new(0),
            layout_checked: AtomicBool::new(false),
            progress_dir: None,
        }
    }

    /// Joins the distributed group described by the environment.
    ///
    /// `backend`: `ring`, `mpi`, `nccl`, `jaccl`, `jaccl-ring` or `any`;
    /// `None` reads `MLX_DISTRIBUTED_BACKEND`, else guesses from which
    /// variables are set (`MLX_HOSTFILE` → ring, `MLX_IBV_DEVICES` → jaccl,
    /// `NCCL_HOST_IP` → nccl, MPI's → mpi).
    ///
    /// Without any configuration, returns [`Group::single`] unless `strict`.
    /// A ring hostfile listing one rank also gives a single group. Set-up is
    /// bounded by `CSM_DIST_TIMEOUT_SECS` like every collective (ring ranks
    /// wait in `accept` for their neighbour).
    pub fn init(backend: Option<&str>, strict: bool) -> Result<Group, DistError> {
        let timeout = timeout_from_env()?;
        let (name, known_rank) = match plan(backend, strict)? {
            Plan::Single => return Ok(Group::single()),
            Plan::Backend { name, rank } => (name, rank),
        };
        let c_name =
            CString::new(name.clone()).map_err(|_| DistError::UnknownBackend(name.clone()))?;
        if name != "any" {
            // SAFETY: c_name is a valid NUL-terminated string for the call.
            let available = unsafe { mlx_sys::mlx_distributed_is_available(c_name.as_ptr()) };
            if !available {
                return Err(DistError::Unavailable(name));
            }
        }
        let progress_dir = env(PROGRESS_DIR_ENV).map(PathBuf::from);
        let watchdog = timeout.map(|t| {
            Watchdog::new(
                t,
                Identity {
                    rank: known_rank,
                    size: None,
                    backend: name.clone(),
                    progress_dir: progress_dir.clone(),
                },
            )
        });

        // SAFETY: creates an empty handle that mlx_distributed_init fills.
        let mut raw = unsafe { mlx_sys::mlx_distributed_group_new() };
        let result = {
            let _armed = watchdog
                .as_ref()
                .map(|w| w.arm(format!("setting up the {name} group"), 0));
            // SAFETY: `raw` is a valid handle to write into; c_name outlives
            // the call. Errors are reported through the chained handler.
            mlx_call(|| unsafe { mlx_sys::mlx_distributed_init(&mut raw, strict, c_name.as_ptr()) })
        };
        if let Err(message) = result {
            // SAFETY: frees the handle created above (empty or filled).
            unsafe { mlx_sys::mlx_distributed_group_free(raw) };
            return Err(DistError::Init {
                backend: name,
                rank: known_rank.map_or("?".into(), |r| r.to_string()),
                message,
            });
        }
        // SAFETY: `raw` was filled by a successful mlx_distributed_init.
        let (rank, size) = unsafe {
            (
                mlx_sys::mlx_distributed_group_rank(raw),
                mlx_sys::mlx_distributed_group_size(raw),
            )
        };
        let (rank, size) = (rank.max(0) as usize, size.max(1) as usize);
        if let Some(w) = &watchdog {
            w.set_identity(rank, size);
        }
        let stream = if name == "nccl" {
            Stream::gpu()
        } else {
            // Ring, MPI and JACCL run their collectives on the CPU
            // (`communication_stream` picks `Device::cpu` in MLX).
            Stream::cpu()
        };
        let backend = if size == 1 { "none".into() } else { name };
        Ok(Group {
            raw,
            rank,
            size,
            backend,
            stream: Some(stream),
            watchdog: if size > 1 { watchdog } else { None },
            seq: AtomicU64::new(0),
            layout_checked: AtomicBool::new(false),
            progress_dir,
        })
    }

    /// This process's rank, `0..size`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Backend name (`ring`, `nccl`, `mpi`, `jaccl`, ...; `none` for one
    /// process).
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Whether there is more than one process.
    pub fn is_distributed(&self) -> bool {
        self.size > 1
    }

    /// Whether this is rank 0 (the one that logs and saves).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The watchdog's bound on one collective (`None` = unbounded or single).
    pub fn timeout(&self) -> Option<Duration> {
        self.watchdog.as_ref().map(Watchdog::timeout)
    }

    /// Collectives run so far.
    pub fn collectives_run(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// Estimated bytes one rank sends in a ring all-reduce of `payload`
    /// bytes: `2 (n - 1) / n * payload`.
    pub fn ring_bytes_sent(&self, payload: u64) -> u64 {
        let n = self.size as u64;
        if n <= 1 {
            0
        } else {
            2 * (n - 1) * payload / n
        }
    }

    /// Sum of `x` over all ranks, evaluated. `x` is evaluated first, so the
    /// watchdog times only the communication. Returns `x` itself on one
    /// process.
    pub fn all_sum(&self, x: &Array) -> Result<Array, DistError> {
        if !self.is_distributed() {
            return Ok(x.clone());
        }
        x.eval()
            .map_err(mlx_err("evaluating the input of all_sum"))?;
        self.all_sum_evaluated(x, "all_sum")
    }

    /// Mean of `x` over all ranks, evaluated, in `x`'s dtype (f32 for
    /// integer and bool inputs).
    pub fn all_mean(&self, x: &Array) -> Result<Array, DistError> {
        if !self.is_distributed() {
            return scale(x, 1.0);
        }
        let sum = self.all_sum(x)?;
        let mean = scale(&sum, 1.0 / self.size as f32)?;
        mean.eval()
            .map_err(mlx_err("all_mean: dividing by the group size"))?;
        Ok(mean)
    }

    /// Like [`Group::all_sum`] with an explicit bound instead of the
    /// group's (`CSM_DIST_TIMEOUT_SECS`); the process still ends when it is
    /// exceeded, since MLX cannot cancel a collective.
    pub fn all_sum_with_timeout(&self, x: &Array, timeout: Duration) -> Result<Array, DistError> {
        if !self.is_distributed() {
            return Ok(x.clone());
        }
        x.eval()
            .map_err(mlx_err("evaluating the input of all_sum"))?;
        let dog = Watchdog::new(
            timeout,
            Identity {
                rank: Some(self.rank),
                size: Some(self.size),
                backend: self.backend.clone(),
                progress_dir: self.progress_dir.clone(),
            },
        );
        self.collective(x, "all_sum", Some(&dog))
    }

    /// Averages a whole gradient set across ranks in place, with one
    /// all-reduce per dtype: flattens and concatenates the gradients into one
    /// buffer, sums it across ranks, divides by the size and splits it back.
    /// Returns the payload, the estimated bytes sent and the collective time.
    ///
    /// Every rank must pass the same names, shapes and dtypes. The first
    /// call checks that with two tiny extra collectives (all-max and all-min
    /// of a layout hash) and fails with [`DistError::LayoutMismatch`].
    pub fn average_gradients(
        &self,
        grads: &mut BTreeMap<String, Array>,
    ) -> Result<ReduceStats, DistError> {
        let mut stats = ReduceStats {
            tensors: grads.len(),
            ..ReduceStats::default()
        };
        if !self.is_distributed() {
            return Ok(stats);
        }
        if !self.layout_checked.load(Ordering::Relaxed) {
            self.check_layout(grads)?;
            self.layout_checked.store(true, Ordering::Relaxed);
        }
        if grads.is_empty() {
            return Ok(stats);
        }
        // Group by dtype so no gradient changes precision in transit.
        let mut by_dtype: Vec<(Dtype, Vec<String>)> = Vec::new();
        for (name, g) in grads.iter() {
            let dt = g.dtype();
            match by_dtype.iter_mut().find(|(d, _)| *d == dt) {
                Some((_, names)) => names.push(name.clone()),
                None => by_dtype.push((dt, vec![name.clone()])),
            }
        }
        let inv = 1.0 / self.size as f32;
        for (dtype, names) in by_dtype {
            let mut flat = Vec::with_capacity(names.len());
            let mut offsets = Vec::with_capacity(names.len());
            let mut total: i64 = 0;
            for name in &names {
                let g = &grads[name];
                flat.push(
                    g.reshape(&[-1])
                        .map_err(mlx_err(format!("flattening gradient {name:?}")))?,
                );
                total += g.size() as i64;
                offsets.push(total);
            }
            let packed = if flat.len() == 1 {
                flat.pop().expect("one element")
            } else {
                mlx_rs::ops::concatenate(&flat, 0).map_err(mlx_err(format!(
                    "packing {} {dtype:?} gradients",
                    names.len()
                )))?
            };
            packed
                .eval()
                .map_err(mlx_err("evaluating the gradients before the all-reduce"))?;
            let payload = packed.nbytes() as u64;
            let started = Instant::now();
            let summed = self.all_sum_evaluated(&packed, "all_sum (average_gradients)")?;
            stats.elapsed += started.elapsed();
            stats.collectives += 1;
            stats.payload_bytes += payload;
            stats.bytes_sent_per_rank += self.ring_bytes_sent(payload);

            let mean = scale(&summed, inv)?;
            offsets.pop(); // the last offset is the end
            let split_at: Vec<i32> = offsets
                .iter()
                .map(|&o| i32::try_from(o))
                .collect::<Result<_, _>>()
                .map_err(|_| DistError::Mlx {
                    what: "average_gradients".into(),
                    source: Exception::custom(format!(
                        "{total} {dtype:?} gradient elements exceed MLX's 32-bit split indices"
                    )),
                })?;
            let parts = if split_at.is_empty() {
                vec![mean]
            } else {
                mean.split_at_indices(&split_at, 0)
                    .map_err(mlx_err("splitting the averaged gradients"))?
            };
            for (name, part) in names.iter().zip(parts) {
                let shape = grads[name].shape().to_vec();
                let restored = part
                    .reshape(&shape)
                    .map_err(mlx_err(format!("reshaping averaged gradient {name:?}")))?;
                grads.insert(name.clone(), restored);
            }
        }
        Ok(stats)
    }

    /// Checks once that every rank passes the same gradient names, shapes
    /// and dtypes (otherwise the packed buffers differ and the all-reduce
    /// mixes unrelated values or hangs): the all-max and all-min of a hash
    /// of the layout must agree.
    fn check_layout(&self, grads: &BTreeMap<String, Array>) -> Result<(), DistError> {
        let sig = layout_signature(grads);
        let x = Array::from_slice(&sig, &[sig.len() as i32]);
        let hi = self.reduce(
            &x,
            "all_max (gradient layout check)",
            Reduce::Max,
            self.watchdog.as_ref(),
        )?;
        let lo = self.reduce(
            &x,
            "all_min (gradient layout check)",
            Reduce::Min,
            self.watchdog.as_ref(),
        )?;
        if hi.as_slice::<i32>() != lo.as_slice::<i32>() {
            return Err(DistError::LayoutMismatch {
                rank: self.rank,
                tensors: grads.len(),
            });
        }
        Ok(())
    }

    /// `all_sum` of an already evaluated array under the group's watchdog.
    fn all_sum_evaluated(&self, x: &Array, op: &'static str) -> Result<Array, DistError> {
        self.collective(x, op, self.watchdog.as_ref())
    }

    fn collective(
        &self,
        x: &Array,
        op: &'static str,
        dog: Option<&Watchdog>,
    ) -> Result<Array, DistError> {
        self.reduce(x, op, Reduce::Sum, dog)
    }

    fn reduce(
        &self,
        x: &Array,
        op: &'static str,
        reduce: Reduce,
        dog: Option<&Watchdog>,
    ) -> Result<Array, DistError> {
        type RawReduce = unsafe extern "C" fn(
            *mut mlx_sys::mlx_array,
            mlx_sys::mlx_array,
            mlx_sys::mlx_distributed_group,
            mlx_sys::mlx_stream,
        ) -> std::ffi::c_int;
        let raw_op: RawReduce = match reduce {
            Reduce::Sum => mlx_sys::mlx_distributed_all_sum,
            Reduce::Max => mlx_sys::mlx_distributed_all_max,
            Reduce::Min => mlx_sys::mlx_distributed_all_min,
        };
        let fail = |message: String| DistError::Collective {
            op,
            rank: self.rank,
            size: self.size,
            backend: self.backend.clone(),
            message,
        };
        let stream = self
            .stream
            .as_ref()
            .expect("distributed groups have a stream");
        // SAFETY: a fresh empty array handle for mlx-c to fill.
        let mut res = unsafe { mlx_sys::mlx_array_new() };
        // SAFETY: `x`, `self.raw` and `stream` are live handles for the call;
        // `res` is a valid out-parameter.
        let built = mlx_call(|| unsafe { raw_op(&mut res, x.as_ptr(), self.raw, stream.as_ptr()) });
        if let Err(message) = built {
            // SAFETY: frees the handle created above, never handed out.
            unsafe { mlx_sys::mlx_array_free(res) };
            return Err(fail(message));
        }
        // SAFETY: `res` was filled by mlx-c and is owned by nobody else; the
        // Array now owns it and frees it on drop.
        let out = unsafe { Array::from_ptr(res) };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.record_progress(seq);
        let _armed = dog.map(|d| d.arm(format!("{op} of {} bytes", x.nbytes()), seq));
        out.eval().map_err(|e| fail(e.what().to_string()))?;
        Ok(out)
    }

    /// Writes this rank's last entered collective to the progress directory.
    fn record_progress(&self, seq: u64) {
        if let Some(dir) = &self.progress_dir {
            let _ = std::fs::write(
                progress_path(dir, self.rank),
                format!("{seq} {}\n", std::process::id()),
            );
        }
    }
}

/// Which reduction a collective performs.
#[derive(Debug, Clone, Copy)]
enum Reduce {
    Sum,
    Max,
    Min,
}

/// A hash of a gradient set's names, shapes and dtypes, as five
/// non-negative `i32` (tensor count, then four 16-bit pieces of FNV-1a 64).
fn layout_signature(grads: &BTreeMap<String, Array>) -> [i32; 5] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, g) in grads {
        eat(name.as_bytes());
        eat(&[0]);
        for d in g.shape() {
            eat(&d.to_le_bytes());
        }
        eat(format!("{:?}", g.dtype()).as_bytes());
        eat(&[0xff]);
    }
    let piece = |k: u32| ((h >> (16 * k)) & 0xffff) as i32;
    [
        (grads.len() as i32) & 0x7fff_ffff,
        piece(0),
        piece(1),
        piece(2),
        piece(3),
    ]
}

/// `x * factor` in `x`'s dtype (f32 for integer and bool arrays, whose
/// mean is not an integer).
fn scale(x: &Array, factor: f32) -> Result<Array, DistError> {
    if !x.dtype().is_inexact() {
        let xf = x
            .as_dtype(Dtype::Float32)
            .map_err(mlx_err("casting to f32 for the mean"))?;
        return scale(&xf, factor);
    }
    let f = Array::from_f32(factor)
        .as_dtype(x.dtype())
        .map_err(mlx_err("casting the averaging factor"))?;
    x.multiply(&f).map_err(mlx_err("scaling by 1/size"))
}

impl Drop for Group {
    fn drop(&mut self) {
        // Stop the watchdog before the handle goes.
        self.watchdog = None;
        // SAFETY: `raw` came from mlx_distributed_group_new/init and is freed
        // exactly once; MLX keeps its own reference to the backend.
        unsafe { mlx_sys::mlx_distributed_group_free(self.raw) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfile_errors_name_the_rank() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts.json");
        std::fs::write(&p, r#"[["127.0.0.1:5000"], ["127.0.0.1"]]"#).unwrap();
        let e = read_ring_hostfile(&p).unwrap_err().to_string();
        assert!(e.contains("rank 1") && e.contains("hosts.json"), "{e}");
        std::fs::write(&p, r#"{"a": 1}"#).unwrap();
        assert!(read_ring_hostfile(&p).is_err());
        std::fs::write(&p, r#"[["127.0.0.1:5000"], ["127.0.0.1:5001"]]"#).unwrap();
        assert_eq!(read_ring_hostfile(&p).unwrap().len(), 2);
    }

    #[test]
    fn mlx_errors_are_captured_and_mlx_rs_still_gets_its_own() {
        // Ours: an unknown backend name, straight to mlx-c.
        let name = CString::new("carrier-pigeon").unwrap();
        // SAFETY: an empty handle, freed below; `name` outlives the call.
        let mut raw = unsafe { mlx_sys::mlx_distributed_group_new() };
        let err =
            mlx_call(|| unsafe { mlx_sys::mlx_distributed_init(&mut raw, true, name.as_ptr()) })
                .unwrap_err();
        // SAFETY: frees the handle created above.
        unsafe { mlx_sys::mlx_distributed_group_free(raw) };
        assert!(err.contains("carrier-pigeon"), "{err}");
        // mlx-rs's own errors still reach mlx-rs through the chained handler.
        let e = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3])
            .reshape(&[2, 2])
            .unwrap_err();
        assert!(e.what().contains("reshape"), "{}", e.what());
    }

    #[test]
    fn layout_signature_sees_shapes_and_dtypes() {
        let a = BTreeMap::from([("w".to_string(), Array::from_slice(&[0.0f32; 6], &[2, 3]))]);
        let b = BTreeMap::from([("w".to_string(), Array::from_slice(&[0.0f32; 6], &[3, 2]))]);
        let c = BTreeMap::from([("v".to_string(), Array::from_slice(&[0.0f32; 6], &[2, 3]))]);
        assert_ne!(layout_signature(&a), layout_signature(&b));
        assert_ne!(layout_signature(&a), layout_signature(&c));
        assert_eq!(layout_signature(&a), layout_signature(&a.clone()));
        assert!(layout_signature(&a).iter().all(|v| *v >= 0));
    }

    #[test]
    fn ring_bytes_estimate() {
        let mut g = Group::single();
        assert_eq!(g.ring_bytes_sent(1000), 0);
        g.size = 4;
        assert_eq!(g.ring_bytes_sent(1000), 1500);
        g.size = 1;
    }
}
