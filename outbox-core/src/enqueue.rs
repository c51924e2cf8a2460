//! The write side: enqueue messages inside the caller's transaction.

use std::sync::Arc;

use sqlx::types::Json;
use sqlx::PgExecutor;

use crate::config::OutboxConfig;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::store::PgSql;

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
    config: OutboxConfig,
    sql: Arc<PgSql>,
}

impl Outbox {
    /// A handle for the outbox described by `config`.
    pub fn new(config: OutboxConfig) -> Self {
        let sql = Arc::new(PgSql::new(&config));
        Outbox { config, sql }
    }

    /// The configuration.
    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// Creates or upgrades the outbox and inbox tables (see [`crate::migrate`]).
    pub async fn migrate(&self, pool: &sqlx::PgPool) -> Result<()> {
        crate::migrate::migrate(pool, &self.config).await
    }

    /// Writes one message through `executor` (pass `&mut *tx`).
    ///
    /// Validation errors are returned before anything is sent to the database.
    pub async fn enqueue<'e, E: PgExecutor<'e>>(&self, executor: E, message: &Message) -> Result<()> {
        message.validate(self.config.max_payload_bytes())?;
        let result = sqlx::query(&self.sql.insert_one)
            .bind(message.id)
            .bind(&message.topic)
            .bind(&message.key)
            .bind(&message.event_type)
            .bind(message.source.as_deref().unwrap_or(self.config.source()))
            .bind(&message.content_type)
            .bind(&message.payload)
            .bind(Json(&message.headers))
            .bind(&message.traceparent)
            .bind(&message.tracestate)
            .bind(message.time)
            .execute(executor)
            .await;
        result.map(drop).map_err(|e| self.map_duplicate(e, || message.id))
    }

    /// Writes many messages in one statement through `executor`.
    ///
    /// Every message is validated first; if one is invalid nothing is written.
    pub async fn enqueue_all<'e, E: PgExecutor<'e>>(&self, executor: E, messages: &[Message]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        for m in messages {
            m.validate(self.config.max_payload_bytes())?;
        }
        let col = |f: fn(&Message) -> Option<String>| messages.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<uuid::Uuid> = messages.iter().map(|m| m.id).collect();
        let topics = col(|m| Some(m.topic.clone()));
        let keys = col(|m| m.key.clone());
        let types = col(|m| Some(m.event_type.clone()));
        let default_source = self.config.source().to_owned();
        let sources: Vec<String> =
            messages.iter().map(|m| m.source.clone().unwrap_or_else(|| default_source.clone())).collect();
        let content_types = col(|m| m.content_type.clone());
        let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
        let headers: Vec<Json<&std::collections::BTreeMap<String, String>>> =
            messages.iter().map(|m| Json(&m.headers)).collect();
        let traceparents = col(|m| m.traceparent.clone());
        let tracestates = col(|m| m.tracestate.clone());
        let times: Vec<chrono::DateTime<chrono::Utc>> = messages.iter().map(|m| m.time).collect();
        let result = sqlx::query(&self.sql.insert_many)
            .bind(&ids)
            .bind(topics)
            .bind(keys)
            .bind(types)
            .bind(sources)
            .bind(content_types)
            .bind(payloads)
            .bind(headers)
            .bind(traceparents)
            .bind(tracestates)
            .bind(times)
            .execute(executor)
            .await;
        result.map(drop).map_err(|e| self.map_duplicate(e, || ids[0]))
    }

    /// Turns a unique violation on the id into [`Error::DuplicateId`] naming
    /// the offending id (PostgreSQL reports it as `Key (id)=(…) already exists.`).
    fn map_duplicate(&self, e: sqlx::Error, fallback: impl FnOnce() -> uuid::Uuid) -> Error {
        let Some(db) = e.as_database_error() else {
            return Error::Database(e);
        };
        if !db.is_unique_violation() || db.constraint() != Some(&self.sql.id_constraint) {
            return Error::Database(e);
        }
        let reported = db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|pg| pg.detail())
            .and_then(|detail| detail.split_once("=(")?.1.split_once(')').map(|(id, _)| id.to_owned()))
            .and_then(|id| uuid::Uuid::parse_str(&id).ok());
        Error::DuplicateId(reported.unwrap_or_else(fallback))
    }
}
