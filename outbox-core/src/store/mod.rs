//! Storage: every SQL statement lives below this module, per backend, behind
//! the [`OutboxStore`] interface the relay is written against.

mod postgres;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;

pub use postgres::PgStore;
pub(crate) use postgres::{InboxSql, PgSql};

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
    /// Failed delivery attempts so far.
    pub attempts: i32,
}

/// A delivery that failed but will be retried after `retry_after`.
#[derive(Debug, Clone)]
pub struct RetryLater {
    /// The row.
    pub seq: i64,
    /// What went wrong.
    pub error: String,
    /// How long to wait before the next attempt.
    pub retry_after: Duration,
}

/// A row that failed for good and moves to the dead-letter table.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The row.
    pub seq: i64,
    /// Why it failed.
    pub error: String,
}

/// What the outbox holds right now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxStats {
    /// Rows waiting to be published.
    pub pending: i64,
    /// Age of the oldest pending row, zero when none.
    pub oldest_pending_age: Duration,
    /// Rows in the dead-letter table.
    pub dead_letters: i64,
}

/// The exclusive right to drain one outbox, held while this value lives.
///
/// One relay per outbox is active; others wait as hot standbys and take
/// over when the active one's database session ends (crash, kill, network
/// loss).
#[async_trait]
pub trait Leadership: Send + Sync {
    /// `true` while the right is still held; `false` (or an error) once it
    /// was lost, after which the relay must stop publishing.
    async fn still_held(&mut self) -> Result<bool>;
}

/// The storage interface the relay works against. One implementation per
/// database backend; [`PgStore`] is the PostgreSQL one.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Up to `limit` pending rows in sequence order, leaving out rows that are
    /// backing off and every later row of the same key.
    async fn claim(&self, limit: usize) -> Result<Vec<OutboxEvent>>;
    /// Removes rows the broker confirmed, in one statement. Returns how many
    /// rows were removed.
    async fn mark_published(&self, seqs: &[i64]) -> Result<u64>;
    /// Records failed attempts and when to try again.
    async fn retry_later(&self, failures: &[RetryLater]) -> Result<()>;
    /// Moves rows to the dead-letter table with their error.
    async fn dead_letter(&self, rows: &[DeadLetter]) -> Result<()>;
    /// Counts pending and dead-lettered rows.
    async fn stats(&self) -> Result<OutboxStats>;
    /// Checks that the database answers.
    async fn ping(&self) -> Result<()>;
    /// Tries to become the active relay of this outbox; `None` when another
    /// relay is active.
    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>>;
}
