//! The write side: enqueue messages inside the caller's transaction.

use std::sync::Arc;

use crate::backend::{Backend, Statements, WriteEvents};
use crate::config::OutboxConfig;
use crate::error::Result;
use crate::message::Message;

/// Handle for writing to one outbox. Cheap to clone; build it once at start-up.
///
/// Enqueue inside your own transaction: the event becomes visible to the
/// relay when, and only when, your transaction commits.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> outbox_core::Result<()> {
/// use outbox_core::{Message, Outbox, OutboxConfig};
///
/// let outbox = Outbox::new(OutboxConfig::default());
/// outbox.migrate(&pool).await?;
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id, total) VALUES ($1, $2)").bind(7_i64).bind(1299_i64)
///     .execute(&mut *tx).await?;
/// let event = Message::json("orders", "order.placed", &serde_json::json!({"id": 7}))?.with_key("7");
/// outbox.enqueue(&mut *tx, &event).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Outbox {
    statements: Arc<Statements>,
}

impl Outbox {
    /// A handle for the outbox described by `config`.
    pub fn new(config: OutboxConfig) -> Self {
        Outbox { statements: Arc::new(Statements::new(config)) }
    }

    /// The configuration.
    pub fn config(&self) -> &OutboxConfig {
        self.statements.config()
    }

    /// Creates or upgrades the outbox and inbox tables (see [`crate::migrate`]).
    pub async fn migrate<DB: Backend>(&self, pool: &sqlx::Pool<DB>) -> Result<()> {
        crate::migrate::migrate(pool, self.config()).await
    }

    /// Writes one message through `executor` (pass `&mut *tx`): a
    /// connection or transaction of any [`Backend`], or a pool.
    ///
    /// Validation errors are returned before anything is sent to the database.
    pub async fn enqueue<'e, E>(&self, executor: E, message: &Message) -> Result<()>
    where
        E: sqlx::Executor<'e> + 'e,
        E::Database: Backend,
    {
        message.validate(self.config().max_payload_bytes())?;
        <E::Database as WriteEvents>::insert_one(&self.statements, executor, message).await
    }

    /// [`enqueue`](Self::enqueue) on a connection, for code generic over
    /// the backend.
    pub(crate) async fn enqueue_on<DB: Backend>(&self, conn: &mut DB::Connection, message: &Message) -> Result<()> {
        message.validate(self.config().max_payload_bytes())?;
        DB::insert_on(&self.statements, conn, message).await
    }

    /// Writes many messages in one statement through `executor`.
    ///
    /// Every message is validated first; if one is invalid nothing is written.
    pub async fn enqueue_all<'e, E>(&self, executor: E, messages: &[Message]) -> Result<()>
    where
        E: sqlx::Executor<'e> + 'e,
        E::Database: Backend,
    {
        if messages.is_empty() {
            return Ok(());
        }
        for m in messages {
            m.validate(self.config().max_payload_bytes())?;
        }
        <E::Database as WriteEvents>::insert_many(&self.statements, executor, messages).await
    }
}
