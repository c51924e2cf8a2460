//! The databases an outbox can live in.
//!
//! Calls that take the caller's connection or transaction
//! ([`Outbox::enqueue`](crate::Outbox::enqueue) and
//! [`Outbox::enqueue_all`](crate::Outbox::enqueue_all)) are generic over the
//! executor's database, which must be a [`Backend`]. Each backend's
//! statements, their binds and their row decoding live in its own module
//! under `store/`.

use std::sync::OnceLock;

use async_trait::async_trait;

use crate::config::OutboxConfig;
use crate::error::Result;
use crate::message::Message;
use crate::store::PgWriteSql;

/// A database an outbox can live in: `sqlx::Postgres` today.
///
/// Sealed: backends are added inside this crate, one module each (see
/// `docs/adding-a-backend.md`).
///
/// ```
/// fn takes_any_backend<DB: outbox_core::Backend>() {}
/// takes_any_backend::<sqlx::Postgres>();
/// ```
#[async_trait]
pub trait Backend: sqlx::Database + sealed::Sealed {
    /// Writes one message, already validated, through `executor`.
    #[doc(hidden)]
    async fn insert_one<'e, E>(statements: &Statements, executor: E, message: &Message) -> Result<()>
    where
        E: sqlx::Executor<'e, Database = Self> + 'e;

    /// Writes several messages, already validated, in one statement.
    #[doc(hidden)]
    async fn insert_many<'e, E>(statements: &Statements, executor: E, messages: &[Message]) -> Result<()>
    where
        E: sqlx::Executor<'e, Database = Self> + 'e;
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
