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
    /// Report progress at each quarter of the sleep.
    #[serde(default)]
    progress: bool,
}

/// Sleeps `{"ms": N}` milliseconds, waking early if the attempt is cancelled. The
/// result names the attempt, so tests can tell which attempt's outcome was kept.
/// With `"progress": true` it reports 25, 50, 75 and 100 percent on the way.
async fn sleep(ctx: JobContext) -> JobResult {
    let SleepPayload { ms, progress } = JobError::parse_payload(&ctx.payload)?;
    let steps: u64 = if progress { 4 } else { 1 };
    for step in 1..=steps {
        let slice = Duration::from_millis(ms * step / steps - ms * (step - 1) / steps);
        tokio::select! {
            _ = tokio::time::sleep(slice) => {}
            _ = ctx.cancel.cancelled() => return Err(JobError::retryable("cancelled before the sleep ended")),
        }
        if progress {
            let done = ms * step / steps;
            ctx.progress(
                (step * 100 / steps) as u8,
                format!("slept {done} of {ms} ms"),
            );
        }
    }
    Ok(json!({ "slept_ms": ms, "attempt": ctx.attempt }))
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
    use std::sync::Arc;

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
            progress: Default::default(),
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
    async fn sleep_with_progress_reports_each_quarter() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut c = ctx(json!({"ms": 4, "progress": true}), 1);
        let sink = seen.clone();
        c.progress = crate::jobs::Progress::new(move |p, m| sink.lock().unwrap().push((p, m)));
        sleep(c).await.unwrap();
        let seen = seen.lock().unwrap();
        let percents: Vec<u8> = seen.iter().map(|(p, _)| *p).collect();
        assert_eq!(percents, vec![25, 50, 75, 100]);
        assert_eq!(seen[3].1.as_deref(), Some("slept 4 of 4 ms"));
    }

    #[tokio::test]
    async fn permanent_fail_is_permanent() {
        let err = fail(ctx(json!({"permanent": true}), 1)).await.unwrap_err();
        assert!(matches!(err, JobError::Permanent { .. }));
    }
}
