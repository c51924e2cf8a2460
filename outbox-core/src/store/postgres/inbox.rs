//! The consume side on PostgreSQL: the inbox statements, their binds and
//! their row decoding.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool, Postgres};
use uuid::Uuid;

use crate::backend::{InboxDeadLetter, InboxRows};
use crate::config::OutboxConfig;

/// Statements of the consume side.
#[derive(Debug)]
pub struct PgInboxSql {
    insert: String,
    insert_many: String,
    dead_letter: String,
    cleanup: String,
}

#[async_trait]
impl InboxRows for Postgres {
    type InboxSql = PgInboxSql;

    fn inbox_sql(config: &OutboxConfig) -> PgInboxSql {
        let inbox = config.qualified(config.inbox_table());
        let dlq = config.qualified(config.inbox_dead_letter_table());
        PgInboxSql {
            insert: format!(
                "INSERT INTO {inbox} (consumer_group, event_id, topic) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            ),
            // Ids in a fixed order, so two consumers inserting overlapping
            // batches (during a rebalance) wait on each other instead of
            // deadlocking; duplicates within the batch are skipped.
            insert_many: format!(
                "INSERT INTO {inbox} (consumer_group, event_id, topic) \
                 SELECT $1, e.id, e.topic FROM UNNEST($2::uuid[], $3::text[]) AS e(id, topic) ORDER BY e.id \
                 ON CONFLICT DO NOTHING RETURNING event_id"
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

    async fn record(
        sql: &PgInboxSql,
        conn: &mut PgConnection,
        group: &str,
        id: Uuid,
        topic: &str,
    ) -> sqlx::Result<bool> {
        let inserted = sqlx::query(&sql.insert).bind(group).bind(id).bind(topic).execute(conn).await?;
        Ok(inserted.rows_affected() > 0)
    }

    async fn record_many(
        sql: &PgInboxSql,
        conn: &mut PgConnection,
        group: &str,
        ids: &[Uuid],
        topics: &[&str],
    ) -> sqlx::Result<HashSet<Uuid>> {
        let new: Vec<Uuid> =
            sqlx::query_scalar(&sql.insert_many).bind(group).bind(ids).bind(topics).fetch_all(conn).await?;
        Ok(new.into_iter().collect())
    }

    async fn dead_letter(sql: &PgInboxSql, conn: &mut PgConnection, row: &InboxDeadLetter<'_>) -> sqlx::Result<()> {
        sqlx::query(&sql.dead_letter)
            .bind(row.group)
            .bind(row.event_id)
            .bind(row.topic)
            .bind(row.partition)
            .bind(row.offset)
            .bind(row.key)
            .bind(row.payload)
            .bind(sqlx::types::Json(row.headers))
            .bind(row.error)
            .bind(i32::try_from(row.attempts).unwrap_or(i32::MAX))
            .execute(conn)
            .await
            .map(drop)
    }

    async fn cleanup_batch(sql: &PgInboxSql, pool: &PgPool, horizon: Duration, limit: i64) -> sqlx::Result<u64> {
        let deleted = sqlx::query(&sql.cleanup).bind(horizon.as_secs_f64()).bind(limit).execute(pool).await?;
        Ok(deleted.rows_affected())
    }
}
