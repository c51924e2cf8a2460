//! The fast path, answered in real time: take one unit of stock in Redis
//! (one atomic Lua script), then record the purchase durably — a row and its
//! outbox event in one transaction — before answering the buyer. If the
//! purchase cannot be recorded, the unit goes back to Redis.

use outbox::{Message, Outbox};
use redis::aio::MultiplexedConnection;
use redis::Script;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// Takes one unit if there is one: 1 taken, 0 sold out.
const TAKE: &str = r"
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left > 0 then
  redis.call('DECR', KEYS[1])
  return 1
end
return 0";

/// Gives one unit back, once per purchase (the marker makes it idempotent,
/// so a redelivered rejection never returns stock twice): 1 returned, 0
/// returned before.
const GIVE_BACK: &str = r"
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', 604800) then
  redis.call('INCR', KEYS[1])
  redis.call('INCR', KEYS[3])
  return 1
end
return 0";

/// The Redis keys of one sale. The `{…}` hash tag keeps them in one slot,
/// so the scripts also work on Redis Cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    tag: String,
}

impl Keys {
    pub fn new(sale: &str) -> Self {
        Keys { tag: format!("{{{sale}}}") }
    }
    pub fn stock(&self) -> String {
        format!("{}:stock", self.tag)
    }
    pub fn returned(&self) -> String {
        format!("{}:returned", self.tag)
    }
    fn marker(&self, purchase: Uuid) -> String {
        format!("{}:returned:{purchase}", self.tag)
    }
}

/// What the slow path receives for each accepted purchase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Purchase {
    pub purchase_id: Uuid,
    pub user_id: i64,
}

/// The buyer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Stock taken and the purchase recorded: it will be confirmed or
    /// refunded by the slow path.
    Accepted,
    /// No stock left in Redis.
    SoldOut,
    /// Could not record the purchase; its unit went back. Try again.
    Failed,
}

/// Returns one unit for `purchase`, at most once.
pub async fn give_back(redis: &mut MultiplexedConnection, keys: &Keys, purchase: Uuid) -> redis::RedisResult<bool> {
    let n: i32 = Script::new(GIVE_BACK)
        .key(keys.stock())
        .key(keys.marker(purchase))
        .key(keys.returned())
        .invoke_async(redis)
        .await?;
    Ok(n == 1)
}

/// One buyer's attempt.
pub async fn buy(
    mut redis: MultiplexedConnection,
    pool: &PgPool,
    outbox: &Outbox,
    keys: &Keys,
    schema: &str,
    topic: &str,
    user_id: i64,
) -> Answer {
    let taken: redis::RedisResult<i32> = Script::new(TAKE).key(keys.stock()).invoke_async(&mut redis).await;
    match taken {
        Ok(1) => {}
        Ok(_) => return Answer::SoldOut,
        Err(e) => {
            tracing::warn!(error = %e, "redis unavailable");
            return Answer::Failed;
        }
    }
    let purchase = Purchase { purchase_id: Uuid::now_v7(), user_id };
    match record(pool, outbox, schema, topic, &purchase).await {
        Ok(()) => Answer::Accepted,
        Err(e) => {
            tracing::warn!(error = %e, "could not record a purchase; giving its unit back");
            // A commit whose answer was lost may still have happened: only
            // give the unit back if the purchase is really not there.
            let recorded: Result<bool, sqlx::Error> =
                sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {schema}.purchases WHERE purchase_id = $1)"))
                    .bind(purchase.purchase_id)
                    .fetch_one(pool)
                    .await;
            match recorded {
                Ok(true) => Answer::Accepted,
                Ok(false) => {
                    if let Err(e) = give_back(&mut redis, keys, purchase.purchase_id).await {
                        tracing::error!(error = %e, purchase = %purchase.purchase_id, "could not give a unit back");
                    }
                    Answer::Failed
                }
                Err(e) => {
                    tracing::error!(error = %e, purchase = %purchase.purchase_id, "purchase state unknown");
                    Answer::Failed
                }
            }
        }
    }
}

/// The purchase row and its event, in one transaction.
async fn record(pool: &PgPool, outbox: &Outbox, schema: &str, topic: &str, purchase: &Purchase) -> outbox::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("INSERT INTO {schema}.purchases (purchase_id, user_id) VALUES ($1, $2)"))
        .bind(purchase.purchase_id)
        .bind(purchase.user_id)
        .execute(&mut *tx)
        .await?;
    let event = Message::json(topic, "purchase.accepted", purchase)?.with_key(purchase.user_id.to_string());
    outbox.enqueue(&mut *tx, &event).await?;
    tx.commit().await?;
    Ok(())
}
