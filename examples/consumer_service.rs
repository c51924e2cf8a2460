//! The consume side of the demo: a billing service that applies each
//! `order.placed` event once, however often Kafka delivers it. The handler's
//! effect (a row in `billing.effects` and a running total per customer) and
//! the inbox row commit together.
//!
//! ```text
//! cargo run --example consumer_service -- --expect 180 --idle-exit 5s
//! ```

#[path = "common/cli.rs"]
mod cli;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use clap::Parser;
use outbox::{CancellationToken, ConsumerConfig, Handler, HandlerError, InboxConsumer, OutboxConfig, ReceivedEvent};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgConnection;

#[derive(Parser, Debug)]
struct Args {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Kafka brokers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Schema of the inbox tables.
    #[arg(long, env = "OUTBOX_SCHEMA", default_value = "outbox")]
    outbox_schema: String,
    /// Schema of the billing service's own tables.
    #[arg(long, default_value = "billing")]
    app_schema: String,
    /// Topic to consume.
    #[arg(long, default_value = "orders")]
    topic: String,
    /// Consumer group.
    #[arg(long, default_value = "billing")]
    group: String,
    /// Stop once this many distinct events are applied (in the database,
    /// across restarts) and nothing new arrived for --idle-exit.
    #[arg(long)]
    expect: Option<i64>,
    /// Stop after this long without a new message (once --expect is met).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_exit: Option<Duration>,
    /// Give up after this long in total.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Most messages applied in one transaction (default: the library's).
    #[arg(long)]
    batch_size: Option<usize>,
    /// librdkafka's partition.assignment.strategy (e.g. cooperative-sticky).
    #[arg(long)]
    assignment: Option<String>,
}

struct Billing {
    schema: String,
}

#[async_trait]
impl Handler for Billing {
    async fn handle(&self, event: &ReceivedEvent, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let order: serde_json::Value = event.json().map_err(HandlerError::permanent)?;
        let customer = order["customer"].as_str().unwrap_or_default();
        let amount = order["amount_cents"].as_i64().unwrap_or_default();
        let s = &self.schema;
        // No unique constraint on purpose: a double-applied event would show
        // up as two rows here.
        sqlx::query(&format!("INSERT INTO {s}.effects (event_id, customer, amount_cents) VALUES ($1, $2, $3)"))
            .bind(event.id)
            .bind(customer)
            .bind(amount)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO {s}.totals (customer, orders, amount_cents) VALUES ($1, 1, $2)
             ON CONFLICT (customer) DO UPDATE SET orders = {s}.totals.orders + 1,
             amount_cents = {s}.totals.amount_cents + EXCLUDED.amount_cents"
        ))
        .bind(customer)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = cli::parse::<Args>();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(outbox::pg_connect_options(&args.database_url)?)
        .await
        .context("connect")?;
    let config = OutboxConfig::default().with_schema(&args.outbox_schema)?;
    outbox::migrate::migrate(&pool, &config).await?;
    let s = &args.app_schema;
    // Several replicas may start at once, and CREATE ... IF NOT EXISTS is not
    // safe against a concurrent twin: serialise the set-up on a lock.
    sqlx::raw_sql(&format!(
        "BEGIN;
         SELECT pg_advisory_xact_lock(hashtext('consumer_service set-up'));
         CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.effects (event_id uuid NOT NULL, customer text NOT NULL,
             amount_cents bigint NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE IF NOT EXISTS {s}.totals (customer text PRIMARY KEY, orders bigint NOT NULL,
             amount_cents bigint NOT NULL);
         COMMIT;"
    ))
    .execute(&pool)
    .await?;

    let mut consumer_config = ConsumerConfig::new(&args.brokers, &args.group, &[&args.topic]);
    // A crashed member holds its partitions until its session times out:
    // keep that short so a restarted consumer takes over quickly.
    consumer_config.kafka_settings.push(("session.timeout.ms".into(), "6000".into()));
    if let Some(batch_size) = args.batch_size {
        consumer_config.batch_size = batch_size;
    }
    if let Some(strategy) = &args.assignment {
        consumer_config.kafka_settings.push(("partition.assignment.strategy".into(), strategy.clone()));
    }
    if let Some(debug) = std::env::var("CONSUMER_KAFKA_DEBUG").ok().filter(|d| !d.is_empty()) {
        consumer_config.kafka_settings.push(("debug".into(), debug)); // e.g. cgrp,fetch
    }
    let consumer = InboxConsumer::new(pool.clone(), &config, consumer_config, Billing { schema: s.clone() })?;
    let stats = consumer.stats();
    let shutdown = CancellationToken::new();
    let watcher = {
        let shutdown = shutdown.clone();
        let stats = stats.clone();
        let pool = pool.clone();
        let (expect, idle, timeout) = (args.expect, args.idle_exit, args.timeout);
        let count_sql = format!("SELECT count(DISTINCT event_id) FROM {s}.effects");
        tokio::spawn(async move {
            let started = Instant::now();
            let (mut last_seen, mut last_change) = (0, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let seen = stats.applied() + stats.duplicates() + stats.dead_lettered();
                if seen != last_seen {
                    (last_seen, last_change) = (seen, Instant::now());
                }
                let applied: i64 = sqlx::query_scalar(&count_sql).fetch_one(&pool).await.unwrap_or(0);
                let met = expect.is_none_or(|e| applied >= e);
                let idle_done = idle.is_some_and(|d| last_change.elapsed() >= d);
                if (met && idle_done) || started.elapsed() >= timeout {
                    shutdown.cancel();
                    return;
                }
            }
        })
    };
    tokio::select! {
        r = consumer.run(shutdown.clone()) => r?,
        _ = tokio::signal::ctrl_c() => shutdown.cancel(),
    }
    watcher.abort();
    let (effects, distinct): (i64, i64) =
        sqlx::query_as(&format!("SELECT count(*), count(DISTINCT event_id) FROM {s}.effects")).fetch_one(&pool).await?;
    println!(
        "consumer_service: applied_now={} duplicates_now={} dead_lettered_now={} effects_total={effects} distinct_events={distinct}",
        stats.applied(),
        stats.duplicates(),
        stats.dead_lettered()
    );
    Ok(())
}
