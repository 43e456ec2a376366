//! The daemon: fetch loops per queue with bounded concurrency, the outbox
//! dispatcher, the ingester for Redis-direct producers, the reaper and the
//! two-stage shutdown.
//!
//! One file per concept: `start` (connecting and wiring a daemon), `producer`
//! (a served queue: slots, wake-ups, acker, the fetch loop), `worker` (one
//! attempt), `settle` (its outcome, Redis first) and `acker` (batched COMPLETE),
//! `outbox`, `ingest`, `recovery` (epoch, reaper, orphan sweep), `cancel`
//! (running attempts), `wakeup` (the pub/sub router), `events` (the publisher
//! and the `/events` relay), `retry` (backoff), `stats`, `presence`,
//! `retention`, `reload`, `notify` and `watchdog` (systemd), and `supervise`
//! (start order and drain).
//!
//! Start-up order: Postgres (schema current) → Redis → status writer → background
//! loops → fetch loops. Shutdown is the reverse: fetching stops at once, running
//! jobs get `drain_timeout` to finish, the rest are handed back to Redis, the status
//! writer flushes, and only then does [`Daemon::wait`] return.
//!
//! **Invariant:** every spawned task is tracked and watches a cancellation token;
//! nothing here outlives [`Daemon::wait`].
//! Checked by `tests/integration/crash.rs::a_stopped_daemon_leaves_no_task_behind`.

mod acker;
mod cancel;
mod events;
mod ingest;
pub mod notify;
mod outbox;
mod presence;
mod producer;
mod recovery;
mod reload;
mod retention;
mod retry;
mod settle;
mod start;
mod stats;
mod supervise;
mod wakeup;
mod watchdog;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Broker};
use crate::config::Config;
use crate::jobs::Registry;
use crate::ledger::{self, Ledger, WriterHandle};
use crate::metrics::Metrics;

pub use events::{Delivery, deliver};
pub use notify::Notifier;
pub use reload::{Change, ReloadReport};
pub use settle::backoff;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ledger(#[from] ledger::Error),
    #[error(transparent)]
    Broker(#[from] broker::Error),
    #[error("cannot listen on admin.listen {addr}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    AdminAuth(#[from] crate::http::auth::Error),
    #[error(transparent)]
    AdminTls(#[from] crate::http::tls::Error),
}

pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// State every loop and worker of one daemon shares.
pub(crate) struct Shared {
    /// The config the daemon started with. Settings that need a restart to change
    /// (connections, queues served, lease) are read from here.
    config: Config,
    /// The config as last (re)loaded: settings that may change while running
    /// (limits, cron, concurrency, log level) are read from here on every use,
    /// never cached across awaits. See [`Daemon::reload`].
    live: watch::Sender<Arc<Config>>,
    ledger: Ledger,
    broker: Broker,
    registry: Registry,
    writer: WriterHandle,
    /// The queues this daemon serves, each with its slots, wake-ups and acker.
    producers: HashMap<String, producer::Producer>,
    /// Wakes the outbox dispatcher outside its NOTIFY (after a Redis recovery).
    outbox_wake: Notify,
    /// Tells systemd about readiness, health and the drain (a no-op outside it).
    notifier: Notifier,
    /// Running and finished counts for the systemd status line.
    stats: Arc<stats::Stats>,
    /// Attempts running in this daemon, so a cancel message can reach them.
    running: Arc<cancel::Running>,
    /// This daemon's id in the worker registry (`jobrunner workers`).
    daemon_id: uuid::Uuid,
    started_at: chrono::DateTime<chrono::Utc>,
    /// The daemon's metrics registry (also held by the ledger and the admin listener).
    metrics: Arc<Metrics>,
    /// Publishes job events; the outbox and ingester use it inline.
    publisher: events::Publisher,
    /// `[redaction]`, built once: attempts' error texts are scrubbed with it
    /// before they are logged or recorded.
    redaction: Arc<crate::redact::Redaction>,
}

/// A running daemon. Cancel its token (or call [`Daemon::shutdown`]) to drain.
pub struct Daemon {
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
    /// Lowers queue concurrency after a reload as running jobs end.
    resizer: reload::Resizer,
    /// Where the admin listener listens, if it is on.
    admin_addr: Option<SocketAddr>,
}

impl Daemon {
    /// The admin listener's address (with the real port when `admin.listen` asked
    /// for port 0), or `None` when it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Begins the drain; [`Daemon::wait`] returns once it is complete.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The config in force now (the start-up one until a reload replaces it).
    pub fn live_config(&self) -> Arc<Config> {
        self.shared.live()
    }

    pub async fn wait(self) {
        let Daemon {
            done,
            shared,
            resizer,
            ..
        } = self;
        // The supervisor drops its handles to let the ackers and writer finish.
        drop(shared);
        if let Err(error) = done.await {
            tracing::error!(%error, "Daemon supervisor failed");
        }
        resizer.wait().await;
    }

    /// Applies a new config (already validated) to the running daemon and logs one
    /// line per changed key. Queue concurrency and the log level change here;
    /// everything read through `Shared::live` changes by publishing the config.
    /// Changes that need a restart are reported and not applied: the daemon keeps
    /// running with the old values.
    pub fn reload(&self, new: Config) -> ReloadReport {
        let running = self.shared.live();
        let (report, effective) = reload::plan(&running, &new, crate::telemetry::level_fixed());
        for (queue, producer) in &self.shared.producers {
            let (Some(from), Some(to)) = (running.queues.get(queue), effective.queues.get(queue))
            else {
                continue;
            };
            if from.concurrency != to.concurrency {
                self.resizer
                    .resize(queue, &producer.slots, from.concurrency, to.concurrency);
            }
        }
        if running.log.level != effective.log.level
            && let Err(error) = crate::telemetry::set_level(&effective.log.level)
        {
            tracing::error!(%error, "Cannot change the log level");
        }
        self.shared.live.send_replace(Arc::new(effective));
        for change in &report.applied {
            tracing::info!(key = %change.key, from = %change.from, to = %change.to,
                "Config change applied");
        }
        for change in &report.needs_restart {
            tracing::warn!(key = %change.key, from = %change.from, to = %change.to,
                reason = change.reason.unwrap_or(""),
                "Config change needs a restart; keeping the running value");
        }
        report
    }

    /// Shutdown and wait, for tests and the demo.
    pub async fn stop(self) {
        self.shutdown();
        self.wait().await;
    }
}

impl Shared {
    /// The config in force now; see the `live` field.
    pub(crate) fn live(&self) -> Arc<Config> {
        self.live.borrow().clone()
    }

    /// Records one item the daemon read from Redis and could not carry as a
    /// job (`jobrunner quarantine`); a failure is logged, never retried forever.
    async fn quarantine(&self, item: &ledger::NewQuarantine<'_>) {
        if let Err(e) = self.ledger.quarantine(item).await {
            tracing::error!(source = item.source, queue = item.queue, error = %crate::error_chain(&e),
                item.error = item.error,
                "Cannot record a quarantined item; it is dropped");
        }
    }
}

/// Sleeps for `d` unless shutdown comes first; false means "stop now".
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}
