//! The daemon's long-running loops. Each takes the shutdown token and ends when
//! it fires; none holds a lock across an await.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{Shared, flow, worker};
use crate::broker::Dispatch;
use crate::error_chain;
use crate::ledger::{Event, IngestedJob, Status, StatusUpdate};
use crate::metrics;

/// Most outbox rows or ingest entries moved in one round trip.
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
                        let until = due - Utc::now().timestamp_millis();
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

/// Records jobs that producers pushed straight into Redis, then makes them ready.
/// The ledger row is written before the job can run, so every status write finds it.
pub(super) async fn ingest(shared: Arc<Shared>, queue: String, shutdown: CancellationToken) {
    let Some(wake) = shared.ingest_wake.get(&queue).cloned() else {
        return;
    };
    let mut error_delay = Duration::from_millis(100);
    loop {
        let claimed = match shared.broker.claim_ingest(&queue, MOVE_BATCH).await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(queue, error = %error_chain(&error), "Ingest claim failed, retrying");
                if !pause(error_delay, &shutdown).await {
                    return;
                }
                error_delay = (error_delay * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        error_delay = Duration::from_millis(100);
        if claimed.is_empty() {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(shared.config.runtime.poll_interval) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let mut rows: Vec<IngestedJob> = claimed
            .into_iter()
            .map(|c| {
                let kind = shared.config.kind(&c.kind);
                let refused = match crate::jobs::payload::decode(&c.payload) {
                    Err(message) => Some(message),
                    Ok(v) if has_nul(&v) => Some(
                        "payload contains the character U+0000, which Postgres cannot store"
                            .to_owned(),
                    ),
                    Ok(_) => None,
                };
                IngestedJob {
                    id: c.id,
                    queue: queue.clone(),
                    max_attempts: if c.max_attempts > 0 {
                        c.max_attempts
                    } else {
                        kind.max_attempts
                    },
                    kind: c.kind,
                    payload: c.payload,
                    priority: c.priority.clamp(-1000, 1000),
                    run_at: ms_to_time(c.run_ms),
                    created_at: ms_to_time(c.created_ms),
                    refused,
                }
            })
            .collect();
        // Postgres down: keep retrying. If this daemon dies meanwhile, the claim
        // times out and the reaper hands the entries to another ingester.
        let mut delay = Duration::from_millis(100);
        let finished = loop {
            match shared.ledger.insert_ingested(&mut rows).await {
                Ok(finished) => break finished,
                Err(error) => {
                    tracing::warn!(queue, error = %error_chain(&error), "Ingest insert failed, retrying");
                    if !pause(delay, &shutdown).await {
                        return;
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        for id in &finished {
            tracing::warn!(queue, job.id = %id,
                "A producer re-sent the id of a finished job; it is not run again");
        }
        for row in rows.iter().filter(|r| r.refused.is_some()) {
            tracing::warn!(queue, job.id = %row.id, error = row.refused.as_deref().unwrap_or(""),
                "Refused a Redis-enqueued job; recorded as dead");
        }
        // Before the promote script makes them runnable: see `runtime::events`.
        if shared.publisher.enabled() {
            let now = Utc::now();
            let events = rows
                .iter()
                .filter(|r| !finished.contains(&r.id))
                .map(|r| {
                    let status = match &r.refused {
                        Some(_) => Status::Dead,
                        None if r.run_at > now => Status::Scheduled,
                        None => Status::Queued,
                    };
                    Event::status(r.id, &queue, &r.kind, status, 0, now, r.refused.as_deref())
                })
                .collect();
            shared.publisher.publish(events).await;
        }
        let promote: Vec<(Uuid, i32, bool)> = rows
            .iter()
            .map(|r| {
                (
                    r.id,
                    r.max_attempts,
                    r.refused.is_some() || finished.contains(&r.id),
                )
            })
            .collect();
        if let Err(error) = shared.broker.promote_ingested(&queue, &promote).await {
            tracing::warn!(queue, error = %error_chain(&error),
                "Promoting ingested jobs failed; the reaper will return them for another try");
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
    loop {
        drain_outbox(&shared, &shutdown).await;
        tokio::select! {
            _ = notified.notified() => {}
            _ = shared.outbox_wake.notified() => {}
            _ = tokio::time::sleep(sweep) => {}
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

async fn drain_outbox(shared: &Shared, shutdown: &CancellationToken) {
    while !shutdown.is_cancelled() {
        let batch = match shared.ledger.outbox(MOVE_BATCH as i64).await {
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
        // Before the dispatch script makes them runnable: see `runtime::events`.
        if shared.publisher.enabled() {
            let now = Utc::now();
            let events = batch
                .jobs
                .iter()
                .map(|j| {
                    let status = if j.run_at > now {
                        Status::Scheduled
                    } else {
                        Status::Queued
                    };
                    Event::status(j.id, &j.queue, &j.kind, status, j.attempts, now, None)
                })
                .collect();
            shared.publisher.publish(events).await;
        }
        let mut by_queue: BTreeMap<&str, Vec<Dispatch<'_>>> = BTreeMap::new();
        for j in &batch.jobs {
            by_queue.entry(&j.queue).or_default().push(Dispatch {
                id: j.id,
                kind: &j.kind,
                payload: &j.payload,
                priority: j.priority,
                attempts: j.attempts,
                max_attempts: j.max_attempts,
                run_ms: j.run_at.timestamp_millis(),
            });
        }
        for (queue, jobs) in &by_queue {
            if let Err(error) = shared.broker.dispatch(queue, jobs).await {
                // Dropping the batch rolls back: the rows stay in the outbox.
                tracing::warn!(queue, error = %error_chain(&error), "Dispatch to Redis failed");
                return;
            }
        }
        drop(by_queue);
        if let Err(error) = batch.commit().await {
            // Redis already has the jobs; the next sweep re-sends them and the
            // dispatch script skips those it holds.
            tracing::warn!(error = %error_chain(&error), "Committing the outbox batch failed");
            return;
        }
        tracing::debug!(count, "Dispatched jobs from the outbox");
        if count < MOVE_BATCH {
            return;
        }
    }
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
                shared
                    .metrics
                    .inc(metrics::LEASE_EXPIRED, &[("queue", queue)], 1);
                shared
                    .writer
                    .send(StatusUpdate {
                        id: r.id,
                        token: r.token,
                        status: if r.dead { Status::Dead } else { Status::Queued },
                        attempts: r.attempts,
                        at: Utc::now(),
                        result: None,
                        last_error: Some(message),
                        run_at: None,
                        progress: None,
                    })
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
    let lease = chrono::Duration::from_std(shared.config.runtime.lease * 2)
        .unwrap_or(chrono::Duration::seconds(60));
    loop {
        if !pause(ORPHAN_SWEEP_INTERVAL, &shutdown).await {
            return;
        }
        let before = Utc::now() - lease;
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

/// Whether any string or key in the value holds U+0000 (valid JSON, but not
/// storable in a Postgres `jsonb`).
fn has_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn ms_to_time(ms: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
}
