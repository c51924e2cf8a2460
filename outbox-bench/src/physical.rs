//! S0: the physical references measured in the same run: K, the raw
//! idempotent producer's throughput, and P, raw PostgreSQL single-row insert
//! transactions per second at 16 connections.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use outbox_core::{cloudevents_headers, OutboxEvent};

use crate::env::{key, payload, percentile, Env};

/// K's producer settings (with idempotence and `acks=all`, see
/// [`Env::warm_producer`]): as fast as a bare producer goes.
pub const K_SETTINGS: [(&str, &str); 3] =
    [("linger.ms", "5"), ("batch.num.messages", "10000"), ("queue.buffering.max.messages", "1000000")];

/// Hands one record to the producer, waiting while its queue is full.
pub async fn produce(producer: &FutureProducer, topic: &str, key: Option<&str>, payload: &[u8]) -> DeliveryFuture {
    produce_with(producer, topic, key, payload, || None).await
}

/// [`produce`], with the headers `headers` makes (once per attempt).
async fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    payload: &[u8],
    headers: impl Fn() -> Option<OwnedHeaders>,
) -> DeliveryFuture {
    loop {
        let mut record = FutureRecord::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(h) = headers() {
            record = record.headers(h);
        }
        match producer.send_result(record) {
            Ok(future) => return future,
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// K: events/s of a bare rdkafka producer (idempotent, acks=all), same
/// payloads and keys, produce everything then await every report; with
/// `headers`, each record also carries the relay's six CloudEvents headers.
/// The producer is warmed first (connection, producer id, topic metadata);
/// the median of three runs of at least 200,000 events is reported.
pub async fn raw_producer(env: &Env, n: usize, keys: usize, headers: bool) -> anyhow::Result<f64> {
    let n = n.max(200_000);
    let topic = env.topic("raw", 6).await?;
    let producer = env.warm_producer(&topic, &K_SETTINGS).await?;
    let payloads: Vec<String> = (0..n).map(|i| payload(i).to_string()).collect();
    let keys: Vec<String> = (0..n).map(|i| key(i, keys)).collect();
    // One event shaped as the relay claims it (the writers' content type, no
    // trace context); only its id changes per record.
    let now = chrono::Utc::now();
    let mut event = OutboxEvent {
        seq: 0,
        id: uuid::Uuid::nil(),
        topic: topic.clone(),
        key: None,
        event_type: "bench.event".into(),
        source: "outbox-bench".into(),
        content_type: Some("application/json".into()),
        payload: Vec::new(),
        headers: Default::default(),
        traceparent: None,
        tracestate: None,
        occurred_at: now,
        created_at: now,
        attempts: 0,
        slot: 0,
        epoch: 0,
    };
    let mut runs = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let mut futures = Vec::with_capacity(n);
        for i in 0..n {
            event.id = uuid::Uuid::from_u128(i as u128);
            let make_headers = || headers.then(|| cloudevents_headers(&event));
            futures.push(produce_with(&producer, &topic, Some(&keys[i]), payloads[i].as_bytes(), make_headers).await);
        }
        for result in futures::future::join_all(futures).await {
            result?.map_err(|(e, _)| e)?;
        }
        runs.push(n as f64 / start.elapsed().as_secs_f64());
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[1])
}

/// P: single-row INSERT transactions per second over 16 connections.
pub async fn raw_inserts(env: &Env, duration: Duration) -> anyhow::Result<f64> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_raw_inserts; \
         CREATE TABLE bench_raw_inserts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text NOT NULL)",
    )
    .execute(&env.pool)
    .await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let pool = env.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < duration {
                sqlx::query("INSERT INTO bench_raw_inserts (v) VALUES ($1)").bind("x").execute(&pool).await?;
                n += 1;
            }
            Ok::<_, sqlx::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// L: the broker's own latency floor for S3, with no database in the path.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RawLatency {
    pub rate: f64,
    /// produce() → broker confirmation.
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    /// produce() → receipt by a consumer.
    pub receipt_p50_ms: f64,
    pub receipt_p99_ms: f64,
}

/// A bare producer (same settings as the relay: idempotent, acks=all,
/// linger.ms=0) sending one event at a time at `rate`, and a consumer set up
/// as in S3.
pub async fn raw_latency(env: &Env, rate: f64, duration: Duration) -> anyhow::Result<RawLatency> {
    let topic = env.topic("rawlat", 6).await?;
    let producer = env.warm_producer(&topic, &[("linger.ms", "0")]).await?;
    let received: crate::latency::Clock = Default::default();
    let reader = crate::latency::spawn_reader(env, &topic, "ce_id", &received, None, duration + Duration::from_secs(8));
    tokio::time::sleep(Duration::from_secs(2)).await; // reader assigned
    let start = Instant::now();
    let mut sent = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate) as usize;
        while sent < due {
            let (producer, topic, i) = (producer.clone(), topic.clone(), sent);
            tasks.spawn(async move {
                let id = uuid::Uuid::now_v7().to_string();
                let body = payload(i).to_string();
                let headers = OwnedHeaders::new().insert(Header { key: "ce_id", value: Some(id.as_str()) });
                let record = FutureRecord::to(&topic).payload(&body).key("k").headers(headers);
                let t = Instant::now();
                producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e)?;
                Ok::<_, anyhow::Error>((id, t, t.elapsed().as_secs_f64() * 1000.0))
            });
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut acks = Vec::new();
    let mut sent_at = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (id, t, ms) = r??;
        acks.push(ms);
        sent_at.insert(id, t);
    }
    reader.finish(sent_at.len())?;
    let received = received.lock().unwrap_or_else(|e| e.into_inner());
    let receipts = crate::latency::Spread::of("produce → consumer receipt", &sent_at, &received)?;
    acks.sort_by(f64::total_cmp);
    Ok(RawLatency {
        rate,
        ack_p50_ms: percentile(&acks, 50.0),
        ack_p99_ms: percentile(&acks, 99.0),
        receipt_p50_ms: receipts.p50_ms,
        receipt_p99_ms: receipts.p99_ms,
    })
}
