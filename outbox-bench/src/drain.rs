//! S2, S4, S6, S7: draining a backlog. One relay, two relays (with per-key
//! order verified), the relay's footprint, and the hand-written baseline
//! users start from (poll one, send one, await, delete one).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message as _};
use rdkafka::producer::FutureRecord;

use crate::env::{backlog, Env, RelayProcess};

/// Result of draining a backlog with relays.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Drain {
    pub events: usize,
    pub relays: usize,
    pub eps: f64,
    pub peak_rss_mb: f64,
    pub cpu_cores: f64,
    pub order_violations: Option<usize>,
}

/// Drains `n` events over `keys` keys with `relays` relay processes: the
/// relays are started and warmed first, then the whole backlog commits at
/// once and the clock runs from that commit until the outbox is empty.
pub async fn relays(env: &Env, n: usize, keys: usize, relays: usize, verify: bool) -> anyhow::Result<Drain> {
    let (config, outbox) = env.outbox(&format!("drain{relays}")).await?;
    let topic = env.topic("drain", 6).await?;
    let procs = env.warm_relays(&config, &outbox, &topic, relays, &["--batch-size", "2000"], keys).await?;
    let cpu_before: f64 = procs.iter().map(RelayProcess::cpu_seconds).sum();
    // Commit the backlog in one transaction: the relays see all of it at once.
    backlog(env, &outbox, &topic, keys, keys + n, keys).await?;
    let start = Instant::now();
    let mut peak_rss_mb: f64 = 0.0;
    loop {
        for p in &procs {
            peak_rss_mb = peak_rss_mb.max(p.peak_rss_mb());
        }
        if !env.pending(&config).await? {
            break;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(600), "backlog not drained in 10 minutes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu: f64 = procs.iter().map(RelayProcess::cpu_seconds).sum::<f64>() - cpu_before;
    drop(procs);
    let order_violations = if verify { Some(order_violations(env, &topic, n + keys, "ce_id")?) } else { None };
    Ok(Drain { events: n, relays, eps: n as f64 / elapsed, peak_rss_mb, cpu_cores: cpu / elapsed, order_violations })
}

/// Reads the topic back and counts, per key, first occurrences out of
/// order (the payload's `order_id` grows with commit order per key); an
/// event is known by its `id_header` (`ce_id` for the relay).
pub fn order_violations(env: &Env, topic: &str, n: usize, id_header: &str) -> anyhow::Result<usize> {
    let consumer = crate::env::reader(&env.brokers, topic, &[])?;
    let mut seen = std::collections::HashSet::new();
    let mut last: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut violations = 0;
    let mut idle = Instant::now();
    while seen.len() < n && idle.elapsed() < Duration::from_secs(10) {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = message?;
        idle = Instant::now();
        let id = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == id_header).and_then(|h| h.value.map(<[u8]>::to_vec)));
        if !seen.insert(id) {
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
        let order = value["order_id"].as_u64().unwrap_or_default();
        let key = message.key().unwrap_or_default().to_vec();
        if let Some(prev) = last.insert(key, order) {
            if order < prev {
                violations += 1;
            }
        }
    }
    anyhow::ensure!(seen.len() >= n, "read back {} of {n} events", seen.len());
    Ok(violations)
}

/// S7: poll the oldest row, send it, await the confirmation, delete it.
pub async fn naive(env: &Env, n: usize, keys: usize) -> anyhow::Result<f64> {
    let (config, outbox) = env.outbox("naive").await?;
    let topic = env.topic("naive", 6).await?;
    backlog(env, &outbox, &topic, 0, n, keys).await?;
    let producer = env.warm_producer(&topic, &[]).await?;
    let table = format!("{}.outbox", config.schema());
    let start = Instant::now();
    loop {
        let row: Option<(i64, String, Option<String>, Vec<u8>)> =
            sqlx::query_as(&format!("SELECT seq, topic, key, payload FROM {table} ORDER BY seq LIMIT 1"))
                .fetch_optional(&env.pool)
                .await?;
        let Some((seq, topic, key, payload)) = row else { break };
        let mut record = FutureRecord::to(&topic).payload(&payload);
        if let Some(k) = &key {
            record = record.key(k);
        }
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e)?;
        sqlx::query(&format!("DELETE FROM {table} WHERE seq = $1")).bind(seq).execute(&env.pool).await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
