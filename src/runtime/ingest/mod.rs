//! The ingester: records jobs that producers pushed straight into Redis in the
//! ledger, then makes them ready. The ledger row is written before the job can
//! run, so every status write finds it.
//!
//! Nothing read from Redis is trusted: producers may write the ingest list and the
//! job hashes by hand. Every entry is checked (`check.rs`) before it reaches a
//! statement; one the daemon cannot carry becomes a `dead` row with the reason
//! (when it can be tied to a job id) or a quarantine entry, and never holds up the
//! valid jobs claimed with it.
//!
//! **Invariant:** no value read from Redis reaches arithmetic or a statement
//! unchecked: times are whole milliseconds inside the years 1970-9999, text is
//! UTF-8 without U+0000, and the id is a canonical UUID.
//! Checked by `check.rs`'s tests, `tests/integration/poison_redis.rs` and
//! `tests/integration/poison_props.rs`.

mod check;

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Shared;
use super::retry::Backoff;
use crate::broker::Ingest;
use crate::error_chain;
use crate::ledger::{Event, IngestedJob, NewQuarantine, Status};
use crate::metrics::RedisPath;
use check::{Verdict, check, raw_text};

/// Most ingest entries claimed in one round trip.
const CLAIM_BATCH: usize = 1000;

/// Records jobs that producers pushed straight into Redis, then makes them ready.
pub(super) async fn ingest(shared: Arc<Shared>, queue: String, shutdown: CancellationToken) {
    let Some(wake) = shared.producers.get(&queue).map(|p| &p.ingest_wake) else {
        return;
    };
    let mut backoff = Backoff::errors();
    loop {
        let claimed = match shared.broker.claim_ingest(&queue, CLAIM_BATCH).await {
            Ok(c) => c,
            Err(error) => {
                shared.metrics.redis_error(&queue, RedisPath::Ingest);
                tracing::warn!(queue, error = %error_chain(&error), "Ingest claim failed, retrying");
                if !super::pause(backoff.next(), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        if let Some(kind) = &claimed.bad_list {
            let key = shared.broker.queue_keys(&queue).ingest();
            let error = format!(
                "the ingest list {key} was a Redis {kind}, not a list; renamed to {key}:bad"
            );
            tracing::error!(queue, error, "Quarantined a broken ingest list");
            quarantine(
                &shared,
                &queue,
                None,
                &format!("key={key} type={kind}"),
                &error,
            )
            .await;
            continue;
        }
        if claimed.entries.is_empty() {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(shared.config.runtime.poll_interval) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        if !settle(&shared, &queue, claimed.entries, &shutdown).await {
            return;
        }
    }
}

/// Checks, records and promotes one claimed batch. False when shutdown came first.
async fn settle(
    shared: &Shared,
    queue: &str,
    entries: Vec<Ingest>,
    shutdown: &CancellationToken,
) -> bool {
    let now = Utc::now();
    let mut rows: Vec<IngestedJob> = Vec::with_capacity(entries.len());
    // Per entry: the row it became (index into `rows`), or none (quarantined).
    let mut row_of: Vec<Option<usize>> = Vec::with_capacity(entries.len());
    for entry in &entries {
        match check(entry, queue, &shared.config, now) {
            Verdict::Job(job) => {
                row_of.push(Some(rows.len()));
                rows.push(job);
            }
            Verdict::Quarantine { job_id, error } => {
                tracing::warn!(queue, error, "Quarantined an ingest entry");
                quarantine(shared, queue, job_id, &raw_text(entry), &error).await;
                row_of.push(None);
            }
        }
    }
    // Postgres down: keep retrying. If this daemon dies meanwhile, the claim
    // times out and the reaper hands the entries to another ingester.
    let mut backoff = Backoff::outage();
    let outcome = loop {
        match shared.ledger.insert_ingested(&mut rows).await {
            Ok(outcome) => break outcome,
            Err(error) => {
                tracing::warn!(queue, error = %error_chain(&error), "Ingest insert failed, retrying");
                if !super::pause(backoff.next(), shutdown).await {
                    return false;
                }
            }
        }
    };
    for id in &outcome.finished {
        tracing::warn!(queue, job.id = %id,
            "A producer re-sent the id of a finished job; it is not run again");
    }
    for id in &outcome.quarantined {
        tracing::warn!(queue, job.id = %id,
            "Postgres refused a Redis-enqueued job even as dead; quarantined");
    }
    for conflict in &outcome.conflicts {
        let error = conflict_error(conflict, queue);
        tracing::warn!(queue, job.id = %conflict.id, error, "Quarantined a Redis-enqueued job");
        if let Some(entry) = entries
            .iter()
            .zip(&row_of)
            .find(|(_, row)| row.is_some_and(|i| rows[i].id == conflict.id))
            .map(|(entry, _)| entry)
        {
            quarantine(shared, queue, Some(conflict.id), &raw_text(entry), &error).await;
        }
    }
    for row in rows.iter().filter(|r| r.refused.is_some()) {
        if !outcome.dropped(&row.id) {
            tracing::warn!(queue, job.id = %row.id, error = row.refused.as_deref().unwrap_or(""),
                "Refused a Redis-enqueued job; recorded as dead");
        }
    }
    let dropped = |r: &IngestedJob| r.refused.is_some() || outcome.dropped(&r.id);
    // Before the promote script makes them runnable: see `runtime::events`.
    if shared.publisher.enabled() {
        let events = rows
            .iter()
            .filter(|r| !outcome.dropped(&r.id))
            .map(|r| {
                let status = match &r.refused {
                    Some(_) => Status::Dead,
                    None => Status::initial(r.run_at, now),
                };
                Event::status(r.id, queue, &r.kind, status, 0, now, r.refused.as_deref())
            })
            .collect();
        shared.publisher.publish(events).await;
    }
    let promote: Vec<(&[u8], i32, bool)> = entries
        .iter()
        .zip(&row_of)
        .map(|(entry, row)| match row {
            Some(i) => (
                entry.entry.as_slice(),
                rows[*i].max_attempts,
                dropped(&rows[*i]),
            ),
            None => (entry.entry.as_slice(), 1, true),
        })
        .collect();
    if let Err(error) = shared.broker.promote_ingested(queue, &promote).await {
        shared.metrics.redis_error(queue, RedisPath::Ingest);
        tracing::warn!(queue, error = %error_chain(&error),
            "Promoting ingested jobs failed; the reaper will return them for another try");
        return true;
    }
    // An impostor's hash on the ledger job's own queue may have made the
    // dispatcher skip that job ("Redis holds it already"); the promote above
    // deleted the hash, so the job goes back through the outbox, with the
    // ledger's payload. A dispatch of a job Redis does hold is a no-op.
    let own: Vec<Uuid> = (outcome.conflicts.iter())
        .filter(|c| c.queue == queue)
        .map(|c| c.id)
        .collect();
    if !own.is_empty()
        && let Err(error) = shared.ledger.redispatch(&own).await
    {
        tracing::warn!(queue, error = %error_chain(&error),
            "Could not put jobs whose id a Redis copy re-used back in the outbox; the orphan sweep will");
    }
    true
}

/// Why a Redis copy that re-used an unfinished job's id is not recorded or run.
fn conflict_error(conflict: &crate::ledger::Conflict, queue: &str) -> String {
    format!(
        "job id {} already belongs to a {} job on queue {} with another queue, kind or payload; \
         this copy on queue {queue} was not recorded or run (an id names one job: the ledger's \
         job keeps its own payload)",
        conflict.id, conflict.kind, conflict.queue
    )
}

/// Records one quarantined ingest item; a failure is logged, never retried forever.
async fn quarantine(shared: &Shared, queue: &str, job_id: Option<Uuid>, raw: &str, error: &str) {
    let item = NewQuarantine {
        source: "ingest",
        queue: Some(queue),
        job_id,
        raw,
        error,
    };
    shared.quarantine(&item).await;
}
