//! Operator queries and actions on a PostgreSQL outbox: status, dead
//! letters, retry and discard. Nothing here changes data unless asked to,
//! and an action naming an unknown id changes nothing at all.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{Connection, PgPool};
use uuid::Uuid;

use crate::config::OutboxConfig;
use crate::error::{Error, Result};

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

/// Operator access to one outbox.
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
#[derive(Debug, Clone)]
pub struct OutboxAdmin {
    pool: PgPool,
    outbox: String,
    dlq: String,
    leases: String,
    relays: String,
    published: String,
}

const DEAD_LETTERED: &str = "dead-lettered event";
const RETAINED: &str = "retained event";

const DLQ_COLUMNS: &str = "id, seq, topic, key, event_type, attempts, error, quarantined, created_at, \
                           dead_lettered_at, octet_length(payload) AS payload_bytes";

impl OutboxAdmin {
    /// Admin access to the outbox described by `config`.
    pub fn new(pool: PgPool, config: &OutboxConfig) -> Self {
        OutboxAdmin {
            pool,
            outbox: config.qualified(config.outbox_table()),
            dlq: config.qualified(config.dead_letter_table()),
            leases: config.qualified_suffix(config.outbox_table(), "leases"),
            relays: config.qualified_suffix(config.outbox_table(), "relays"),
            published: config.qualified_suffix(config.outbox_table(), "published"),
        }
    }

    /// Counts, relays and their slots. Relays whose heartbeat is older than
    /// `lease_timeout` own no live lease and are shown with no slots.
    pub async fn status(&self) -> Result<Status> {
        let (outbox, dlq, leases, relays) = (&self.outbox, &self.dlq, &self.leases, &self.relays);
        let (pending, age, dead_letters, quarantined_keys, slots, unowned): (i64, f64, i64, i64, i64, i64) =
            sqlx::query_as(&format!(
                "SELECT (SELECT count(*) FROM {outbox}), \
                        (SELECT coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) FROM {outbox}), \
                        (SELECT count(*) FROM {dlq}), \
                        (SELECT count(DISTINCT key) FROM {dlq} WHERE quarantined), \
                        (SELECT count(*) FROM {leases}), \
                        (SELECT count(*) FROM {leases} WHERE owner IS NULL OR expires_at <= now())"
            ))
            .fetch_one(&self.pool)
            .await?;
        let relays: Vec<RelayStatus> = sqlx::query_as(&format!(
            "SELECT r.id, r.name, r.started_at, r.heartbeat_at, \
                    extract(epoch FROM now() - r.heartbeat_at)::float8 AS heartbeat_age_seconds, \
                    coalesce(array_agg(l.slot ORDER BY l.slot) FILTER (WHERE l.slot IS NOT NULL), '{{}}') AS slots \
             FROM {relays} r LEFT JOIN {leases} l ON l.owner = r.id AND l.expires_at > now() \
             GROUP BY r.id ORDER BY r.started_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(Status {
            pending,
            oldest_pending_age_seconds: age,
            dead_letters,
            quarantined_keys,
            slots,
            unowned_slots: unowned,
            relays,
        })
    }

    /// The oldest `limit` dead letters.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetterEntry>> {
        let sql = format!("SELECT {DLQ_COLUMNS} FROM {} ORDER BY seq LIMIT $1", self.dlq);
        Ok(sqlx::query_as(&sql).bind(limit).fetch_all(&self.pool).await?)
    }

    /// One dead letter with its payload and headers.
    pub async fn dead_letter(&self, id: Uuid) -> Result<DeadLetterEntry> {
        let sql = format!("SELECT {DLQ_COLUMNS}, payload, headers FROM {} WHERE id = $1", self.dlq);
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        let row = row.ok_or_else(|| Error::UnknownIds { kind: DEAD_LETTERED, ids: vec![id] })?;
        use sqlx::{FromRow, Row};
        let mut entry = DeadLetterEntry::from_row(&row)?;
        let payload: Vec<u8> = row.try_get("payload")?;
        entry.payload =
            Some(String::from_utf8(payload).unwrap_or_else(|e| format!("<{} bytes, not UTF-8>", e.as_bytes().len())));
        entry.headers = row.try_get::<Json<BTreeMap<String, String>>, _>("headers")?.0;
        Ok(entry)
    }

    /// Puts dead letters back in line at their original position in their
    /// key's order (releasing the key's quarantine). All or nothing: if one
    /// id is unknown, nothing changes.
    pub async fn retry(&self, ids: &[Uuid]) -> Result<u64> {
        self.move_back(Some(ids)).await
    }

    /// Puts every dead letter back in line.
    pub async fn retry_all(&self) -> Result<u64> {
        self.move_back(None).await
    }

    async fn move_back(&self, ids: Option<&[Uuid]>) -> Result<u64> {
        let cols = "seq, id, topic, key, event_type, source, content_type, payload, headers, traceparent, \
                    tracestate, occurred_at, created_at";
        let filter = if ids.is_some() { "WHERE id = ANY($1)" } else { "" };
        let sql = format!(
            "WITH moved AS (DELETE FROM {} {filter} RETURNING {cols}) \
             INSERT INTO {} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM moved",
            self.dlq, self.outbox
        );
        self.all_or_nothing(&self.dlq, DEAD_LETTERED, ids, &sql).await
    }

    /// Publishes retained events again (same ids, so idempotent consumers
    /// skip what they applied; a new consumer group gets them all), appended
    /// to the outbox in their original order. All or nothing: if one id is
    /// not retained, nothing changes.
    pub async fn replay_ids(&self, ids: &[Uuid]) -> Result<u64> {
        let sql = self.replay_sql("id = ANY($1)");
        self.all_or_nothing(&self.published, RETAINED, Some(ids), &sql).await
    }

    /// Publishes again the retained events written (committed) in
    /// `[since, until)`, optionally of one topic.
    pub async fn replay_range(&self, since: DateTime<Utc>, until: DateTime<Utc>, topic: Option<&str>) -> Result<u64> {
        let sql = self.replay_sql("created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR topic = $3)");
        let done = sqlx::query(&sql).bind(since).bind(until).bind(topic).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    fn replay_sql(&self, filter: &str) -> String {
        let cols = "id, topic, key, event_type, source, content_type, payload, headers, traceparent, tracestate, \
                    occurred_at";
        format!(
            "INSERT INTO {} ({cols}) SELECT {cols} FROM (SELECT DISTINCT ON (id) * FROM {} WHERE {filter} \
             ORDER BY id, seq) r ORDER BY seq ON CONFLICT (id) DO NOTHING",
            self.outbox, self.published
        )
    }

    /// Deletes dead letters for good (releasing their keys' quarantine).
    /// All or nothing: if one id is unknown, nothing changes.
    pub async fn discard(&self, ids: &[Uuid]) -> Result<u64> {
        let sql = format!("DELETE FROM {} WHERE id = ANY($1)", self.dlq);
        self.all_or_nothing(&self.dlq, DEAD_LETTERED, Some(ids), &sql).await
    }

    async fn all_or_nothing(&self, table: &str, kind: &'static str, ids: Option<&[Uuid]>, sql: &str) -> Result<u64> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        if let Some(ids) = ids {
            let found: Vec<Uuid> = sqlx::query_scalar(&format!("SELECT id FROM {table} WHERE id = ANY($1) FOR UPDATE"))
                .bind(ids)
                .fetch_all(&mut *tx)
                .await?;
            let unknown: Vec<Uuid> = ids.iter().filter(|id| !found.contains(id)).copied().collect();
            if !unknown.is_empty() {
                return Err(Error::UnknownIds { kind, ids: unknown });
            }
        }
        let mut query = sqlx::query(sql);
        if let Some(ids) = ids {
            query = query.bind(ids);
        }
        let done = query.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(done)
    }
}
