//! The orchestrator: starts sagas, moves them on each reply and deadline,
//! and answers what became of them.
//!
//! Every transition runs in one transaction with the saga row locked: it
//! commits together with the commands it sends (through the outbox) and, on
//! the reply path, with the reply's inbox row. A crash anywhere leaves either
//! the whole transition or none of it, and the redelivered reply or the next
//! deadline sweep carries on from there.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{Pool, Postgres};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::definition::SagaDefinition;
use super::instance::{SagaInstance, SagaStatus, StepRecord};
use super::wire::{Action, ReplyOutcome, SagaCommand, SagaReply};
use crate::backend::Backend;
use crate::enqueue::Outbox;
use crate::error::{Error, Result};
use crate::inbox::{Handler, HandlerError, ReceivedEvent};
use crate::message::Message;

/// How long finished sagas are kept by default.
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest wait before a compensation is sent again.
const MAX_COMPENSATION_DEADLINE: Duration = Duration::from_secs(300);

/// Told when a saga reaches a terminal state, inside the transaction that
/// records it: update your own rows (the order's status, say) through `tx`
/// and they commit with the saga's last transition.
///
/// ```
/// use outbox_core::saga::{SagaInstance, SagaListener};
/// use outbox_core::HandlerError;
/// struct MarkOrder;
///
/// #[async_trait::async_trait]
/// impl SagaListener for MarkOrder {
///     async fn on_finished(&self, saga: &SagaInstance, tx: &mut sqlx::PgConnection) -> Result<(), HandlerError> {
///         sqlx::query("UPDATE orders SET status = $2 WHERE id = $1")
///             .bind(saga.id).bind(saga.status.as_str()).execute(&mut *tx).await?;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait SagaListener<DB: Backend = Postgres>: Send + Sync + 'static {
    /// `saga` has just become completed, compensated or failed.
    async fn on_finished(&self, saga: &SagaInstance, tx: &mut DB::Connection) -> Result<(), HandlerError>;
}

/// Runs sagas: persists each instance, sends its commands through the
/// outbox, and consumes its participants' replies as an inbox [`Handler`].
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> anyhow::Result<()> {
/// use outbox_core::saga::{SagaDefinition, SagaOrchestrator, SagaStep};
/// use outbox_core::{ConsumerConfig, InboxConsumer, Outbox, OutboxConfig};
///
/// let config = OutboxConfig::default();
/// let outbox = Outbox::new(config.clone());
/// outbox.migrate(&pool).await?;
/// let saga = SagaDefinition::new("place-order", "orders.saga-replies")
///     .step(SagaStep::new("reserve", "inventory.commands", "inventory.reserve").compensate_with("inventory.release"))
///     .step(SagaStep::new("charge", "payments.commands", "payments.charge").compensate_with("payments.refund"));
/// let orchestrator = SagaOrchestrator::new(outbox, [saga])?;
///
/// // Start a saga in the same transaction as the order row.
/// let order_id = uuid::Uuid::now_v7();
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(order_id).execute(&mut *tx).await?;
/// orchestrator.start(&mut tx, "place-order", order_id, serde_json::json!({"sku": "A", "qty": 1})).await?;
/// tx.commit().await?;
///
/// // Consume replies and watch deadlines.
/// let shutdown = outbox_core::CancellationToken::new();
/// let replies = ConsumerConfig::new("localhost:9092", "orders-saga", &["orders.saga-replies"]);
/// let consumer = InboxConsumer::new(pool.clone(), &config, replies, orchestrator.clone())?;
/// tokio::spawn(orchestrator.clone().run_deadlines(pool.clone(), shutdown.clone()));
/// consumer.run(shutdown).await?;
/// # Ok(()) }
/// ```
///
/// `DB` is the database of the saga tables (and of the outbox it writes
/// to): PostgreSQL through [`new`](SagaOrchestrator::new), any
/// [`Backend`] through [`for_backend`](SagaOrchestrator::for_backend).
pub struct SagaOrchestrator<DB: Backend = Postgres> {
    inner: Arc<Inner<DB>>,
}

impl<DB: Backend> Clone for SagaOrchestrator<DB> {
    fn clone(&self) -> Self {
        SagaOrchestrator { inner: Arc::clone(&self.inner) }
    }
}

struct Inner<DB: Backend> {
    outbox: Outbox,
    sql: DB::SagaSql,
    sagas: HashMap<String, SagaDefinition>,
    listener: Option<Arc<dyn SagaListener<DB>>>,
    sweep_interval: Duration,
    retention: Option<Duration>,
}

impl<DB: Backend> Clone for Inner<DB> {
    fn clone(&self) -> Self {
        Inner {
            outbox: self.outbox.clone(),
            sql: self.sql.clone(),
            sagas: self.sagas.clone(),
            listener: self.listener.clone(),
            sweep_interval: self.sweep_interval,
            retention: self.retention,
        }
    }
}

/// A command to send: which step, do or undo, which send of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outgoing {
    step: usize,
    action: Action,
    attempt: i32,
}

/// Where a transition leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Send(Outgoing),
    Finish(SagaStatus),
}

impl SagaOrchestrator<Postgres> {
    /// An orchestrator for `sagas` on PostgreSQL, writing to `outbox` (whose
    /// configuration also names the saga tables). Every definition is
    /// validated.
    pub fn new(outbox: Outbox, sagas: impl IntoIterator<Item = SagaDefinition>) -> Result<Self> {
        Self::for_backend(outbox, sagas)
    }
}

impl<DB: Backend> SagaOrchestrator<DB> {
    /// [`new`](SagaOrchestrator::new) on any [`Backend`]:
    /// `SagaOrchestrator::<sqlx::Postgres>::for_backend(outbox, sagas)`.
    pub fn for_backend(outbox: Outbox, sagas: impl IntoIterator<Item = SagaDefinition>) -> Result<Self> {
        let mut map = HashMap::new();
        for saga in sagas {
            saga.validate()?;
            let name = saga.name.clone();
            if map.insert(name.clone(), saga).is_some() {
                return Err(Error::Config(format!("two sagas are named {name:?}")));
            }
        }
        let sql = DB::saga_sql(outbox.config());
        Ok(SagaOrchestrator {
            inner: Arc::new(Inner {
                outbox,
                sql,
                sagas: map,
                listener: None,
                sweep_interval: Duration::from_secs(1),
                retention: Some(DEFAULT_RETENTION),
            }),
        })
    }

    /// Calls `listener` whenever a saga reaches a terminal state.
    pub fn with_listener(mut self, listener: impl SagaListener<DB>) -> Self {
        Arc::make_mut(&mut self.inner).listener = Some(Arc::new(listener));
        self
    }

    /// How often [`run_deadlines`](Self::run_deadlines) looks for sagas past
    /// their deadline (default 1 s).
    pub fn with_sweep_interval(mut self, every: Duration) -> Self {
        Arc::make_mut(&mut self.inner).sweep_interval = every;
        self
    }

    /// How long [`run_deadlines`](Self::run_deadlines) keeps completed and
    /// compensated sagas (and their history) before deleting them; `None`
    /// keeps them forever. Default 7 days. Failed sagas are never deleted.
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        Arc::make_mut(&mut self.inner).retention = retention;
        self
    }

    /// The definition registered under `name`.
    pub fn definition(&self, name: &str) -> Option<&SagaDefinition> {
        self.inner.sagas.get(name)
    }

    /// Starts saga `saga_type` as instance `id` with `data`, in the caller's
    /// transaction: the instance row and its first command commit with the
    /// caller's own writes, or not at all.
    pub async fn start(&self, tx: &mut DB::Connection, saga_type: &str, id: Uuid, data: Value) -> Result<()> {
        let def = self.inner.sagas.get(saga_type).ok_or_else(|| Error::UnknownSaga(saga_type.to_owned()))?;
        let first = &def.steps[0];
        let inserted = DB::insert_saga(&self.inner.sql, tx, id, saga_type, &data, first.deadline).await;
        if let Err(e) = inserted {
            let duplicate = e.as_database_error().is_some_and(|d| d.is_unique_violation());
            return Err(if duplicate { Error::SagaExists(id) } else { Error::Database(e) });
        }
        self.send(tx, def, id, &data, Outgoing { step: 0, action: Action::Execute, attempt: 1 }).await?;
        metrics::counter!("outbox_saga_started_total", "saga" => saga_type.to_owned()).increment(1);
        Ok(())
    }

    /// Applies one participant reply in `tx` (the inbox transaction when the
    /// orchestrator runs as a [`Handler`]). A reply that no longer matches
    /// what the saga waits for (late, or answering an earlier send) is
    /// ignored.
    pub async fn apply_reply(&self, tx: &mut DB::Connection, reply: &SagaReply) -> Result<(), HandlerError> {
        let Some(mut instance) = self.lock(tx, reply.saga_id).await? else {
            return Err(HandlerError::permanent(format!("reply for unknown saga {}", reply.saga_id)));
        };
        let def = self.def(&instance)?;
        let waiting_for = match instance.status {
            SagaStatus::Running => Action::Execute,
            SagaStatus::Compensating => Action::Compensate,
            _ => {
                tracing::debug!(saga_id = %instance.id, status = %instance.status, "reply after the saga ended: ignored");
                return Ok(());
            }
        };
        if reply.step != instance.step || reply.action != waiting_for {
            tracing::debug!(saga_id = %instance.id, step = reply.step, action = reply.action.as_str(),
                "reply no longer awaited: ignored");
            return Ok(());
        }
        let outcome = match reply.outcome {
            ReplyOutcome::Succeeded => "succeeded",
            ReplyOutcome::Failed => "failed",
        };
        self.finish_history(tx, &instance, def, reply.action, outcome, reply.reason.as_deref()).await?;
        if let (Value::Object(into), Value::Object(from)) = (&mut instance.data, &reply.data) {
            into.extend(from.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let next = match (reply.action, reply.outcome) {
            (Action::Execute, ReplyOutcome::Succeeded) => match usize::try_from(instance.step + 1) {
                Ok(n) if n < def.steps.len() => Next::Send(Outgoing { step: n, action: Action::Execute, attempt: 1 }),
                _ => Next::Finish(SagaStatus::Completed),
            },
            (Action::Execute, ReplyOutcome::Failed) => {
                instance.reason = reply.reason.clone().or_else(|| Some("step failed".into()));
                compensate_from(def, instance.step - 1)
            }
            (Action::Compensate, ReplyOutcome::Succeeded) => compensate_from(def, instance.step - 1),
            (Action::Compensate, ReplyOutcome::Failed) => {
                instance.reason = Some(format!(
                    "compensation of {} refused: {}",
                    def.steps[usize::try_from(instance.step).unwrap_or(0)].name,
                    reply.reason.as_deref().unwrap_or("no reason given")
                ));
                Next::Finish(SagaStatus::Failed)
            }
        };
        self.advance(tx, def, &mut instance, next).await
    }

    /// Handles every saga past its deadline, at most `limit` of them, each
    /// in its own transaction. A step that timed out is compensated (itself
    /// included: it may have taken effect late); a compensation that timed
    /// out is sent again. Returns how many sagas it moved.
    pub async fn expire_deadlines(&self, pool: &Pool<DB>, limit: i64) -> Result<usize> {
        let mut moved = 0;
        for _ in 0..limit {
            let mut tx = pool.begin().await?;
            // The due saga, read and locked in one statement.
            let Some(instance) = DB::lock_due_saga(&self.inner.sql, &mut tx).await? else { break };
            let id = instance.id;
            match self.expire(&mut tx, instance).await {
                Ok(()) => {
                    tx.commit().await?;
                    moved += 1;
                }
                Err(e) => {
                    tracing::warn!(saga_id = %id, error = %e, "could not handle an expired saga deadline; will retry");
                    tx.rollback().await?;
                    break;
                }
            }
        }
        Ok(moved)
    }

    async fn expire(&self, tx: &mut DB::Connection, mut instance: SagaInstance) -> Result<(), HandlerError> {
        let id = instance.id;
        let def = self.def(&instance)?;
        self.finish_history(tx, &instance, def, action_of(instance.status), "timed_out", None).await?;
        let step_name = &def.steps[usize::try_from(instance.step).unwrap_or(0)].name;
        let next = if instance.status == SagaStatus::Compensating {
            tracing::info!(saga_id = %id, step = %step_name, attempt = instance.attempt, "compensation timed out: sending it again");
            Next::Send(Outgoing {
                step: usize::try_from(instance.step).unwrap_or(0),
                action: Action::Compensate,
                attempt: instance.attempt + 1,
            })
        } else {
            tracing::info!(saga_id = %id, step = %step_name, "step timed out: compensating");
            instance.reason = Some(format!("step {step_name} timed out"));
            compensate_from(def, instance.step)
        };
        self.advance(tx, def, &mut instance, next).await
    }

    /// Sweeps deadlines every [`with_sweep_interval`](Self::with_sweep_interval)
    /// until `shutdown` is cancelled; every tenth sweep it also publishes the
    /// `outbox_sagas` gauges and deletes finished sagas past their
    /// [retention](Self::with_retention). Run it beside the reply consumer;
    /// several replicas may run it at once.
    pub async fn run_deadlines(self, pool: Pool<DB>, shutdown: CancellationToken) {
        for sweep in 0_u64.. {
            if let Err(e) = self.expire_deadlines(&pool, 1000).await {
                tracing::warn!(error = %e, "saga deadline sweep failed");
            }
            // Counting and cleaning up scan more: every tenth sweep.
            if sweep % 10 == 0 {
                match self.counts(&pool).await {
                    Ok(counts) => record_gauges(&counts),
                    Err(e) => tracing::debug!(error = %e, "could not count sagas"),
                }
                if let Some(retention) = self.inner.retention {
                    match self.cleanup(&pool, retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "deleted finished sagas past their retention"),
                        Err(e) => tracing::warn!(error = %e, "saga cleanup failed"),
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.inner.sweep_interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// The saga `id`, if it exists.
    ///
    /// `executor` is a pool, a connection or a transaction.
    pub async fn status<'e, E>(&self, executor: E, id: Uuid) -> Result<Option<SagaInstance>>
    where
        E: sqlx::Acquire<'e, Database = DB>,
    {
        let mut conn = executor.acquire().await?;
        Ok(DB::select_saga(&self.inner.sql, &mut conn, id).await?)
    }

    /// What saga `id` sent and how each command ended, oldest first.
    pub async fn history<'e, E>(&self, executor: E, id: Uuid) -> Result<Vec<StepRecord>>
    where
        E: sqlx::Acquire<'e, Database = DB>,
    {
        let mut conn = executor.acquire().await?;
        Ok(DB::saga_history(&self.inner.sql, &mut conn, id).await?)
    }

    /// How many sagas of each type are in each status.
    pub async fn counts<'e, E>(&self, executor: E) -> Result<BTreeMap<(String, SagaStatus), i64>>
    where
        E: sqlx::Acquire<'e, Database = DB>,
    {
        let mut conn = executor.acquire().await?;
        let rows = DB::saga_counts(&self.inner.sql, &mut conn).await?;
        Ok(rows.into_iter().filter_map(|(t, s, n)| Some(((t, SagaStatus::parse(&s)?), n))).collect())
    }

    /// Deletes completed and compensated sagas (with their history) last
    /// moved more than `older_than` ago; failed ones stay for an operator.
    /// Returns how many were deleted.
    pub async fn cleanup(&self, pool: &Pool<DB>, older_than: Duration) -> Result<u64> {
        super::delete_in_batches::<DB>(pool, &self.inner.sql, false, older_than).await
    }

    async fn lock(&self, tx: &mut DB::Connection, id: Uuid) -> Result<Option<SagaInstance>, HandlerError> {
        Ok(DB::lock_saga(&self.inner.sql, tx, id).await?)
    }

    /// The definition `instance` runs under, which must know its step.
    fn def(&self, instance: &SagaInstance) -> Result<&SagaDefinition, HandlerError> {
        let def = self.inner.sagas.get(&instance.saga_type).ok_or_else(|| {
            HandlerError::retry(format!(
                "saga {} is of type {:?}, which this orchestrator does not know (an older or newer deployment?)",
                instance.id, instance.saga_type
            ))
        })?;
        if usize::try_from(instance.step).map_or(true, |step| step >= def.steps.len()) {
            return Err(HandlerError::retry(format!(
                "saga {} is at step {} but {:?} has {} steps here (an older or newer deployment?)",
                instance.id,
                instance.step,
                def.name,
                def.steps.len()
            )));
        }
        Ok(def)
    }

    /// Records the state `next` leads to and sends its command.
    async fn advance(
        &self,
        tx: &mut DB::Connection,
        def: &SagaDefinition,
        instance: &mut SagaInstance,
        next: Next,
    ) -> Result<(), HandlerError> {
        let (status, step, attempt, deadline) = match next {
            Next::Send(Outgoing { step, action, attempt }) => {
                let status = if action == Action::Execute { SagaStatus::Running } else { SagaStatus::Compensating };
                let mut deadline = def.steps[step].deadline;
                if action == Action::Compensate {
                    deadline = (deadline * u32::try_from(attempt).unwrap_or(1)).min(MAX_COMPENSATION_DEADLINE);
                }
                (status, i32::try_from(step).unwrap_or(i32::MAX), attempt, Some(deadline))
            }
            Next::Finish(status) => (status, instance.step, instance.attempt, None),
        };
        instance.status = status;
        instance.step = step;
        instance.attempt = attempt;
        DB::update_saga(&self.inner.sql, tx, instance, deadline).await?;
        match next {
            Next::Send(outgoing) => {
                self.send(tx, def, instance.id, &instance.data, outgoing).await.map_err(HandlerError::retry)?
            }
            Next::Finish(status) => {
                tracing::info!(saga_id = %instance.id, saga = %def.name, %status, "saga finished");
                if let Some(listener) = &self.inner.listener {
                    listener.on_finished(instance, tx).await?;
                }
            }
        }
        Ok(())
    }

    /// Enqueues the command for `step` and opens its history row.
    async fn send(
        &self,
        tx: &mut DB::Connection,
        def: &SagaDefinition,
        id: Uuid,
        data: &Value,
        Outgoing { step, action, attempt }: Outgoing,
    ) -> Result<()> {
        let s = &def.steps[step];
        let event_type = match action {
            Action::Execute => s.command.as_str(),
            Action::Compensate => s.compensation.as_deref().unwrap_or(s.command.as_str()),
        };
        let step = i32::try_from(step).unwrap_or(i32::MAX);
        let command = SagaCommand {
            saga_id: id,
            saga_type: def.name.clone(),
            step,
            step_name: s.name.clone(),
            action,
            attempt,
            reply_to: def.reply_topic.clone(),
            data: data.clone(),
        };
        let message = Message::json(&s.topic, event_type, &command)?.with_key(id.to_string());
        self.inner.outbox.enqueue_on::<DB>(tx, &message).await?;
        DB::open_history(&self.inner.sql, tx, id, step, &s.name, action, attempt).await?;
        Ok(())
    }

    /// Closes the open history row of the current command.
    async fn finish_history(
        &self,
        tx: &mut DB::Connection,
        instance: &SagaInstance,
        def: &SagaDefinition,
        action: Action,
        outcome: &str,
        reason: Option<&str>,
    ) -> Result<(), HandlerError> {
        let seconds =
            DB::close_history(&self.inner.sql, tx, instance.id, instance.step, action, outcome, reason).await?;
        if let Some(seconds) = seconds {
            let step = def.steps.get(usize::try_from(instance.step).unwrap_or(0)).map(|s| s.name.clone());
            metrics::histogram!("outbox_saga_step_seconds", "saga" => def.name.clone(),
                "step" => step.unwrap_or_default(), "action" => action.as_str(), "outcome" => outcome.to_owned())
            .record(seconds);
        }
        Ok(())
    }
}

/// The next compensation at or below step `from`, or the end.
fn compensate_from(def: &SagaDefinition, from: i32) -> Next {
    match def.compensation_at_or_before(from) {
        Some(step) => Next::Send(Outgoing { step, action: Action::Compensate, attempt: 1 }),
        None => Next::Finish(SagaStatus::Compensated),
    }
}

fn action_of(status: SagaStatus) -> Action {
    if status == SagaStatus::Compensating {
        Action::Compensate
    } else {
        Action::Execute
    }
}

fn record_gauges(counts: &BTreeMap<(String, SagaStatus), i64>) {
    let types: std::collections::BTreeSet<&String> = counts.keys().map(|(t, _)| t).collect();
    for saga in types {
        for status in SagaStatus::ALL {
            let n = counts.get(&(saga.clone(), status)).copied().unwrap_or(0);
            metrics::gauge!("outbox_sagas", "saga" => saga.clone(), "status" => status.as_str()).set(n as f64);
        }
    }
}

/// The orchestrator consumes its reply topic as an inbox handler: each
/// transition commits with the reply's inbox row.
#[async_trait]
impl<DB: Backend> Handler<DB> for SagaOrchestrator<DB> {
    async fn handle(&self, event: &ReceivedEvent, tx: &mut DB::Connection) -> Result<(), HandlerError> {
        let reply: SagaReply = event.json().map_err(|e| HandlerError::permanent(format!("not a saga reply: {e}")))?;
        self.apply_reply(tx, &reply).await
    }
}
