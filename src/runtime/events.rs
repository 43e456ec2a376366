//! Job events leave the daemon here: the [`Publisher`] sends each batch to the
//! Redis channel `prefix:events` (pipelined) and the Postgres channel
//! `jobrunner_events` (one statement), as `[events]` says; the [`relay`] reads the
//! Redis channel back so `/events` shows the events of every daemon.
//!
//! The status writers hand their batches to [`publish_loop`] through a bounded
//! channel and never wait for it. The outbox and the ingester publish their
//! `queued` events inline, before the dispatch script makes the job runnable, so
//! no later event of the job can overtake them.

use std::sync::Arc;

use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::admin::Published;
use crate::broker::Broker;
use crate::config::EventsConfig;
use crate::error_chain;
use crate::ledger::{Event, Ledger};
use crate::metrics::{self, Metrics};

/// Event batches buffered between the status writers and the publisher.
pub(super) const BUFFER: usize = 1024;
/// Events buffered per SSE client before it lags.
pub(super) const SSE_BUFFER: usize = 4096;

/// Sends events where the config says. Cheap to clone; holds no daemon state, so
/// it can outlive the loops while the writers flush.
#[derive(Clone)]
pub(super) struct Publisher {
    pub(super) broker: Broker,
    pub(super) ledger: Ledger,
    pub(super) metrics: Arc<Metrics>,
    pub(super) config: EventsConfig,
    /// The SSE clients' broadcast, fed here only when Redis events are off (else
    /// the relay feeds it from the Redis channel). `None` without an admin listener.
    pub(super) local: Option<broadcast::Sender<Arc<Published>>>,
}

impl Publisher {
    /// Whether events go anywhere at all.
    pub(super) fn enabled(&self) -> bool {
        self.config.redis || self.config.postgres || self.local.is_some()
    }

    /// Publishes one batch, in order. Failures are logged and counted; an event is
    /// a notification, and the ledger row stays the truth.
    pub(super) async fn publish(&self, events: Vec<Event>) {
        if events.is_empty() || !self.enabled() {
            return;
        }
        let json: Vec<String> = events.iter().map(Event::to_json).collect();
        let n = json.len() as u64;
        if self.config.redis {
            match self.broker.publish_events(&json).await {
                Ok(()) => self
                    .metrics
                    .inc(metrics::EVENTS_PUBLISHED, &[("channel", "redis")], n),
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), events = n,
                        "Publishing job events to Redis failed");
                    self.metrics
                        .inc(metrics::EVENTS_DROPPED, &[("channel", "redis")], n);
                }
            }
        }
        if self.config.postgres {
            match self.ledger.notify_events(&json).await {
                Ok(()) => {
                    self.metrics
                        .inc(metrics::EVENTS_PUBLISHED, &[("channel", "postgres")], n)
                }
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), events = n,
                        "Publishing job events to Postgres failed");
                    self.metrics
                        .inc(metrics::EVENTS_DROPPED, &[("channel", "postgres")], n);
                }
            }
        }
        if !self.config.redis
            && let Some(local) = &self.local
        {
            for (event, json) in events.into_iter().zip(json) {
                // An error only means no SSE client is listening.
                let _ = local.send(Arc::new(Published { event, json }));
            }
        }
    }
}

/// Publishes the writers' batches until every writer has dropped its sender.
pub(super) async fn publish_loop(publisher: Publisher, mut rx: mpsc::Receiver<Vec<Event>>) {
    while let Some(batch) = rx.recv().await {
        publisher.publish(batch).await;
    }
}

/// Feeds the SSE broadcast from the Redis events channel, until `stop`. Reports on
/// `subscribed` once the subscription is in place (or has failed).
pub(super) async fn relay(
    broker: Broker,
    local: broadcast::Sender<Arc<Published>>,
    stop: CancellationToken,
    subscribed: oneshot::Sender<()>,
) {
    let client = match broker.subscriber() {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "No pub/sub client for /events");
            return;
        }
    };
    let mut messages = client.message_rx();
    if let Err(error) = client.init().await {
        tracing::warn!(error = %error_chain(&error), "Pub/sub connection for /events failed");
        return;
    }
    // Resubscribes after a reconnect.
    let manager = client.manage_subscriptions();
    if let Err(error) = client.subscribe(broker.events_channel()).await {
        tracing::warn!(error = %error_chain(&error), "Subscribing to job events failed");
    }
    let _ = subscribed.send(());
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(m) => {
                    let Some(json) = m.value.as_string() else { continue };
                    match serde_json::from_str::<Event>(&json) {
                        Ok(event) => {
                            let _ = local.send(Arc::new(Published { event, json }));
                        }
                        Err(error) => tracing::debug!(%error, "Ignoring a malformed job event"),
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "The /events relay fell behind and missed events");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = stop.cancelled() => break,
        }
    }
    manager.abort();
    let _ = client.quit().await;
}
