//! Storage: every SQL statement lives below this module, per backend, behind
//! the [`OutboxStore`] interface the relay is written against.

mod admin;
#[cfg(test)]
mod memory;
mod postgres;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;

pub use admin::{DeadLetterEntry, OutboxAdmin, RelayStatus, Status};
#[cfg(test)]
pub(crate) use memory::MemoryStore;
pub(crate) use postgres::PgWriteSql;
pub use postgres::{listen_for_wakeups, queue_session_options, PgStore, QUEUE_SESSION_SETTINGS};

/// True for a database's report of a fault that passes (a lost connection,
/// a server shutting down, a serialization failure or deadlock): the
/// statement may succeed if run again. Each backend knows its own codes.
pub(crate) fn is_transient_database_error(error: &dyn sqlx::error::DatabaseError) -> bool {
    postgres::is_transient(error)
}

/// Runs a batched delete (`delete(limit)` removes up to `limit` rows and
/// says how many) until a batch comes back short, so a large cleanup never
/// holds long locks. Returns how many rows went.
pub(crate) async fn delete_in_batches<F, Fut>(mut delete: F) -> Result<u64>
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<u64>>,
{
    const BATCH: i64 = 5000;
    let mut total = 0;
    loop {
        let n = delete(BATCH).await?;
        total += n;
        if n < BATCH.unsigned_abs() {
            return Ok(total);
        }
    }
}

/// An outbox row claimed by the relay for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Position in the outbox (assigned at insert; orders events of a key).
    pub seq: i64,
    /// Event id (CloudEvents `id`).
    pub id: Uuid,
    /// Destination topic.
    pub topic: String,
    /// Kafka key.
    pub key: Option<String>,
    /// CloudEvents `type`.
    pub event_type: String,
    /// CloudEvents `source`.
    pub source: String,
    /// Media type of the payload.
    pub content_type: Option<String>,
    /// The payload.
    pub payload: Vec<u8>,
    /// Application headers.
    pub headers: BTreeMap<String, String>,
    /// W3C `traceparent` of the writer.
    pub traceparent: Option<String>,
    /// W3C `tracestate` of the writer.
    pub tracestate: Option<String>,
    /// CloudEvents `time`.
    pub occurred_at: DateTime<Utc>,
    /// When the row was written (the database clock at the start of the
    /// writing transaction).
    pub created_at: DateTime<Utc>,
    /// Failed delivery attempts so far.
    pub attempts: i32,
    /// The slot its key maps to.
    pub slot: i32,
    /// The epoch of the slot's lease it was claimed under (the fence).
    pub epoch: i64,
}

impl OutboxEvent {
    /// The row's fence: its sequence number and the lease epoch it was
    /// claimed under.
    pub fn fence(&self) -> Fence {
        Fence { seq: self.seq, slot: self.slot, epoch: self.epoch }
    }
}

/// A claimed row and the lease epoch it was claimed under. Writes carrying a
/// fence only take effect while the writer still owns the slot at that epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The row.
    pub seq: i64,
    /// Its slot.
    pub slot: i32,
    /// The lease epoch.
    pub epoch: i64,
}

/// Identity of one relay instance (a fresh UUID per process start).
pub type RelayId = Uuid;

/// What a rebalance changed for one relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebalance {
    /// Live relays sharing the outbox, this one included.
    pub live_relays: usize,
    /// Slots this relay owns now.
    pub owned: Vec<i32>,
    /// Slots acquired by this call.
    pub acquired: Vec<i32>,
    /// Of those, slots taken over from a relay whose lease had expired.
    pub taken_over: Vec<i32>,
    /// Slots released to other relays by this call.
    pub released: Vec<i32>,
}

/// A delivery that failed but will be retried after `retry_after`.
#[derive(Debug, Clone)]
pub struct RetryLater {
    /// The row and its fence.
    pub fence: Fence,
    /// What went wrong.
    pub error: String,
    /// How long to wait before the next attempt.
    pub retry_after: Duration,
}

/// A row that failed for good and moves to the dead-letter table.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The row and its fence.
    pub fence: Fence,
    /// Why it failed.
    pub error: String,
}

/// Pending work of one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SlotLag {
    /// The slot.
    pub slot: i32,
    /// Rows waiting in it.
    pub pending: i64,
    /// Age of its oldest pending row.
    pub oldest_pending_age: Duration,
}

/// What the outbox holds right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxStats {
    /// Rows waiting to be published.
    pub pending: i64,
    /// Age of the oldest pending row, zero when none.
    pub oldest_pending_age: Duration,
    /// Rows in the dead-letter table.
    pub dead_letters: i64,
    /// Keys held back by a quarantined dead letter.
    pub quarantined_keys: i64,
    /// Slots with pending rows.
    pub per_slot: Vec<SlotLag>,
}

/// The storage interface the relay works against. One implementation per
/// database backend; [`PgStore`] is the PostgreSQL one.
///
/// Work is partitioned by slot (a hash of the key); every read and write of
/// outbox rows goes through the slot leases of the calling relay, so a relay
/// that lost a slot can neither claim nor settle that slot's rows.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Up to `limit` pending rows of the slots `owner` holds, in sequence
    /// order, leaving out every row of a key that has a row backing off
    /// (whatever that row's sequence number) or is quarantined, and the rows
    /// `in_flight` (claimed earlier, not settled yet).
    async fn claim(&self, owner: RelayId, limit: usize, in_flight: &[i64]) -> Result<Vec<OutboxEvent>>;
    /// Removes rows the broker confirmed, in one statement, if `owner` still
    /// holds their slot at the claimed epoch; with `retain`, moves them to the
    /// published table for replay instead. Returns how many were removed.
    async fn mark_published(&self, owner: RelayId, done: &[Fence], retain: bool) -> Result<u64>;
    /// Deletes up to `limit` retained published rows older than `older_than`.
    async fn purge_published(&self, older_than: Duration, limit: i64) -> Result<u64>;
    /// Records failed attempts and when to try again (fenced likewise).
    async fn retry_later(&self, owner: RelayId, failures: &[RetryLater]) -> Result<u64>;
    /// Moves rows to the dead-letter table with their error (fenced likewise).
    /// With `quarantine`, their keys are quarantined: later events of those
    /// keys wait until an operator retries or discards the dead letter.
    async fn dead_letter(&self, owner: RelayId, rows: &[DeadLetter], quarantine: bool) -> Result<u64>;
    /// Records that `owner` is alive and extends its leases by `lease`.
    async fn heartbeat(&self, owner: RelayId, name: &str, lease: Duration) -> Result<()>;
    /// Divides the slots among live relays: releases slots now assigned to
    /// others, acquires free or expired slots assigned to `owner`.
    async fn rebalance(&self, owner: RelayId, lease: Duration) -> Result<Rebalance>;
    /// Releases every lease of `owner` and forgets it (clean shutdown).
    async fn leave(&self, owner: RelayId) -> Result<()>;
    /// Counts pending and dead-lettered rows.
    async fn stats(&self) -> Result<OutboxStats>;
    /// Checks that the database answers.
    async fn ping(&self) -> Result<()>;
}
