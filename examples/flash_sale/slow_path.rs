//! The slow path, through the outbox and Kafka: has this user bought
//! already, take the unit in the database, create the order — all in one
//! inbox transaction. A rejected purchase is recorded with a
//! `purchase.rejected` event in the same transaction; the restock consumer
//! gives its unit back to Redis, once.

use std::time::Duration;

use async_trait::async_trait;
use outbox::{Handler, HandlerError, Message, Outbox, ReceivedEvent};
use redis::aio::MultiplexedConnection;
use sqlx::PgConnection;

use super::fast_path::{give_back, Keys, Purchase};

/// Applies accepted purchases.
pub struct Orders {
    pub schema: String,
    pub outbox: Outbox,
    pub rejections_topic: String,
    /// Stands for the slow operations of a real shop (fraud check, ERP).
    pub work: Duration,
}

#[async_trait]
impl Handler for Orders {
    async fn handle(&self, event: &ReceivedEvent, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let purchase: Purchase = event.json().map_err(HandlerError::permanent)?;
        let s = &self.schema;
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        let first = sqlx::query(&format!(
            "INSERT INTO {s}.orders (purchase_id, user_id) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING"
        ))
        .bind(purchase.purchase_id)
        .bind(purchase.user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let reason = if !first {
            Some("already bought")
        } else {
            let taken = sqlx::query(&format!("UPDATE {s}.stock SET remaining = remaining - 1 WHERE remaining > 0"))
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if taken {
                None
            } else {
                sqlx::query(&format!("DELETE FROM {s}.orders WHERE purchase_id = $1"))
                    .bind(purchase.purchase_id)
                    .execute(&mut *tx)
                    .await?;
                Some("sold out in the database")
            }
        };
        if let Some(reason) = reason {
            sqlx::query(&format!("INSERT INTO {s}.rejections (purchase_id, user_id, reason) VALUES ($1, $2, $3)"))
                .bind(purchase.purchase_id)
                .bind(purchase.user_id)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            let event = Message::json(&self.rejections_topic, "purchase.rejected", &purchase)?
                .with_key(purchase.user_id.to_string());
            self.outbox.enqueue(&mut *tx, &event).await?;
        }
        Ok(())
    }
}

/// Gives the units of rejected purchases back to Redis. Its effect is in
/// Redis, not in the inbox transaction, so it is made idempotent there
/// (a per-purchase marker set in the same Lua script).
pub struct Restock {
    pub redis: MultiplexedConnection,
    pub keys: Keys,
}

#[async_trait]
impl Handler for Restock {
    async fn handle(&self, event: &ReceivedEvent, _tx: &mut PgConnection) -> Result<(), HandlerError> {
        let purchase: Purchase = event.json().map_err(HandlerError::permanent)?;
        let mut redis = self.redis.clone();
        let returned = give_back(&mut redis, &self.keys, purchase.purchase_id).await?;
        if !returned {
            tracing::info!(purchase = %purchase.purchase_id, "unit already given back");
        }
        Ok(())
    }
}
