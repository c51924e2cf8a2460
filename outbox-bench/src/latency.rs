//! S3: end-to-end latency at a steady rate: commit → consumer receipt,
//! measured per event (writer and consumer share this process's clock).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_core::Message;
use rdkafka::message::{Headers, Message as _};

use crate::env::{key, payload, percentile, Env, RelayProcess};

/// Result of S3 at one rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    #[serde(skip)]
    pub sorted_ms: Vec<f64>,
    pub rate: f64,
    pub events: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub async fn steady(env: &Env, rate: f64, duration: Duration) -> anyhow::Result<Latency> {
    let (config, outbox) = env.outbox("latency").await?;
    let topic = env.topic("latency", 6).await?;
    let _relay = RelayProcess::start(env, &config, &[])?;
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let received: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let reader = {
        let (brokers, topic, received) = (env.brokers.clone(), topic.clone(), received.clone());
        std::thread::spawn(move || read(&brokers, &topic, &received, duration + Duration::from_secs(10)))
    };
    tokio::time::sleep(Duration::from_secs(2)).await; // relay joined, reader assigned
    let start = Instant::now();
    let mut sent = 0usize;
    let mut writers = tokio::task::JoinSet::new();
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate) as usize;
        while sent < due {
            let (pool, outbox, committed, topic) = (env.pool.clone(), outbox.clone(), committed.clone(), topic.clone());
            let i = sent;
            writers.spawn(async move {
                let m = Message::json(&topic, "bench.event", &payload(i))?.with_key(key(i, 10_000));
                let mut tx = pool.begin().await?;
                outbox.enqueue(&mut *tx, &m).await?;
                tx.commit().await?;
                committed.lock().unwrap_or_else(|e| e.into_inner()).insert(m.id().to_string(), Instant::now());
                Ok::<_, anyhow::Error>(())
            });
            sent += 1;
        }
        while writers.len() > 64 {
            writers.join_next().await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while let Some(r) = writers.join_next().await {
        r??;
    }
    reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let committed = committed.lock().unwrap_or_else(|e| e.into_inner());
    let received = received.lock().unwrap_or_else(|e| e.into_inner());
    let mut ms: Vec<f64> = committed
        .iter()
        .filter_map(|(id, c)| received.get(id).map(|r| r.saturating_duration_since(*c).as_secs_f64() * 1000.0))
        .collect();
    anyhow::ensure!(ms.len() == committed.len(), "{} of {} events received", ms.len(), committed.len());
    ms.sort_by(f64::total_cmp);
    Ok(Latency {
        rate,
        events: ms.len(),
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        max_ms: ms.last().copied().unwrap_or_default(),
        sorted_ms: ms,
    })
}

fn read(brokers: &str, topic: &str, received: &Mutex<HashMap<String, Instant>>, until: Duration) -> anyhow::Result<()> {
    let consumer = crate::env::reader(brokers, topic, &[("fetch.wait.max.ms", "5")])?;
    let start = Instant::now();
    while start.elapsed() < until {
        if let Some(m) = consumer.poll(Duration::from_millis(50)) {
            let m = m?;
            let now = Instant::now();
            if let Some(id) = m.headers().and_then(|h| h.iter().find(|h| h.key == "ce_id").and_then(|h| h.value)) {
                received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(String::from_utf8_lossy(id).into_owned())
                    .or_insert(now);
            }
        }
    }
    Ok(())
}
