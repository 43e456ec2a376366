//! Counters of this daemon's attempts, for the systemd status line and the
//! registry of live daemons.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Counters for the status line, updated by the workers.
#[derive(Default)]
pub(crate) struct Stats {
    /// Attempts running in this daemon now.
    pub(super) running: AtomicUsize,
    /// Jobs this daemon ended (succeeded or dead) since it started.
    pub(super) done: AtomicU64,
}

impl Stats {
    /// Counts an attempt as running until the guard is dropped.
    pub(crate) fn running(self: &Arc<Self>) -> RunningCount {
        self.running.fetch_add(1, Ordering::Relaxed);
        RunningCount(self.clone())
    }

    /// Attempts running in this daemon now.
    pub(crate) fn running_now(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    pub(crate) fn job_done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct RunningCount(Arc<Stats>);

impl Drop for RunningCount {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}
