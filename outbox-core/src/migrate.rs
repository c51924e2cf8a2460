//! Schema migrations for the outbox and inbox tables.
//!
//! The SQL lives in this package's `migrations/<backend>/` directories and
//! is compiled in. Applied versions are tracked in `<schema>.<outbox>_migrations`,
//! apart from the application's own `_sqlx_migrations`, so the library never
//! collides with the migrations of the service that embeds it. Concurrent
//! migrators (several replicas starting at once) serialise on an advisory lock.

use sqlx::Pool;

use crate::backend::Backend;
use crate::config::OutboxConfig;
use crate::error::Result;

/// One migration: version, description and templated SQL.
#[doc(hidden)]
#[derive(Debug)]
pub struct Migration {
    pub(crate) version: i64,
    pub(crate) description: &'static str,
    pub(crate) sql: &'static str,
}

/// The newest schema version this build knows on PostgreSQL (see
/// [`latest_version`] for any backend).
pub const LATEST_VERSION: i64 = 7;

/// Renders a migration's SQL for `config`'s (checked) identifiers.
pub(crate) fn render(sql: &str, config: &OutboxConfig) -> String {
    sql.replace("{migrations}", &config.qualified_suffix(config.outbox_table(), "migrations"))
        .replace("{outbox_name}", config.outbox_table().as_str())
        .replace("{inbox_name}", config.inbox_table().as_str())
        .replace("{dead_letter_name}", config.dead_letter_table().as_str())
        .replace("{outbox}", &config.qualified(config.outbox_table()))
        .replace("{dead_letter}", &config.qualified(config.dead_letter_table()))
        .replace("{inbox_dead_letter}", &config.qualified(config.inbox_dead_letter_table()))
        .replace("{inbox}", &config.qualified(config.inbox_table()))
        .replace("{leases}", &config.qualified_suffix(config.outbox_table(), "leases"))
        .replace("{published}", &config.qualified_suffix(config.outbox_table(), "published"))
        .replace("{relays}", &config.qualified_suffix(config.outbox_table(), "relays"))
        .replace("{saga_history}", &config.qualified_suffix(config.outbox_table(), "saga_history"))
        .replace("{saga_commands_name}", &format!("{}_saga_commands", config.outbox_table()))
        .replace("{saga_commands}", &config.qualified_suffix(config.outbox_table(), "saga_commands"))
        .replace("{saga_name}", &format!("{}_saga", config.outbox_table()))
        .replace("{saga}", &config.qualified_suffix(config.outbox_table(), "saga"))
        .replace("{slots}", &config.slots().to_string())
        .replace("{schema}", &config.schema().quoted())
}

/// Applies every migration not yet applied, each in the same transaction as
/// its tracking row. Returns the versions applied by this call.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> outbox_core::Result<()> {
/// let applied = outbox_core::migrate::migrate_verbose(&pool, &outbox_core::OutboxConfig::default()).await?;
/// println!("applied {applied:?}");
/// # Ok(()) }
/// ```
pub async fn migrate_verbose<DB: Backend>(pool: &Pool<DB>, config: &OutboxConfig) -> Result<Vec<i64>> {
    DB::apply(pool, config).await
}

/// Applies every migration not yet applied (see [`migrate_verbose`]).
pub async fn migrate<DB: Backend>(pool: &Pool<DB>, config: &OutboxConfig) -> Result<()> {
    migrate_verbose(pool, config).await.map(drop)
}

/// The schema version applied in the database, `None` when the outbox has
/// never been migrated there.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> outbox_core::Result<()> {
/// use outbox_core::{migrate, OutboxConfig};
/// if migrate::applied_version(&pool, &OutboxConfig::default()).await? != Some(migrate::LATEST_VERSION) {
///     eprintln!("run `outbox-relay migrate` first");
/// }
/// # Ok(()) }
/// ```
pub async fn applied_version<DB: Backend>(pool: &Pool<DB>, config: &OutboxConfig) -> Result<Option<i64>> {
    DB::applied_version(pool, config).await
}

/// The newest schema version this build knows for backend `DB`.
///
/// ```
/// assert_eq!(outbox_core::migrate::latest_version::<sqlx::Postgres>(), outbox_core::migrate::LATEST_VERSION);
/// ```
pub fn latest_version<DB: Backend>() -> i64 {
    DB::MIGRATIONS.last().map_or(0, |m| m.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder() {
        let config = OutboxConfig::default().with_schema("billing").unwrap();
        let migrations = <sqlx::Postgres as crate::backend::SchemaMigrations>::MIGRATIONS;
        for m in migrations {
            let sql = render(m.sql, &config);
            assert!(!sql.contains('{') || sql.contains("'{}'"), "unrendered placeholder in {}", m.version);
            assert!(sql.contains("\"billing\"."));
        }
        assert_eq!(migrations.last().map(|m| m.version), Some(LATEST_VERSION));
    }
}
