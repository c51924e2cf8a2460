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
    /// The topic read back (S2, S4 and Debezium's D2).
    pub check: Option<TopicCheck>,
}

/// What a topic holds after a drain of `expected` distinct events.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TopicCheck {
    pub expected: usize,
    pub records: usize,
    /// Expected events with no record.
    pub lost: usize,
    /// Records beyond the first of their event.
    pub duplicates: usize,
    /// Per key, first occurrences out of commit order.
    pub order_violations: usize,
}

impl std::fmt::Display for TopicCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records read back: lost {}, duplicates {}, order violations {}",
            self.records, self.lost, self.duplicates, self.order_violations
        )
    }
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
    let check = if verify { Some(topic_check(env, &topic, n + keys, "ce_id")?) } else { None };
    Ok(Drain { events: n, relays, eps: n as f64 / elapsed, peak_rss_mb, cpu_cores: cpu / elapsed, check })
}

/// Reads the whole topic back (to the high watermarks it has now) and
/// checks it against `expected` distinct events: an event is known by its
/// `id_header` (`ce_id` for the relay, `id` for Debezium's router), its
/// commit order per key by the payload's `order_id`.
pub fn topic_check(env: &Env, topic: &str, expected: usize, id_header: &str) -> anyhow::Result<TopicCheck> {
    let total = usize::try_from(crate::env::TopicRecords::new(&env.brokers, topic)?.count()?)?;
    let consumer = crate::env::reader(&env.brokers, topic, &[])?;
    let mut seen = std::collections::HashSet::new();
    let mut last: HashMap<Vec<u8>, u64> = HashMap::new();
    let (mut records, mut order_violations) = (0usize, 0usize);
    let mut idle = Instant::now();
    while records < total && idle.elapsed() < Duration::from_secs(10) {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = message?;
        idle = Instant::now();
        records += 1;
        let id = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == id_header).and_then(|h| h.value.map(<[u8]>::to_vec)));
        anyhow::ensure!(id.is_some(), "{topic}: a record without the {id_header} header");
        if !seen.insert(id) {
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
        let order = value["order_id"].as_u64().unwrap_or_default();
        let key = message.key().unwrap_or_default().to_vec();
        if last.insert(key, order).is_some_and(|prev| order < prev) {
            order_violations += 1;
        }
    }
    anyhow::ensure!(records == total, "{topic}: read {records} of its {total} records");
    Ok(TopicCheck {
        expected,
        records,
        lost: expected.saturating_sub(seen.len()),
        duplicates: records - seen.len(),
        order_violations,
    })
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
