//! Recovery: the epoch check that notices a Redis which came back empty, the
//! reaper of expired leases, and the orphan sweep for jobs Redis lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Shared;
use crate::error_chain;
use crate::ledger::{Attempt, StatusUpdate, Transition};
use crate::metrics::RedisPath;

/// The epoch each served queue's Redis node was last seen with (`None` until one
/// check answered).
pub(super) type Epochs = HashMap<String, Option<String>>;

/// Checks each queue's epoch marker once at start-up, before any loop runs: a
/// queue whose Redis has none has never been seeded or lost its data, and every
/// unfinished job of the queue must be dispatched again. Doing this before the
/// first dispatch matters: done later, it could put back a job this daemon had
/// already run but not yet recorded. The queues are checked side by side, so a
/// node that does not answer delays none of the others.
pub(super) async fn initial_epoch(shared: &Shared) -> Epochs {
    let checks = shared.config.queues.keys().map(|queue| async move {
        let epoch = match shared.broker.epoch(queue).await {
            Ok((current, fresh)) => {
                if fresh {
                    recover_queue(shared, queue, false).await;
                }
                Some(current)
            }
            Err(error) => {
                tracing::warn!(queue, error = %error_chain(&error), "Redis epoch check failed");
                shared.metrics.redis_error(queue, RedisPath::Recovery);
                None
            }
        };
        (queue.clone(), epoch)
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .collect()
}

/// Returns expired leases and stale ingest claims, and notices a queue whose Redis
/// came back empty (its epoch marker is gone) to dispatch the queue's unfinished
/// jobs again. Each queue is checked on its own, side by side: on a cluster a
/// failed-over or emptied master concerns only the queues it holds, and a node
/// that does not answer holds up no other queue.
pub(super) async fn reaper(shared: Arc<Shared>, mut epochs: Epochs, shutdown: CancellationToken) {
    loop {
        let rounds = epochs
            .iter_mut()
            .map(|(queue, epoch)| reap_queue(&shared, queue, epoch));
        futures::future::join_all(rounds).await;
        if !super::pause(shared.config.runtime.reap_interval, &shutdown).await {
            return;
        }
    }
}

/// One queue's round of the reaper: its epoch, then its expired leases.
async fn reap_queue(shared: &Shared, queue: &str, epoch: &mut Option<String>) {
    match shared.broker.epoch(queue).await {
        Ok((current, fresh)) => {
            if fresh || epoch.as_ref().is_some_and(|e| *e != current) {
                recover_queue(shared, queue, epoch.is_some()).await;
            }
            *epoch = Some(current);
        }
        Err(error) => {
            tracing::warn!(queue, error = %error_chain(&error), "Redis epoch check failed");
            shared.metrics.redis_error(queue, RedisPath::Recovery);
            // The reap below would fail the same way.
            return;
        }
    }
    let reaped = match shared.broker.reap(queue, shared.config.runtime.lease).await {
        Ok(r) => r,
        Err(error) => {
            tracing::warn!(queue, error = %error_chain(&error), "Reaping failed");
            shared.metrics.redis_error(queue, RedisPath::Recovery);
            return;
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

/// Seeds a queue's Redis again from the ledger: its pause, then every unfinished
/// job through the outbox.
async fn recover_queue(shared: &Shared, queue: &str, lost: bool) {
    // The pause first, so nothing dispatched below runs on a paused queue.
    match shared.ledger.paused_queues().await {
        Ok(paused) if paused.iter().any(|p| p == queue) => {
            if let Err(error) = shared.broker.pause(queue).await {
                tracing::error!(queue, error = %error_chain(&error),
                    "Cannot restore a queue's pause in Redis");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::error!(queue, error = %error_chain(&error),
            "Cannot read paused queues to restore a pause in Redis"),
    }
    match shared.ledger.redispatch_queue(queue).await {
        Ok(n) if lost || n > 0 => tracing::warn!(
            queue,
            jobs = n,
            "The queue's Redis has no epoch marker (it restarted empty, was flushed or failed over before the marker was copied); dispatching the queue's unfinished jobs again"
        ),
        Ok(_) => {}
        Err(error) => tracing::error!(queue, error = %error_chain(&error),
            "Cannot mark the queue's unfinished jobs for dispatch after its Redis lost its data"),
    }
    shared.outbox_wake.notify_one();
}

/// Finds jobs the ledger thinks are waiting or running but Redis no longer holds
/// (a daemon died between settling a job in Redis and writing its status), and
/// dispatches them again: at-least-once rather than stuck forever.
pub(super) async fn orphan_sweep(shared: Arc<Shared>, shutdown: CancellationToken) {
    let stale_after = shared.config.runtime.lease.saturating_mul(2);
    loop {
        if !super::pause(shared.config.runtime.orphan_sweep_interval, &shutdown).await {
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
                        tracing::warn!(queue, error = %error_chain(&error), "Orphan check failed");
                        shared.metrics.redis_error(queue, RedisPath::Recovery);
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
