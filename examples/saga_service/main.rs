//! One service of the saga demo, chosen with `--role`:
//!
//! * `orders` — the orchestrator. Places orders (each order row and its saga
//!   start in one transaction), consumes the participants' replies, sweeps
//!   deadlines, and marks each order completed or compensated in the
//!   transaction that ends its saga.
//! * `inventory` — reserves stock (`inventory.reserve`) and releases it
//!   (`inventory.release`).
//! * `payments` — charges a card (`payments.charge`) and refunds it
//!   (`payments.refund`). Declines the test card `4000-0000-0000-0002`;
//!   answers late for the slow card `4000-0000-0000-3220`.
//!
//! Each service has its own database and its own relay; they talk only
//! through Kafka. `saga_demo` starts all of them; to run one by hand:
//!
//! ```text
//! cargo run --example saga_service -- --role inventory --database-url postgres://…/inventory
//! ```

#[path = "../common/cli.rs"]
mod cli;
mod inventory;
mod orders;
mod payments;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use outbox::{CancellationToken, ConsumerConfig, Handler, InboxConsumer, Outbox, OutboxConfig};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The test card payments always declines.
pub const DECLINED_CARD: &str = "4000-0000-0000-0002";
/// The test card payments answers for only after `--slow-delay`.
pub const SLOW_CARD: &str = "4000-0000-0000-3220";
/// A card that is charged at once.
pub const GOOD_CARD: &str = "4242-4242-4242-4242";
/// The SKU with only a little stock: orders for it run out.
pub const SCARCE_SKU: &str = "sku-scarce";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Orders,
    Inventory,
    Payments,
}

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Which service to be.
    #[arg(long, value_enum)]
    role: Role,
    /// This service's own PostgreSQL database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Kafka brokers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Prefix of every topic and consumer group (one demo run).
    #[arg(long, default_value = "saga-demo")]
    prefix: String,
    /// Orders to place (orders).
    #[arg(long, default_value_t = 300)]
    orders: u32,
    /// Orders placed per second (orders).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Share of orders for the scarce SKU, in percent (orders).
    #[arg(long, default_value_t = 10)]
    shortage_percent: u32,
    /// Share of orders paid with the declined card, in percent (orders).
    #[arg(long, default_value_t = 10)]
    decline_percent: u32,
    /// Share of orders paid with the slow card, in percent (orders).
    #[arg(long, default_value_t = 5)]
    timeout_percent: u32,
    /// Seed of the order plan (orders).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How long the orchestrator waits for each reply (orders).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    step_deadline: Duration,
    /// Ordinary SKUs in the catalogue (orders, inventory).
    #[arg(long, default_value_t = 4)]
    skus: u32,
    /// Initial stock of each ordinary SKU (inventory).
    #[arg(long, default_value_t = 1000)]
    stock: i64,
    /// Initial stock of the scarce SKU (inventory).
    #[arg(long, default_value_t = 3)]
    scarce_stock: i64,
    /// How late payments answers for the slow card, ±50 % (payments).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    slow_delay: Duration,
}

impl Args {
    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }
    fn outbox_config(&self, source: &str) -> anyhow::Result<OutboxConfig> {
        Ok(OutboxConfig::default().with_source(format!("/saga-demo/{source}"))?)
    }
}

/// Consumes `topic` with `handler` (effect-once through the inbox) until
/// `shutdown`.
async fn consume(
    args: &Args,
    pool: &PgPool,
    config: &OutboxConfig,
    topic: &str,
    handler: impl Handler,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let group = format!("{}.{:?}", args.prefix, args.role).to_lowercase();
    let mut consumer_config = ConsumerConfig::new(&args.brokers, group, &[topic]);
    // A killed service holds its partitions until its session times out:
    // keep that short so its restarted self takes over quickly.
    consumer_config.kafka_settings.push(("session.timeout.ms".into(), "6000".into()));
    consumer_config.kafka_settings.push(("heartbeat.interval.ms".into(), "1000".into()));
    if let Ok(debug) = std::env::var("SAGA_KAFKA_DEBUG") {
        consumer_config.kafka_settings.push(("debug".into(), debug)); // e.g. cgrp
    }
    let consumer = InboxConsumer::new(pool.clone(), config, consumer_config, handler)?;
    consumer.run(shutdown).await?;
    Ok(())
}

/// Creates this service's tables under an advisory lock (a restarted
/// service may overlap its predecessor).
async fn set_up(pool: &PgPool, ddl: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(&format!("BEGIN; SELECT pg_advisory_xact_lock(hashtext('saga demo set-up')); {ddl} COMMIT;"))
        .execute(pool)
        .await
        .context("creating the service's tables")?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = cli::parse::<Args>();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(outbox::pg_connect_options(&args.database_url)?)
        .await
        .context("connect")?;
    let role = format!("{:?}", args.role).to_lowercase();
    let config = args.outbox_config(&role)?;
    let outbox = Outbox::new(config.clone());
    outbox.migrate(&pool).await?;

    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            shutdown.cancel();
        });
    }
    match args.role {
        Role::Orders => orders::run(&args, pool, outbox, shutdown).await,
        Role::Inventory => inventory::run(&args, pool, outbox, shutdown).await,
        Role::Payments => payments::run(&args, pool, outbox, shutdown).await,
    }
}
