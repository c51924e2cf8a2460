//! Sagas: a business transaction across services, made of local
//! transactions, the outbox, Kafka and compensations.
//!
//! * [`SagaDefinition`] — ordered [`SagaStep`]s, each a command to a
//!   participant, the command that undoes it, and a deadline.
//! * [`SagaOrchestrator`] — persists each instance, sends commands through
//!   the outbox, consumes replies as an inbox [`Handler`](crate::Handler),
//!   compensates completed steps in reverse order when a step fails or runs
//!   out of time, and answers [`status`](SagaOrchestrator::status) and
//!   [`history`](SagaOrchestrator::history) queries.
//! * [`SagaParticipant`] — handles each command once and replies in the same
//!   transaction as its effect.
//!
//! Each transition commits together with the reply it consumed (inbox row)
//! and the commands it sends (outbox rows): a crash at any point resumes
//! from the last committed transition, and no step or compensation runs
//! twice.

mod definition;
mod instance;
mod orchestrator;
mod participant;
mod wire;

pub use definition::{SagaDefinition, SagaStep};
pub use instance::{SagaInstance, SagaStatus, StepRecord};
pub use orchestrator::{SagaListener, SagaOrchestrator};
pub use participant::{Decision, SagaParticipant};
pub use wire::{Action, ReplyOutcome, SagaCommand, SagaReply, StepOutcome, REPLY_EVENT_TYPE};

/// Deletes old saga rows (or, with `commands`, participants' command rows)
/// in batches. Returns how many rows went.
async fn delete_in_batches<DB: crate::Backend>(
    pool: &sqlx::Pool<DB>,
    sql: &DB::SagaSql,
    commands: bool,
    older_than: std::time::Duration,
) -> crate::Result<u64> {
    crate::store::delete_in_batches(|batch| DB::delete_old(sql, pool, commands, older_than, batch)).await
}
