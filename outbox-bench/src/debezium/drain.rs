//! S2 for Debezium: a backlog committed while the connector is stopped,
//! timed from the worker's start until every event is in the topic.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{drop_slot, table, Tuning, Variant, Worker};
use crate::drain::Drain;
use crate::env::{key, payload, Env, TopicRecords};

/// Inserts events `from..to` into Debezium's table in one transaction, 1,000
/// rows per statement: the same payloads and keys as the relay's backlog.
async fn backlog(
    env: &Env,
    schema: &str,
    topic: &str,
    from: usize,
    to: usize,
    keys: usize,
    variant: Variant,
) -> anyhow::Result<()> {
    let mut tx = env.pool.begin().await?;
    let insert = format!(
        "INSERT INTO {schema}.outbox (id, aggregatetype, aggregateid, type, payload) \
         SELECT unnest($1::uuid[]), $2, unnest($3::text[]), 'bench.event', unnest($4::jsonb[])"
    );
    let mut i = from;
    while i < to {
        let end = (i + 1000).min(to);
        let ids: Vec<uuid::Uuid> = (i..end).map(|_| uuid::Uuid::now_v7()).collect();
        let keys_: Vec<String> = (i..end).map(|j| key(j, keys)).collect();
        let payloads: Vec<serde_json::Value> = (i..end).map(payload).collect();
        sqlx::query(&insert).bind(&ids).bind(topic).bind(&keys_).bind(&payloads).execute(&mut *tx).await?;
        if variant == Variant::InsertDelete {
            sqlx::query(&format!("DELETE FROM {schema}.outbox WHERE id = ANY($1)"))
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
        }
        i = end;
    }
    tx.commit().await?;
    Ok(())
}

async fn wait_records(records: &TopicRecords, topic: &str, n: i64, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while records.count()? < n {
        anyhow::ensure!(start.elapsed() < limit, "{topic}: fewer than {n} records within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// S2 for Debezium: the connector is started and warmed (its slot exists,
/// one event per key routed), stopped; the backlog commits while it is
/// stopped; the clock runs from the worker's start until every event is in
/// the topic. Also returns the seconds from start until the task ran.
pub async fn drain(
    env: &Env,
    home: &Path,
    n: usize,
    keys: usize,
    variant: Variant,
    tuning: Tuning,
) -> anyhow::Result<(Drain, f64)> {
    let tag = match variant {
        Variant::Keep => "keep",
        Variant::InsertDelete => "delete",
    };
    let name = format!("bench_dbz_{tag}");
    let schema = name.clone();
    drop_slot(env, &name).await?;
    table(env, &schema).await?;
    let topic = env.topic(&format!("dbz-{tag}"), 6).await?;
    let dir = std::env::temp_dir().join(format!("outbox-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = async {
        let records = TopicRecords::new(&env.brokers, &topic)?;
        let mut worker = Worker::start(env, home, &dir, &name, &schema, tuning)?;
        worker.running(Duration::from_secs(120)).await?;
        backlog(env, &schema, &topic, 0, keys, keys, variant).await?;
        wait_records(&records, &topic, keys as i64, Duration::from_secs(120)).await?;
        worker.stop()?;
        backlog(env, &schema, &topic, keys, keys + n, keys, variant).await?;
        let start = Instant::now();
        let mut worker = Worker::start(env, home, &dir, &name, &schema, tuning)?;
        worker.running(Duration::from_secs(120)).await?;
        let started = start.elapsed().as_secs_f64();
        let total = (keys + n) as i64;
        let mut peak_rss_mb: f64 = 0.0;
        while records.count()? < total {
            peak_rss_mb = peak_rss_mb.max(worker.peak_rss_mb());
            anyhow::ensure!(start.elapsed() < Duration::from_secs(900), "Debezium did not drain in 15 minutes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        peak_rss_mb = peak_rss_mb.max(worker.peak_rss_mb());
        let cpu = worker.cpu_seconds();
        worker.stop()?;
        let check = crate::drain::topic_check(env, &topic, n + keys, "id")?;
        let drain = Drain {
            events: n,
            relays: 1,
            eps: n as f64 / elapsed,
            peak_rss_mb,
            cpu_cores: cpu / elapsed,
            check: Some(check),
        };
        anyhow::Ok((drain, started))
    }
    .await;
    drop_slot(env, &name).await?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
