//! The outbox dispatcher: moves committed SQL-enqueued jobs into Redis, one
//! DISPATCH per queue per batch, isolating a queue's (or a job's) trouble.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Shared;
use super::retry::Backoff;
use crate::broker::Dispatch;
use crate::error_chain;
use crate::ledger::{Event, Status};
use crate::metrics::{Path, RedisPath};

/// Most outbox rows moved in one round trip.
const MOVE_BATCH: usize = 1000;

/// Moves committed SQL-enqueued jobs into Redis: woken by NOTIFY, with a periodic
/// sweep because notifications sent while the listener was reconnecting are lost.
pub(super) async fn outbox(shared: Arc<Shared>, shutdown: CancellationToken) {
    // A separate task listens and only raises a flag, so a burst of commits costs
    // one drain, not one per notification.
    let notified = Arc::new(tokio::sync::Notify::new());
    let listener = tokio::spawn(listen(shared.clone(), notified.clone(), shutdown.clone()));
    let sweep = shared.config.runtime.sweep_interval;
    let mut backoff = QueueBackoff::default();
    loop {
        drain_outbox(&shared, &mut backoff, &shutdown).await;
        // A backed-off queue is tried again when its pause ends, not only at
        // the next notification or sweep.
        let retry = backoff
            .next()
            .unwrap_or_else(|| tokio::time::Instant::now() + sweep);
        tokio::select! {
            _ = notified.notified() => {}
            _ = shared.outbox_wake.notified() => {}
            _ = tokio::time::sleep(sweep) => {}
            _ = tokio::time::sleep_until(retry) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = listener.await;
}

/// LISTENs for `jobrunner.enqueue` commits and raises `notified` for each burst.
async fn listen(
    shared: Arc<Shared>,
    notified: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let sweep = shared.config.runtime.sweep_interval;
    let mut listener = None;
    while !shutdown.is_cancelled() {
        let Some(l) = listener.as_mut() else {
            match shared.ledger.listener().await {
                Ok(l) => listener = Some(l),
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error),
                        "Cannot LISTEN for enqueues; relying on the periodic sweep");
                    if !super::pause(sweep * 5, &shutdown).await {
                        return;
                    }
                }
            }
            continue;
        };
        tokio::select! {
            received = l.recv() => match received {
                Ok(_) => notified.notify_one(),
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "LISTEN connection lost");
                    listener = None;
                    // The sweep covers what was missed meanwhile.
                    notified.notify_one();
                }
            },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Queues whose dispatch failed for a reason that may pass, and until when their
/// outbox rows wait: one queue's trouble (a node down, a broken key) never holds
/// back another queue's jobs.
#[derive(Default)]
struct QueueBackoff {
    until: HashMap<String, (tokio::time::Instant, Backoff)>,
}

impl QueueBackoff {
    fn waiting(&self, queue: &str) -> bool {
        self.until
            .get(queue)
            .is_some_and(|(until, _)| tokio::time::Instant::now() < *until)
    }

    /// Backs the queue off: 100 ms, doubling to 5 s.
    fn failed(&mut self, queue: &str) -> Duration {
        let (until, backoff) = self
            .until
            .entry(queue.to_owned())
            .or_insert_with(|| (tokio::time::Instant::now(), Backoff::outage()));
        let delay = backoff.next();
        *until = tokio::time::Instant::now() + delay;
        delay
    }

    fn succeeded(&mut self, queue: &str) {
        self.until.remove(queue);
    }

    /// When the earliest queue still backed off may try again.
    fn next(&self) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        self.until
            .values()
            .map(|(u, _)| *u)
            .filter(|u| *u > now)
            .min()
    }
}

/// How one queue's part of an outbox batch went.
struct QueueDispatch {
    /// Jobs Redis refused on their own, with the reason: they end `dead`.
    poison: Vec<(Uuid, String)>,
    /// Jobs left for a later round, and why.
    pending: Vec<Uuid>,
    error: Option<crate::broker::Error>,
}

/// Dispatches one queue's jobs, isolating failure: a failure that may pass keeps
/// them all for later; a queue whose own keys are broken does too (it is not the
/// jobs' fault); otherwise the batch is split until the jobs Redis refuses on
/// their own are found, and the rest are dispatched now.
async fn dispatch_queue(shared: &Shared, queue: &str, jobs: &[Dispatch<'_>]) -> QueueDispatch {
    let all = || jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    let error = match shared.broker.dispatch(queue, jobs).await {
        Ok(_) => {
            return QueueDispatch {
                poison: Vec::new(),
                pending: Vec::new(),
                error: None,
            };
        }
        Err(e) => e,
    };
    if !error.is_transient() {
        // With no jobs, the script only checks the queue's own keys.
        if let Err(queue_error) = shared.broker.dispatch(queue, &[]).await {
            return QueueDispatch {
                poison: Vec::new(),
                pending: all(),
                error: Some(queue_error),
            };
        }
    } else {
        return QueueDispatch {
            poison: Vec::new(),
            pending: all(),
            error: Some(error),
        };
    }
    let broker = &shared.broker;
    let out = crate::batch::isolate(
        std::iter::once(0..jobs.len()),
        crate::broker::Error::is_transient,
        |r| broker.dispatch(queue, &jobs[r]),
    )
    .await;
    QueueDispatch {
        poison: out
            .poison
            .into_iter()
            .map(|(i, e)| {
                let reason = format!("Redis refused to dispatch this job: {}", error_chain(&e));
                (jobs[i].id, reason)
            })
            .collect(),
        pending: out
            .pending
            .into_iter()
            .flatten()
            .map(|i| jobs[i].id)
            .collect(),
        error: out.transient,
    }
}

async fn drain_outbox(shared: &Shared, backoff: &mut QueueBackoff, shutdown: &CancellationToken) {
    while !shutdown.is_cancelled() {
        let mut batch = match shared.ledger.outbox(MOVE_BATCH as i64).await {
            Ok(b) => b,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "Reading the outbox failed");
                return;
            }
        };
        let count = batch.jobs.len();
        if count == 0 {
            return;
        }
        // A row whose run_at the daemon cannot carry ends here, with the reason.
        let mut dead_ids: Vec<Uuid> = Vec::new();
        let mut dead_errors: Vec<Option<String>> = Vec::new();
        let mut by_queue: BTreeMap<&str, Vec<Dispatch<'_>>> = BTreeMap::new();
        for j in &batch.jobs {
            let Some(run_ms) = j.run_ms else {
                dead_ids.push(j.id);
                dead_errors.push(None);
                continue;
            };
            by_queue.entry(&j.queue).or_default().push(Dispatch {
                id: j.id,
                kind: &j.kind,
                payload: &j.payload,
                priority: j.priority,
                attempts: j.attempts,
                max_attempts: j.max_attempts,
                run_ms,
                revive: j.revive,
            });
        }
        let mut requeue: Vec<Uuid> = Vec::new();
        let mut held_back = false;
        let now = Utc::now().timestamp_millis();
        let mut due = Vec::with_capacity(by_queue.len());
        for (queue, jobs) in &by_queue {
            if backoff.waiting(queue) {
                requeue.extend(jobs.iter().map(|j| j.id));
                held_back = true;
            } else {
                due.push((*queue, jobs));
            }
        }
        // The queues are dispatched side by side: on a cluster each may live on
        // another master, and one that is slow or failing over (its calls wait
        // for the command timeout) must not hold back the others.
        let dispatches = due.into_iter().map(|(queue, jobs)| async move {
            // Before the dispatch script makes them runnable: see `runtime::events`.
            if shared.publisher.enabled() {
                let at = Utc::now();
                let events = jobs
                    .iter()
                    .map(|j| {
                        let status = Status::initial(j.run_ms, now);
                        Event::status(j.id, queue, j.kind, status, j.attempts, at, None)
                    })
                    .collect();
                shared.publisher.publish(events).await;
            }
            (queue, dispatch_queue(shared, queue, jobs).await)
        });
        for (queue, done) in futures::future::join_all(dispatches).await {
            for (id, reason) in done.poison {
                tracing::error!(queue, job.id = %id, error = %reason,
                    "A job cannot be dispatched; recording it as dead");
                shared.metrics.batch_poison(Path::Dispatch);
                dead_ids.push(id);
                dead_errors.push(Some(reason));
            }
            match done.error {
                Some(error) if !done.pending.is_empty() => {
                    let delay = backoff.failed(queue);
                    shared.metrics.redis_error(queue, RedisPath::Dispatch);
                    // The rows stay in the outbox; other queues go on.
                    tracing::warn!(queue, error = %error_chain(&error), jobs = done.pending.len(),
                        retry_in = ?delay, "Dispatch to Redis failed; the queue's jobs wait in the outbox");
                    requeue.extend(done.pending);
                    held_back = true;
                }
                _ => backoff.succeeded(queue),
            }
        }
        drop(by_queue);
        if let Err(error) = batch.requeue(&requeue).await {
            // Rolling back keeps every row: the dispatched ones are skipped next time.
            tracing::warn!(error = %error_chain(&error), "Keeping jobs in the outbox failed");
            return;
        }
        let buried = match batch.bury(&dead_ids, &dead_errors).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "Recording undispatchable jobs as dead failed");
                return;
            }
        };
        if let Err(error) = batch.commit().await {
            // Redis already has the jobs; the next sweep re-sends them and the
            // dispatch script skips those it holds.
            tracing::warn!(error = %error_chain(&error), "Committing the outbox batch failed");
            return;
        }
        if !buried.is_empty() && shared.publisher.enabled() {
            let at = Utc::now();
            let errors: HashMap<Uuid, &Option<String>> =
                dead_ids.iter().copied().zip(dead_errors.iter()).collect();
            let events = buried
                .iter()
                .map(|(id, queue, kind, attempts)| {
                    let reason = errors.get(id).and_then(|e| e.as_deref()).unwrap_or(
                        "run_at is outside the range jobrunner can schedule (years 1970 to 9999)",
                    );
                    Event::status(*id, queue, kind, Status::Dead, *attempts, at, Some(reason))
                })
                .collect();
            shared.publisher.publish(events).await;
        }
        for (id, queue, _, _) in &buried {
            if batch_time_poison(&dead_ids, &dead_errors, *id) {
                tracing::error!(queue, job.id = %id,
                    "A job's run_at is outside the range jobrunner can schedule; recorded as dead");
            }
        }
        tracing::debug!(count, "Dispatched jobs from the outbox");
        if count < MOVE_BATCH || held_back {
            return;
        }
    }
}

/// Whether `id` was ended for its run_at (no reason given: the ledger words it).
fn batch_time_poison(ids: &[Uuid], errors: &[Option<String>], id: Uuid) -> bool {
    ids.iter().zip(errors).any(|(i, e)| *i == id && e.is_none())
}
