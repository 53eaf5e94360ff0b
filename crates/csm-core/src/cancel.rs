//! Stopping long work from another thread: training, generation, encoding
//! and the app's jobs all take a [`CancelToken`] and check it at their own
//! safe points (a step boundary, a frame).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Asks a running job to stop at its next safe point (training saves a
/// checkpoint first). Cheap to clone; all clones share one flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests the stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
