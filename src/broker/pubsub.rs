//! Pub/sub: the job events every daemon publishes on `prefix:events`, and
//! [`Subscription`], the one way the process listens: its own connection (a
//! subscribed connection can send nothing else), resubscribed after a reconnect.

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use tokio::sync::broadcast;

use super::{Broker, Result};

/// A pub/sub connection and the messages of the channels it subscribed to.
pub struct Subscription {
    client: SubscriberClient,
    messages: broadcast::Receiver<fred::types::Message>,
    /// Resubscribes after a reconnect; aborted by [`Subscription::close`].
    manager: tokio::task::JoinHandle<()>,
}

/// What [`Subscription::recv`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A text message on `channel`.
    Message { channel: String, text: String },
    /// This reader fell behind and `n` messages were lost.
    Lagged(u64),
    /// The connection is gone for good.
    Closed,
}

impl Broker {
    /// The channel every daemon publishes job events on: `prefix:events`.
    pub fn events_channel(&self) -> String {
        self.keys.events()
    }

    /// PUBLISHes each event on [`Broker::events_channel`], in order, pipelined in
    /// one round trip.
    pub async fn publish_events(&self, events: &[String]) -> Result {
        if events.is_empty() {
            return Ok(());
        }
        // One script call publishes the whole batch: one command for the client
        // and for Redis to parse, instead of one PUBLISH each.
        let mut args = Vec::with_capacity(events.len() + 1);
        args.push(self.keys.events());
        args.extend(events.iter().cloned());
        self.eval(&self.scripts.publish_many, vec![], args).await?;
        Ok(())
    }

    /// Opens a pub/sub connection with the pool's settings, subscribed to
    /// nothing yet.
    pub async fn subscription(&self) -> Result<Subscription> {
        let client = self.builder.build_subscriber_client()?;
        let messages = client.message_rx();
        client.init().await?;
        let manager = client.manage_subscriptions();
        Ok(Subscription {
            client,
            messages,
            manager,
        })
    }
}

impl Subscription {
    pub async fn subscribe(&self, channels: Vec<String>) -> Result {
        Ok(self.client.subscribe(channels).await?)
    }

    pub async fn unsubscribe(&self, channels: Vec<String>) -> Result {
        Ok(self.client.unsubscribe(channels).await?)
    }

    /// The next text message (others are skipped), a lag, or the end.
    pub async fn recv(&mut self) -> Received {
        loop {
            match self.messages.recv().await {
                Ok(m) => {
                    if let Some(text) = m.value.as_string() {
                        return Received::Message {
                            channel: m.channel.to_string(),
                            text,
                        };
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Received::Lagged(n),
                Err(broadcast::error::RecvError::Closed) => return Received::Closed,
            }
        }
    }

    /// Stops resubscribing and closes the connection.
    pub async fn close(self) {
        self.manager.abort();
        let _ = self.client.quit().await;
    }
}
