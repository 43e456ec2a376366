//! The daemon's entry in the Redis registry of live daemons (`jobrunner workers`):
//! rewritten every [`WORKER_HEARTBEAT`], marked draining when shutdown begins, and
//! removed by [`super::supervise`] once the drain is over. Each rewrite also prunes
//! entries of daemons that died without removing theirs.

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::broker::{WORKER_HEARTBEAT, WorkerEntry};
use crate::error_chain;

/// This daemon's entry as of now.
pub(super) fn entry(shared: &Shared, draining: bool) -> WorkerEntry {
    WorkerEntry {
        id: shared.daemon_id,
        host: hostname(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        queues: shared.config.queues.keys().cloned().collect(),
        running: shared.stats.running_now(),
        started_at: shared.started_at,
        heartbeat_at: Utc::now(),
        draining,
    }
}

/// Keeps the entry fresh until shutdown, then marks it draining.
pub(super) async fn heartbeat(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(WORKER_HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        if let Err(error) = shared.broker.put_worker(&entry(&shared, false)).await {
            tracing::warn!(error = %error_chain(&error), "Writing the worker registry entry failed");
            continue;
        }
        match shared.broker.workers().await {
            Ok(all) => {
                let now = Utc::now();
                let stale: Vec<_> = all
                    .iter()
                    .filter(|w| w.is_stale(now))
                    .map(|w| w.id)
                    .collect();
                if !stale.is_empty() {
                    tracing::info!(daemons = ?stale, "Pruning registry entries of daemons that stopped heartbeating");
                    if let Err(error) = shared.broker.remove_workers(&stale).await {
                        tracing::warn!(error = %error_chain(&error), "Pruning the worker registry failed");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "Reading the worker registry failed")
            }
        }
    }
    if let Err(error) = shared.broker.put_worker(&entry(&shared, true)).await {
        tracing::warn!(error = %error_chain(&error), "Marking the worker registry entry draining failed");
    }
}

/// The machine's name, as `hostname` prints it.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}
