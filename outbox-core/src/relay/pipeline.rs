//! Batches in flight: sent to the broker, not yet confirmed and marked.
//!
//! The relay keeps up to [`RelayConfig::pipeline_depth`](super::RelayConfig)
//! batches in flight so that claiming, sending and marking overlap with the
//! broker's confirmation of earlier batches. Order per key holds because the
//! producer keeps its order per partition across batches, a claim skips the
//! rows in flight, and a key whose event was refused or held in a batch in
//! flight is held in every later batch until that batch is settled.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::publish::{Delivery, Sending};
use crate::store::OutboxEvent;

/// One batch sent and awaiting its confirmations.
pub(super) struct InFlight {
    pub(super) events: Vec<OutboxEvent>,
    confirmations: BoxFuture<'static, Vec<Delivery>>,
    /// Keys this batch holds back in later batches (refused or held here).
    holds: Vec<String>,
    pub(super) sent_at: Instant,
}

impl InFlight {
    /// True if this batch holds back no key in later batches.
    pub(super) fn holds_nothing(&self) -> bool {
        self.holds.is_empty()
    }
}

/// The batches in flight, oldest first, and the keys they hold back.
#[derive(Default)]
pub(super) struct Pipeline {
    batches: VecDeque<InFlight>,
    held: HashMap<String, usize>,
}

impl Pipeline {
    pub(super) fn len(&self) -> usize {
        self.batches.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Sequence numbers of every row in flight (a claim must skip them).
    pub(super) fn seqs(&self) -> Vec<i64> {
        self.batches.iter().flat_map(|b| b.events.iter().map(|e| e.seq)).collect()
    }

    /// Keys a new batch must not send.
    pub(super) fn holds(&self) -> HashSet<String> {
        self.held.keys().cloned().collect()
    }

    /// Adds a batch just handed to the publisher.
    pub(super) fn push(&mut self, events: Vec<OutboxEvent>, sending: Sending, sent_at: Instant) {
        let mut holds: Vec<String> = sending
            .unsent()
            .filter(|(_, d)| **d != Delivery::Delivered)
            .filter_map(|(i, _)| events.get(i).and_then(|e| e.key.clone()))
            .collect();
        holds.sort_unstable();
        holds.dedup();
        for key in &holds {
            *self.held.entry(key.clone()).or_default() += 1;
        }
        self.batches.push_back(InFlight { events, confirmations: Box::pin(sending.outcomes()), holds, sent_at });
    }

    /// Waits until the oldest batch is confirmed, then takes it out (pending
    /// forever when nothing is in flight). Cancel-safe: an interrupted wait
    /// resumes where it stopped.
    pub(super) async fn next_confirmed(&mut self) -> (InFlight, Vec<Delivery>) {
        let Some(front) = self.batches.front_mut() else {
            return std::future::pending().await;
        };
        let outcomes = (&mut front.confirmations).await;
        let batch = self.batches.pop_front().unwrap_or_else(|| unreachable!("front exists"));
        (batch, outcomes)
    }

    /// The oldest batch and its outcomes, if it is confirmed already.
    pub(super) fn ready(&mut self) -> Option<(InFlight, Vec<Delivery>)> {
        self.next_confirmed().now_or_never()
    }

    /// Lifts the holds of a batch once its outcome is recorded (from then on
    /// the database holds the key back, through the row's backoff or its
    /// quarantine).
    pub(super) fn release(&mut self, batch: &InFlight) {
        for key in &batch.holds {
            if let Some(n) = self.held.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(key);
                }
            }
        }
    }
}
