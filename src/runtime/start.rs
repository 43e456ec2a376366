//! Starting a daemon: connecting, checking the schema, binding the admin
//! listener, and wiring `Shared` (the producers, the status writer, the event
//! publisher) before `supervise` spawns the loops in order.

use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{Daemon, Error, Notifier, Result, Shared, events, producer, reload, supervise};
use crate::broker::Broker;
use crate::config::Config;
use crate::jobs::Registry;
use crate::ledger::{Ledger, StatusWriter};
use crate::metrics::Metrics;

/// A bound admin listener, who may use it, and its TLS settings.
type AdminListener = (
    tokio::net::TcpListener,
    Arc<crate::http::Auth>,
    Option<Arc<rustls::ServerConfig>>,
);

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
