//! The orders service: the saga orchestrator. Places the planned orders,
//! each order row and its saga start in one transaction, and closes each
//! order in the transaction that ends its saga.

use std::time::Duration;

use async_trait::async_trait;
use outbox::saga::{SagaDefinition, SagaInstance, SagaListener, SagaOrchestrator, SagaStep};
use outbox::{CancellationToken, HandlerError, Outbox};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Args, DECLINED_CARD, GOOD_CARD, SCARCE_SKU, SLOW_CARD};

/// The saga every order runs.
pub const SAGA: &str = "place-order";

const DDL: &str = "CREATE SCHEMA IF NOT EXISTS shop;
    CREATE TABLE IF NOT EXISTS shop.orders (
        id uuid PRIMARY KEY, seq integer NOT NULL UNIQUE, sku text NOT NULL, qty integer NOT NULL,
        amount_cents bigint NOT NULL, card text NOT NULL,
        status text NOT NULL DEFAULT 'pending', reason text,
        placed_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz);";

/// One planned order: the same on every run with the same seed, so a
/// restarted service carries on where it stopped.
struct Order {
    seq: i32,
    id: Uuid,
    sku: String,
    qty: i32,
    amount_cents: i64,
    card: &'static str,
}

fn plan(args: &Args, seq: i32) -> Order {
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(seq as u64));
    let sku = if rng.random_range(0..100) < args.shortage_percent {
        SCARCE_SKU.to_owned()
    } else {
        format!("sku-{}", rng.random_range(0..args.skus.max(1)))
    };
    let card_roll = rng.random_range(0..100);
    let card = if card_roll < args.decline_percent {
        DECLINED_CARD
    } else if card_roll < args.decline_percent + args.timeout_percent {
        SLOW_CARD
    } else {
        GOOD_CARD
    };
    let qty = rng.random_range(1..=3);
    let price: i64 = rng.random_range(500..5000);
    Order { seq, id: order_id(&args.prefix, seq), sku, qty, amount_cents: price * i64::from(qty), card }
}

/// A stable id per (run, order number).
fn order_id(prefix: &str, seq: i32) -> Uuid {
    let run = prefix.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    Uuid::from_u64_pair(run, seq as u64)
}

/// Marks the order with its saga's outcome, in the saga's last transaction.
struct CloseOrder;

#[async_trait]
impl SagaListener for CloseOrder {
    async fn on_finished(&self, saga: &SagaInstance, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("UPDATE shop.orders SET status = $2, reason = $3, finished_at = now() WHERE id = $1")
            .bind(saga.id)
            .bind(saga.status.as_str())
            .bind(&saga.reason)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

pub async fn run(args: &Args, pool: PgPool, outbox: Outbox, shutdown: CancellationToken) -> anyhow::Result<()> {
    super::set_up(&pool, DDL).await?;
    let deadline = args.step_deadline;
    let saga = SagaDefinition::new(SAGA, args.topic("orders.replies"))
        .step(
            SagaStep::new("reserve-stock", args.topic("inventory.commands"), "inventory.reserve")
                .compensate_with("inventory.release")
                .deadline(deadline),
        )
        .step(
            SagaStep::new("charge-card", args.topic("payments.commands"), "payments.charge")
                .compensate_with("payments.refund")
                .deadline(deadline),
        );
    let config = outbox.config().clone();
    let orchestrator = SagaOrchestrator::new(outbox, [saga])?
        .with_listener(CloseOrder)
        .with_sweep_interval(Duration::from_millis(200));
    println!("ready");
    let deadlines = tokio::spawn(orchestrator.clone().run_deadlines(pool.clone(), shutdown.clone()));
    let placing = tokio::spawn(place_orders(args.clone(), pool.clone(), orchestrator.clone(), shutdown.clone()));
    let replies = args.topic("orders.replies");
    let consumed = super::consume(args, &pool, &config, &replies, orchestrator, shutdown.clone()).await;
    shutdown.cancel();
    let _ = deadlines.await;
    placing.await??;
    consumed
}

/// Places the planned orders not placed yet, at `--rate` per second.
async fn place_orders(
    args: Args,
    pool: PgPool,
    orchestrator: SagaOrchestrator,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let placed: Option<i32> = sqlx::query_scalar("SELECT max(seq) FROM shop.orders").fetch_one(&pool).await?;
    let first = placed.map_or(0, |s| s + 1);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.1)));
    for seq in first..i32::try_from(args.orders)? {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        let order = plan(&args, seq);
        loop {
            match place(&pool, &orchestrator, &order).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(seq, error = %e, "could not place order; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    tracing::info!(orders = args.orders, "all orders placed");
    Ok(())
}

async fn place(pool: &PgPool, orchestrator: &SagaOrchestrator, order: &Order) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO shop.orders (id, seq, sku, qty, amount_cents, card) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(order.id)
        .bind(order.seq)
        .bind(&order.sku)
        .bind(order.qty)
        .bind(order.amount_cents)
        .bind(order.card)
        .execute(&mut *tx)
        .await?;
    let data = json!({"order_id": order.id, "sku": order.sku, "qty": order.qty,
        "amount_cents": order.amount_cents, "card": order.card});
    orchestrator.start(&mut tx, SAGA, order.id, data).await?;
    tx.commit().await?;
    Ok(())
}
