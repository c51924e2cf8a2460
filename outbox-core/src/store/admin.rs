//! Operator queries and actions on an outbox: status, dead letters, retry,
//! replay and discard (each backend's statements are in its module). Nothing here changes data unless asked to,
//! and an action naming an unknown id changes nothing at all.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Pool, Postgres};
use uuid::Uuid;

use crate::backend::Backend;
use crate::config::OutboxConfig;
use crate::error::Result;

/// What the outbox and its relays are doing.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Events waiting to be published.
    pub pending: i64,
    /// Age of the oldest pending event, in seconds.
    pub oldest_pending_age_seconds: f64,
    /// Events in the dead-letter table.
    pub dead_letters: i64,
    /// Keys held back by a quarantined dead letter.
    pub quarantined_keys: i64,
    /// Number of slots.
    pub slots: i64,
    /// Slots with no live owner.
    pub unowned_slots: i64,
    /// Known relay instances.
    pub relays: Vec<RelayStatus>,
}

/// One relay instance.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RelayStatus {
    /// Instance id.
    pub id: Uuid,
    /// Instance name (host:pid by default).
    pub name: String,
    /// When it joined.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// Seconds since that heartbeat.
    pub heartbeat_age_seconds: f64,
    /// Slots it holds under a live lease.
    pub slots: Vec<i32>,
}

/// A dead-lettered event.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetterEntry {
    /// Event id.
    pub id: Uuid,
    /// Its original position in the outbox (kept for retries).
    pub seq: i64,
    /// Topic.
    pub topic: String,
    /// Key.
    pub key: Option<String>,
    /// Event type.
    pub event_type: String,
    /// Delivery attempts.
    pub attempts: i32,
    /// Why it failed.
    pub error: String,
    /// Whether its key is held back.
    pub quarantined: bool,
    /// When it was written by the application.
    pub created_at: DateTime<Utc>,
    /// When it was dead-lettered.
    pub dead_lettered_at: DateTime<Utc>,
    /// Payload size in bytes.
    pub payload_bytes: i32,
    /// The payload, as text when it is UTF-8 (filled by `show`).
    #[sqlx(skip)]
    pub payload: Option<String>,
    /// Application headers (filled by `show`).
    #[sqlx(skip)]
    pub headers: BTreeMap<String, String>,
}

/// Operator access to one outbox (`DB` is its database, PostgreSQL unless
/// named).
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> outbox_core::Result<()> {
/// use outbox_core::{OutboxAdmin, OutboxConfig};
/// let admin = OutboxAdmin::new(pool, &OutboxConfig::default());
/// for dead in admin.dead_letters(50).await? {
///     println!("{} {} {}", dead.id, dead.topic, dead.error);
/// }
/// # Ok(()) }
/// ```
pub struct OutboxAdmin<DB: Backend = Postgres> {
    pool: Pool<DB>,
    sql: std::sync::Arc<DB::AdminSql>,
}

impl<DB: Backend> Clone for OutboxAdmin<DB> {
    fn clone(&self) -> Self {
        OutboxAdmin { pool: self.pool.clone(), sql: std::sync::Arc::clone(&self.sql) }
    }
}

impl<DB: Backend> std::fmt::Debug for OutboxAdmin<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxAdmin").field("tables", &self.sql).finish_non_exhaustive()
    }
}

impl<DB: Backend> OutboxAdmin<DB> {
    /// Admin access to the outbox described by `config`.
    pub fn new(pool: Pool<DB>, config: &OutboxConfig) -> Self {
        OutboxAdmin { pool, sql: std::sync::Arc::new(DB::admin_sql(config)) }
    }

    /// Counts, relays and their slots. Relays whose heartbeat is older than
    /// the lease timeout own no live lease and are shown with no slots.
    pub async fn status(&self) -> Result<Status> {
        DB::outbox_status(&self.pool, &self.sql).await
    }

    /// The oldest `limit` dead letters.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetterEntry>> {
        DB::list_dead_letters(&self.pool, &self.sql, limit).await
    }

    /// One dead letter with its payload and headers.
    pub async fn dead_letter(&self, id: Uuid) -> Result<DeadLetterEntry> {
        DB::show_dead_letter(&self.pool, &self.sql, id).await
    }

    /// Puts dead letters back in line at their original position in their
    /// key's order (releasing the key's quarantine). All or nothing: if one
    /// id is unknown, nothing changes.
    pub async fn retry(&self, ids: &[Uuid]) -> Result<u64> {
        DB::move_back(&self.pool, &self.sql, Some(ids)).await
    }

    /// Puts every dead letter back in line.
    pub async fn retry_all(&self) -> Result<u64> {
        DB::move_back(&self.pool, &self.sql, None).await
    }

    /// Publishes retained events again (same ids, so idempotent consumers
    /// skip what they applied; a new consumer group gets them all), appended
    /// to the outbox in their original order. All or nothing: if one id is
    /// not retained, nothing changes.
    pub async fn replay_ids(&self, ids: &[Uuid]) -> Result<u64> {
        DB::replay_ids(&self.pool, &self.sql, ids).await
    }

    /// Publishes again the retained events written (committed) in
    /// `[since, until)`, optionally of one topic.
    pub async fn replay_range(&self, since: DateTime<Utc>, until: DateTime<Utc>, topic: Option<&str>) -> Result<u64> {
        DB::replay_range(&self.pool, &self.sql, since, until, topic).await
    }

    /// Deletes dead letters for good (releasing their keys' quarantine).
    /// All or nothing: if one id is unknown, nothing changes.
    pub async fn discard(&self, ids: &[Uuid]) -> Result<u64> {
        DB::discard(&self.pool, &self.sql, ids).await
    }
}
