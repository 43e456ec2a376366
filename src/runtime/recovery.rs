//! Recovery: the epoch check that notices a Redis which came back empty, the
//! reaper of expired leases, and the orphan sweep for jobs Redis lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Shared;
use crate::error_chain;
use crate::ledger::{Attempt, StatusUpdate, Transition};

/// How often the orphan sweep looks for ledger jobs whose Redis copy is gone.
const ORPHAN_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Checks the epoch marker once at start-up, before any loop runs: a Redis without
/// one has never been seeded or lost its data, and every unfinished job must be
/// dispatched again. Doing this before the first dispatch matters: done later, it
/// could put back a job this daemon had already run but not yet recorded.
pub(super) async fn initial_epoch(shared: &Shared) -> Option<String> {
    match shared.broker.epoch().await {
        Ok((current, fresh)) => {
            if fresh {
                recover_redis(shared, false).await;
            }
            Some(current)
        }
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "Redis epoch check failed");
            None
        }
    }
}

/// Returns expired leases and stale ingest claims, and notices a Redis that came
/// back empty (its epoch marker is gone) to dispatch every unfinished job again.
pub(super) async fn reaper(
    shared: Arc<Shared>,
    mut epoch: Option<String>,
    shutdown: CancellationToken,
) {
    let lease = shared.config.runtime.lease;
    loop {
        match shared.broker.epoch().await {
            Ok((current, fresh)) => {
                if fresh || epoch.as_ref().is_some_and(|e| *e != current) {
                    recover_redis(&shared, epoch.is_some()).await;
                }
                epoch = Some(current);
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "Redis epoch check failed")
            }
        }
        for queue in shared.config.queues.keys() {
            let reaped = match shared.broker.reap(queue, lease).await {
                Ok(r) => r,
                Err(error) => {
                    tracing::warn!(queue, error = %error_chain(&error), "Reaping failed");
                    continue;
                }
            };
            for r in reaped.into_iter().filter(|r| !r.cancelled) {
                let message = format!(
                    "lease expired: the worker running attempt {} stopped responding",
                    r.attempts
                );
                tracing::warn!(job.id = %r.id, queue, dead = r.dead, "{message}");
                shared.metrics.leases_expired(queue, 1);
                shared
                    .writer
                    .send(StatusUpdate::new(
                        Attempt {
                            id: r.id,
                            token: r.token,
                            number: r.attempts,
                        },
                        Transition::LeaseExpired {
                            error: message,
                            dead: r.dead,
                        },
                    ))
                    .await;
            }
        }
        if !super::pause(shared.config.runtime.reap_interval, &shutdown).await {
            return;
        }
    }
}

async fn recover_redis(shared: &Shared, lost: bool) {
    // Paused queues first, so nothing dispatched below runs on a paused queue.
    match shared.ledger.paused_queues().await {
        Ok(queues) => {
            for queue in queues {
                if let Err(error) = shared.broker.pause(&queue).await {
                    tracing::error!(queue, error = %error_chain(&error),
                        "Cannot restore a queue's pause in Redis");
                }
            }
        }
        Err(error) => tracing::error!(error = %error_chain(&error),
            "Cannot read paused queues to restore them in Redis"),
    }
    match shared.ledger.redispatch_all().await {
        Ok(n) if lost || n > 0 => tracing::warn!(
            jobs = n,
            "Redis has no epoch marker (it restarted empty or was flushed); dispatching every unfinished job again"
        ),
        Ok(_) => {}
        Err(error) => tracing::error!(error = %error_chain(&error),
            "Cannot mark unfinished jobs for dispatch after Redis lost its data"),
    }
    shared.outbox_wake.notify_one();
}

/// Finds jobs the ledger thinks are waiting or running but Redis no longer holds
/// (a daemon died between settling a job in Redis and writing its status), and
/// dispatches them again: at-least-once rather than stuck forever.
pub(super) async fn orphan_sweep(shared: Arc<Shared>, shutdown: CancellationToken) {
    let stale_after = shared.config.runtime.lease.saturating_mul(2);
    loop {
        if !super::pause(ORPHAN_SWEEP_INTERVAL, &shutdown).await {
            return;
        }
        let before = crate::ledger::safe::before(Utc::now(), stale_after);
        let mut after = Uuid::nil();
        loop {
            let page = match shared.ledger.stale_page(before, after, 500).await {
                Ok(p) => p,
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "Orphan sweep failed");
                    break;
                }
            };
            let Some(last) = page.last() else { break };
            after = last.0;
            let mut by_queue: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
            for (id, queue) in &page {
                by_queue.entry(queue).or_default().push(*id);
            }
            let mut missing = Vec::new();
            for (queue, ids) in by_queue {
                match shared.broker.missing(queue, &ids).await {
                    Ok(m) => missing.extend(m),
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), "Orphan check failed");
                    }
                }
            }
            if !missing.is_empty() {
                match shared.ledger.redispatch_stale(&missing, before).await {
                    Ok(n) if n > 0 => {
                        tracing::warn!(
                            jobs = n,
                            "Found unfinished jobs missing from Redis; dispatching them again"
                        );
                        shared.outbox_wake.notify_one();
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), "Orphan redispatch failed")
                    }
                }
            }
            if page.len() < 500 || shutdown.is_cancelled() {
                break;
            }
        }
    }
}
