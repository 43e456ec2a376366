//! Waiting between tries: the one [`Backoff`] every runtime loop uses after a
//! failure that may pass, and [`retry_redis`] for the fenced calls that settle a
//! job.

use std::time::Duration;

/// A delay that doubles after each failure, up to a cap, and starts over after
/// a success.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// After an error that may pass: 100 ms, doubling to 2 s.
    pub(super) const fn errors() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// For a service that is away (Postgres for the ingester, Redis for one
    /// queue's dispatch): 100 ms, doubling to 5 s.
    pub(super) const fn outage() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The delay to wait now; the one after it is twice as long, up to the cap.
    pub(super) fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (now * 2).min(self.max);
        now
    }

    /// Starts over from the first delay.
    pub(super) fn reset(&mut self) {
        self.next = self.first;
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_to_its_cap_and_starts_over_after_a_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let ms: Vec<u128> = (0..5).map(|_| b.next().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }
}
