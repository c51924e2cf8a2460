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
use sqlx::{Pool, Postgres};

use super::wire::{Action, ReplyOutcome, SagaCommand, SagaReply, StepOutcome, REPLY_EVENT_TYPE};
use crate::backend::{Backend, CommandKey, CommandRecord};
use crate::enqueue::Outbox;
use crate::error::Result;
use crate::inbox::HandlerError;
use crate::message::Message;

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
///
/// `DB` is the database of the command-memory table (and of the outbox):
/// PostgreSQL through [`new`](SagaParticipant::new), any [`Backend`]
/// through [`for_backend`](SagaParticipant::for_backend).
#[derive(Debug)]
pub struct SagaParticipant<DB: Backend = Postgres> {
    outbox: Outbox,
    sql: std::sync::Arc<DB::SagaSql>,
}

impl<DB: Backend> Clone for SagaParticipant<DB> {
    fn clone(&self) -> Self {
        SagaParticipant { outbox: self.outbox.clone(), sql: std::sync::Arc::clone(&self.sql) }
    }
}

impl SagaParticipant<Postgres> {
    /// A participant on PostgreSQL replying through `outbox` (whose
    /// configuration also names the command-memory table).
    pub fn new(outbox: Outbox) -> Self {
        Self::for_backend(outbox)
    }
}

impl<DB: Backend> SagaParticipant<DB> {
    /// [`new`](SagaParticipant::new) on any [`Backend`].
    pub fn for_backend(outbox: Outbox) -> Self {
        let sql = std::sync::Arc::new(DB::saga_sql(outbox.config()));
        SagaParticipant { outbox, sql }
    }

    /// Decides what to do with `command`, recording it in `tx`. Concurrent
    /// deliveries of the same command wait on each other here.
    pub async fn begin(&self, tx: &mut DB::Connection, command: &SagaCommand) -> Result<Decision, HandlerError> {
        let claimed = DB::claim_command(&self.sql, tx, key(command, command.action)).await?;
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
        let tombstoned = DB::tombstone_command(&self.sql, tx, command.saga_id, command.step).await?;
        if tombstoned {
            return Ok(Decision::Compensate { executed: false });
        }
        let executed = match self.locked(tx, command, Action::Execute).await?.and_then(|(o, _, _)| o) {
            Some(outcome) => outcome == "succeeded",
            None => {
                // Begun but deferred: it must not run any more.
                let execute = key(command, Action::Execute);
                DB::record_command(&self.sql, tx, execute, "refused", Some("compensated before it ran"), None).await?;
                false
            }
        };
        Ok(Decision::Compensate { executed })
    }

    /// Records `outcome` for `command` and enqueues the reply, in `tx`.
    /// A compensation must not fail unless an operator has to step in: a
    /// failed compensation ends the saga as `failed`.
    pub async fn finish(&self, tx: &mut DB::Connection, command: &SagaCommand, outcome: StepOutcome) -> Result<()> {
        let stored = match outcome.outcome {
            ReplyOutcome::Succeeded => "succeeded",
            ReplyOutcome::Failed => "failed",
        };
        let this = key(command, command.action);
        DB::record_command(&self.sql, tx, this, stored, outcome.reason.as_deref(), Some(&outcome.data)).await?;
        self.reply(tx, command, &outcome).await
    }

    /// Deletes remembered commands older than `older_than` (keep it longer
    /// than a saga can live, compensations included). Returns how many.
    pub async fn cleanup(&self, pool: &Pool<DB>, older_than: Duration) -> Result<u64> {
        super::delete_in_batches::<DB>(pool, &self.sql, true, older_than).await
    }

    async fn locked(
        &self,
        tx: &mut DB::Connection,
        command: &SagaCommand,
        action: Action,
    ) -> Result<Option<CommandRecord>> {
        Ok(DB::lock_command(&self.sql, tx, key(command, action)).await?)
    }

    async fn reply(&self, tx: &mut DB::Connection, command: &SagaCommand, outcome: &StepOutcome) -> Result<()> {
        let reply = SagaReply {
            saga_id: command.saga_id,
            step: command.step,
            action: command.action,
            outcome: outcome.outcome,
            reason: outcome.reason.clone(),
            data: outcome.data.clone(),
        };
        let message = Message::json(&command.reply_to, REPLY_EVENT_TYPE, &reply)?.with_key(command.saga_id.to_string());
        self.outbox.enqueue_on::<DB>(tx, &message).await
    }
}

fn key(command: &SagaCommand, action: Action) -> CommandKey {
    CommandKey { saga_id: command.saga_id, step: command.step, action }
}
