//! The payments service: charges the order's card and refunds it when the
//! saga compensates. The declined test card is refused; the slow one is
//! answered only after `--slow-delay` (a deferred job), which is how the
//! demo makes a participant miss its deadline — and then, sometimes, charge
//! after the orchestrator has already given up (the refund undoes it) or
//! after the refund arrived (the late charge is refused).

use std::time::Duration;

use async_trait::async_trait;
use outbox::saga::{Decision, SagaCommand, SagaParticipant, StepOutcome};
use outbox::{CancellationToken, Handler, HandlerError, Outbox, ReceivedEvent};
use rand::Rng;
use sqlx::{PgConnection, PgPool};

use super::{Args, DECLINED_CARD, SLOW_CARD};

const DDL: &str = "CREATE SCHEMA IF NOT EXISTS payments;
    CREATE TABLE IF NOT EXISTS payments.payments (
        order_id uuid PRIMARY KEY, card text NOT NULL, amount_cents bigint NOT NULL,
        status text NOT NULL CHECK (status IN ('charged', 'refunded')),
        charged_at timestamptz NOT NULL DEFAULT now(), refunded_at timestamptz);
    CREATE TABLE IF NOT EXISTS payments.deferred (
        order_id uuid PRIMARY KEY, command jsonb NOT NULL, due_at timestamptz NOT NULL);";

#[derive(Clone)]
struct Payments {
    saga: SagaParticipant,
    slow_delay: Duration,
}

impl Payments {
    /// Charges the card (or declines it) and replies, in `tx`.
    async fn charge(&self, tx: &mut PgConnection, command: &SagaCommand) -> Result<(), HandlerError> {
        let card = command.data["card"].as_str().unwrap_or_default();
        let amount = command.data["amount_cents"].as_i64().ok_or_else(|| HandlerError::permanent("no amount"))?;
        let outcome = if card == DECLINED_CARD {
            StepOutcome::failed("card declined")
        } else {
            sqlx::query(
                "INSERT INTO payments.payments (order_id, card, amount_cents, status) VALUES ($1, $2, $3, 'charged')",
            )
            .bind(command.saga_id)
            .bind(card)
            .bind(amount)
            .execute(&mut *tx)
            .await?;
            StepOutcome::succeeded().with_data(serde_json::json!({"charged_cents": amount}))
        };
        self.saga.finish(tx, command, outcome).await?;
        Ok(())
    }
}

#[async_trait]
impl Handler for Payments {
    async fn handle(&self, event: &ReceivedEvent, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let command = SagaCommand::from_event(event)?;
        match self.saga.begin(tx, &command).await? {
            Decision::AlreadyHandled => Ok(()),
            Decision::Execute => {
                if command.data["card"].as_str() == Some(SLOW_CARD) {
                    // Answer later: the command waits in a deferred-job table.
                    let jitter = rand::rng().random_range(0.5..1.5);
                    sqlx::query(
                        "INSERT INTO payments.deferred (order_id, command, due_at) \
                         VALUES ($1, $2, now() + make_interval(secs => $3)) ON CONFLICT DO NOTHING",
                    )
                    .bind(command.saga_id)
                    .bind(serde_json::to_value(&command).map_err(HandlerError::permanent)?)
                    .bind(self.slow_delay.as_secs_f64() * jitter)
                    .execute(&mut *tx)
                    .await?;
                    return Ok(());
                }
                self.charge(tx, &command).await
            }
            Decision::Compensate { executed } => {
                if executed {
                    sqlx::query(
                        "UPDATE payments.payments SET status = 'refunded', refunded_at = now() \
                         WHERE order_id = $1 AND status = 'charged'",
                    )
                    .bind(command.saga_id)
                    .execute(&mut *tx)
                    .await?;
                }
                self.saga.finish(tx, &command, StepOutcome::succeeded()).await?;
                Ok(())
            }
        }
    }
}

/// Runs deferred charges when they fall due. A charge whose refund has
/// arrived meanwhile is refused by the participant helper.
async fn deferred_jobs(payments: Payments, pool: PgPool, shutdown: CancellationToken) {
    loop {
        match run_one_deferred(&payments, &pool).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "deferred charge failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn run_one_deferred(payments: &Payments, pool: &PgPool) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let due: Option<(uuid::Uuid, serde_json::Value)> = sqlx::query_as(
        "SELECT order_id, command FROM payments.deferred WHERE due_at <= now() \
         ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some((order_id, command)) = due else { return Ok(false) };
    let command: SagaCommand = serde_json::from_value(command)?;
    if payments.saga.begin(&mut tx, &command).await.map_err(|e| anyhow::anyhow!("{e}"))? == Decision::Execute {
        payments.charge(&mut tx, &command).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    } else {
        tracing::info!(%order_id, "deferred charge refused: the saga compensated it first");
    }
    sqlx::query("DELETE FROM payments.deferred WHERE order_id = $1").bind(order_id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(true)
}

pub async fn run(args: &Args, pool: PgPool, outbox: Outbox, shutdown: CancellationToken) -> anyhow::Result<()> {
    super::set_up(&pool, DDL).await?;
    let config = outbox.config().clone();
    let payments = Payments { saga: SagaParticipant::new(outbox), slow_delay: args.slow_delay };
    let jobs = tokio::spawn(deferred_jobs(payments.clone(), pool.clone(), shutdown.clone()));
    println!("ready");
    let result = super::consume(args, &pool, &config, &args.topic("payments.commands"), payments, shutdown).await;
    let _ = jobs.await;
    result
}
