//! The relay's side on PostgreSQL: the claim, settle and lease statements,
//! built once from checked identifiers, and the [`OutboxStore`]
//! implementation, [`PgStore`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::config::OutboxConfig;
use crate::error::Result;
use crate::store::{DeadLetter, Fence, OutboxEvent, OutboxStats, OutboxStore, Rebalance, RelayId, RetryLater, SlotLag};

const EVENT_COLUMNS: &str = "seq, id, topic, key, event_type, source, content_type, payload, headers, \
                             traceparent, tracestate, occurred_at, created_at";

/// Statements of the write and relay side, built from one [`OutboxConfig`].
#[derive(Debug)]
pub(crate) struct PgSql {
    claim: String,
    mark: String,
    mark_retain: String,
    purge_published: String,
    slot_lag: String,
    retry_later: String,
    dead_letter: String,
    stats: String,
    heartbeat_relay: String,
    renew_leases: String,
    live_relays: String,
    all_slots: String,
    release: String,
    acquire: String,
    owned: String,
    leave_leases: String,
    leave_relay: String,
    forget_dead_relays: String,
}

impl PgSql {
    pub(crate) fn new(config: &OutboxConfig) -> Self {
        let outbox = config.qualified(config.outbox_table());
        let dlq = config.qualified(config.dead_letter_table());
        let leases = config.qualified_suffix(config.outbox_table(), "leases");
        let relays = config.qualified_suffix(config.outbox_table(), "relays");
        let published = config.qualified_suffix(config.outbox_table(), "published");
        // Per-slot facts are computed once per statement (an init plan) into
        // an array indexed by slot + 1, so each row costs one array subscript
        // instead of a probe of the leases' primary key or a scan of a slot
        // list: `EXPLAIN ANALYZE` of a 2,000-row claim on a 200,000-row
        // backlog, 6.8–7.4 ms with a per-row epoch probe, 3.1–3.5 ms so.
        // The array runs over every slot number up to the highest lease, so
        // a missing lease row leaves its slot unowned, never shifts another.
        let per_slot = |value: &str| {
            format!(
                "(ARRAY(SELECT {value} FROM generate_series(0, (SELECT max(slot) FROM {leases})) AS s(slot) \
                 LEFT JOIN {leases} l USING (slot) ORDER BY s.slot))[o.slot + 1]"
            )
        };
        // The caller's ($2) epoch for each slot whose lease it holds, else -1
        // (epochs start at 0).
        let held_epoch = per_slot("coalesce(CASE WHEN l.owner = $2 AND l.expires_at > now() THEN l.epoch END, -1)");
        // Settling statements only touch rows whose slot the caller ($1)
        // still holds at the epoch it claimed them under ($3 slots, $4
        // epochs); the rows themselves are found by primary key ($2 seqs).
        let fenced = per_slot(
            "coalesce(l.owner = $1, false) AND EXISTS (SELECT 1 FROM UNNEST($3::int[], $4::bigint[]) AS g(slot, epoch) \
             WHERE g.slot = l.slot AND g.epoch = l.epoch)",
        );
        PgSql {
            // Sequence order within the caller's live leases; a key with a
            // row backing off, or quarantined, is held back whole. The keys
            // backing off are one hashed subplan over the backoff index,
            // built once per claim: a per-row probe (NOT EXISTS an earlier
            // row of the key backing off) let the planner, misled by the
            // statistics of a just-filled table, scan every earlier row for
            // each row claimed.
            // The slot filter and each row's lease epoch are one subscript of
            // the per-slot array, not a join, so that the planner walks the
            // primary key in sequence order and stops after `limit` rows
            // instead of reading every pending row and sorting (a join with
            // the caller's leases also became a nested loop over every
            // (row, lease) pair, 15 of a claim's 17 ms for 2,000 rows).
            // Rows still in flight ($3) and quarantined keys are skipped
            // through hashed subplans (built once per claim, not probed per
            // row).
            claim: format!(
                "SELECT {EVENT_COLUMNS}, o.attempts, o.slot, {held_epoch} AS epoch \
                 FROM {outbox} o \
                 WHERE {held_epoch} >= 0 \
                   AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now()) \
                   AND o.seq NOT IN (SELECT unnest($3::bigint[])) \
                   AND (o.key IS NULL OR o.key NOT IN \
                        (SELECT b.key FROM {outbox} b \
                         WHERE b.next_attempt_at IS NOT NULL AND b.next_attempt_at > now() AND b.key IS NOT NULL)) \
                   AND (o.key IS NULL OR o.key NOT IN \
                        (SELECT d.key FROM {dlq} d WHERE d.quarantined AND d.key IS NOT NULL)) \
                 ORDER BY o.seq LIMIT $1"
            ),
            mark: format!("DELETE FROM {outbox} o WHERE o.seq = ANY($2::bigint[]) AND {fenced}"),
            mark_retain: format!(
                "WITH done AS (DELETE FROM {outbox} o WHERE o.seq = ANY($2::bigint[]) AND {fenced} \
                   RETURNING o.*) \
                 INSERT INTO {published} ({EVENT_COLUMNS}) SELECT {EVENT_COLUMNS} FROM done \
                 ON CONFLICT (seq) DO NOTHING"
            ),
            // Batched so a large purge never holds long locks.
            purge_published: format!(
                "DELETE FROM {published} WHERE seq = ANY(ARRAY(SELECT seq FROM {published} \
                 WHERE published_at < now() - make_interval(secs => $1) LIMIT $2))"
            ),
            slot_lag: format!(
                "SELECT slot, count(*), extract(epoch FROM now() - min(created_at))::float8 \
                 FROM {outbox} GROUP BY slot ORDER BY slot"
            ),
            retry_later: format!(
                "UPDATE {outbox} AS o SET attempts = o.attempts + 1, last_error = f.error, \
                 next_attempt_at = now() + make_interval(secs => f.delay) \
                 FROM UNNEST($2::bigint[], $5::text[], $6::float8[]) AS f(seq, error, delay) \
                 WHERE o.seq = f.seq AND {fenced}"
            ),
            dead_letter: format!(
                "WITH moved AS (DELETE FROM {outbox} o USING UNNEST($2::bigint[], $5::text[]) AS f(seq, error) \
                   WHERE o.seq = f.seq AND {fenced} RETURNING o.*, f.error AS failure) \
                 INSERT INTO {dlq} ({EVENT_COLUMNS}, attempts, error, quarantined) \
                 SELECT m.seq, m.id, m.topic, m.key, m.event_type, m.source, m.content_type, m.payload, m.headers, \
                        m.traceparent, m.tracestate, m.occurred_at, m.created_at, m.attempts + 1, m.failure, \
                        $6 AND m.key IS NOT NULL \
                 FROM moved m"
            ),
            stats: format!(
                "SELECT (SELECT count(*) FROM {outbox}), \
                        (SELECT coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) FROM {outbox}), \
                        (SELECT count(*) FROM {dlq}), \
                        (SELECT count(DISTINCT key) FROM {dlq} WHERE quarantined)"
            ),
            heartbeat_relay: format!(
                "INSERT INTO {relays} (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()"
            ),
            renew_leases: format!(
                "UPDATE {leases} SET expires_at = now() + make_interval(secs => $2) WHERE owner = $1"
            ),
            live_relays: format!(
                "SELECT id FROM {relays} WHERE heartbeat_at > now() - make_interval(secs => $1) ORDER BY id"
            ),
            all_slots: format!("SELECT slot FROM {leases} ORDER BY slot"),
            release: format!(
                "UPDATE {leases} SET owner = NULL, expires_at = '-infinity' \
                 WHERE owner = $1 AND NOT (slot = ANY($2::int[])) RETURNING slot"
            ),
            acquire: format!(
                "WITH free AS (SELECT slot, owner FROM {leases} \
                     WHERE slot = ANY($2::int[]) AND owner IS DISTINCT FROM $1 \
                       AND (owner IS NULL OR expires_at <= now()) FOR UPDATE) \
                 UPDATE {leases} l SET owner = $1, epoch = l.epoch + 1, acquired_at = now(), \
                     expires_at = now() + make_interval(secs => $3) \
                 FROM free WHERE l.slot = free.slot RETURNING l.slot, free.owner IS NOT NULL"
            ),
            owned: format!("SELECT slot FROM {leases} WHERE owner = $1 AND expires_at > now() ORDER BY slot"),
            leave_leases: format!("UPDATE {leases} SET owner = NULL, expires_at = '-infinity' WHERE owner = $1"),
            leave_relay: format!("DELETE FROM {relays} WHERE id = $1"),
            forget_dead_relays: format!("DELETE FROM {relays} WHERE heartbeat_at < now() - interval '1 day'"),
        }
    }
}

/// A claimed row: [`EVENT_COLUMNS`], then `attempts, slot, epoch`.
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
    created_at: DateTime<Utc>,
    attempts: i32,
    slot: i32,
    epoch: i64,
}

/// Decoded by position: the claim selects its columns in this order, and
/// looking each one up by name (a hash per column per row) was the larger
/// part of the relay's row decoding.
impl<'r> FromRow<'r, PgRow> for EventRow {
    fn from_row(row: &'r PgRow) -> sqlx::Result<Self> {
        Ok(EventRow {
            seq: row.try_get(0)?,
            id: row.try_get(1)?,
            topic: row.try_get(2)?,
            key: row.try_get(3)?,
            event_type: row.try_get(4)?,
            source: row.try_get(5)?,
            content_type: row.try_get(6)?,
            payload: row.try_get(7)?,
            headers: row.try_get(8)?,
            traceparent: row.try_get(9)?,
            tracestate: row.try_get(10)?,
            occurred_at: row.try_get(11)?,
            created_at: row.try_get(12)?,
            attempts: row.try_get(13)?,
            slot: row.try_get(14)?,
            epoch: row.try_get(15)?,
        })
    }
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
            created_at: r.created_at,
            attempts: r.attempts,
            slot: r.slot,
            epoch: r.epoch,
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
    /// The pool's sessions already carry [`QUEUE_SESSION_SETTINGS`].
    pinned: bool,
}

impl PgStore {
    /// A store over `pool` for the tables named in `config`.
    pub fn new(pool: PgPool, config: &OutboxConfig) -> Self {
        PgStore { pool, sql: Arc::new(PgSql::new(config)), pinned: false }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Declares that every session of the pool was opened with
    /// [`queue_session_options`]: the queue's statements then run as single
    /// statements (one round trip) instead of in a transaction that sets
    /// the planner settings first (four).
    pub fn with_queue_sessions(mut self) -> Self {
        self.pinned = true;
        self
    }

    /// A session for the queue's statements, with index paths only.
    ///
    /// They must walk the primary key: claims in sequence order, settles by
    /// sequence number. A plan chosen or cached while the outbox was nearly
    /// empty (a sequential scan, a sort) costs hundreds of milliseconds to
    /// seconds per statement once a burst arrives, until autovacuum analyzes
    /// the table; seen here draining at 4,000 instead of 50,000 events/s.
    /// JIT stays off too: the penalties would otherwise switch it on.
    async fn queue_session(&self) -> Result<QueueSession> {
        if self.pinned {
            return Ok(QueueSession::Pinned(self.pool.acquire().await?));
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true), \
             set_config('enable_sort', 'off', true), set_config('jit', 'off', true)",
        )
        .execute(&mut *tx)
        .await?;
        Ok(QueueSession::Tx(tx))
    }
}

/// Planner settings under which the queue's statements can only take the
/// plans they are written for (see [`PgStore::with_queue_sessions`]).
pub const QUEUE_SESSION_SETTINGS: [(&str, &str); 4] =
    [("enable_seqscan", "off"), ("enable_bitmapscan", "off"), ("enable_sort", "off"), ("jit", "off")];

/// Connection options for a pool dedicated to a relay: every session starts
/// with [`QUEUE_SESSION_SETTINGS`] (sent at connection start-up, no extra
/// round trip). Use the pool with [`PgStore::with_queue_sessions`], and not
/// for the application's own queries.
///
/// ```
/// let options: sqlx::postgres::PgConnectOptions = "postgres://localhost/app".parse().unwrap();
/// let options = outbox_core::queue_session_options(options);
/// ```
pub fn queue_session_options(options: PgConnectOptions) -> PgConnectOptions {
    options.options(QUEUE_SESSION_SETTINGS)
}

/// Where a queue statement runs: a session already set up, or a
/// transaction that sets the planner settings first.
enum QueueSession {
    Pinned(PoolConnection<Postgres>),
    Tx(Transaction<'static, Postgres>),
}

impl QueueSession {
    fn conn(&mut self) -> &mut PgConnection {
        match self {
            QueueSession::Pinned(c) => c,
            QueueSession::Tx(tx) => tx,
        }
    }

    async fn finish(self) -> Result<()> {
        if let QueueSession::Tx(tx) = self {
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Row seqs, and the distinct (slot, epoch) leases they were claimed under.
fn fences<'a>(items: impl Iterator<Item = &'a Fence>) -> (Vec<i64>, Vec<i32>, Vec<i64>) {
    let mut seqs = Vec::new();
    let mut leases = std::collections::BTreeSet::new();
    for f in items {
        seqs.push(f.seq);
        leases.insert((f.slot, f.epoch));
    }
    let (slots, epochs) = leases.into_iter().unzip();
    (seqs, slots, epochs)
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn claim(&self, owner: RelayId, limit: usize, in_flight: &[i64]) -> Result<Vec<OutboxEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = self.queue_session().await?;
        let mut rows: Vec<EventRow> =
            sqlx::query_as(&self.sql.claim).bind(limit).bind(owner).bind(in_flight).fetch_all(tx.conn()).await?;
        tx.finish().await?;
        rows.sort_unstable_by_key(|r| r.seq);
        Ok(rows.into_iter().map(OutboxEvent::from).collect())
    }

    async fn mark_published(&self, owner: RelayId, done: &[Fence], retain: bool) -> Result<u64> {
        if done.is_empty() {
            return Ok(0);
        }
        let (seqs, slots, epochs) = fences(done.iter());
        let sql = if retain { &self.sql.mark_retain } else { &self.sql.mark };
        let mut tx = self.queue_session().await?;
        let done = sqlx::query(sql).bind(owner).bind(seqs).bind(slots).bind(epochs).execute(tx.conn()).await?;
        tx.finish().await?;
        Ok(done.rows_affected())
    }

    async fn retry_later(&self, owner: RelayId, failures: &[RetryLater]) -> Result<u64> {
        if failures.is_empty() {
            return Ok(0);
        }
        let (seqs, slots, epochs) = fences(failures.iter().map(|f| &f.fence));
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        let delays: Vec<f64> = failures.iter().map(|f| f.retry_after.as_secs_f64()).collect();
        let mut tx = self.queue_session().await?;
        let done = sqlx::query(&self.sql.retry_later)
            .bind(owner)
            .bind(seqs)
            .bind(slots)
            .bind(epochs)
            .bind(errors)
            .bind(delays)
            .execute(tx.conn())
            .await?;
        tx.finish().await?;
        Ok(done.rows_affected())
    }

    async fn dead_letter(&self, owner: RelayId, rows: &[DeadLetter], quarantine: bool) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let (seqs, slots, epochs) = fences(rows.iter().map(|r| &r.fence));
        let errors: Vec<&str> = rows.iter().map(|r| r.error.as_str()).collect();
        let mut tx = self.queue_session().await?;
        let done = sqlx::query(&self.sql.dead_letter)
            .bind(owner)
            .bind(seqs)
            .bind(slots)
            .bind(epochs)
            .bind(errors)
            .bind(quarantine)
            .execute(tx.conn())
            .await?;
        tx.finish().await?;
        Ok(done.rows_affected())
    }

    async fn heartbeat(&self, owner: RelayId, name: &str, lease: Duration) -> Result<()> {
        sqlx::query(&self.sql.heartbeat_relay).bind(owner).bind(name).execute(&self.pool).await?;
        sqlx::query(&self.sql.renew_leases).bind(owner).bind(lease.as_secs_f64()).execute(&self.pool).await?;
        Ok(())
    }

    async fn rebalance(&self, owner: RelayId, lease: Duration) -> Result<Rebalance> {
        let live: Vec<RelayId> =
            sqlx::query_scalar(&self.sql.live_relays).bind(lease.as_secs_f64()).fetch_all(&self.pool).await?;
        let slots: Vec<i32> = sqlx::query_scalar(&self.sql.all_slots).fetch_all(&self.pool).await?;
        let desired = crate::lease::assigned_slots(&slots, &live, owner);
        let released: Vec<i32> =
            sqlx::query_scalar(&self.sql.release).bind(owner).bind(&desired).fetch_all(&self.pool).await?;
        let acquired: Vec<(i32, bool)> = sqlx::query_as(&self.sql.acquire)
            .bind(owner)
            .bind(&desired)
            .bind(lease.as_secs_f64())
            .fetch_all(&self.pool)
            .await?;
        let _ = sqlx::query(&self.sql.forget_dead_relays).execute(&self.pool).await;
        let owned: Vec<i32> = sqlx::query_scalar(&self.sql.owned).bind(owner).fetch_all(&self.pool).await?;
        Ok(Rebalance {
            live_relays: live.len(),
            owned,
            taken_over: acquired.iter().filter(|(_, t)| *t).map(|(s, _)| *s).collect(),
            acquired: acquired.into_iter().map(|(s, _)| s).collect(),
            released,
        })
    }

    async fn leave(&self, owner: RelayId) -> Result<()> {
        sqlx::query(&self.sql.leave_leases).bind(owner).execute(&self.pool).await?;
        sqlx::query(&self.sql.leave_relay).bind(owner).execute(&self.pool).await?;
        Ok(())
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let (pending, age, dead_letters, quarantined_keys): (i64, f64, i64, i64) =
            sqlx::query_as(&self.sql.stats).fetch_one(&self.pool).await?;
        let per_slot: Vec<(i32, i64, f64)> = sqlx::query_as(&self.sql.slot_lag).fetch_all(&self.pool).await?;
        Ok(OutboxStats {
            pending,
            oldest_pending_age: Duration::from_secs_f64(age.max(0.0)),
            dead_letters,
            quarantined_keys,
            per_slot: per_slot
                .into_iter()
                .map(|(slot, pending, age)| SlotLag {
                    slot,
                    pending,
                    oldest_pending_age: Duration::from_secs_f64(age.max(0.0)),
                })
                .collect(),
        })
    }

    async fn purge_published(&self, older_than: Duration, limit: i64) -> Result<u64> {
        let done = sqlx::query(&self.sql.purge_published)
            .bind(older_than.as_secs_f64())
            .bind(limit)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Wakes `waker` whenever a writer with [`OutboxConfig::with_notify`]
/// commits new events, until `shutdown`. Reconnects after errors; polling
/// stays the fallback, so a lost notification only costs one poll interval.
pub fn listen_for_wakeups(
    pool: PgPool,
    config: &OutboxConfig,
    waker: Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let channel = config.wakeup_channel();
    async move { listen_loop(pool, channel, waker, shutdown).await }
}

async fn listen_loop(
    pool: PgPool,
    channel: String,
    waker: Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let listener = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            tracing::info!(%channel, "listening for wake-ups");
            loop {
                listener.recv().await?;
                waker.notify_one();
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            r = listener => if let Err(e) = r {
                tracing::warn!(error = %e, "wake-up listener failed; polling meanwhile");
                tokio::time::sleep(Duration::from_secs(1)).await;
            },
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EVENT_COLUMNS;

    /// `EventRow` is decoded by position: the columns must stay in its order.
    #[test]
    fn event_columns_are_in_the_order_event_row_decodes() {
        let columns: Vec<&str> = EVENT_COLUMNS.split(',').map(str::trim).collect();
        let decoded = [
            "seq",
            "id",
            "topic",
            "key",
            "event_type",
            "source",
            "content_type",
            "payload",
            "headers",
            "traceparent",
            "tracestate",
            "occurred_at",
            "created_at",
        ];
        assert_eq!(columns, decoded);
    }
}
