//! Diagnostic kinds for smoke tests and the benchmark: `noop`, `sleep` and `fail`.
//! They share one file because each is a few lines and none touches a table.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{JobContext, JobError, JobResult, Registry};

pub(super) fn register(registry: &mut Registry) {
    registry
        .register("noop", noop)
        .register("sleep", sleep)
        .register("fail", fail);
}

/// Succeeds at once; the result echoes the payload.
async fn noop(ctx: JobContext) -> JobResult {
    Ok(ctx.payload)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepPayload {
    ms: u64,
}

/// Sleeps `{"ms": N}` milliseconds, waking early if the attempt is cancelled. The
/// result names the attempt, so tests can tell which attempt's outcome was kept.
async fn sleep(ctx: JobContext) -> JobResult {
    let SleepPayload { ms } = JobError::parse_payload(&ctx.payload)?;
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({ "slept_ms": ms, "attempt": ctx.attempt })),
        _ = ctx.cancel.cancelled() => Err(JobError::retryable("cancelled before the sleep ended")),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FailPayload {
    /// Fail this many attempts, then succeed.
    times: Option<i32>,
    /// Fail permanently on the first attempt.
    permanent: bool,
}

/// `{"times": N}` fails N attempts then succeeds; `{"permanent": true}` fails for good.
async fn fail(ctx: JobContext) -> JobResult {
    let payload: FailPayload = JobError::parse_payload(&ctx.payload)?;
    if payload.permanent {
        return Err(JobError::permanent("failed permanently as asked"));
    }
    let times = payload.times.unwrap_or(i32::MAX);
    if ctx.attempt <= times {
        return Err(JobError::retryable(format!(
            "failed attempt {} of the {times} asked for",
            ctx.attempt
        )));
    }
    Ok(json!({ "failed_attempts": times }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(payload: serde_json::Value, attempt: i32) -> JobContext {
        JobContext {
            id: uuid::Uuid::now_v7(),
            queue: "default".into(),
            kind: "test".into(),
            attempt,
            max_attempts: 5,
            payload,
            cancel: Default::default(),
            db: sqlx::PgPool::connect_lazy("postgres://localhost/unused").unwrap(),
        }
    }

    #[tokio::test]
    async fn fail_with_times_fails_that_many_attempts_then_succeeds() {
        assert!(fail(ctx(json!({"times": 2}), 2)).await.is_err());
        assert_eq!(
            fail(ctx(json!({"times": 2}), 3)).await.unwrap(),
            json!({"failed_attempts": 2})
        );
    }

    #[tokio::test]
    async fn a_sleep_payload_with_a_string_is_a_permanent_error() {
        let err = sleep(ctx(json!({"ms": "soon"}), 1)).await.unwrap_err();
        assert!(matches!(err, JobError::Permanent { .. }), "{err:?}");
        assert!(err.to_string().contains("bad payload"), "{err}");
    }

    #[tokio::test]
    async fn permanent_fail_is_permanent() {
        let err = fail(ctx(json!({"permanent": true}), 1)).await.unwrap_err();
        assert!(matches!(err, JobError::Permanent { .. }));
    }
}
