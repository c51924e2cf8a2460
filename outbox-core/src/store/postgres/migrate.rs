//! Migrations on PostgreSQL: the SQL files of `migrations/postgres/`, the
//! tracking table, and the advisory lock concurrent migrators serialise on.

use async_trait::async_trait;
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use crate::backend::SchemaMigrations;
use crate::config::OutboxConfig;
use crate::error::{Error, Result};
use crate::migrate::{render, Migration};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "outbox and dead-letter tables",
        sql: include_str!("../../../migrations/postgres/0001_outbox.sql"),
    },
    Migration {
        version: 2,
        description: "inbox tables",
        sql: include_str!("../../../migrations/postgres/0002_inbox.sql"),
    },
    Migration {
        version: 3,
        description: "slots and leases",
        sql: include_str!("../../../migrations/postgres/0003_slots_and_leases.sql"),
    },
    Migration {
        version: 4,
        description: "quarantine of poisoned keys",
        sql: include_str!("../../../migrations/postgres/0004_quarantine.sql"),
    },
    Migration {
        version: 5,
        description: "retention of published events",
        sql: include_str!("../../../migrations/postgres/0005_retention.sql"),
    },
    Migration {
        version: 6,
        description: "queue tuning: no slot index, fixed autovacuum thresholds",
        sql: include_str!("../../../migrations/postgres/0006_queue_tuning.sql"),
    },
    Migration {
        version: 7,
        description: "saga instances, history and participant commands",
        sql: include_str!("../../../migrations/postgres/0007_sagas.sql"),
    },
];

/// Runs several statements (a migration file). Through `Executor::execute`,
/// whose boxed future is `Send`: the future of `raw_sql(..).execute(..)`
/// cannot be proven `Send` inside the trait method's boxed future.
async fn run_script(conn: &mut PgConnection, sql: &str) -> sqlx::Result<()> {
    sqlx::Executor::execute(conn, sqlx::raw_sql(sql)).await.map(drop)
}

#[async_trait]
impl SchemaMigrations for Postgres {
    const MIGRATIONS: &'static [Migration] = MIGRATIONS;

    async fn apply(pool: &PgPool, config: &OutboxConfig) -> Result<Vec<i64>> {
        let latest = MIGRATIONS.last().map_or(0, |m| m.version);
        let schema = config.schema().quoted();
        let tracking = format!("{schema}.\"{}_migrations\"", config.outbox_table());
        let lock_key = format!("outbox-migrate:{}.{}", config.schema(), config.outbox_table());

        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(&lock_key).execute(&mut *tx).await?;
        run_script(
            &mut tx,
            &format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; \
                 CREATE TABLE IF NOT EXISTS {tracking} (version bigint PRIMARY KEY, description text NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT now())"
            ),
        )
        .await?;
        let applied: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT version FROM {tracking} ORDER BY version")).fetch_all(&mut *tx).await?;
        if let Some(&found) = applied.iter().max() {
            if found > latest {
                return Err(Error::SchemaTooNew { found, known: latest });
            }
        }
        let mut newly = Vec::new();
        for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            run_script(&mut tx, &render(m.sql, config)).await?;
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

    async fn applied_version(pool: &PgPool, config: &OutboxConfig) -> Result<Option<i64>> {
        let tracking = format!("{}.{}_migrations", config.schema(), config.outbox_table());
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(&tracking).fetch_one(pool).await?;
        if !exists {
            return Ok(None);
        }
        let quoted = format!("{}.\"{}_migrations\"", config.schema().quoted(), config.outbox_table());
        Ok(sqlx::query_scalar(&format!("SELECT max(version) FROM {quoted}")).fetch_one(pool).await?)
    }
}
