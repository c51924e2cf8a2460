//! PostgreSQL: the SQL text of every statement, built once from checked
//! identifiers, and the [`OutboxStore`] implementation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{DeadLetter, Leadership, OutboxEvent, OutboxStats, OutboxStore, RetryLater};
use crate::config::OutboxConfig;
use crate::error::Result;

const EVENT_COLUMNS: &str = "seq, id, topic, key, event_type, source, content_type, payload, headers, \
                             traceparent, tracestate, occurred_at, created_at";

/// Statements of the write and relay side, built from one [`OutboxConfig`].
#[derive(Debug)]
pub(crate) struct PgSql {
    pub(crate) insert_one: String,
    pub(crate) insert_many: String,
    pub(crate) id_constraint: String,
    claim: String,
    mark: String,
    retry_later: String,
    dead_letter: String,
    stats: String,
    lock_key: String,
}

impl PgSql {
    pub(crate) fn new(config: &OutboxConfig) -> Self {
        let outbox = config.qualified(config.outbox_table());
        let dlq = config.qualified(config.dead_letter_table());
        let insert_cols = "id, topic, key, event_type, source, content_type, payload, headers, traceparent, \
                           tracestate, occurred_at";
        PgSql {
            insert_one: format!(
                "INSERT INTO {outbox} ({insert_cols}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ),
            insert_many: format!(
                "INSERT INTO {outbox} ({insert_cols}) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::bytea[], $8::jsonb[], $9::text[], $10::text[], $11::timestamptz[])"
            ),
            id_constraint: format!("{}_id_key", config.outbox_table()),
            // Sequence order; a row backing off holds back every later row of
            // its key (per-key order), rows of other keys flow on.
            claim: format!(
                "SELECT {EVENT_COLUMNS}, attempts FROM {outbox} o \
                 WHERE (o.next_attempt_at IS NULL OR o.next_attempt_at <= now()) \
                   AND NOT EXISTS (SELECT 1 FROM {outbox} b \
                                   WHERE b.next_attempt_at > now() AND b.key = o.key AND b.seq < o.seq) \
                 ORDER BY o.seq LIMIT $1"
            ),
            mark: format!("DELETE FROM {outbox} WHERE seq = ANY($1::bigint[])"),
            retry_later: format!(
                "UPDATE {outbox} AS o SET attempts = o.attempts + 1, last_error = f.error, \
                 next_attempt_at = now() + make_interval(secs => f.delay) \
                 FROM UNNEST($1::bigint[], $2::text[], $3::float8[]) AS f(seq, error, delay) \
                 WHERE o.seq = f.seq"
            ),
            dead_letter: format!(
                "WITH moved AS (DELETE FROM {outbox} WHERE seq = ANY($1::bigint[]) RETURNING *) \
                 INSERT INTO {dlq} ({EVENT_COLUMNS}, attempts, error) \
                 SELECT m.seq, m.id, m.topic, m.key, m.event_type, m.source, m.content_type, m.payload, m.headers, \
                        m.traceparent, m.tracestate, m.occurred_at, m.created_at, m.attempts + 1, f.error \
                 FROM moved m JOIN UNNEST($1::bigint[], $2::text[]) AS f(seq, error) ON f.seq = m.seq"
            ),
            stats: format!(
                "SELECT (SELECT count(*) FROM {outbox}), \
                        (SELECT coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) FROM {outbox}), \
                        (SELECT count(*) FROM {dlq})"
            ),
            lock_key: format!("outbox-relay:{}.{}", config.schema(), config.outbox_table()),
        }
    }
}

/// Statements of the consume side.
#[derive(Debug)]
pub(crate) struct InboxSql {
    pub(crate) insert: String,
    pub(crate) dead_letter: String,
    pub(crate) cleanup: String,
}

impl InboxSql {
    pub(crate) fn new(config: &OutboxConfig) -> Self {
        let inbox = config.qualified(config.inbox_table());
        let dlq = config.qualified(config.inbox_dead_letter_table());
        InboxSql {
            insert: format!(
                "INSERT INTO {inbox} (consumer_group, event_id, topic) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            ),
            dead_letter: format!(
                "INSERT INTO {dlq} (consumer_group, event_id, topic, kafka_partition, kafka_offset, key, payload, \
                 headers, error, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ),
            // Batched so a large cleanup never holds long locks.
            cleanup: format!(
                "DELETE FROM {inbox} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {inbox} \
                 WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2))"
            ),
        }
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    id: Uuid,
    topic: String,
    key: Option<String>,
    event_type: String,
    source: String,
    content_type: Option<String>,
    payload: Vec<u8>,
    headers: Json<BTreeMap<String, String>>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    occurred_at: DateTime<Utc>,
    attempts: i32,
}

impl From<EventRow> for OutboxEvent {
    fn from(r: EventRow) -> Self {
        OutboxEvent {
            seq: r.seq,
            id: r.id,
            topic: r.topic,
            key: r.key,
            event_type: r.event_type,
            source: r.source,
            content_type: r.content_type,
            payload: r.payload,
            headers: r.headers.0,
            traceparent: r.traceparent,
            tracestate: r.tracestate,
            occurred_at: r.occurred_at,
            attempts: r.attempts,
        }
    }
}

/// The PostgreSQL [`OutboxStore`].
///
/// ```no_run
/// # async fn f() -> outbox_core::Result<()> {
/// use outbox_core::{OutboxConfig, PgStore};
/// let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
/// let store = PgStore::new(pool, &OutboxConfig::default());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    sql: Arc<PgSql>,
}

impl PgStore {
    /// A store over `pool` for the tables named in `config`.
    pub fn new(pool: PgPool, config: &OutboxConfig) -> Self {
        PgStore { pool, sql: Arc::new(PgSql::new(config)) }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn claim(&self, limit: usize) -> Result<Vec<OutboxEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<EventRow> = sqlx::query_as(&self.sql.claim).bind(limit).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(OutboxEvent::from).collect())
    }

    async fn mark_published(&self, seqs: &[i64]) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(&self.sql.mark).bind(seqs).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    async fn retry_later(&self, failures: &[RetryLater]) -> Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = failures.iter().map(|f| f.seq).collect();
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        let delays: Vec<f64> = failures.iter().map(|f| f.retry_after.as_secs_f64()).collect();
        sqlx::query(&self.sql.retry_later).bind(seqs).bind(errors).bind(delays).execute(&self.pool).await?;
        Ok(())
    }

    async fn dead_letter(&self, rows: &[DeadLetter]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let errors: Vec<&str> = rows.iter().map(|r| r.error.as_str()).collect();
        sqlx::query(&self.sql.dead_letter).bind(seqs).bind(errors).execute(&self.pool).await?;
        Ok(())
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let (pending, age, dead_letters): (i64, f64, i64) =
            sqlx::query_as(&self.sql.stats).fetch_one(&self.pool).await?;
        Ok(OutboxStats { pending, oldest_pending_age: Duration::from_secs_f64(age.max(0.0)), dead_letters })
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>> {
        let mut conn = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(&self.sql.lock_key)
            .fetch_one(&mut conn)
            .await?;
        Ok(locked.then(|| Box::new(PgLeadership { conn }) as Box<dyn Leadership>))
    }
}

/// A session-level advisory lock on a dedicated connection: released by
/// PostgreSQL as soon as that session ends.
struct PgLeadership {
    conn: sqlx::PgConnection,
}

#[async_trait]
impl Leadership for PgLeadership {
    async fn still_held(&mut self) -> Result<bool> {
        // The session lock lives exactly as long as the session: if this
        // round trip succeeds on the same connection, the lock is still ours.
        sqlx::query("SELECT 1").execute(&mut self.conn).await?;
        Ok(true)
    }
}
