//! The write side of the demo: an order service that stores each order and
//! its `order.placed` event in ONE transaction. Some transactions are rolled
//! back on purpose (a failed payment check, say): their events must never be
//! published.
//!
//! ```text
//! cargo run --example order_service -- --orders 200 --rollback-percent 10
//! ```

#[path = "common/cli.rs"]
mod cli;
use anyhow::Context;
use clap::Parser;
use outbox::{Message, Outbox, OutboxConfig};
use rand::Rng;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser, Debug)]
struct Args {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Schema of the outbox tables.
    #[arg(long, env = "OUTBOX_SCHEMA", default_value = "outbox")]
    outbox_schema: String,
    /// Schema of the shop's own tables.
    #[arg(long, default_value = "shop")]
    app_schema: String,
    /// Topic the events go to.
    #[arg(long, default_value = "orders")]
    topic: String,
    /// Orders to attempt.
    #[arg(long, default_value_t = 200)]
    orders: u32,
    /// Distinct customers (event keys).
    #[arg(long, default_value_t = 10)]
    customers: u32,
    /// Share of transactions rolled back on purpose, in percent.
    #[arg(long, default_value_t = 10)]
    rollback_percent: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = cli::parse::<Args>();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(outbox::pg_connect_options(&args.database_url)?)
        .await
        .context("connect")?;
    let outbox = Outbox::new(OutboxConfig::default().with_schema(&args.outbox_schema)?.with_source("/shop/orders")?);
    outbox.migrate(&pool).await?;
    let app = &args.app_schema;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA IF NOT EXISTS {app};
         CREATE TABLE IF NOT EXISTS {app}.customers (id text PRIMARY KEY, orders bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS {app}.orders (id bigserial PRIMARY KEY, customer text NOT NULL,
             amount_cents bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());"
    ))
    .execute(&pool)
    .await?;

    let (mut committed, mut rolled_back) = (0u32, 0u32);
    let mut rng = rand::rng();
    for _ in 0..args.orders {
        let customer = format!("customer-{}", rng.random_range(0..args.customers));
        let amount: i64 = rng.random_range(100..100_000);
        let mut tx = pool.begin().await?;
        // The customer row is the aggregate: locking it serialises this
        // customer's orders, so their events' order is their commit order.
        let n: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO {app}.customers (id, orders) VALUES ($1, 1)
             ON CONFLICT (id) DO UPDATE SET orders = {app}.customers.orders + 1 RETURNING orders"
        ))
        .bind(&customer)
        .fetch_one(&mut *tx)
        .await?;
        let order_id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO {app}.orders (customer, amount_cents) VALUES ($1, $2) RETURNING id"
        ))
        .bind(&customer)
        .bind(amount)
        .fetch_one(&mut *tx)
        .await?;
        let event = Message::json(
            &args.topic,
            "order.placed",
            &json!({ "order_id": order_id, "customer": customer, "amount_cents": amount, "customer_seq": n }),
        )?
        .with_key(&customer);
        outbox.enqueue(&mut *tx, &event).await?;
        if rng.random_range(0..100) < args.rollback_percent {
            tx.rollback().await?;
            rolled_back += 1;
        } else {
            tx.commit().await?;
            committed += 1;
        }
    }
    println!("order_service: attempted={} committed={committed} rolled_back={rolled_back}", args.orders);
    Ok(())
}
