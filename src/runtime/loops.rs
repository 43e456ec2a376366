//! The daemon's long-running loops. Each takes the shutdown token and ends when
//! it fires; none holds a lock across an await.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{Shared, flow, worker};
use crate::broker::Dispatch;
use crate::error_chain;
use crate::ledger::{Attempt, Event, Status, StatusUpdate, Transition};
use crate::metrics::Path;

/// Most outbox rows moved in one round trip.
const MOVE_BATCH: usize = 1000;
/// How often the orphan sweep looks for ledger jobs whose Redis copy is gone.
const ORPHAN_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Sleeps for `d` unless shutdown comes first; false means "stop now".
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Leases jobs of one queue whenever this daemon has free slots for them, and
/// runs each on its own task holding one slot.
pub(super) async fn fetch(
    shared: Arc<Shared>,
    queue: String,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    workers: TaskTracker,
) {
    let (Some(slots), Some(wake)) = (shared.slots.get(&queue), shared.fetch_wake.get(&queue))
    else {
        return;
    };
    let (slots, wake) = (slots.clone(), wake.clone());
    let runtime = &shared.config.runtime;
    let mut error_delay = Duration::from_millis(100);
    let mut limits = flow::LimitsCache::new(&queue);
    loop {
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let mut permits = vec![first];
        while permits.len() < runtime.fetch_batch {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let wanted = permits.len();
        let limits = limits.get(shared.live()).to_owned();
        match shared
            .broker
            .fetch_limited(&queue, wanted, runtime.lease, &limits)
            .await
        {
            Ok(fetched) => {
                error_delay = Duration::from_millis(100);
                let got = fetched.jobs.len();
                for job in fetched.jobs {
                    let Some(permit) = permits.pop() else { break };
                    workers.spawn(worker::execute(
                        shared.clone(),
                        job,
                        permit,
                        hard_stop.clone(),
                    ));
                }
                drop(permits);
                if got < wanted {
                    // The queue is empty (or paused, or at a limit): wait for a
                    // wake-up, the next delayed job or open rate window, or the poll
                    // interval, whichever comes first.
                    let mut idle = runtime.poll_interval;
                    if let Some(due) = fetched.next_due_ms {
                        // `due` comes from Redis: no unchecked arithmetic on it.
                        let until = due.saturating_sub(Utc::now().timestamp_millis());
                        idle = idle.min(Duration::from_millis(until.max(1) as u64));
                    }
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(idle) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
            Err(error) => {
                drop(permits);
                tracing::warn!(queue, error = %error_chain(&error), "Fetch failed, retrying");
                if !pause(error_delay, &shutdown).await {
                    return;
                }
                error_delay = (error_delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

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
                    if !pause(sweep * 5, &shutdown).await {
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
    until: HashMap<String, (tokio::time::Instant, Duration)>,
}

impl QueueBackoff {
    fn waiting(&self, queue: &str) -> bool {
        self.until
            .get(queue)
            .is_some_and(|(until, _)| tokio::time::Instant::now() < *until)
    }

    /// Backs the queue off: 100 ms, doubling to 5 s.
    fn failed(&mut self, queue: &str) -> Duration {
        let delay = match self.until.get(queue) {
            Some((_, d)) => (*d * 2).min(Duration::from_secs(5)),
            None => Duration::from_millis(100),
        };
        self.until.insert(
            queue.to_owned(),
            (tokio::time::Instant::now() + delay, delay),
        );
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
        for (queue, jobs) in &by_queue {
            if backoff.waiting(queue) {
                requeue.extend(jobs.iter().map(|j| j.id));
                held_back = true;
                continue;
            }
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
            let done = dispatch_queue(shared, queue, jobs).await;
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
        if !pause(shared.config.runtime.reap_interval, &shutdown).await {
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
        if !pause(ORPHAN_SWEEP_INTERVAL, &shutdown).await {
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

/// Routes wake-up messages from Redis pub/sub to the fetch and ingest loops.
/// Without it the loops still work, on their poll interval.
pub(super) async fn subscriber(shared: Arc<Shared>, shutdown: CancellationToken) {
    let client = match shared.broker.subscriber() {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "No pub/sub client; polling only");
            return;
        }
    };
    let mut messages = client.message_rx();
    if let Err(error) = client.init().await {
        tracing::warn!(error = %error_chain(&error), "Pub/sub connection failed; polling only");
        return;
    }
    let manager = client.manage_subscriptions();
    let channels: Vec<String> = shared
        .config
        .queues
        .keys()
        .flat_map(|q| {
            [
                shared.broker.wake_channel(q),
                shared.broker.cancel_channel(q),
            ]
        })
        .collect();
    if let Err(error) = client.subscribe(channels).await {
        tracing::warn!(error = %error_chain(&error), "Subscribing to wake-ups failed; polling only");
    }
    let wake_all = || {
        shared.fetch_wake.values().for_each(|n| n.notify_one());
        shared.ingest_wake.values().for_each(|n| n.notify_one());
    };
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(m) => {
                    if shared.broker.queue_of_cancel_channel(&m.channel).is_some() {
                        if let Some(id) = m.value.as_str().and_then(|v| v.parse().ok()) {
                            shared.running.cancel(id);
                        }
                        continue;
                    }
                    let Some(queue) = shared.broker.queue_of_channel(&m.channel) else { continue };
                    let target = match m.value.as_str().as_deref() {
                        Some("ingest") => &shared.ingest_wake,
                        _ => &shared.fetch_wake,
                    };
                    if let Some(n) = target.get(queue) {
                        n.notify_one();
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => wake_all(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = shutdown.cancelled() => break,
        }
    }
    manager.abort();
    let _ = client.quit().await;
}
