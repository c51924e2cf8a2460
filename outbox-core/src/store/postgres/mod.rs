//! PostgreSQL: every statement of the outbox, one file per concern, each
//! statement beside its binds and its row decoding.

mod admin;
mod inbox;
mod migrate;
mod privileges;
mod relay;
mod saga;
mod write;

pub use relay::{listen_for_wakeups, queue_session_options, PgStore, QUEUE_SESSION_SETTINGS};
pub(crate) use write::PgWriteSql;

/// SQLSTATE classes 08 (connection exception) and 57P (operator
/// intervention: shutdown, crash, terminated backend), 40001 (serialization
/// failure) and 40P01 (deadlock detected).
pub(crate) fn is_transient(error: &dyn sqlx::error::DatabaseError) -> bool {
    error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some_and(|pg| {
        let code = pg.code();
        code.starts_with("08") || code.starts_with("57P") || code == "40001" || code == "40P01"
    })
}
