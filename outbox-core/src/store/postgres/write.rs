//! The write side on PostgreSQL: the insert statements, their binds, and
//! how a duplicate id is reported.

use async_trait::async_trait;
use sqlx::types::Json;
use sqlx::Postgres;

use crate::backend::{Statements, WriteEvents};
use crate::config::OutboxConfig;
use crate::error::{Error, Result};
use crate::message::Message;

const INSERT_COLUMNS: &str =
    "id, topic, key, event_type, source, content_type, payload, headers, traceparent, tracestate, occurred_at";

/// The insert statements of one outbox.
#[derive(Debug)]
pub struct PgWriteSql {
    insert_one: String,
    insert_many: String,
    id_constraint: String,
}

impl PgWriteSql {
    pub(crate) fn new(config: &OutboxConfig) -> Self {
        let outbox = config.qualified(config.outbox_table());
        // With notify, one wake-up per statement, in the same transaction
        // (delivered to listeners when, and only if, it commits).
        let wakeup = |insert: String| {
            if config.notify() {
                format!(
                    "WITH ins AS ({insert} RETURNING 1) SELECT pg_notify('{}', '') FROM (SELECT 1 FROM ins LIMIT 1) n",
                    config.wakeup_channel()
                )
            } else {
                insert
            }
        };
        PgWriteSql {
            insert_one: wakeup(format!(
                "INSERT INTO {outbox} ({INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            )),
            insert_many: wakeup(format!(
                "INSERT INTO {outbox} ({INSERT_COLUMNS}) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::bytea[], $8::jsonb[], $9::text[], $10::text[], $11::timestamptz[])"
            )),
            id_constraint: format!("{}_id_key", config.outbox_table()),
        }
    }

    /// Turns a unique violation on the id into [`Error::DuplicateId`] naming
    /// the offending id (PostgreSQL reports it as `Key (id)=(…) already exists.`).
    fn map_duplicate(&self, e: sqlx::Error, fallback: impl FnOnce() -> uuid::Uuid) -> Error {
        let Some(db) = e.as_database_error() else {
            return Error::Database(e);
        };
        if !db.is_unique_violation() || db.constraint() != Some(&self.id_constraint) {
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

#[async_trait]
impl WriteEvents for Postgres {
    async fn insert_one<'e, E>(statements: &Statements, executor: E, message: &Message) -> Result<()>
    where
        E: sqlx::Executor<'e, Database = Self> + 'e,
    {
        let sql = statements.postgres();
        let result = sqlx::query(&sql.insert_one)
            .bind(message.id)
            .bind(&message.topic)
            .bind(&message.key)
            .bind(&message.event_type)
            .bind(message.source.as_deref().unwrap_or(statements.config().source()))
            .bind(&message.content_type)
            .bind(&message.payload)
            .bind(Json(&message.headers))
            .bind(&message.traceparent)
            .bind(&message.tracestate)
            .bind(message.time)
            .execute(executor)
            .await;
        result.map(drop).map_err(|e| sql.map_duplicate(e, || message.id))
    }

    async fn insert_on(statements: &Statements, conn: &mut sqlx::PgConnection, message: &Message) -> Result<()> {
        Self::insert_one(statements, conn, message).await
    }

    async fn insert_many<'e, E>(statements: &Statements, executor: E, messages: &[Message]) -> Result<()>
    where
        E: sqlx::Executor<'e, Database = Self> + 'e,
    {
        let sql = statements.postgres();
        let col = |f: fn(&Message) -> Option<String>| messages.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<uuid::Uuid> = messages.iter().map(|m| m.id).collect();
        let default_source = statements.config().source();
        let sources: Vec<&str> = messages.iter().map(|m| m.source.as_deref().unwrap_or(default_source)).collect();
        let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
        let headers: Vec<Json<&std::collections::BTreeMap<String, String>>> =
            messages.iter().map(|m| Json(&m.headers)).collect();
        let times: Vec<chrono::DateTime<chrono::Utc>> = messages.iter().map(|m| m.time).collect();
        let result = sqlx::query(&sql.insert_many)
            .bind(&ids)
            .bind(col(|m| Some(m.topic.clone())))
            .bind(col(|m| m.key.clone()))
            .bind(col(|m| Some(m.event_type.clone())))
            .bind(sources)
            .bind(col(|m| m.content_type.clone()))
            .bind(payloads)
            .bind(headers)
            .bind(col(|m| m.traceparent.clone()))
            .bind(col(|m| m.tracestate.clone()))
            .bind(times)
            .execute(executor)
            .await;
        result.map(drop).map_err(|e| sql.map_duplicate(e, || ids[0]))
    }
}
