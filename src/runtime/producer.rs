//! One queue served by this daemon: its [`Producer`] owns the queue's slots (this
//! daemon's concurrency limit), its wake-ups and its acker, and the fetch loop
//! leases jobs whenever a slot is free, within the FETCH limits of the live
//! config.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::acker::Acker;
use super::retry::Backoff;
use super::{Shared, worker};
use crate::broker::{Broker, KindLimits, Limits, Window};
use crate::config::Config;
use crate::error_chain;
use crate::ledger::NewQuarantine;
use crate::metrics::{Metrics, RedisPath};

/// The per-queue state every task of the queue shares.
pub(super) struct Producer {
    /// This daemon's concurrency limit for the queue (`queues.NAME.concurrency`):
    /// a job runs holding one permit. A reload resizes it.
    pub(super) slots: Arc<Semaphore>,
    /// Woken when the queue's ready set gains jobs (Redis pub/sub).
    pub(super) fetch_wake: Notify,
    /// Woken when producers push to the queue's ingest list.
    pub(super) ingest_wake: Notify,
    /// Batches the completion of the queue's finished leases.
    pub(super) acker: Acker,
}

impl Producer {
    /// The producer of `queue` and its acker's task, which ends once every handle
    /// to the producer is dropped.
    pub(super) fn spawn(
        broker: &Broker,
        metrics: &Arc<Metrics>,
        queue: &str,
        concurrency: usize,
    ) -> (Producer, tokio::task::JoinHandle<()>) {
        let (acker, task) = Acker::spawn(broker.clone(), metrics.clone(), queue.to_owned());
        let producer = Producer {
            slots: Arc::new(Semaphore::new(concurrency)),
            fetch_wake: Notify::new(),
            ingest_wake: Notify::new(),
            acker,
        };
        (producer, task)
    }

    /// Wakes the fetch and ingest loops (after missed wake-up messages).
    pub(super) fn wake_all(&self) {
        self.fetch_wake.notify_one();
        self.ingest_wake.notify_one();
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
    let Some(producer) = shared.producers.get(&queue) else {
        return;
    };
    let (slots, wake) = (producer.slots.clone(), &producer.fetch_wake);
    let runtime = &shared.config.runtime;
    let mut backoff = Backoff::errors();
    let mut limits = LimitsCache::new(&queue);
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
                backoff.reset();
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
                // After the leased jobs are on their way: their leases are running.
                report_dropped(&shared, &queue, &fetched.dropped).await;
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
                shared.metrics.redis_error(&queue, RedisPath::Fetch);
                tracing::warn!(queue, error = %error_chain(&error), "Fetch failed, retrying");
                if !super::pause(backoff.next(), &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Records the ready entries FETCH dropped for having no job hash: each is
/// logged and quarantined (`jobrunner quarantine`, source `fetch`), so a Redis
/// that evicts or loses job hashes is seen at once, not only when the orphan
/// sweep re-dispatches the ledger's jobs two leases later.
async fn report_dropped(shared: &Shared, queue: &str, dropped: &[Vec<u8>]) {
    for entry in dropped {
        let raw = crate::pgtext::escape(entry, 200);
        tracing::warn!(queue, entry = %raw,
            "A ready entry has no job hash in Redis (evicted or deleted); dropped it");
        let item = NewQuarantine {
            source: "fetch",
            queue: Some(queue),
            job_id: std::str::from_utf8(entry).ok().and_then(|e| e.parse().ok()),
            raw: &raw,
            error: "a ready entry with no job hash in Redis (evicted, deleted by hand, or \
                    lost); a ledger job comes back through the orphan sweep",
        };
        shared.quarantine(&item).await;
    }
}

/// The FETCH limits of `queue` under `config`, as the script's argument.
pub(super) fn limits_arg(config: &Config, queue: &str) -> String {
    let window = |r: &crate::config::RateLimit| Window {
        l: r.limit,
        p: r.period.as_millis().max(1) as u64,
    };
    let mut limits = Limits {
        q: config
            .queues
            .get(queue)
            .and_then(|q| q.rate_limit.as_ref())
            .map(window),
        ..Limits::default()
    };
    for (name, kind) in &config.kinds {
        if kind.queue != queue || (kind.concurrency.is_none() && kind.rate_limit.is_none()) {
            continue;
        }
        let rate = kind.rate_limit.as_ref().map(window);
        limits.k.insert(
            name.clone(),
            KindLimits {
                c: kind.concurrency,
                l: rate.map(|w| w.l),
                p: rate.map(|w| w.p),
                f: kind.rate_limit.as_ref().and_then(|r| r.key.clone()),
            },
        );
    }
    limits.to_arg()
}

/// The limits argument of one queue, rebuilt only when the live config changes.
pub(super) struct LimitsCache {
    queue: String,
    seen: Option<Arc<Config>>,
    arg: String,
}

impl LimitsCache {
    pub(super) fn new(queue: &str) -> LimitsCache {
        LimitsCache {
            queue: queue.to_owned(),
            seen: None,
            arg: String::new(),
        }
    }

    pub(super) fn get(&mut self, live: Arc<Config>) -> &str {
        if !self.seen.as_ref().is_some_and(|c| Arc::ptr_eq(c, &live)) {
            self.arg = limits_arg(&live, &self.queue);
            self.seen = Some(live);
        }
        &self.arg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimit;

    #[test]
    fn only_kinds_of_the_queue_with_limits_are_passed() {
        let mut config = Config::default();
        let mut sms = crate::config::KindConfig {
            concurrency: Some(2),
            ..Default::default()
        };
        sms.rate_limit = Some(RateLimit {
            limit: 5,
            period: Duration::from_secs(2),
            key: Some("to".into()),
        });
        config.kinds.insert("sms".into(), sms);
        config.kinds.insert("plain".into(), Default::default());
        let other = crate::config::KindConfig {
            queue: "other".into(),
            concurrency: Some(1),
            ..Default::default()
        };
        config.kinds.insert("elsewhere".into(), other);
        assert_eq!(
            limits_arg(&config, "default"),
            r#"{"k":{"sms":{"c":2,"l":5,"p":2000,"f":"to"}}}"#
        );
        assert_eq!(limits_arg(&config, "idle"), "");
    }
}
