//! Privileges on PostgreSQL: the grant script and the relay's start-up
//! check (`has_schema_privilege`, `has_table_privilege`).

use async_trait::async_trait;
use sqlx::{PgPool, Postgres};

use crate::backend::Privileges;
use crate::config::OutboxConfig;
use crate::error::Result;

#[async_trait]
impl Privileges for Postgres {
    const GRANTS: &'static str = include_str!("../../../migrations/postgres/grants.sql");

    async fn missing_for_relay(pool: &PgPool, config: &OutboxConfig) -> Result<Vec<String>> {
        let schema = config.schema();
        // A schema not there yet is the migrations' business too.
        let usage: Option<bool> = sqlx::query_scalar(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) \
             THEN has_schema_privilege($1, 'USAGE') END",
        )
        .bind(schema.as_str())
        .fetch_one(pool)
        .await?;
        match usage {
            None => return Ok(Vec::new()),
            Some(false) => return Ok(vec![format!("USAGE on schema {}", schema.quoted())]),
            Some(true) => {}
        }
        let rw = "SELECT, INSERT, UPDATE, DELETE";
        let outbox = config.outbox_table();
        let tables = [
            (config.qualified(outbox), rw),
            (config.qualified(config.dead_letter_table()), rw),
            (config.qualified_suffix(outbox, "published"), rw),
            (config.qualified_suffix(outbox, "leases"), rw),
            (config.qualified_suffix(outbox, "relays"), rw),
            (config.qualified_suffix(outbox, "migrations"), "SELECT"),
        ];
        let mut missing = Vec::new();
        for (table, privileges) in tables {
            for privilege in privileges.split(", ") {
                // A table not there yet is the migrations' business, not ours.
                let has: Option<bool> = sqlx::query_scalar(
                    "SELECT CASE WHEN to_regclass($1) IS NULL THEN NULL ELSE has_table_privilege($1, $2) END",
                )
                .bind(&table)
                .bind(privilege)
                .fetch_one(pool)
                .await?;
                if has == Some(false) {
                    missing.push(format!("{privilege} on {table}"));
                }
            }
        }
        Ok(missing)
    }
}
