//! Flow control in the daemon: the limits each FETCH call carries (read from the
//! live config, so a reload changes them), and the registry of running attempts
//! that a cancellation message reaches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{KindLimits, Limits, Window};
use crate::config::Config;

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

/// Running attempts of this daemon by job id: a cancel message for one of them
/// fires its token. A std mutex: it is held only to insert, remove or look up,
/// never across an await.
#[derive(Default)]
pub(crate) struct Running {
    /// Id → (registration number, token). The number lets an ending attempt
    /// unregister only itself, not a newer attempt of the same job.
    jobs: Mutex<HashMap<Uuid, (u64, CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Running {
    /// Registers an attempt; the guard unregisters it when dropped.
    pub(super) fn register(self: &Arc<Self>, id: Uuid) -> (CancellationToken, CancelRegistration) {
        let token = CancellationToken::new();
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(id, (number, token.clone()));
        }
        (
            token,
            CancelRegistration {
                running: self.clone(),
                id,
                number,
            },
        )
    }

    /// Fires the cancel token of a running attempt; false if it does not run here.
    pub(super) fn cancel(&self, id: Uuid) -> bool {
        let token = self
            .jobs
            .lock()
            .ok()
            .and_then(|jobs| jobs.get(&id).map(|(_, t)| t.clone()));
        match token {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }
}

/// An attempt's entry in the cancel registry, removed when this is dropped.
pub(super) struct CancelRegistration {
    running: Arc<Running>,
    id: Uuid,
    number: u64,
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.running.jobs.lock()
            && jobs.get(&self.id).is_some_and(|(n, _)| *n == self.number)
        {
            jobs.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimit;
    use std::time::Duration;

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

    #[test]
    fn a_cancel_reaches_a_registered_attempt_until_it_ends() {
        let running = Arc::new(Running::default());
        let id = Uuid::now_v7();
        let (token, guard) = running.register(id);
        assert!(running.cancel(id));
        assert!(token.is_cancelled());
        drop(guard);
        assert!(!running.cancel(id));
    }

    #[test]
    fn an_older_attempt_ending_leaves_a_newer_one_registered() {
        let running = Arc::new(Running::default());
        let id = Uuid::now_v7();
        let (_, old) = running.register(id);
        let (newer, _guard) = running.register(id);
        drop(old);
        assert!(running.cancel(id));
        assert!(newer.is_cancelled());
    }
}
