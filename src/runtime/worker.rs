//! One attempt of one job: have the ledger admit the lease, run the handler
//! under its timeout while heartbeating the lease, then hand the outcome to
//! `settle` (Redis first, fenced, then the ledger).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Shared;
use super::settle::{complete, persist, settle};
use crate::broker::Heartbeat;
use crate::broker::Leased;
use crate::config::OnTimeout;
use crate::jobs::{JobContext, JobError, Progress};
use crate::ledger::{Attempt, Claim, ProgressReport, StatusUpdate, Transition, Verdict};

/// How long a cancelled handler gets to return on its own before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How an attempt ended, before it is settled.
pub(super) enum Outcome {
    /// The job was cancelled (`jobrunner cancel`) while it ran: it ends here, and
    /// the ledger already says `cancelled`.
    Cancelled,
    Done(Result<Value, JobError>),
    /// The drain deadline passed: hand the job back.
    Interrupted,
    /// A heartbeat found the lease gone: another attempt owns the job now.
    LeaseLost,
}

pub(super) async fn execute(
    shared: Arc<Shared>,
    job: Leased,
    permit: OwnedSemaphorePermit,
    hard_stop: CancellationToken,
) {
    let span = tracing::info_span!("job", job.id = %job.id, job.kind = %job.kind,
        job.queue = %job.queue, job.attempt = job.attempt);
    async move {
        let _running = shared.stats.running();
        // The job hash's run_ms is when the job first became due; a retry's due
        // time is not kept there, so only first attempts are measured.
        if job.ready_ms > 0 && job.attempt == 1 {
            let waited = Utc::now().timestamp_millis() - job.ready_ms;
            shared
                .metrics
                .queue_wait(&job.queue, waited.max(0) as f64 / 1000.0);
        }
        // The ledger admits the lease before anything runs: a job whose row is
        // final (a late or repeated dispatch re-created it in Redis) never runs
        // again, every run is one counted attempt, and the job runs the row's
        // payload and attempt budget, whatever its Redis hash says.
        let mut job = job;
        let claim = Claim {
            queue: job.queue.clone(),
            kind: job.kind.clone(),
        };
        match shared
            .writer
            .admit(transition(&job, Transition::Running), claim)
            .await
        {
            Some(Verdict::Run {
                payload,
                max_attempts,
            }) => {
                job.payload = payload;
                job.max_attempts = max_attempts;
            }
            Some(Verdict::Refused) => {
                tracing::warn!(token = job.token,
                    "The ledger refused this lease (the job already ended, or a newer attempt owns it); not running it");
                // Fenced: ends only this lease, and leaves the job's tombstone.
                complete(&shared, &job).await;
                drop(permit);
                return;
            }
            Some(Verdict::Foreign { queue, kind }) => {
                refuse_foreign(&shared, &job, &queue, &kind).await;
                drop(permit);
                return;
            }
            None => {
                // The status writer stopped (shutdown during a Postgres outage).
                persist(&shared, &job, || shared.broker.release(&job)).await;
                drop(permit);
                return;
            }
        }
        let started = std::time::Instant::now();
        let outcome = attempt(&shared, &job, &hard_stop).await;
        if let Outcome::Done(_) = &outcome {
            shared.metrics.job_duration(&job.kind, started.elapsed());
        }
        settle(&shared, &job, outcome).await;
        drop(permit);
    }
    .instrument(span)
    .await
}

/// Ends a lease whose queue or kind differ from its job's row, unrun. A copy
/// on another queue is only ended (the job's own copy runs on its queue); the
/// job's own copy with a rewritten kind is ended and the job dispatched again
/// from its row, so it still runs, once, as enqueued.
async fn refuse_foreign(shared: &Shared, job: &Leased, queue: &str, kind: &str) {
    tracing::error!(
        token = job.token,
        ledger.queue = queue,
        ledger.kind = kind,
        "The ledger row of this job is on another queue or of another kind than this lease; not running it"
    );
    if !complete(shared, job).await || job.queue != queue {
        return;
    }
    match shared.ledger.redispatch_ended(job.id).await {
        Ok(_) => tracing::warn!("Dispatching the job again from its ledger row"),
        Err(error) => tracing::error!(error = %crate::error_chain(&error),
            "Dispatching the job again from its ledger row failed; the orphan sweep will"),
    }
}

async fn attempt(shared: &Shared, job: &Leased, hard_stop: &CancellationToken) -> Outcome {
    let Some(handler) = shared.registry.get(&job.kind) else {
        return Outcome::Done(Err(JobError::permanent(format!(
            "unknown kind `{}`: no handler is registered for it",
            job.kind
        ))));
    };
    let payload: Value = match crate::jobs::payload::decode(&job.payload) {
        Ok(p) => p,
        Err(message) => return Outcome::Done(Err(JobError::permanent(message))),
    };
    let kind = shared.live().kind(&job.kind);
    let (timeout, on_timeout) = (kind.timeout, kind.on_timeout);
    let cancel = hard_stop.child_token();
    // Fired by a cancel message for this job (or a heartbeat that saw the mark).
    let (cancelled, _registered) = shared.running.register(job.id);
    let grace = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(grace);
    let mut cancel_seen = false;
    let ctx = JobContext {
        id: job.id,
        queue: job.queue.clone(),
        kind: job.kind.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        payload,
        cancel: cancel.clone(),
        db: shared.ledger.pool().clone(),
        progress: progress_sink(shared, job),
    };
    // A panicking handler ends its attempt like any retryable failure instead of
    // leaving the lease to expire.
    let run = tokio::time::timeout(timeout, AssertUnwindSafe(handler.run(ctx)).catch_unwind());
    tokio::pin!(run);
    let lease = shared.config.runtime.lease;
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
    loop {
        tokio::select! {
            result = &mut run => {
                if cancel_seen {
                    return Outcome::Cancelled;
                }
                // A handler that noticed the drain deadline and gave up was
                // interrupted, not failed: its attempt must not count.
                let failed = !matches!(result, Ok(Ok(Ok(_))));
                if failed && hard_stop.is_cancelled() {
                    return Outcome::Interrupted;
                }
                return Outcome::Done(match result {
                    Err(_) if on_timeout == OnTimeout::Dead => Err(JobError::permanent(format!(
                        "timed out after {} (the kind's on_timeout is dead)",
                        humantime::format_duration(timeout)))),
                    Err(_) => Err(JobError::retryable(format!(
                        "timed out after {}", humantime::format_duration(timeout)))),
                    Ok(Err(panic)) => Err(JobError::retryable(format!(
                        "handler panicked: {}", panic_message(&panic)))),
                    Ok(Ok(result)) => result,
                });
            }
            _ = beat.tick() => match shared.broker.heartbeat_checked(job, lease).await {
                Ok(Heartbeat::Held) => {}
                // The cancel message may have been missed (pub/sub reconnecting).
                Ok(Heartbeat::Cancelled) => cancelled.cancel(),
                Ok(Heartbeat::Lost) => {
                    cancel.cancel();
                    return Outcome::LeaseLost;
                }
                Err(error) => {
                    shared.metrics.redis_error(&job.queue, crate::metrics::RedisPath::Ack);
                    tracing::warn!(error = %crate::error_chain(&error),
                        "Heartbeat failed; the lease may expire");
                }
            },
            _ = cancelled.cancelled(), if !cancel_seen => {
                tracing::info!("Job cancelled while running; stopping its handler");
                cancel_seen = true;
                cancel.cancel();
                grace.as_mut().reset(tokio::time::Instant::now() + CANCEL_GRACE);
            }
            _ = &mut grace, if cancel_seen => {
                tracing::warn!(grace = ?CANCEL_GRACE,
                    "Cancelled handler did not return within its grace; dropping it");
                return Outcome::Cancelled;
            }
            _ = hard_stop.cancelled() => {
                cancel.cancel();
                if cancel_seen {
                    return Outcome::Cancelled;
                }
                return Outcome::Interrupted;
            }
        }
    }
}

/// Progress reports of this attempt go to the status writer, fenced by its token.
fn progress_sink(shared: &Shared, job: &Leased) -> Progress {
    let writer = shared.writer.clone();
    let attempt = Attempt::from(job);
    Progress::new(move |percent, message| {
        let sent = writer.try_report_progress(attempt, ProgressReport { percent, message });
        if !sent {
            tracing::debug!("Status writer is behind; a progress report was dropped");
        }
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl From<&Leased> for Attempt {
    fn from(job: &Leased) -> Attempt {
        Attempt {
            id: job.id,
            token: job.token,
            number: job.attempt,
        }
    }
}

/// The status write that records `transition` of this lease's attempt.
pub(super) fn transition(job: &Leased, transition: Transition) -> StatusUpdate {
    StatusUpdate::new(Attempt::from(job), transition)
}
