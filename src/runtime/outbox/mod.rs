//! The outbox dispatcher: moves committed SQL-enqueued jobs into Redis, one
//! DISPATCH per queue per batch, isolating a queue's (or a job's) trouble: the
//! rows of a queue that fails, or does not answer within its patience
//! (`queues.rs`), are set aside (`jobrunner.outbox_held`) while the other queues'
//! rows commit, and go back to the outbox when its Redis answers again.

mod queues;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Shared;
use crate::error_chain;
use crate::ledger::{DispatchJob, Event, Status};
use crate::metrics::{Path, RedisPath};
use queues::Queues;

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
    let mut queues = Queues::new(shared.config.redis.command_timeout);
    loop {
        drain_outbox(&shared, &mut queues, &shutdown).await;
        // A waiting queue is tried again when its pause ends or its dispatch
        // comes back, not only at the next notification or sweep.
        let retry = queues
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
    queues.abort();
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

/// One queue's rows of a batch, and (id, revive) of each to set aside if they wait.
type QueueRows = (Vec<DispatchJob>, Vec<(Uuid, bool)>);

async fn drain_outbox(shared: &Arc<Shared>, queues: &mut Queues, shutdown: &CancellationToken) {
    while !shutdown.is_cancelled() {
        queues.collect(shared).await;
        release_held(shared, queues).await;
        let mut batch = match shared.ledger.outbox(MOVE_BATCH as i64).await {
            Ok(b) => b,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "Reading the outbox failed");
                return;
            }
        };
        let count = batch.jobs.len();
        // Queues with jobs set aside whose pause has ended: a dispatch of no jobs
        // asks their Redis whether it answers again.
        let probes = queues.due_probes();
        if count == 0 && probes.is_empty() {
            return;
        }
        // A row whose run_at the daemon cannot carry ends here, with the reason.
        let mut dead_ids: Vec<Uuid> = Vec::new();
        let mut dead_errors: Vec<Option<String>> = Vec::new();
        let mut by_queue: BTreeMap<String, QueueRows> = BTreeMap::new();
        for j in std::mem::take(&mut batch.jobs) {
            if j.run_ms.is_none() {
                dead_ids.push(j.id);
                dead_errors.push(None);
                continue;
            }
            let (jobs, rows) = match by_queue.get_mut(&j.queue) {
                Some(entry) => entry,
                None => by_queue.entry(j.queue.clone()).or_default(),
            };
            rows.push((j.id, j.revive));
            jobs.push(j);
        }
        for queue in probes {
            by_queue.entry(queue).or_default();
        }
        // Rows of queues that wait, set aside in the batch's transaction.
        let mut hold: Vec<(String, Vec<(Uuid, bool)>)> = Vec::new();
        // The queues are dispatched side by side, each as a task of its own: on a
        // cluster each may live on another master, and one that is slow or hung
        // is given up on after its patience, so it holds back only itself.
        let round = Instant::now();
        let mut running = Vec::with_capacity(by_queue.len());
        for (queue, (jobs, rows)) in by_queue {
            if queues.waiting(&queue) {
                hold.push((queue, rows));
                continue;
            }
            let deadline = round + queues.patience(&queue);
            let task = queues::start(shared, queue.clone(), jobs);
            running.push((queue, rows, deadline, task));
        }
        let waits = running
            .into_iter()
            .map(|(queue, rows, deadline, mut task)| async move {
                let outcome = tokio::time::timeout_at(deadline, &mut task).await;
                (queue, rows, task, outcome)
            });
        for (queue, rows, task, outcome) in futures::future::join_all(waits).await {
            let (done, took) = match outcome {
                Ok(Ok(finished)) => finished,
                Ok(Err(error)) => {
                    tracing::error!(queue, %error, "A dispatch task ended abnormally; its jobs wait");
                    queues.failed(&queue);
                    hold.push((queue, rows));
                    continue;
                }
                Err(_) => {
                    tracing::warn!(queue, jobs = rows.len(), waited = ?queues.patience(&queue),
                        "Dispatch to Redis is not answering; the queue's jobs wait while the other queues go on");
                    queues.left_out(&queue, task);
                    hold.push((queue, rows));
                    continue;
                }
            };
            for (id, reason) in done.poison {
                tracing::error!(queue, job.id = %id, error = %reason,
                    "A job cannot be dispatched; recording it as dead");
                shared.metrics.batch_poison(Path::Dispatch);
                dead_ids.push(id);
                dead_errors.push(Some(reason));
            }
            // A dispatch of no jobs (a probe) that failed says the queue still waits.
            let probe = rows.is_empty();
            match done.error {
                Some(error) if probe || !done.pending.is_empty() => {
                    let delay = queues.failed(&queue);
                    shared.metrics.redis_error(&queue, RedisPath::Dispatch);
                    // The rows wait aside; other queues go on.
                    tracing::warn!(queue, error = %error_chain(&error), jobs = done.pending.len(),
                        retry_in = ?delay, "Dispatch to Redis failed; the queue's jobs wait");
                    let pending: HashSet<Uuid> = done.pending.into_iter().collect();
                    let rows = rows.into_iter().filter(|(id, _)| pending.contains(id));
                    hold.push((queue, rows.collect()));
                }
                _ => queues.succeeded(&queue, took),
            }
        }
        for (queue, rows) in &hold {
            if rows.is_empty() {
                continue;
            }
            if let Err(error) = batch.hold(queue, rows).await {
                // Rolling back keeps every row: the dispatched ones are skipped next time.
                tracing::warn!(error = %error_chain(&error), "Setting waiting jobs aside failed");
                return;
            }
            queues.held(queue);
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
        if count < MOVE_BATCH && !queues.releases_pending() {
            return;
        }
    }
}

/// Every this many `runtime.sweep_interval`s, the jobs set aside for queues this
/// daemon does not keep aside go back to the outbox.
const HELD_SWEEPS: u32 = 10;

/// Puts back in the outbox the jobs set aside for queues whose Redis answers
/// again, and, every [`HELD_SWEEPS`] sweeps (and at start), those of queues this
/// daemon does not keep aside (set aside by another daemon, or by one that stopped).
async fn release_held(shared: &Shared, queues: &mut Queues) {
    for queue in queues.take_releases() {
        match shared.ledger.release_held(&queue).await {
            Ok(0) => {}
            Ok(jobs) => tracing::info!(
                queue,
                jobs,
                "The queue's Redis answers again; its waiting jobs go on"
            ),
            Err(error) => {
                tracing::warn!(queue, error = %error_chain(&error), "Putting waiting jobs back failed");
                queues.release_later(&queue);
            }
        }
    }
    if queues.sweep_due(shared.config.runtime.sweep_interval * HELD_SWEEPS) {
        match shared
            .ledger
            .release_held_except(&queues.kept_aside())
            .await
        {
            Ok(0) => {}
            Ok(jobs) => {
                tracing::info!(jobs, "Put back jobs set aside for queues no longer waiting")
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "Putting waiting jobs back failed")
            }
        }
    }
}

/// Whether `id` was ended for its run_at (no reason given: the ledger words it).
fn batch_time_poison(ids: &[Uuid], errors: &[Option<String>], id: Uuid) -> bool {
    ids.iter().zip(errors).any(|(i, e)| *i == id && e.is_none())
}
