//! The participant's side: handle each command once, whatever the
//! redeliveries, and reply through the outbox in the same transaction as the
//! effect.
//!
//! Commands are remembered by what they mean — (saga, step, action) — not by
//! event id, because the orchestrator sends a compensation again after its
//! deadline as a new event. The rules:
//! * an execute seen before is answered again with the stored outcome;
//! * a compensation whose execute never ran (or failed) undoes nothing and
//!   leaves a tombstone, so an execute arriving later is refused;
//! * a compensation seen before is answered again, not applied again.

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::wire::{Action, ReplyOutcome, SagaCommand, SagaReply, StepOutcome, REPLY_EVENT_TYPE};
use crate::enqueue::Outbox;
use crate::error::Result;
use crate::inbox::HandlerError;
use crate::message::Message;
use crate::store::SagaSql;

/// What the participant should do with a command, as decided by
/// [`SagaParticipant::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Apply the step's effect through the same transaction, then call
    /// [`SagaParticipant::finish`] with its outcome.
    Execute,
    /// Undo the step, then call [`SagaParticipant::finish`]. `executed`
    /// says whether the step took effect here; when it did not there is
    /// nothing to undo, but `finish` must still be called.
    Compensate {
        /// Whether the step's execute succeeded here.
        executed: bool,
    },
    /// Handled before (or refused): the reply has been sent again; do nothing.
    AlreadyHandled,
}

/// Helps a saga participant handle commands idempotently.
///
/// Call [`begin`](Self::begin) and [`finish`](Self::finish) inside your
/// inbox handler's transaction, around your effect:
///
/// ```no_run
/// use outbox_core::saga::{Decision, SagaCommand, SagaParticipant, StepOutcome};
/// use outbox_core::{Handler, HandlerError, ReceivedEvent};
///
/// struct Inventory { saga: SagaParticipant }
///
/// #[async_trait::async_trait]
/// impl Handler for Inventory {
///     async fn handle(&self, event: &ReceivedEvent, tx: &mut sqlx::PgConnection) -> Result<(), HandlerError> {
///         let command = SagaCommand::from_event(event)?;
///         let qty = command.data["qty"].as_i64().unwrap_or(1);
///         let outcome = match self.saga.begin(tx, &command).await? {
///             Decision::AlreadyHandled => return Ok(()),
///             Decision::Execute => {
///                 let taken = sqlx::query("UPDATE stock SET available = available - $1 WHERE available >= $1")
///                     .bind(qty).execute(&mut *tx).await?.rows_affected();
///                 if taken == 1 { StepOutcome::succeeded() } else { StepOutcome::failed("out of stock") }
///             }
///             Decision::Compensate { executed } => {
///                 if executed {
///                     sqlx::query("UPDATE stock SET available = available + $1").bind(qty).execute(&mut *tx).await?;
///                 }
///                 StepOutcome::succeeded()
///             }
///         };
///         self.saga.finish(tx, &command, outcome).await?;
///         Ok(())
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct SagaParticipant {
    outbox: Outbox,
    sql: std::sync::Arc<SagaSql>,
}

impl SagaParticipant {
    /// A participant replying through `outbox` (whose configuration also
    /// names the command-memory table).
    pub fn new(outbox: Outbox) -> Self {
        let sql = std::sync::Arc::new(SagaSql::new(outbox.config()));
        SagaParticipant { outbox, sql }
    }

    /// Decides what to do with `command`, recording it in `tx`. Concurrent
    /// deliveries of the same command wait on each other here.
    pub async fn begin(&self, tx: &mut PgConnection, command: &SagaCommand) -> Result<Decision, HandlerError> {
        let claimed = sqlx::query(&self.sql.command_claim)
            .bind(command.saga_id)
            .bind(command.step)
            .bind(command.action.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !claimed {
            let (outcome, reason, data) = self.locked(tx, command, command.action).await?.unwrap_or_default();
            match outcome.as_deref() {
                None => {} // begun before but never finished (deferred): carry on
                Some("refused") => {
                    let outcome = StepOutcome::failed(reason.unwrap_or_else(|| "compensated before it ran".into()));
                    self.reply(tx, command, &outcome).await?;
                    return Ok(Decision::AlreadyHandled);
                }
                Some(stored) => {
                    let outcome = StepOutcome {
                        outcome: if stored == "succeeded" { ReplyOutcome::Succeeded } else { ReplyOutcome::Failed },
                        reason,
                        data: data.unwrap_or(Value::Null),
                    };
                    self.reply(tx, command, &outcome).await?;
                    return Ok(Decision::AlreadyHandled);
                }
            }
        }
        if command.action == Action::Execute {
            return Ok(Decision::Execute);
        }
        // A compensation: did the step take effect here? Leave a tombstone
        // when it never ran, so that a late execute is refused.
        let tombstoned = sqlx::query(&self.sql.command_tombstone)
            .bind(command.saga_id)
            .bind(command.step)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if tombstoned {
            return Ok(Decision::Compensate { executed: false });
        }
        let executed = match self.locked(tx, command, Action::Execute).await?.and_then(|(o, _, _)| o) {
            Some(outcome) => outcome == "succeeded",
            None => {
                // Begun but deferred: it must not run any more.
                sqlx::query(&self.sql.command_record)
                    .bind(command.saga_id)
                    .bind(command.step)
                    .bind(Action::Execute.as_str())
                    .bind("refused")
                    .bind("compensated before it ran")
                    .bind(None::<Value>)
                    .execute(&mut *tx)
                    .await?;
                false
            }
        };
        Ok(Decision::Compensate { executed })
    }

    /// Records `outcome` for `command` and enqueues the reply, in `tx`.
    /// A compensation must not fail unless an operator has to step in: a
    /// failed compensation ends the saga as `failed`.
    pub async fn finish(&self, tx: &mut PgConnection, command: &SagaCommand, outcome: StepOutcome) -> Result<()> {
        let stored = match outcome.outcome {
            ReplyOutcome::Succeeded => "succeeded",
            ReplyOutcome::Failed => "failed",
        };
        sqlx::query(&self.sql.command_record)
            .bind(command.saga_id)
            .bind(command.step)
            .bind(command.action.as_str())
            .bind(stored)
            .bind(&outcome.reason)
            .bind(&outcome.data)
            .execute(&mut *tx)
            .await?;
        self.reply(tx, command, &outcome).await
    }

    /// Deletes remembered commands older than `older_than` (keep it longer
    /// than a saga can live, compensations included). Returns how many.
    pub async fn cleanup(&self, pool: &PgPool, older_than: Duration) -> Result<u64> {
        crate::store::delete_in_batches(pool, &self.sql.command_cleanup, older_than).await
    }

    async fn locked(
        &self,
        tx: &mut PgConnection,
        command: &SagaCommand,
        action: Action,
    ) -> Result<Option<(Option<String>, Option<String>, Option<Value>)>> {
        Ok(sqlx::query_as(&self.sql.command_lock)
            .bind(command.saga_id)
            .bind(command.step)
            .bind(action.as_str())
            .fetch_optional(&mut *tx)
            .await?)
    }

    async fn reply(&self, tx: &mut PgConnection, command: &SagaCommand, outcome: &StepOutcome) -> Result<()> {
        let reply = SagaReply {
            saga_id: command.saga_id,
            step: command.step,
            action: command.action,
            outcome: outcome.outcome,
            reason: outcome.reason.clone(),
            data: outcome.data.clone(),
        };
        let message = Message::json(&command.reply_to, REPLY_EVENT_TYPE, &reply)?.with_key(command.saga_id.to_string());
        self.outbox.enqueue(&mut *tx, &message).await
    }
}
