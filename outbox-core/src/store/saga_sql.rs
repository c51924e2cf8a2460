//! PostgreSQL statements of saga orchestration: the orchestrator's
//! instances and history, and the participants' command memory.

use std::time::Duration;

use sqlx::PgPool;

use crate::config::OutboxConfig;
use crate::error::Result;

/// Statements of the saga orchestrator and participants.
#[derive(Debug, Clone)]
pub(crate) struct SagaSql {
    pub(crate) insert: String,
    pub(crate) lock: String,
    pub(crate) update: String,
    pub(crate) select: String,
    pub(crate) due: String,
    pub(crate) counts: String,
    pub(crate) history_insert: String,
    pub(crate) history_finish: String,
    pub(crate) history_select: String,
    pub(crate) command_claim: String,
    pub(crate) command_lock: String,
    pub(crate) command_record: String,
    pub(crate) command_tombstone: String,
    pub(crate) cleanup: String,
    pub(crate) command_cleanup: String,
}

const INSTANCE_COLUMNS: &str = "id, saga_type, status, step, attempt, data, deadline, reason, created_at, updated_at";

impl SagaSql {
    pub(crate) fn new(config: &OutboxConfig) -> Self {
        let saga = config.qualified_suffix(config.outbox_table(), "saga");
        let history = config.qualified_suffix(config.outbox_table(), "saga_history");
        let commands = config.qualified_suffix(config.outbox_table(), "saga_commands");
        SagaSql {
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
}

/// Runs a batched delete statement (`$1` age in seconds, `$2` batch size,
/// returning the count deleted) until a batch comes back short, so a large
/// cleanup never holds long locks. Returns how many rows went.
pub(crate) async fn delete_in_batches(pool: &PgPool, sql: &str, older_than: Duration) -> Result<u64> {
    const BATCH: i64 = 5000;
    let mut total = 0;
    loop {
        let n: i64 = sqlx::query_scalar(sql).bind(older_than.as_secs_f64()).bind(BATCH).fetch_one(pool).await?;
        total += u64::try_from(n).unwrap_or(0);
        if n < BATCH {
            return Ok(total);
        }
    }
}
