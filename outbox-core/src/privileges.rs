//! Least-privilege roles: the grants each role needs, and the check the
//! relay runs before it starts.
//!
//! Three roles besides the owner that runs the migrations: the application
//! (may only insert events), the relay (reads, marks, deletes and
//! dead-letters events, keeps leases; no DDL) and an idempotent consumer
//! (its inbox tables). [`grants_sql`] renders the grants for a configured
//! outbox; `outbox-relay grants` prints them.

use sqlx::{Pool, Postgres};

use crate::backend::Backend;
use crate::config::{Ident, OutboxConfig};
use crate::error::Result;

/// The roles to grant to (checked identifiers, so the script is safe to run).
#[derive(Debug, Clone)]
pub struct Roles {
    /// The application's role: `INSERT` on the outbox only.
    pub app: Ident,
    /// The relay's role.
    pub relay: Ident,
    /// An idempotent consumer's role.
    pub consumer: Ident,
}

/// The `GRANT` statements for `config`'s tables and `roles`, on PostgreSQL
/// (see [`grants_sql_for`] for any backend).
///
/// ```
/// use outbox_core::privileges::{grants_sql, Roles};
/// use outbox_core::{Ident, OutboxConfig};
/// let roles = Roles { app: Ident::new("orders_app")?, relay: Ident::new("outbox_relay")?, consumer: Ident::new("billing")? };
/// let sql = grants_sql(&OutboxConfig::default(), &roles);
/// assert!(sql.contains(r#"GRANT INSERT ON "outbox"."outbox" TO "orders_app";"#));
/// # Ok::<(), outbox_core::Error>(())
/// ```
pub fn grants_sql(config: &OutboxConfig, roles: &Roles) -> String {
    grants_sql_for::<Postgres>(config, roles)
}

/// The grant statements of backend `DB` for `config`'s tables and `roles`.
///
/// ```
/// use outbox_core::privileges::{grants_sql, grants_sql_for, Roles};
/// use outbox_core::{Ident, OutboxConfig};
/// let roles = Roles { app: Ident::new("a")?, relay: Ident::new("r")?, consumer: Ident::new("c")? };
/// let config = OutboxConfig::default();
/// assert_eq!(grants_sql_for::<sqlx::Postgres>(&config, &roles), grants_sql(&config, &roles));
/// # Ok::<(), outbox_core::Error>(())
/// ```
pub fn grants_sql_for<DB: Backend>(config: &OutboxConfig, roles: &Roles) -> String {
    crate::migrate::render(DB::GRANTS, config)
        .replace("{app_role}", &roles.app.quoted())
        .replace("{relay_role}", &roles.relay.quoted())
        .replace("{consumer_role}", &roles.consumer.quoted())
}

/// What the connected role lacks to run the relay, as readable lines
/// (`DELETE on "outbox"."outbox"`); empty when it has everything. A schema
/// or tables that do not exist yet are not reported (migrations create them).
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> outbox_core::Result<()> {
/// use outbox_core::{privileges, OutboxConfig};
/// let missing = privileges::missing_for_relay(&pool, &OutboxConfig::default()).await?;
/// assert!(missing.is_empty(), "the relay's role lacks: {}", missing.join(", "));
/// # Ok(()) }
/// ```
pub async fn missing_for_relay<DB: Backend>(pool: &Pool<DB>, config: &OutboxConfig) -> Result<Vec<String>> {
    DB::missing_for_relay(pool, config).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_rendered() {
        let roles = Roles {
            app: Ident::new("app").unwrap(),
            relay: Ident::new("relay").unwrap(),
            consumer: Ident::new("consumer").unwrap(),
        };
        let sql = grants_sql(&OutboxConfig::default().with_schema("shop").unwrap(), &roles);
        assert!(!sql.contains('{'), "{sql}");
        assert!(sql.contains(r#"ON "shop"."outbox_migrations" TO "relay""#), "{sql}");
    }
}
