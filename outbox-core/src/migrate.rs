//! Schema migrations for the outbox and inbox tables.
//!
//! The SQL lives in the repository's `migrations/postgres/` directory and is
//! compiled in. Applied versions are tracked in `<schema>.<outbox>_migrations`,
//! apart from the application's own `_sqlx_migrations`, so the library never
//! collides with the migrations of the service that embeds it. Concurrent
//! migrators (several replicas starting at once) serialise on an advisory lock.

use sqlx::{Connection, PgPool};

use crate::config::OutboxConfig;
use crate::error::{Error, Result};

/// One migration: version, description and templated SQL.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "outbox and dead-letter tables",
        sql: include_str!("../../migrations/postgres/0001_outbox.sql"),
    },
    Migration {
        version: 2,
        description: "inbox tables",
        sql: include_str!("../../migrations/postgres/0002_inbox.sql"),
    },
    Migration {
        version: 3,
        description: "slots and leases",
        sql: include_str!("../../migrations/postgres/0003_slots_and_leases.sql"),
    },
    Migration {
        version: 4,
        description: "quarantine of poisoned keys",
        sql: include_str!("../../migrations/postgres/0004_quarantine.sql"),
    },
    Migration {
        version: 5,
        description: "retention of published events",
        sql: include_str!("../../migrations/postgres/0005_retention.sql"),
    },
    Migration {
        version: 6,
        description: "queue tuning: no slot index, fixed autovacuum thresholds",
        sql: include_str!("../../migrations/postgres/0006_queue_tuning.sql"),
    },
    Migration {
        version: 7,
        description: "saga instances, history and participant commands",
        sql: include_str!("../../migrations/postgres/0007_sagas.sql"),
    },
];

/// The newest schema version this build knows.
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
pub async fn migrate_verbose(pool: &PgPool, config: &OutboxConfig) -> Result<Vec<i64>> {
    let schema = config.schema().quoted();
    let tracking = format!("{schema}.\"{}_migrations\"", config.outbox_table());
    let lock_key = format!("outbox-migrate:{}.{}", config.schema(), config.outbox_table());

    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(&lock_key).execute(&mut *tx).await?;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {tracking} (version bigint PRIMARY KEY, description text NOT NULL, \
         applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .execute(&mut *tx)
    .await?;
    let applied: Vec<i64> =
        sqlx::query_scalar(&format!("SELECT version FROM {tracking} ORDER BY version")).fetch_all(&mut *tx).await?;
    if let Some(&found) = applied.iter().max() {
        if found > LATEST_VERSION {
            return Err(Error::SchemaTooNew { found, known: LATEST_VERSION });
        }
    }
    let mut newly = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        sqlx::raw_sql(&render(m.sql, config)).execute(&mut *tx).await?;
        sqlx::query(&format!("INSERT INTO {tracking} (version, description) VALUES ($1, $2)"))
            .bind(m.version)
            .bind(m.description)
            .execute(&mut *tx)
            .await?;
        tracing::info!(version = m.version, description = m.description, "applied outbox migration");
        newly.push(m.version);
    }
    tx.commit().await?;
    Ok(newly)
}

/// Applies every migration not yet applied (see [`migrate_verbose`]).
pub async fn migrate(pool: &PgPool, config: &OutboxConfig) -> Result<()> {
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
pub async fn applied_version(pool: &PgPool, config: &OutboxConfig) -> Result<Option<i64>> {
    let tracking = format!("{}.{}_migrations", config.schema(), config.outbox_table());
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(&tracking).fetch_one(pool).await?;
    if !exists {
        return Ok(None);
    }
    let quoted = format!("{}.\"{}_migrations\"", config.schema().quoted(), config.outbox_table());
    Ok(sqlx::query_scalar(&format!("SELECT max(version) FROM {quoted}")).fetch_one(pool).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder() {
        let config = OutboxConfig::default().with_schema("billing").unwrap();
        for m in MIGRATIONS {
            let sql = render(m.sql, &config);
            assert!(!sql.contains('{') || sql.contains("'{}'"), "unrendered placeholder in {}", m.version);
            assert!(sql.contains("\"billing\"."));
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(LATEST_VERSION));
    }
}
