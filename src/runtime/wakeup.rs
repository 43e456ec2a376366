//! The daemon's one pub/sub subscription: wake-ups for the fetch and ingest
//! loops of each queue, and cancellations for the attempts running here.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;
use super::producer::Producer;
use crate::broker::{QueueChannel, Received};
use crate::error_chain;

/// Routes wake-up messages from Redis pub/sub to the fetch and ingest loops.
/// Without it the loops still work, on their poll interval.
pub(super) async fn subscriber(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut subscription = match shared.broker.subscription().await {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "Pub/sub connection failed; polling only");
            return;
        }
    };
    let channels: Vec<String> = shared
        .config
        .queues
        .keys()
        .flat_map(|q| {
            let keys = shared.broker.queue_keys(q);
            [keys.wake(), keys.cancel()]
        })
        .collect();
    if let Err(error) = subscription.subscribe(channels).await {
        tracing::warn!(error = %error_chain(&error), "Subscribing to wake-ups failed; polling only");
    }
    let wake_all = || shared.producers.values().for_each(Producer::wake_all);
    loop {
        tokio::select! {
            message = subscription.recv() => match message {
                Received::Message { channel, text } => {
                    let Some((queue, channel)) = shared.broker.keys().queue_of_channel(&channel) else { continue };
                    if channel == QueueChannel::Cancel {
                        if let Ok(id) = text.parse() {
                            shared.running.cancel(id);
                        }
                        continue;
                    }
                    let Some(producer) = shared.producers.get(queue) else { continue };
                    match text.as_str() {
                        "ingest" => producer.ingest_wake.notify_one(),
                        _ => producer.fetch_wake.notify_one(),
                    }
                }
                Received::Lagged(_) => wake_all(),
                Received::Closed => break,
            },
            _ = shutdown.cancelled() => break,
        }
    }
    subscription.close().await;
}
