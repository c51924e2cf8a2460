//! S3 for Debezium: one event per transaction at a steady rate into its
//! outbox table, timed per event from commit to the broker's append and to
//! a consumer's receipt, as the relay is in `crate::latency`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{drop_slot, insert_one, table, Tuning, Variant, Worker};
use crate::env::{key, payload, proc_cpu_seconds, Env};
use crate::latency::{append_spread, paced, spawn_reader, Appended, Clock, Spread};

/// Result of S3 for Debezium at one rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerLatency {
    pub rate: f64,
    pub events: usize,
    /// Commit → the broker's append (`LogAppendTime`).
    pub appended: Spread,
    /// Commit → receipt by a consumer.
    pub receipt: Spread,
    /// The Connect worker's CPU while the rate was held, in cores.
    pub cpu_cores: f64,
}

/// How long the connector runs at the rate before the measured events: the
/// JVM compiles its hot paths in that time (Debezium at its best).
const WARM_UP: Duration = Duration::from_secs(5);

pub async fn steady(
    env: &Env,
    home: &Path,
    rate: f64,
    duration: Duration,
    variant: Variant,
    tuning: Tuning,
) -> anyhow::Result<PeerLatency> {
    let name = "bench_dbz_latency";
    drop_slot(env, name).await?;
    table(env, name).await?;
    let outbox = format!("{name}.outbox");
    let topic = env.topic_with("dbz-latency", 6, &[("message.timestamp.type", "LogAppendTime")]).await?;
    let dir = std::env::temp_dir().join(format!("outbox-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = async {
        let mut worker = Worker::start(env, home, &dir, name, name, tuning)?;
        worker.running(Duration::from_secs(120)).await?;
        let (committed, warm, received): (Clock, Clock, Clock) = Default::default();
        let appended: Appended = Arc::default();
        let until = WARM_UP + duration + Duration::from_secs(20);
        let reader = spawn_reader(env, &topic, "id", &received, Some(&appended), until);
        tokio::time::sleep(Duration::from_secs(2)).await; // reader assigned
        let write = |i: usize| {
            let (pool, outbox, topic) = (env.pool.clone(), outbox.clone(), topic.clone());
            async move {
                let id = uuid::Uuid::now_v7();
                let mut tx = pool.begin().await?;
                insert_one(&mut tx, &outbox, id, &topic, &key(i, 10_000), &payload(i), variant).await?;
                tx.commit().await?;
                Ok(id.to_string())
            }
        };
        paced(rate, WARM_UP, &warm, write).await?;
        let cpu_before = proc_cpu_seconds(worker.pid());
        let anchor = (Instant::now(), SystemTime::now());
        paced(rate, duration, &committed, write).await?;
        let cpu_cores = (proc_cpu_seconds(worker.pid()) - cpu_before) / anchor.0.elapsed().as_secs_f64();
        let expected = committed.lock().unwrap_or_else(|e| e.into_inner()).len()
            + warm.lock().unwrap_or_else(|e| e.into_inner()).len();
        reader.finish(expected)?;
        worker.stop()?;
        let committed = committed.lock().unwrap_or_else(|e| e.into_inner());
        let received = received.lock().unwrap_or_else(|e| e.into_inner());
        let appended = appended.lock().unwrap_or_else(|e| e.into_inner());
        anyhow::Ok(PeerLatency {
            rate,
            events: committed.len(),
            appended: append_spread(&committed, &appended, anchor)?,
            receipt: Spread::of("commit → consumer receipt (Debezium)", &committed, &received)?,
            cpu_cores,
        })
    }
    .await;
    drop_slot(env, name).await?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
