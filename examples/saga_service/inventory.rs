//! The inventory service: reserves stock for an order and releases it when
//! the saga compensates. Each command is handled once, in one transaction
//! with its reply.

use async_trait::async_trait;
use outbox::saga::{Decision, SagaCommand, SagaParticipant, StepOutcome};
use outbox::{CancellationToken, Handler, HandlerError, Outbox, ReceivedEvent};
use sqlx::{PgConnection, PgPool};

use super::{Args, SCARCE_SKU};

const DDL: &str = "CREATE SCHEMA IF NOT EXISTS inventory;
    CREATE TABLE IF NOT EXISTS inventory.stock (
        sku text PRIMARY KEY, initial bigint NOT NULL, available bigint NOT NULL CHECK (available >= 0));
    CREATE TABLE IF NOT EXISTS inventory.reservations (
        order_id uuid PRIMARY KEY, sku text NOT NULL, qty integer NOT NULL,
        status text NOT NULL CHECK (status IN ('reserved', 'released')),
        reserved_at timestamptz NOT NULL DEFAULT now(), released_at timestamptz);";

struct Inventory {
    saga: SagaParticipant,
}

#[async_trait]
impl Handler for Inventory {
    async fn handle(&self, event: &ReceivedEvent, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let command = SagaCommand::from_event(event)?;
        let order_id = command.saga_id;
        let sku = command.data["sku"].as_str().ok_or_else(|| HandlerError::permanent("command without sku"))?;
        let qty = command.data["qty"].as_i64().ok_or_else(|| HandlerError::permanent("command without qty"))?;
        let outcome = match self.saga.begin(tx, &command).await? {
            Decision::AlreadyHandled => return Ok(()),
            Decision::Execute => {
                let taken = sqlx::query(
                    "UPDATE inventory.stock SET available = available - $2 WHERE sku = $1 AND available >= $2",
                )
                .bind(sku)
                .bind(qty)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if taken == 1 {
                    sqlx::query(
                        "INSERT INTO inventory.reservations (order_id, sku, qty, status) VALUES ($1, $2, $3, 'reserved')",
                    )
                    .bind(order_id)
                    .bind(sku)
                    .bind(qty as i32)
                    .execute(&mut *tx)
                    .await?;
                    StepOutcome::succeeded()
                } else {
                    StepOutcome::failed(format!("out of stock: {sku}"))
                }
            }
            Decision::Compensate { executed } => {
                if executed {
                    let released: Option<(String, i32)> = sqlx::query_as(
                        "UPDATE inventory.reservations SET status = 'released', released_at = now() \
                         WHERE order_id = $1 AND status = 'reserved' RETURNING sku, qty",
                    )
                    .bind(order_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some((sku, qty)) = released {
                        sqlx::query("UPDATE inventory.stock SET available = available + $2 WHERE sku = $1")
                            .bind(sku)
                            .bind(i64::from(qty))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                StepOutcome::succeeded()
            }
        };
        self.saga.finish(tx, &command, outcome).await?;
        Ok(())
    }
}

pub async fn run(args: &Args, pool: PgPool, outbox: Outbox, shutdown: CancellationToken) -> anyhow::Result<()> {
    super::set_up(&pool, DDL).await?;
    // The initial stock, once (a restarted service keeps what it has).
    let mut skus: Vec<(String, i64)> = (0..args.skus).map(|i| (format!("sku-{i}"), args.stock)).collect();
    skus.push((SCARCE_SKU.to_owned(), args.scarce_stock));
    for (sku, stock) in skus {
        sqlx::query("INSERT INTO inventory.stock (sku, initial, available) VALUES ($1, $2, $2) ON CONFLICT DO NOTHING")
            .bind(sku)
            .bind(stock)
            .execute(&pool)
            .await?;
    }
    let config = outbox.config().clone();
    let handler = Inventory { saga: SagaParticipant::new(outbox) };
    println!("ready");
    super::consume(args, &pool, &config, &args.topic("inventory.commands"), handler, shutdown).await
}
