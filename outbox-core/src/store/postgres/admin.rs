//! Operator queries and actions on PostgreSQL: status, dead letters, retry,
//! replay and discard; statements, binds and row decoding.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Connection, PgPool, Postgres};
use uuid::Uuid;

use crate::backend::AdminQueries;
use crate::config::OutboxConfig;
use crate::error::{Error, Result};
use crate::store::{DeadLetterEntry, RelayStatus, Status};

/// The qualified names of the tables operators look at.
#[derive(Debug)]
pub struct PgAdminSql {
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

impl PgAdminSql {
    fn new(config: &OutboxConfig) -> Self {
        PgAdminSql {
            outbox: config.qualified(config.outbox_table()),
            dlq: config.qualified(config.dead_letter_table()),
            leases: config.qualified_suffix(config.outbox_table(), "leases"),
            relays: config.qualified_suffix(config.outbox_table(), "relays"),
            published: config.qualified_suffix(config.outbox_table(), "published"),
        }
    }

    fn replay(&self, filter: &str) -> String {
        let cols = "id, topic, key, event_type, source, content_type, payload, headers, traceparent, tracestate, \
                    occurred_at";
        format!(
            "INSERT INTO {} ({cols}) SELECT {cols} FROM (SELECT DISTINCT ON (id) * FROM {} WHERE {filter} \
             ORDER BY id, seq) r ORDER BY seq ON CONFLICT (id) DO NOTHING",
            self.outbox, self.published
        )
    }
}

#[async_trait]
impl AdminQueries for Postgres {
    type AdminSql = PgAdminSql;

    fn admin_sql(config: &OutboxConfig) -> PgAdminSql {
        PgAdminSql::new(config)
    }

    /// Counts, relays and their slots. Relays whose heartbeat is older than
    /// `lease_timeout` own no live lease and are shown with no slots.
    async fn outbox_status(pool: &PgPool, sql: &PgAdminSql) -> Result<Status> {
        let (outbox, dlq, leases, relays) = (&sql.outbox, &sql.dlq, &sql.leases, &sql.relays);
        let (pending, age, dead_letters, quarantined_keys, slots, unowned): (i64, f64, i64, i64, i64, i64) =
            sqlx::query_as(&format!(
                "SELECT (SELECT count(*) FROM {outbox}), \
                        (SELECT coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) FROM {outbox}), \
                        (SELECT count(*) FROM {dlq}), \
                        (SELECT count(DISTINCT key) FROM {dlq} WHERE quarantined), \
                        (SELECT count(*) FROM {leases}), \
                        (SELECT count(*) FROM {leases} WHERE owner IS NULL OR expires_at <= now())"
            ))
            .fetch_one(pool)
            .await?;
        let relays: Vec<RelayStatus> = sqlx::query_as(&format!(
            "SELECT r.id, r.name, r.started_at, r.heartbeat_at, \
                    extract(epoch FROM now() - r.heartbeat_at)::float8 AS heartbeat_age_seconds, \
                    coalesce(array_agg(l.slot ORDER BY l.slot) FILTER (WHERE l.slot IS NOT NULL), '{{}}') AS slots \
             FROM {relays} r LEFT JOIN {leases} l ON l.owner = r.id AND l.expires_at > now() \
             GROUP BY r.id ORDER BY r.started_at"
        ))
        .fetch_all(pool)
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
    async fn list_dead_letters(pool: &PgPool, sql: &PgAdminSql, limit: i64) -> Result<Vec<DeadLetterEntry>> {
        let statement = format!("SELECT {DLQ_COLUMNS} FROM {} ORDER BY seq LIMIT $1", sql.dlq);
        Ok(sqlx::query_as(&statement).bind(limit).fetch_all(pool).await?)
    }

    /// One dead letter with its payload and headers.
    async fn show_dead_letter(pool: &PgPool, sql: &PgAdminSql, id: Uuid) -> Result<DeadLetterEntry> {
        let statement = format!("SELECT {DLQ_COLUMNS}, payload, headers FROM {} WHERE id = $1", sql.dlq);
        let row = sqlx::query(&statement).bind(id).fetch_optional(pool).await?;
        let row = row.ok_or_else(|| Error::UnknownIds { kind: DEAD_LETTERED, ids: vec![id] })?;
        use sqlx::{FromRow, Row};
        let mut entry = DeadLetterEntry::from_row(&row)?;
        let payload: Vec<u8> = row.try_get("payload")?;
        entry.payload =
            Some(String::from_utf8(payload).unwrap_or_else(|e| format!("<{} bytes, not UTF-8>", e.as_bytes().len())));
        entry.headers = row.try_get::<Json<BTreeMap<String, String>>, _>("headers")?.0;
        Ok(entry)
    }

    async fn move_back(pool: &PgPool, sql: &PgAdminSql, ids: Option<&[Uuid]>) -> Result<u64> {
        let cols = "seq, id, topic, key, event_type, source, content_type, payload, headers, traceparent, \
                    tracestate, occurred_at, created_at";
        let filter = if ids.is_some() { "WHERE id = ANY($1)" } else { "" };
        let statement = format!(
            "WITH moved AS (DELETE FROM {} {filter} RETURNING {cols}) \
             INSERT INTO {} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM moved",
            sql.dlq, sql.outbox
        );
        all_or_nothing(pool, &sql.dlq, DEAD_LETTERED, ids, &statement).await
    }

    /// Publishes retained events again (same ids, so idempotent consumers
    /// skip what they applied; a new consumer group gets them all), appended
    /// to the outbox in their original order. All or nothing: if one id is
    /// not retained, nothing changes.
    async fn replay_ids(pool: &PgPool, sql: &PgAdminSql, ids: &[Uuid]) -> Result<u64> {
        let statement = sql.replay("id = ANY($1)");
        all_or_nothing(pool, &sql.published, RETAINED, Some(ids), &statement).await
    }

    /// Publishes again the retained events written (committed) in
    /// `[since, until)`, optionally of one topic.
    async fn replay_range(
        pool: &PgPool,
        sql: &PgAdminSql,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        topic: Option<&str>,
    ) -> Result<u64> {
        let statement = sql.replay("created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR topic = $3)");
        let done = sqlx::query(&statement).bind(since).bind(until).bind(topic).execute(pool).await?;
        Ok(done.rows_affected())
    }

    /// Deletes dead letters for good (releasing their keys' quarantine).
    /// All or nothing: if one id is unknown, nothing changes.
    async fn discard(pool: &PgPool, sql: &PgAdminSql, ids: &[Uuid]) -> Result<u64> {
        let statement = format!("DELETE FROM {} WHERE id = ANY($1)", sql.dlq);
        all_or_nothing(pool, &sql.dlq, DEAD_LETTERED, Some(ids), &statement).await
    }
}

/// Runs `sql` in a transaction after checking, with the rows locked, that
/// every id is in `table`; an unknown id changes nothing.
async fn all_or_nothing(
    pool: &PgPool,
    table: &str,
    kind: &'static str,
    ids: Option<&[Uuid]>,
    sql: &str,
) -> Result<u64> {
    let mut conn = pool.acquire().await?;
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
