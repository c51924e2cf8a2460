//! The databases an outbox can live in.
//!
//! Every public call that takes the caller's pool, connection or
//! transaction (enqueueing, the inbox consumer and its handler, sagas,
//! migrations, admin, the privilege check) is generic over its database,
//! which must be a [`Backend`], PostgreSQL by default. A backend implements
//! one hidden trait per concern; its statements, their binds and their row
//! decoding live in its own module under `store/`.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::config::OutboxConfig;
use crate::error::Result;
use crate::message::Message;
use crate::migrate::Migration;
use crate::saga::{Action, SagaInstance, StepRecord};
use crate::store::PgWriteSql;
use crate::store::{DeadLetterEntry, Status};

/// A database an outbox can live in: `sqlx::Postgres` today.
///
/// Sealed: backends are added inside this crate, one module each (see
/// `docs/adding-a-backend.md`). Its supertraits, one per concern, are the
/// statements a backend implements.
///
/// ```
/// fn takes_any_backend<DB: outbox_core::Backend>() {}
/// takes_any_backend::<sqlx::Postgres>();
/// ```
pub trait Backend:
    sqlx::Database + sealed::Sealed + WriteEvents + InboxRows + SagaRows + SchemaMigrations + AdminQueries + Privileges
{
}

impl Backend for sqlx::Postgres {}

/// The schema: this backend's migrations and how they are applied (each in
/// a transaction with its tracking row, concurrent migrators serialised).
#[doc(hidden)]
#[async_trait]
pub trait SchemaMigrations: sqlx::Database {
    /// Every migration, oldest first.
    const MIGRATIONS: &'static [Migration];

    /// Applies those not yet applied; returns their versions.
    async fn apply(pool: &sqlx::Pool<Self>, config: &OutboxConfig) -> Result<Vec<i64>>;

    /// The newest version applied, `None` if never migrated.
    async fn applied_version(pool: &sqlx::Pool<Self>, config: &OutboxConfig) -> Result<Option<i64>>;
}

/// Least privilege: the backend's grant script (templated like the
/// migrations, plus `{app_role}`, `{relay_role}`, `{consumer_role}`) and
/// what the connected role lacks to run the relay.
#[doc(hidden)]
#[async_trait]
pub trait Privileges: sqlx::Database {
    /// The grant script's template.
    const GRANTS: &'static str;

    /// Readable lines naming each missing privilege; tables or a schema
    /// not created yet are not reported (migrations create them).
    async fn missing_for_relay(pool: &sqlx::Pool<Self>, config: &OutboxConfig) -> Result<Vec<String>>;
}

/// What operators ask and do (`OutboxAdmin`): status, dead letters, retry,
/// replay, discard. Actions naming ids are all or nothing.
#[doc(hidden)]
#[async_trait]
pub trait AdminQueries: sqlx::Database {
    /// The tables' names, built once per admin handle.
    type AdminSql: Send + Sync + std::fmt::Debug + 'static;

    /// Builds them for the tables `config` names.
    fn admin_sql(config: &OutboxConfig) -> Self::AdminSql;

    /// Counts, relays and their slots.
    async fn outbox_status(pool: &sqlx::Pool<Self>, sql: &Self::AdminSql) -> Result<Status>;

    /// The oldest `limit` dead letters.
    async fn list_dead_letters(
        pool: &sqlx::Pool<Self>,
        sql: &Self::AdminSql,
        limit: i64,
    ) -> Result<Vec<DeadLetterEntry>>;

    /// One dead letter with its payload and headers.
    async fn show_dead_letter(pool: &sqlx::Pool<Self>, sql: &Self::AdminSql, id: Uuid) -> Result<DeadLetterEntry>;

    /// Moves dead letters (`None`: all) back into the outbox at their
    /// original sequence numbers.
    async fn move_back(pool: &sqlx::Pool<Self>, sql: &Self::AdminSql, ids: Option<&[Uuid]>) -> Result<u64>;

    /// Appends retained events to the outbox again.
    async fn replay_ids(pool: &sqlx::Pool<Self>, sql: &Self::AdminSql, ids: &[Uuid]) -> Result<u64>;

    /// Appends the retained events written in `[since, until)` again.
    async fn replay_range(
        pool: &sqlx::Pool<Self>,
        sql: &Self::AdminSql,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        topic: Option<&str>,
    ) -> Result<u64>;

    /// Deletes dead letters for good.
    async fn discard(pool: &sqlx::Pool<Self>, sql: &Self::AdminSql, ids: &[Uuid]) -> Result<u64>;
}

/// The write side: the caller's inserts into the outbox.
#[doc(hidden)]
#[async_trait]
pub trait WriteEvents: sqlx::Database {
    /// Writes one message, already validated, through `executor`.
    async fn insert_one<'e, E>(statements: &Statements, executor: E, message: &Message) -> Result<()>
    where
        E: sqlx::Executor<'e, Database = Self> + 'e;

    /// Writes several messages, already validated, in one statement.
    async fn insert_many<'e, E>(statements: &Statements, executor: E, messages: &[Message]) -> Result<()>
    where
        E: sqlx::Executor<'e, Database = Self> + 'e;

    /// [`insert_one`](Self::insert_one) on a connection, for code generic
    /// over the backend.
    async fn insert_on(statements: &Statements, conn: &mut Self::Connection, message: &Message) -> Result<()>;
}

/// The consume side: inbox rows (one per consumer group and event id) and
/// the inbox's dead letters, written in the handler's transaction.
#[doc(hidden)]
#[async_trait]
pub trait InboxRows: sqlx::Database {
    /// The statements, built once per consumer.
    type InboxSql: Send + Sync + std::fmt::Debug + 'static;

    /// Builds the statements for the tables `config` names.
    fn inbox_sql(config: &OutboxConfig) -> Self::InboxSql;

    /// Records one event; false if the group had seen it already.
    async fn record(
        sql: &Self::InboxSql,
        conn: &mut Self::Connection,
        group: &str,
        id: Uuid,
        topic: &str,
    ) -> sqlx::Result<bool>;

    /// Records many events in one statement; returns the ids seen for the
    /// first time.
    async fn record_many(
        sql: &Self::InboxSql,
        conn: &mut Self::Connection,
        group: &str,
        ids: &[Uuid],
        topics: &[&str],
    ) -> sqlx::Result<HashSet<Uuid>>;

    /// Writes a message the consumer gives up on.
    async fn dead_letter(
        sql: &Self::InboxSql,
        conn: &mut Self::Connection,
        row: &InboxDeadLetter<'_>,
    ) -> sqlx::Result<()>;

    /// Deletes up to `limit` inbox rows older than `horizon`.
    async fn cleanup_batch(
        sql: &Self::InboxSql,
        pool: &sqlx::Pool<Self>,
        horizon: Duration,
        limit: i64,
    ) -> sqlx::Result<u64>;
}

/// A message the consumer gives up on, as the inbox's dead-letter table
/// keeps it.
#[doc(hidden)]
#[derive(Debug)]
pub struct InboxDeadLetter<'a> {
    pub group: &'a str,
    pub event_id: Option<Uuid>,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: &'a BTreeMap<String, String>,
    pub error: &'a str,
    pub attempts: u32,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Postgres {}
}

/// The write statements of one outbox, built for each backend the first
/// time a connection of that backend is used.
#[doc(hidden)]
#[derive(Debug)]
pub struct Statements {
    config: OutboxConfig,
    postgres: OnceLock<PgWriteSql>,
}

impl Statements {
    pub(crate) fn new(config: OutboxConfig) -> Self {
        Statements { config, postgres: OnceLock::new() }
    }

    pub(crate) fn config(&self) -> &OutboxConfig {
        &self.config
    }

    pub(crate) fn postgres(&self) -> &PgWriteSql {
        self.postgres.get_or_init(|| PgWriteSql::new(&self.config))
    }
}

/// Saga state: the orchestrator's instances and history, and the
/// participants' memory of the commands they handled. Every call that
/// takes a connection runs in the caller's transaction.
#[doc(hidden)]
#[async_trait]
pub trait SagaRows: sqlx::Database {
    /// The statements, built once per orchestrator or participant.
    type SagaSql: Send + Sync + std::fmt::Debug + Clone + 'static;

    /// Builds the statements for the tables `config` names.
    fn saga_sql(config: &OutboxConfig) -> Self::SagaSql;

    /// Inserts a new running instance at step 0.
    async fn insert_saga(
        sql: &Self::SagaSql,
        conn: &mut Self::Connection,
        id: Uuid,
        saga_type: &str,
        data: &Value,
        deadline: Duration,
    ) -> sqlx::Result<()>;

    /// The instance, locked until the transaction ends.
    async fn lock_saga(
        sql: &Self::SagaSql,
        conn: &mut Self::Connection,
        id: Uuid,
    ) -> sqlx::Result<Option<SagaInstance>>;

    /// One running or compensating instance past its deadline, locked,
    /// skipping those another transaction holds.
    async fn lock_due_saga(sql: &Self::SagaSql, conn: &mut Self::Connection) -> sqlx::Result<Option<SagaInstance>>;

    /// Stores the instance's new state; `deadline` from now, `None` for none.
    async fn update_saga(
        sql: &Self::SagaSql,
        conn: &mut Self::Connection,
        instance: &SagaInstance,
        deadline: Option<Duration>,
    ) -> sqlx::Result<()>;

    /// The instance, unlocked.
    async fn select_saga(
        sql: &Self::SagaSql,
        conn: &mut Self::Connection,
        id: Uuid,
    ) -> sqlx::Result<Option<SagaInstance>>;

    /// The instance's history, oldest first.
    async fn saga_history(sql: &Self::SagaSql, conn: &mut Self::Connection, id: Uuid) -> sqlx::Result<Vec<StepRecord>>;

    /// (saga type, status, count) for every pair present.
    async fn saga_counts(sql: &Self::SagaSql, conn: &mut Self::Connection) -> sqlx::Result<Vec<(String, String, i64)>>;

    /// Opens a history row for a command sent (the instance is locked).
    async fn open_history(
        sql: &Self::SagaSql,
        conn: &mut Self::Connection,
        id: Uuid,
        step: i32,
        step_name: &str,
        action: Action,
        attempt: i32,
    ) -> sqlx::Result<()>;

    /// Closes the open history row of (id, step, action); returns the
    /// seconds it was open, `None` if none was open.
    async fn close_history(
        sql: &Self::SagaSql,
        conn: &mut Self::Connection,
        id: Uuid,
        step: i32,
        action: Action,
        outcome: &str,
        reason: Option<&str>,
    ) -> sqlx::Result<Option<f64>>;

    /// Claims (saga, step, action) for a participant; false if claimed before.
    async fn claim_command(sql: &Self::SagaSql, conn: &mut Self::Connection, command: CommandKey)
        -> sqlx::Result<bool>;

    /// The recorded (outcome, reason, data) of a command, locked.
    async fn lock_command(
        sql: &Self::SagaSql,
        conn: &mut Self::Connection,
        command: CommandKey,
    ) -> sqlx::Result<Option<CommandRecord>>;

    /// Records how a command ended.
    async fn record_command(
        sql: &Self::SagaSql,
        conn: &mut Self::Connection,
        command: CommandKey,
        outcome: &str,
        reason: Option<&str>,
        data: Option<&Value>,
    ) -> sqlx::Result<()>;

    /// Marks step `step`'s execute as refused before it ran; false if it
    /// had been claimed already.
    async fn tombstone_command(
        sql: &Self::SagaSql,
        conn: &mut Self::Connection,
        saga_id: Uuid,
        step: i32,
    ) -> sqlx::Result<bool>;

    /// Deletes up to `limit` finished instances (or, with `commands`,
    /// participants' command rows) older than `older_than`.
    async fn delete_old(
        sql: &Self::SagaSql,
        pool: &sqlx::Pool<Self>,
        commands: bool,
        older_than: Duration,
        limit: i64,
    ) -> sqlx::Result<u64>;
}

/// One command of one saga, as participants remember it.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct CommandKey {
    pub saga_id: Uuid,
    pub step: i32,
    pub action: Action,
}

/// What a participant recorded of a command: outcome, reason, data.
#[doc(hidden)]
pub type CommandRecord = (Option<String>, Option<String>, Option<Value>);
