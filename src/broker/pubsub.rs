//! Pub/sub: the job events every daemon publishes on `prefix:events`, and the
//! subscription the runtime listens with.

use super::{Broker, Result};

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

    /// A pub/sub client with the pool's settings (one per process, for wake-ups).
    pub fn subscriber(&self) -> Result<fred::clients::SubscriberClient> {
        Ok(self.builder.build_subscriber_client()?)
    }
}
