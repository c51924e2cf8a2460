//! S1: what an outbox row costs the writer. The same business transaction
//! (insert one order row) with and without one enqueued event, 16
//! concurrent writers, alternated so both see the same machine.

use std::time::{Duration, Instant};

use outbox_core::{Message, Outbox};

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
    /// Control: the same transaction with a second order row instead of an
    /// event (what any extra statement costs on this machine).
    pub second_row: WriteRun,
    pub second_row_pct: f64,
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
    SecondRow,
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
    // Alternate: plain, outbox, plain, outbox; keep the better of each pair.
    let mut plain: Vec<WriteRun> = Vec::new();
    let mut with: Vec<WriteRun> = Vec::new();
    let mut second: Vec<WriteRun> = Vec::new();
    let mut notify: Vec<WriteRun> = Vec::new();
    for _ in 0..2 {
        plain.push(variant(env, &outbox, Extra::Nothing, duration / 2).await?);
        with.push(variant(env, &outbox, Extra::Event, duration / 2).await?);
        second.push(variant(env, &outbox, Extra::SecondRow, duration / 2).await?);
        notify.push(variant(env, &notifying, Extra::EventNotify, duration / 2).await?);
    }
    let best = |runs: &[WriteRun]| runs.iter().copied().max_by(|a, b| a.tps.total_cmp(&b.tps)).unwrap_or(runs[0]);
    let (plain, with_outbox, second_row, with_notify) = (best(&plain), best(&with), best(&second), best(&notify));
    Ok(WritePath {
        plain,
        with_outbox,
        overhead_pct: (plain.tps - with_outbox.tps) / plain.tps * 100.0,
        p50_added_ms: with_outbox.p50_ms - plain.p50_ms,
        p99_added_ms: with_outbox.p99_ms - plain.p99_ms,
        second_row,
        second_row_pct: (plain.tps - second_row.tps) / plain.tps * 100.0,
        with_notify,
        notify_pct: (plain.tps - with_notify.tps) / plain.tps * 100.0,
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
                    Extra::SecondRow => {
                        sqlx::query("INSERT INTO bench_write.orders (customer, amount) VALUES ($1, $2)")
                            .bind(&customer)
                            .bind(1299_i64)
                            .execute(&mut *tx)
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
