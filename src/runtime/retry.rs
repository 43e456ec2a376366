//! [`retry_redis`], for the fenced calls that settle a job. Every runtime loop
//! waits after a failure that may pass with [`Backoff`] (`crate::batch`, which
//! the ledger's status writer uses too).

use std::time::Duration;

pub(super) use crate::batch::Backoff;

/// Retries a Redis call through a short outage (the pool reconnects by itself):
/// ten tries over about ten seconds. After that the lease has expired anyway and
/// the reaper gives the job to another attempt, so giving up (None) is safe.
/// Each failure is counted against `queue` on the ack path.
pub(super) async fn retry_redis<T, F, Fut>(
    metrics: &crate::metrics::Metrics,
    queue: &str,
    what: &str,
    call: F,
) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = crate::broker::Result<T>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    for _ in 0..10 {
        match call().await {
            Ok(value) => return Some(value),
            Err(error) => {
                metrics.redis_error(queue, crate::metrics::RedisPath::Ack);
                tracing::warn!(queue, error = %crate::error_chain(&error), "{what} failed, retrying");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
    None
}
