//! Saga state on PostgreSQL: the orchestrator's instances and history, the
//! participants' command memory; statements, binds and row decoding.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use uuid::Uuid;

use crate::backend::{CommandKey, CommandRecord, SagaRows};
use crate::config::OutboxConfig;
use crate::saga::{Action, SagaInstance, SagaStatus, StepRecord};

/// Statements of the saga orchestrator and participants.
#[derive(Debug, Clone)]
pub struct PgSagaSql {
    insert: String,
    lock: String,
    update: String,
    select: String,
    due: String,
    counts: String,
    history_insert: String,
    history_finish: String,
    history_select: String,
    command_claim: String,
    command_lock: String,
    command_record: String,
    command_tombstone: String,
    cleanup: String,
    command_cleanup: String,
}

const INSTANCE_COLUMNS: &str = "id, saga_type, status, step, attempt, data, deadline, reason, created_at, updated_at";

fn statements(config: &OutboxConfig) -> PgSagaSql {
    let saga = config.qualified_suffix(config.outbox_table(), "saga");
    let history = config.qualified_suffix(config.outbox_table(), "saga_history");
    let commands = config.qualified_suffix(config.outbox_table(), "saga_commands");
    PgSagaSql {
        insert: format!(
            "INSERT INTO {saga} (id, saga_type, status, step, data, deadline) \
             VALUES ($1, $2, 'running', 0, $3, now() + make_interval(secs => $4))"
        ),
        lock: format!("SELECT {INSTANCE_COLUMNS} FROM {saga} WHERE id = $1 FOR UPDATE"),
        // $6: seconds until the deadline, NULL for none.
        update: format!(
            "UPDATE {saga} SET status = $2, step = $3, attempt = $4, data = $5, \
             deadline = now() + make_interval(secs => $6), reason = coalesce($7, reason), updated_at = now() \
             WHERE id = $1"
        ),
        select: format!("SELECT {INSTANCE_COLUMNS} FROM {saga} WHERE id = $1"),
        due: format!(
            "SELECT {INSTANCE_COLUMNS} FROM {saga} WHERE status IN ('running', 'compensating') \
             AND deadline < now() ORDER BY deadline LIMIT 1 FOR UPDATE SKIP LOCKED"
        ),
        counts: format!("SELECT saga_type, status, count(*) FROM {saga} GROUP BY saga_type, status"),
        // The instance row is locked by the caller, so max(seq) + 1 is safe.
        history_insert: format!(
            "INSERT INTO {history} (saga_id, seq, step, step_name, action, attempt) \
             SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5 FROM {history} WHERE saga_id = $1"
        ),
        history_finish: format!(
            "UPDATE {history} SET outcome = $4, reason = $5, finished_at = now() \
             WHERE saga_id = $1 AND step = $2 AND action = $3 AND outcome IS NULL \
             RETURNING extract(epoch FROM finished_at - sent_at)::float8"
        ),
        history_select: format!(
            "SELECT seq, step, step_name, action, attempt, outcome, reason, sent_at, finished_at \
             FROM {history} WHERE saga_id = $1 ORDER BY seq"
        ),
        command_claim: format!(
            "INSERT INTO {commands} (saga_id, step, action) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        ),
        command_lock: format!(
            "SELECT outcome, reason, data FROM {commands} WHERE saga_id = $1 AND step = $2 AND action = $3 \
             FOR UPDATE"
        ),
        command_record: format!(
            "UPDATE {commands} SET outcome = $4, reason = $5, data = $6, handled_at = now() \
             WHERE saga_id = $1 AND step = $2 AND action = $3"
        ),
        command_tombstone: format!(
            "INSERT INTO {commands} (saga_id, step, action, outcome, reason) \
             VALUES ($1, $2, 'execute', 'refused', 'compensated before it ran') ON CONFLICT DO NOTHING"
        ),
        cleanup: format!(
            "WITH gone AS (DELETE FROM {saga} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {saga} \
             WHERE status IN ('completed', 'compensated') AND updated_at < now() - make_interval(secs => $1) \
             LIMIT $2)) RETURNING 1) SELECT count(*) FROM gone"
        ),
        command_cleanup: format!(
            "WITH gone AS (DELETE FROM {commands} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {commands} \
             WHERE handled_at < now() - make_interval(secs => $1) LIMIT $2)) RETURNING 1) \
             SELECT count(*) FROM gone"
        ),
    }
}

fn instance(row: &PgRow) -> sqlx::Result<SagaInstance> {
    let status: String = row.try_get("status")?;
    Ok(SagaInstance {
        id: row.try_get("id")?,
        saga_type: row.try_get("saga_type")?,
        status: SagaStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown saga status {status:?}").into()))?,
        step: row.try_get("step")?,
        attempt: row.try_get("attempt")?,
        data: row.try_get("data")?,
        deadline: row.try_get("deadline")?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn step_record(row: &PgRow) -> sqlx::Result<StepRecord> {
    let action: String = row.try_get("action")?;
    Ok(StepRecord {
        seq: row.try_get("seq")?,
        step: row.try_get("step")?,
        step_name: row.try_get("step_name")?,
        action: Action::parse(&action)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown saga action {action:?}").into()))?,
        attempt: row.try_get("attempt")?,
        outcome: row.try_get("outcome")?,
        reason: row.try_get("reason")?,
        sent_at: row.try_get("sent_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

#[async_trait]
impl SagaRows for Postgres {
    type SagaSql = PgSagaSql;

    fn saga_sql(config: &OutboxConfig) -> PgSagaSql {
        statements(config)
    }

    async fn insert_saga(
        sql: &PgSagaSql,
        conn: &mut PgConnection,
        id: Uuid,
        saga_type: &str,
        data: &Value,
        deadline: Duration,
    ) -> sqlx::Result<()> {
        sqlx::query(&sql.insert)
            .bind(id)
            .bind(saga_type)
            .bind(data)
            .bind(deadline.as_secs_f64())
            .execute(conn)
            .await
            .map(drop)
    }

    async fn lock_saga(sql: &PgSagaSql, conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<SagaInstance>> {
        sqlx::query(&sql.lock).bind(id).fetch_optional(conn).await?.as_ref().map(instance).transpose()
    }

    async fn lock_due_saga(sql: &PgSagaSql, conn: &mut PgConnection) -> sqlx::Result<Option<SagaInstance>> {
        sqlx::query(&sql.due).fetch_optional(conn).await?.as_ref().map(instance).transpose()
    }

    async fn update_saga(
        sql: &PgSagaSql,
        conn: &mut PgConnection,
        saga: &SagaInstance,
        deadline: Option<Duration>,
    ) -> sqlx::Result<()> {
        sqlx::query(&sql.update)
            .bind(saga.id)
            .bind(saga.status.as_str())
            .bind(saga.step)
            .bind(saga.attempt)
            .bind(&saga.data)
            .bind(deadline.map(|d| d.as_secs_f64()))
            .bind(&saga.reason)
            .execute(conn)
            .await
            .map(drop)
    }

    async fn select_saga(sql: &PgSagaSql, conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<SagaInstance>> {
        sqlx::query(&sql.select).bind(id).fetch_optional(conn).await?.as_ref().map(instance).transpose()
    }

    async fn saga_history(sql: &PgSagaSql, conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Vec<StepRecord>> {
        sqlx::query(&sql.history_select).bind(id).fetch_all(conn).await?.iter().map(step_record).collect()
    }

    async fn saga_counts(sql: &PgSagaSql, conn: &mut PgConnection) -> sqlx::Result<Vec<(String, String, i64)>> {
        sqlx::query_as(&sql.counts).fetch_all(conn).await
    }

    async fn open_history(
        sql: &PgSagaSql,
        conn: &mut PgConnection,
        id: Uuid,
        step: i32,
        step_name: &str,
        action: Action,
        attempt: i32,
    ) -> sqlx::Result<()> {
        sqlx::query(&sql.history_insert)
            .bind(id)
            .bind(step)
            .bind(step_name)
            .bind(action.as_str())
            .bind(attempt)
            .execute(conn)
            .await
            .map(drop)
    }

    async fn close_history(
        sql: &PgSagaSql,
        conn: &mut PgConnection,
        id: Uuid,
        step: i32,
        action: Action,
        outcome: &str,
        reason: Option<&str>,
    ) -> sqlx::Result<Option<f64>> {
        sqlx::query_scalar(&sql.history_finish)
            .bind(id)
            .bind(step)
            .bind(action.as_str())
            .bind(outcome)
            .bind(reason)
            .fetch_optional(conn)
            .await
    }

    async fn claim_command(sql: &PgSagaSql, conn: &mut PgConnection, c: CommandKey) -> sqlx::Result<bool> {
        let claimed =
            sqlx::query(&sql.command_claim).bind(c.saga_id).bind(c.step).bind(c.action.as_str()).execute(conn).await?;
        Ok(claimed.rows_affected() == 1)
    }

    async fn lock_command(
        sql: &PgSagaSql,
        conn: &mut PgConnection,
        c: CommandKey,
    ) -> sqlx::Result<Option<CommandRecord>> {
        sqlx::query_as(&sql.command_lock)
            .bind(c.saga_id)
            .bind(c.step)
            .bind(c.action.as_str())
            .fetch_optional(conn)
            .await
    }

    async fn record_command(
        sql: &PgSagaSql,
        conn: &mut PgConnection,
        c: CommandKey,
        outcome: &str,
        reason: Option<&str>,
        data: Option<&Value>,
    ) -> sqlx::Result<()> {
        sqlx::query(&sql.command_record)
            .bind(c.saga_id)
            .bind(c.step)
            .bind(c.action.as_str())
            .bind(outcome)
            .bind(reason)
            .bind(data)
            .execute(conn)
            .await
            .map(drop)
    }

    async fn tombstone_command(
        sql: &PgSagaSql,
        conn: &mut PgConnection,
        saga_id: Uuid,
        step: i32,
    ) -> sqlx::Result<bool> {
        let done = sqlx::query(&sql.command_tombstone).bind(saga_id).bind(step).execute(conn).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_old(
        sql: &PgSagaSql,
        pool: &PgPool,
        commands: bool,
        older_than: Duration,
        limit: i64,
    ) -> sqlx::Result<u64> {
        let statement = if commands { &sql.command_cleanup } else { &sql.cleanup };
        let n: i64 = sqlx::query_scalar(statement).bind(older_than.as_secs_f64()).bind(limit).fetch_one(pool).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
