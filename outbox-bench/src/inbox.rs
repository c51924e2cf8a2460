//! S5: the idempotent consumer's throughput: inbox row + handler effect in
//! one transaction per message.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_core::{CancellationToken, ConsumerConfig, Handler, HandlerError, InboxConsumer, ReceivedEvent};
use sqlx::PgConnection;

use crate::env::{backlog, Env, RelayProcess};

struct Effect;

#[async_trait]
impl Handler for Effect {
    async fn handle(&self, event: &ReceivedEvent, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO bench_inbox.effects (event_id) VALUES ($1)").bind(event.id).execute(&mut *tx).await?;
        Ok(())
    }
}

/// Messages applied per second.
pub async fn throughput(env: &Env, n: usize) -> anyhow::Result<f64> {
    let (config, outbox) = env.outbox("inbox").await?;
    sqlx::raw_sql("CREATE TABLE bench_inbox.effects (event_id uuid NOT NULL)").execute(&env.pool).await?;
    let topic = env.topic("inbox", 6).await?;
    backlog(env, &outbox, &topic, 0, n, 10_000).await?;
    {
        let _relay = RelayProcess::start(env, &config, &["--batch-size", "2000"])?;
        env.drained(&config, Duration::from_secs(600)).await?;
    }
    let consumer_config = ConsumerConfig::new(&env.brokers, format!("bench-{}", uuid::Uuid::now_v7()), &[&topic]);
    let consumer = InboxConsumer::new(env.pool.clone(), &config, consumer_config, Effect)?;
    let stats = consumer.stats();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { consumer.run(shutdown).await }
    });
    // Time from the first applied message, so group join is not counted.
    while stats.applied() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let start = Instant::now();
    let first = stats.applied();
    while stats.applied() < n as u64 {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(600), "consumer too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let eps = (n as u64 - first) as f64 / start.elapsed().as_secs_f64();
    shutdown.cancel();
    run.await??;
    Ok(eps)
}
