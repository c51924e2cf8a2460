//! The user's side of the consumer: a handler and how it reports failure.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::Postgres;

use crate::backend::Backend;

use super::ReceivedEvent;

/// The error type of the standard library, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A handler's failure, with what to do about it.
///
/// Any `std::error::Error` converts into [`HandlerError::Retry`] with `?`.
#[derive(Debug)]
pub enum HandlerError {
    /// Try again later (up to the configured attempts).
    Retry(BoxError),
    /// Never going to work: dead-letter at once.
    Permanent(BoxError),
}

impl HandlerError {
    /// A permanent failure from any error or message.
    pub fn permanent(e: impl Into<BoxError>) -> Self {
        HandlerError::Permanent(e.into())
    }
    /// A retryable failure from any error or message.
    pub fn retry(e: impl Into<BoxError>) -> Self {
        HandlerError::Retry(e.into())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::Retry(Box::new(e))
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerError::Retry(e) => write!(f, "{e}"),
            HandlerError::Permanent(e) => write!(f, "permanent: {e}"),
        }
    }
}

/// Applies events. Runs inside the inbox transaction: do the event's database
/// effect through `tx` and it commits atomically with the inbox row.
///
/// `DB` is the database of the inbox (and of `tx`); PostgreSQL unless named.
///
/// ```
/// use outbox_core::{Handler, HandlerError, ReceivedEvent};
/// struct CountOrders;
///
/// #[async_trait::async_trait]
/// impl Handler for CountOrders {
///     async fn handle(&self, event: &ReceivedEvent, tx: &mut sqlx::PgConnection) -> Result<(), HandlerError> {
///         let order: serde_json::Value = event.json()?;
///         sqlx::query("UPDATE stats SET orders = orders + 1, last = $1")
///             .bind(order["id"].as_i64())
///             .execute(&mut *tx)
///             .await?;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Handler<DB: Backend = Postgres>: Send + Sync + 'static {
    /// Applies one event through `tx`. Must not commit or roll back `tx`.
    async fn handle(&self, event: &ReceivedEvent, tx: &mut DB::Connection) -> Result<(), HandlerError>;
}

/// A shared handler is a handler (so tests and services can keep a handle).
#[async_trait]
impl<DB: Backend, H: Handler<DB>> Handler<DB> for Arc<H> {
    async fn handle(&self, event: &ReceivedEvent, tx: &mut DB::Connection) -> Result<(), HandlerError> {
        (**self).handle(event, tx).await
    }
}
