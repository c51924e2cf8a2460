//! S0: the physical references measured in the same run: K, the raw
//! idempotent producer's throughput, and P, raw PostgreSQL single-row insert
//! transactions per second at 16 connections.

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::env::{key, payload, Env};

/// K: events/s of a bare rdkafka producer (idempotent, acks=all), same
/// payloads and keys, produce everything then await every report. The
/// producer is warmed first (connection, producer id, topic metadata); the
/// median of three runs of at least 200,000 events is reported.
pub async fn raw_producer(env: &Env, n: usize, keys: usize) -> anyhow::Result<f64> {
    let n = n.max(200_000);
    let topic = env.topic("raw", 6).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    producer
        .send(FutureRecord::to(&topic).payload("warm-up").key("warm-up"), Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)?;
    let payloads: Vec<String> = (0..n).map(|i| payload(i).to_string()).collect();
    let keys: Vec<String> = (0..n).map(|i| key(i, keys)).collect();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let mut futures = Vec::with_capacity(n);
        for i in 0..n {
            let mut record = FutureRecord::to(&topic).payload(&payloads[i]).key(&keys[i]);
            loop {
                match producer.send_result(record) {
                    Ok(f) => {
                        futures.push(f);
                        break;
                    }
                    Err((_, r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
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
