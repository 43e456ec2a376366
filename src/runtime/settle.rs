//! Settling an attempt's outcome: Redis first (fenced: the lease there decides
//! whether this attempt still owns the job), then the ledger, which only hears
//! about outcomes Redis accepted. Also the retry delay ([`backoff`]).

use std::time::Duration;

use chrono::Utc;
use rand::Rng;

use super::Shared;
use super::worker::{Outcome, transition};
use crate::broker::Leased;
use crate::config::BackoffConfig;
use crate::jobs::JobError;
use crate::ledger::{Status, Transition};

/// The delay before the attempt after `attempt` (1-based): `base · 2^(attempt-1)`
/// capped at `max`, with "equal jitter" (half fixed, half random) so retries of a
/// failed batch spread out instead of arriving together.
pub fn backoff(config: &BackoffConfig, attempt: i32) -> Duration {
    let exp = attempt.saturating_sub(1).clamp(0, 32) as u32;
    let full = config
        .base
        .checked_mul(1u32 << exp.min(31))
        .unwrap_or(config.max)
        .min(config.max);
    let half = full / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

/// The longest wait before a retry, whatever the handler asked for.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(365 * 86_400);

/// Records the outcome: Redis first, because the lease there decides whether this
/// attempt still owns the job; the ledger only hears about outcomes Redis accepted.
pub(super) async fn settle(shared: &Shared, job: &Leased, outcome: Outcome) {
    let broker = &shared.broker;
    let (accepted, status_update) = match outcome {
        Outcome::LeaseLost => {
            tracing::warn!(
                "Lease lost while running; another attempt owns the job, outcome dropped"
            );
            return;
        }
        Outcome::Cancelled => {
            // The ledger row is `cancelled` already (and final, so no status write
            // could change it); only the lease and the kind's slot are given back.
            if complete(shared, job).await {
                tracing::info!("Job ended cancelled");
            }
            return;
        }
        Outcome::Interrupted => {
            let accepted = persist(shared, job, || broker.release(job)).await;
            tracing::info!("Job handed back unfinished at shutdown");
            (accepted, transition(job, Transition::HandedBack))
        }
        Outcome::Done(Ok(result)) => {
            let accepted = complete(shared, job).await;
            if accepted {
                tracing::debug!("Job succeeded");
            }
            (accepted, transition(job, Transition::Succeeded { result }))
        }
        Outcome::Done(Err(JobError::Retryable {
            message,
            retry_after,
        })) if job.attempt < job.max_attempts => {
            let message = scrubbed(shared, job, message);
            let kind = shared.live().kind(&job.kind);
            // A handler's retry-after is outside input: a year is the most it gets.
            let delay = retry_after
                .unwrap_or_else(|| backoff(&kind.backoff, job.attempt))
                .min(MAX_RETRY_DELAY);
            let accepted = persist(shared, job, || broker.retry(job, delay)).await;
            if accepted {
                tracing::warn!(error = %message, retry_in = ?delay, "Job failed, retrying");
            }
            let run_at = crate::ledger::safe::after(Utc::now(), delay);
            (
                accepted,
                transition(
                    job,
                    Transition::Retrying {
                        error: message,
                        run_at,
                    },
                ),
            )
        }
        Outcome::Done(Err(error)) => {
            let message = match &error {
                JobError::Retryable { message, .. } => {
                    format!("{message} (gave up after {} attempts)", job.attempt)
                }
                JobError::Permanent { message } => message.clone(),
            };
            let message = scrubbed(shared, job, message);
            let accepted = complete(shared, job).await;
            if accepted {
                tracing::warn!(error = %message, "Job is dead");
            }
            (
                accepted,
                transition(job, Transition::Dead { error: message }),
            )
        }
    };
    if accepted {
        if status_update.status.is_final() {
            shared.stats.job_done();
        }
        count_outcome(shared, job, status_update.status);
        shared.writer.send(status_update).await;
    } else {
        tracing::warn!(
            token = job.token,
            "Lease expired before the outcome was recorded; a newer attempt owns the job, outcome dropped"
        );
    }
}

/// An attempt's error with the payload values `[redaction]` names replaced: it
/// is logged, published in events and recorded as `last_error`.
fn scrubbed(shared: &Shared, job: &Leased, message: String) -> String {
    if let std::borrow::Cow::Owned(clean) =
        shared.redaction.scrub(&job.kind, &job.payload, &message)
    {
        return clean;
    }
    message
}

/// Counts an accepted outcome in the job counters.
fn count_outcome(shared: &Shared, job: &Leased, status: Status) {
    match status {
        Status::Succeeded => shared.metrics.job_succeeded(&job.kind),
        Status::Dead => shared.metrics.job_dead(&job.kind),
        Status::Retrying => shared.metrics.job_retried(&job.kind),
        _ => {}
    }
}

/// Ends the job in Redis through the queue's batching acker.
pub(super) async fn complete(shared: &Shared, job: &Leased) -> bool {
    match shared.producers.get(&job.queue) {
        Some(p) => p.acker.complete(job.clone()).await,
        None => persist(shared, job, || shared.broker.complete(job)).await,
    }
}

/// A fenced Redis call, retried through a short outage; false (outcome dropped)
/// if Redis stays away, which is safe: see [`retry::retry_redis`].
pub(super) async fn persist<F, Fut>(shared: &Shared, job: &Leased, call: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = crate::broker::Result<bool>>,
{
    super::retry::retry_redis(&shared.metrics, &job.queue, "Settling a job in Redis", call)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base_ms: u64, max_ms: u64) -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn backoff_doubles_each_attempt_within_its_jitter_band() {
        let c = config(1000, 3_600_000);
        for (attempt, full) in [(1, 1000), (2, 2000), (3, 4000), (6, 32_000)] {
            for _ in 0..50 {
                let d = backoff(&c, attempt).as_millis() as u64;
                assert!((full / 2..=full).contains(&d), "attempt {attempt}: {d}ms");
            }
        }
    }

    #[test]
    fn backoff_is_capped_even_for_huge_attempt_numbers() {
        let c = config(1000, 5000);
        for attempt in [10, 40, i32::MAX] {
            let d = backoff(&c, attempt).as_millis();
            assert!((2500..=5000).contains(&d), "attempt {attempt}: {d}ms");
        }
    }
}
