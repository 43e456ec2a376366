//! Job events leave the daemon here: the [`Publisher`] sends each batch to the
//! Redis channel `prefix:events` (one script call per batch) and the Postgres channel
//! `jobrunner_events` (one statement), as `[events]` says; the [`relay`] reads the
//! Redis channel back so `/events` shows the events of every daemon.
//!
//! The status writers hand their batches to [`publish_loop`] through a bounded
//! channel and never wait for it. The outbox and the ingester publish their
//! `queued` events inline, before the dispatch script makes the job runnable, so
//! no later event of the job can overtake them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::batch::{Isolated, isolate};
use crate::broker::{Broker, Received};
use crate::config::EventsConfig;
use crate::error_chain;
use crate::http::Published;
use crate::ledger::{Event, Ledger};
use crate::metrics::{Channel, Metrics, Path};

/// Event batches (up to `status_batch_max` events each) buffered between the
/// status writers and the publisher; beyond that they are dropped and counted,
/// rather than growing memory while Redis or Postgres is slow.
pub(super) const BUFFER: usize = 64;
/// Most events in one publish (one Redis script call, one NOTIFY statement).
const PUBLISH_MAX: usize = 5000;
/// Events buffered per SSE client before it lags.
pub(super) const SSE_BUFFER: usize = 4096;

/// What publishing one batch did on each channel `[events]` turns on (`None`:
/// the channel is off).
pub struct Delivery {
    pub redis: Option<Isolated<(), crate::broker::Error>>,
    pub postgres: Option<Isolated<(), crate::ledger::Error>>,
}

/// Publishes `json` (events, in order) on the channels `config` turns on: the
/// Redis channel (one script call) and Postgres NOTIFY (one statement). An event
/// a channel refuses on its own is split out and dropped alone; a failure that
/// may pass stops that channel's batch. Nothing is retried: an event is a
/// notification, and the ledger row stays the truth. The daemon's [`Publisher`]
/// and `control` (events of admin actions outside a daemon) both publish
/// through this.
pub async fn deliver(
    ledger: &Ledger,
    broker: &Broker,
    config: &EventsConfig,
    json: &[String],
) -> Delivery {
    let all = || std::iter::once(0..json.len());
    let mut delivery = Delivery {
        redis: None,
        postgres: None,
    };
    if config.redis {
        let publish = |r| broker.publish_events(&json[r]);
        delivery.redis = Some(isolate(all(), crate::broker::Error::is_transient, publish).await);
    }
    if config.postgres {
        let transient = |e: &crate::ledger::Error| !e.is_permanent();
        let notify = |r| ledger.notify_events(&json[r]);
        delivery.postgres = Some(isolate(all(), transient, notify).await);
    }
    delivery
}

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
        let delivery = deliver(&self.ledger, &self.broker, &self.config, &json).await;
        if let Some(out) = delivery.redis {
            self.count(Channel::Redis, &json, out);
        }
        if let Some(out) = delivery.postgres {
            self.count(Channel::Postgres, &json, out);
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

impl Publisher {
    /// Counts and logs how one channel's publish went. A failure that may pass
    /// drops what was left (an event is a notification; the ledger row stays the
    /// truth); an event the channel refuses on its own is dropped alone, so one
    /// poison event never takes the others with it.
    fn count<E: std::error::Error + 'static>(
        &self,
        channel: Channel,
        json: &[String],
        out: Isolated<(), E>,
    ) {
        let sent: usize = out.done.iter().map(|(r, _)| r.len()).sum();
        self.metrics.events_published(channel, sent as u64);
        let channel_name = channel.label();
        for (i, error) in &out.poison {
            let head: String = json[*i].chars().take(200).collect();
            tracing::warn!(channel = channel_name, error = %error_chain(error), event = head,
                "A job event was refused on its own; dropped");
            self.metrics.batch_poison(Path::Events);
        }
        let lost: usize = out.pending.iter().map(|r| r.len()).sum();
        if let Some(error) = &out.transient {
            tracing::warn!(channel = channel_name, error = %error_chain(error), events = lost,
                "Publishing job events failed");
        }
        let dropped = lost + out.poison.len();
        self.metrics.events_dropped(channel, dropped as u64);
    }
}

/// The feed behind `/events`. With Redis events on it carries the Redis channel
/// (every daemon's events) through a [`relay`] task, started here and ended by
/// `stop`; otherwise the [`Publisher`] feeds it directly (set its `local`).
pub(super) fn sse_feed(
    events: &EventsConfig,
    broker: &Broker,
    stop: &CancellationToken,
) -> (crate::http::EventFeed, Option<tokio::task::JoinHandle<()>>) {
    if !events.redis {
        return (crate::http::EventFeed::new(SSE_BUFFER, None), None);
    }
    let (ready_tx, ready) = watch::channel(false);
    let wanted = Arc::new(Notify::new());
    let feed = crate::http::EventFeed::new(
        SSE_BUFFER,
        Some(crate::http::FeedDemand {
            wanted: wanted.clone(),
            ready,
        }),
    );
    let task = tokio::spawn(relay(
        broker.clone(),
        feed.tx.clone(),
        wanted,
        ready_tx,
        stop.clone(),
    ));
    (feed, Some(task))
}

/// Publishes the writers' batches until every writer has dropped its sender.
/// Whatever accumulated while the last publish was in flight goes out together
/// (in order, up to [`PUBLISH_MAX`] events per round trip), the way the status
/// writer group-commits: under load the publisher keeps up with all the writers.
pub(super) async fn publish_loop(publisher: Publisher, mut rx: mpsc::Receiver<Vec<Event>>) {
    let mut batches = Vec::with_capacity(BUFFER);
    while rx.recv_many(&mut batches, BUFFER).await > 0 {
        let mut events: Vec<Event> = Vec::new();
        for batch in batches.drain(..) {
            if events.len() + batch.len() > PUBLISH_MAX && !events.is_empty() {
                publisher.publish(std::mem::take(&mut events)).await;
            }
            events.extend(batch);
        }
        publisher.publish(events).await;
    }
}

/// Feeds the SSE broadcast from the Redis events channel, until `stop`, but only
/// while at least one SSE client is connected: a daemon nobody watches does not
/// receive (and parse) every daemon's events. `ready` says when the subscription
/// is in place, so a new client can wait for it.
pub(super) async fn relay(
    broker: Broker,
    local: broadcast::Sender<Arc<Published>>,
    wanted: Arc<Notify>,
    ready: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut subscription = match broker.subscription().await {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "Pub/sub connection for /events failed");
            return;
        }
    };
    let channel = broker.events_channel();
    let mut idle_check = tokio::time::interval(Duration::from_secs(1));
    'serve: loop {
        while local.receiver_count() == 0 {
            tokio::select! {
                _ = wanted.notified() => {}
                _ = stop.cancelled() => break 'serve,
            }
        }
        if let Err(error) = subscription.subscribe(vec![channel.clone()]).await {
            tracing::warn!(error = %error_chain(&error), "Subscribing to job events failed");
        }
        ready.send_replace(true);
        loop {
            tokio::select! {
                message = subscription.recv() => match message {
                    Received::Message { text: json, .. } => {
                        match serde_json::from_str::<Event>(&json) {
                            Ok(event) => {
                                let _ = local.send(Arc::new(Published { event, json }));
                            }
                            Err(error) => tracing::debug!(%error, "Ignoring a malformed job event"),
                        }
                    }
                    Received::Lagged(n) => {
                        tracing::warn!(missed = n, "The /events relay fell behind and missed events");
                    }
                    Received::Closed => break 'serve,
                },
                _ = idle_check.tick() => {}
                _ = stop.cancelled() => break 'serve,
            }
            if local.receiver_count() == 0 {
                // Say "not ready" before looking again, so a client that arrives
                // now either keeps the subscription or waits for the next one.
                ready.send_replace(false);
                if local.receiver_count() == 0 {
                    let _ = subscription.unsubscribe(vec![channel.clone()]).await;
                    continue 'serve;
                }
                ready.send_replace(true);
            }
        }
    }
    ready.send_replace(false);
    subscription.close().await;
}
