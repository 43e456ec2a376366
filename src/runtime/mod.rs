//! The daemon: fetch loops per queue with bounded concurrency, the outbox
//! dispatcher, the ingester for Redis-direct producers, the reaper and the
//! two-stage shutdown.
//!
//! One file per concept: `producer` (a served queue: slots, wake-ups, acker,
//! the fetch loop), `worker` (one attempt) and `acker` (batched COMPLETE),
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
use crate::ledger::{self, Ledger, StatusWriter, WriterHandle};
use crate::metrics::Metrics;

pub use events::{Delivery, deliver};
pub use notify::Notifier;
pub use reload::{Change, ReloadReport};
pub use worker::backoff;

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

/// A bound admin listener, who may use it, and its TLS settings.
type AdminListener = (
    tokio::net::TcpListener,
    Arc<crate::http::Auth>,
    Option<Arc<rustls::ServerConfig>>,
);

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
    /// Connects to both services, checks the schema and starts every loop.
    /// Fails (without starting anything) when a service is unreachable or the schema
    /// is not current.
    pub async fn start(config: Config, registry: Registry) -> Result<Daemon> {
        Daemon::start_notifying(config, registry, Notifier::disabled()).await
    }

    /// [`Daemon::start`] under systemd: `notifier` hears the status line, the
    /// watchdog pings and the drain. The caller sends `READY=1` once this returns.
    pub async fn start_notifying(
        config: Config,
        registry: Registry,
        notifier: Notifier,
    ) -> Result<Daemon> {
        let ledger = Ledger::connect(&config.database).await?;
        ledger.check_schema(registry.migrations()).await?;
        ledger.sync_kinds(&config).await?;
        let broker = Broker::connect(&config.redis).await?;
        let listener = bind_admin(&config)?;
        Ok(Daemon::launch(
            config, registry, ledger, broker, notifier, listener,
        ))
    }

    /// Starts on pools the caller already built (the CLI's `demo` and tests). An
    /// admin listener that cannot bind is logged and left off.
    pub fn start_with(
        config: Config,
        registry: Registry,
        ledger: Ledger,
        broker: Broker,
    ) -> Daemon {
        let listener = bind_admin(&config).unwrap_or_else(|error| {
            tracing::error!(error = %crate::error_chain(&error), "Admin listener is off");
            None
        });
        Daemon::launch(
            config,
            registry,
            ledger,
            broker,
            Notifier::disabled(),
            listener,
        )
    }

    fn launch(
        config: Config,
        registry: Registry,
        ledger: Ledger,
        broker: Broker,
        notifier: Notifier,
        listener: Option<AdminListener>,
    ) -> Daemon {
        let (listener, auth, tls) = match listener {
            Some((listener, auth, tls)) => (Some(listener), Some(auth), tls),
            None => (None, None, None),
        };
        let metrics = Metrics::new(registry.kinds(), config.queues.keys().map(String::as_str));
        let ledger = ledger.with_metrics(metrics.clone());
        let admin_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let admin_stop = CancellationToken::new();
        let (sse, relay_task) = match listener {
            Some(_) => {
                let (feed, relay) = events::sse_feed(&config.events, &broker, &admin_stop);
                (Some(feed), relay)
            }
            None => (None, None),
        };
        let publisher = events::Publisher {
            broker: broker.clone(),
            ledger: ledger.clone(),
            metrics: metrics.clone(),
            config: config.events.clone(),
            local: sse
                .as_ref()
                .filter(|_| !config.events.redis)
                .map(|feed| feed.tx.clone()),
        };
        let (writers, writer_handle) = StatusWriter::new(
            ledger.clone(),
            config.runtime.status_batch_max,
            config.runtime.status_writers,
        );
        let queues: Vec<String> = config.queues.keys().cloned().collect();
        for (kind, k) in &config.kinds {
            if !config.queues.contains_key(&k.queue) {
                tracing::warn!(kind, queue = %k.queue,
                    "Kind is configured for a queue this daemon does not serve; another daemon must serve it");
            }
        }
        let mut acker_tasks = Vec::new();
        let producers = config
            .queues
            .iter()
            .map(|(q, c)| {
                let (producer, task) =
                    producer::Producer::spawn(&broker, &metrics, q, c.concurrency);
                acker_tasks.push(task);
                (q.clone(), producer)
            })
            .collect();
        let redaction = Arc::new(crate::redact::Redaction::new(&config.redaction));
        let shared = Arc::new(Shared {
            redaction: redaction.clone(),
            producers,
            outbox_wake: Notify::new(),
            running: Arc::default(),
            live: watch::Sender::new(Arc::new(config.clone())),
            config,
            ledger,
            broker,
            registry,
            writer: writer_handle,
            notifier,
            stats: Arc::default(),
            daemon_id: uuid::Uuid::now_v7(),
            started_at: chrono::Utc::now(),
            metrics,
            publisher,
        });
        let shutdown = CancellationToken::new();
        if let Some(addr) = admin_addr {
            crate::http::log_listening(addr, tls.is_some());
        }
        let admin = supervise::AdminParts {
            listener,
            stop: admin_stop,
            relay: relay_task,
            tls,
        };
        let admin_state = sse.zip(auth).map(|(events, auth)| {
            crate::http::HttpState::new(
                shared.ledger.clone(),
                shared.broker.clone(),
                shared.metrics.clone(),
                shared.live.subscribe(),
                events,
                shutdown.clone(),
                auth,
            )
            .with_redaction(redaction)
        });
        let done = tokio::spawn(supervise::supervise(
            shared.clone(),
            writers,
            acker_tasks,
            shutdown.clone(),
            admin,
            admin_state,
        ));
        tracing::info!(queues = ?queues, "Daemon started");
        Daemon {
            resizer: reload::Resizer::new(shutdown.clone()),
            shutdown,
            done,
            shared,
            admin_addr,
        }
    }

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
}

/// Sleeps for `d` unless shutdown comes first; false means "stop now".
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Binds the admin listener when `[admin]` turns it on, with its tokens read.
fn bind_admin(config: &Config) -> Result<Option<AdminListener>> {
    let Some(addr) = config.admin.address() else {
        return Ok(None);
    };
    let auth = Arc::new(crate::http::Auth::from_config(&config.admin, Some(addr))?);
    let tls = match (&config.admin.tls_cert, &config.admin.tls_key) {
        (Some(cert), Some(key)) => Some(crate::http::tls::load(cert, key)?),
        _ => None,
    };
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    };
    bind()
        .map(|listener| Some((listener, auth, tls)))
        .map_err(|source| Error::Admin { addr, source })
}
