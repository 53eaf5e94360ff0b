//! The watchdog: a thread that ends the process, naming the rank that
//! stopped responding, when a blocking MLX call (a collective, the group
//! set-up) runs past its bound. See the module docs of `distributed` for
//! why ending the process is the only way out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{PROGRESS_DIR_ENV, TIMEOUT_ENV, WATCHDOG_EXIT_CODE};

/// Who this process is, for the watchdog's message.
#[derive(Debug, Clone)]
pub(super) struct Identity {
    pub(super) rank: Option<usize>,
    pub(super) size: Option<usize>,
    pub(super) backend: String,
    pub(super) progress_dir: Option<PathBuf>,
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
    pub(super) fn new(timeout: Duration, identity: Identity) -> Watchdog {
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

    pub(super) fn set_identity(&self, rank: usize, size: usize) {
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

pub(super) fn progress_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank-{rank}"))
}

fn read_progress(dir: &Path, rank: usize) -> Option<u64> {
    let text = std::fs::read_to_string(progress_path(dir, rank)).ok()?;
    text.split_whitespace().next()?.parse().ok()
}
