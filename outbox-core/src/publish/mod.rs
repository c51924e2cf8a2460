//! Publishing: the interface the relay hands claimed events to, and its Kafka
//! implementation.

mod kafka;

use async_trait::async_trait;

use crate::error::Result;
use crate::store::OutboxEvent;

pub use kafka::{KafkaPublisher, KafkaPublisherConfig, TopicCreation};

/// What became of one event handed to [`Publisher::publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The broker confirmed the event.
    Delivered,
    /// The attempt failed but may succeed later (broker unavailable, queue
    /// full, producer reset).
    Retry(String),
    /// The event can never be delivered as it is (too large, unknown topic,
    /// rejected by the broker): it belongs in the dead-letter table.
    Permanent(String),
    /// Not attempted, because an earlier event of the same key failed in this
    /// batch; it stays pending and goes out after that one.
    Held,
}

/// Sends claimed events to a broker.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `events` (in sequence order) and waits for the broker's
    /// answer on every one. Returns one [`Delivery`] per event, in the same
    /// order. Implementations must never let an event of a key overtake an
    /// earlier event of the same key that did not get through: later events
    /// of such a key come back as [`Delivery::Held`] (or also failed).
    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Delivery>;

    /// Checks that the broker answers.
    async fn ping(&self) -> Result<()>;
}
