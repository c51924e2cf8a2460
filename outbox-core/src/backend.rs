//! The databases an outbox can live in.
//!
//! Calls that take the caller's connection or transaction
//! ([`Outbox::enqueue`](crate::Outbox::enqueue) and
//! [`Outbox::enqueue_all`](crate::Outbox::enqueue_all)) are generic over the
//! executor's database, which must be a [`Backend`]. Each backend's
//! statements, their binds and their row decoding live in its own module
//! under `store/`.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::config::OutboxConfig;
use crate::error::Result;
use crate::message::Message;
use crate::store::PgWriteSql;

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
pub trait Backend: sqlx::Database + sealed::Sealed + WriteEvents + InboxRows {}

impl Backend for sqlx::Postgres {}

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
