//! S1: what an outbox row costs the writer. The same business transaction
//! (insert one order row) with and without one enqueued event, 16
//! concurrent writers, alternated so every variant sees the same machine.
//! The references: C, the control, a second plain row shaped like an
//! outbox row (same columns, values and indexes: what any such row costs);
//! and the peer, a row in Debezium's outbox table, kept or deleted in the
//! same transaction.

use std::time::{Duration, Instant};

use outbox_core::{Message, Outbox};

use crate::debezium::{self, Variant};
use crate::env::{key, payload, percentile, Env};

/// Throughput and latency of one variant.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct WriteRun {
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Result of S1.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct WritePath {
    pub plain: WriteRun,
    pub with_outbox: WriteRun,
    pub overhead_pct: f64,
    pub p50_added_ms: f64,
    pub p99_added_ms: f64,
    /// C, the control: the same transaction with a second plain row shaped
    /// like an outbox row (same columns and indexes) instead of an event.
    pub control: WriteRun,
    pub control_pct: f64,
    /// The outbox's throughput loss ÷ the control's.
    pub vs_control: f64,
    /// Debezium's outbox table: the row kept, and inserted + deleted.
    pub debezium_keep: WriteRun,
    pub debezium_keep_pct: f64,
    pub debezium_delete: WriteRun,
    pub debezium_delete_pct: f64,
    /// With one event and a wake-up (`OutboxConfig::with_notify`).
    pub with_notify: WriteRun,
    pub notify_pct: f64,
}

/// What a writer's transaction holds besides its order row.
#[derive(Clone, Copy)]
enum Extra {
    Nothing,
    Event,
    EventNotify,
    Control,
    Debezium(Variant),
}

pub async fn run(env: &Env, duration: Duration) -> anyhow::Result<WritePath> {
    let (config, outbox) = env.outbox("write").await?;
    let notifying = Outbox::new(config.with_notify(true));
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_write.orders; \
         CREATE TABLE bench_write.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         customer text NOT NULL, amount bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&env.pool)
    .await?;
    // The outbox's own columns, defaults, identity and indexes; `slot` is
    // a plain column here (written as 0), not a generated one.
    sqlx::raw_sql(
        "CREATE TABLE bench_write.control (LIKE bench_write.outbox \
         INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS INCLUDING INDEXES)",
    )
    .execute(&env.pool)
    .await?;
    debezium::create_table(env, "bench_write.debezium_outbox").await?;
    // Alternate: plain, outbox, plain, outbox; keep the better of each pair.
    let mut plain: Vec<WriteRun> = Vec::new();
    let mut with: Vec<WriteRun> = Vec::new();
    let mut control: Vec<WriteRun> = Vec::new();
    let mut notify: Vec<WriteRun> = Vec::new();
    let (mut keep, mut delete) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        plain.push(variant(env, &outbox, Extra::Nothing, duration / 2).await?);
        with.push(variant(env, &outbox, Extra::Event, duration / 2).await?);
        control.push(variant(env, &outbox, Extra::Control, duration / 2).await?);
        notify.push(variant(env, &notifying, Extra::EventNotify, duration / 2).await?);
        keep.push(variant(env, &outbox, Extra::Debezium(Variant::Keep), duration / 2).await?);
        delete.push(variant(env, &outbox, Extra::Debezium(Variant::InsertDelete), duration / 2).await?);
    }
    let best = |runs: &[WriteRun]| runs.iter().copied().max_by(|a, b| a.tps.total_cmp(&b.tps)).unwrap_or(runs[0]);
    let (plain, with_outbox, control, with_notify) = (best(&plain), best(&with), best(&control), best(&notify));
    let (debezium_keep, debezium_delete) = (best(&keep), best(&delete));
    let loss = |run: WriteRun| (plain.tps - run.tps) / plain.tps * 100.0;
    Ok(WritePath {
        plain,
        with_outbox,
        overhead_pct: loss(with_outbox),
        p50_added_ms: with_outbox.p50_ms - plain.p50_ms,
        p99_added_ms: with_outbox.p99_ms - plain.p99_ms,
        control,
        control_pct: loss(control),
        vs_control: loss(with_outbox) / loss(control),
        with_notify,
        notify_pct: loss(with_notify),
        debezium_keep,
        debezium_keep_pct: loss(debezium_keep),
        debezium_delete,
        debezium_delete_pct: loss(debezium_delete),
    })
}

async fn variant(env: &Env, outbox: &Outbox, extra: Extra, duration: Duration) -> anyhow::Result<WriteRun> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let pool = env.pool.clone();
        let outbox = outbox.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = w * 1_000_000;
            while start.elapsed() < duration {
                let t = Instant::now();
                let mut tx = pool.begin().await?;
                let customer = key(i, 10_000);
                sqlx::query("INSERT INTO bench_write.orders (customer, amount) VALUES ($1, $2)")
                    .bind(&customer)
                    .bind(1299_i64)
                    .execute(&mut *tx)
                    .await?;
                match extra {
                    Extra::Nothing => {}
                    Extra::Event | Extra::EventNotify => {
                        let m = Message::json("orders", "order.placed", &payload(i))?.with_key(customer);
                        outbox.enqueue(&mut *tx, &m).await?;
                    }
                    Extra::Control => {
                        let m = Message::json("orders", "order.placed", &payload(i))?.with_key(customer);
                        control_row(&mut tx, &m).await?;
                    }
                    Extra::Debezium(variant) => {
                        let id = uuid::Uuid::now_v7();
                        debezium::insert_one(
                            &mut tx,
                            "bench_write.debezium_outbox",
                            id,
                            "orders",
                            &customer,
                            &payload(i),
                            variant,
                        )
                        .await?;
                    }
                }
                tx.commit().await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                i += 1;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(WriteRun { tps: all.len() as f64 / elapsed, p50_ms: percentile(&all, 50.0), p99_ms: percentile(&all, 99.0) })
}

/// The control row: the values `Outbox::enqueue` writes, in a plain table
/// with the outbox's columns and indexes.
async fn control_row(tx: &mut sqlx::PgConnection, m: &Message) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO bench_write.control (id, topic, key, event_type, source, content_type, payload, headers, \
         traceparent, tracestate, occurred_at, slot) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0)",
    )
    .bind(m.id())
    .bind(m.topic())
    .bind(m.key())
    .bind(m.event_type())
    .bind("/bench")
    .bind(m.content_type())
    .bind(m.payload())
    .bind(sqlx::types::Json(m.headers()))
    .bind(m.traceparent())
    .bind(None::<&str>)
    .bind(chrono::Utc::now())
    .execute(tx)
    .await?;
    Ok(())
}
