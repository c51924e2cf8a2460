//! Publishing: the interface the relay hands claimed events to, and its Kafka
//! implementation.

mod kafka;
pub(crate) mod link;

use std::collections::HashSet;
use std::future::Future;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::error::Result;
use crate::store::OutboxEvent;

pub use kafka::{cloudevents_headers, KafkaPublisher, KafkaPublisherConfig, TopicCreation};

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

/// A batch handed to the broker client: the outcomes known at once (events
/// refused before sending, or held back) and the confirmations still to come.
///
/// ```
/// # futures::executor::block_on(async {
/// use outbox_core::{Delivery, Sending};
/// let sending = Sending::new(vec![None, Some(Delivery::Held)], async { vec![(0, Delivery::Delivered)] });
/// assert_eq!(sending.unsent().count(), 1);
/// assert_eq!(sending.outcomes().await, vec![Delivery::Delivered, Delivery::Held]);
/// # });
/// ```
pub struct Sending {
    known: Vec<Option<Delivery>>,
    confirmations: BoxFuture<'static, Vec<(usize, Delivery)>>,
}

impl std::fmt::Debug for Sending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sending").field("known", &self.known).finish_non_exhaustive()
    }
}

impl Sending {
    /// `known[i]` is the outcome of event `i` if it was not sent;
    /// `confirmations` resolves to `(i, outcome)` for every event that was.
    pub fn new(
        known: Vec<Option<Delivery>>,
        confirmations: impl Future<Output = Vec<(usize, Delivery)>> + Send + 'static,
    ) -> Self {
        Sending { known, confirmations: Box::pin(confirmations) }
    }

    /// The events that were not sent, by index, with their outcome.
    pub fn unsent(&self) -> impl Iterator<Item = (usize, &Delivery)> {
        self.known.iter().enumerate().filter_map(|(i, d)| d.as_ref().map(|d| (i, d)))
    }

    /// Waits for every confirmation: one outcome per event, in order (an
    /// event nobody answered for counts as held).
    pub async fn outcomes(self) -> Vec<Delivery> {
        let mut outcomes = self.known;
        for (i, delivery) in self.confirmations.await {
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(delivery);
            }
        }
        outcomes.into_iter().map(|o| o.unwrap_or(Delivery::Held)).collect()
    }
}

/// Sends claimed events to a broker.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Hands `events` (in sequence order) to the broker client and returns
    /// as soon as each one is on its way or refused, without waiting for
    /// confirmations; events whose key is in `hold` are not sent
    /// ([`Delivery::Held`]). Successive calls keep their order per key.
    ///
    /// Implementations must never let an event of a key overtake an earlier
    /// event of the same key that did not get through: later events of such
    /// a key come back as [`Delivery::Held`] (or also failed).
    async fn send(&self, events: &[OutboxEvent], hold: &HashSet<String>) -> Sending;

    /// Publishes `events` and waits for the broker's answer on every one:
    /// one [`Delivery`] per event, in the same order.
    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Delivery> {
        self.send(events, &HashSet::new()).await.outcomes().await
    }

    /// Checks that the broker answers.
    async fn ping(&self) -> Result<()>;

    /// How long the broker has been unreachable, if the client knows it is
    /// (`None`: reachable, or unknown). The relay reminds the log of an
    /// outage with this.
    fn unreachable_for(&self) -> Option<std::time::Duration> {
        None
    }
}
