//! Setting the sale up, waiting for the slow path to settle, and the
//! invariants: no oversell, at most one purchase per buyer, and Redis stock
//! + sold in the database = the initial stock.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use outbox::{Outbox, TopicCreation};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use sqlx::PgPool;

use super::fast_path::Keys;
use super::Args;

/// Fresh tables, stock in both stores, topics.
pub async fn set_up(
    args: &Args,
    pool: &PgPool,
    outbox: &Outbox,
    redis: &mut MultiplexedConnection,
    keys: &Keys,
) -> anyhow::Result<()> {
    let s = args.schema();
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {s}, {s}_outbox CASCADE")).execute(pool).await?;
    outbox.migrate(pool).await?;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {s};
         CREATE TABLE {s}.stock (remaining bigint NOT NULL CHECK (remaining >= 0));
         CREATE TABLE {s}.purchases (purchase_id uuid PRIMARY KEY, user_id bigint NOT NULL,
             accepted_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE {s}.orders (purchase_id uuid PRIMARY KEY, user_id bigint NOT NULL UNIQUE,
             created_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE {s}.rejections (purchase_id uuid PRIMARY KEY, user_id bigint NOT NULL, reason text NOT NULL);
         INSERT INTO {s}.stock VALUES ({});",
        args.items
    ))
    .execute(pool)
    .await?;
    let day = 24 * 3600;
    let () = redis.set_ex(keys.stock(), args.items, day).await?;
    let () = redis.set_ex(keys.returned(), 0, day).await?;

    let topics = [args.topic("purchases"), args.topic("rejections")];
    TopicCreation { partitions: 3, replication: 1 }.create(&args.brokers, &[&topics[0], &topics[1]]).await?;
    Ok(())
}

/// Purchases the slow path has decided (ordered or rejected).
pub async fn handled(args: &Args, pool: &PgPool) -> anyhow::Result<i64> {
    let s = args.schema();
    Ok(sqlx::query_scalar(&format!("SELECT (SELECT count(*) FROM {s}.orders) + (SELECT count(*) FROM {s}.rejections)"))
        .fetch_one(pool)
        .await?)
}

/// Waits until every accepted purchase is decided, every rejection's unit
/// is back in Redis and the outbox is empty.
pub async fn wait_settled(
    args: &Args,
    pool: &PgPool,
    redis: &mut MultiplexedConnection,
    keys: &Keys,
    accepted: i64,
    started: Instant,
) -> anyhow::Result<()> {
    let s = args.schema();
    loop {
        let handled = handled(args, pool).await?;
        let rejected: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {s}.rejections")).fetch_one(pool).await?;
        let pending: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {s}_outbox.outbox")).fetch_one(pool).await?;
        let returned: i64 = redis.get(keys.returned()).await?;
        if handled >= accepted && returned >= rejected && pending == 0 {
            return Ok(());
        }
        if started.elapsed() > args.timeout {
            bail!("not settled within {:?}: handled {handled} of {accepted}, {returned} of {rejected} units back, {pending} events pending", args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct Report {
    pub sold: i64,
    pub rejected: i64,
    pub redis_stock: i64,
    by_reason: Vec<(String, i64)>,
    pub violations: Vec<String>,
}

impl Report {
    pub fn print(&self) {
        for (reason, n) in &self.by_reason {
            println!("   rejected on the slow path: {reason}: {n} (unit given back to Redis)");
        }
        println!("   invariants checked: no oversell (sold <= items, database stock = items - sold); one order per");
        println!("   buyer; Redis stock + sold = items; every accepted purchase recorded and decided; every rejected");
        println!("   unit given back exactly once; nothing dead-lettered.");
        for v in &self.violations {
            println!("   VIOLATION: {v}");
        }
    }
}

pub async fn check(
    args: &Args,
    pool: &PgPool,
    redis: &mut MultiplexedConnection,
    keys: &Keys,
    accepted: i64,
) -> anyhow::Result<Report> {
    let s = args.schema();
    let one = |sql: String| async move { sqlx::query_scalar::<_, i64>(&sql).fetch_one(pool).await.context("query") };
    let sold = one(format!("SELECT count(*) FROM {s}.orders")).await?;
    let buyers = one(format!("SELECT count(DISTINCT user_id) FROM {s}.orders")).await?;
    let rejected = one(format!("SELECT count(*) FROM {s}.rejections")).await?;
    let recorded = one(format!("SELECT count(*) FROM {s}.purchases")).await?;
    let remaining = one(format!("SELECT remaining FROM {s}.stock")).await?;
    let dead = one(format!(
        "SELECT (SELECT count(*) FROM {s}_outbox.inbox_dead_letter) + (SELECT count(*) FROM {s}_outbox.outbox_dead_letter)"
    ))
    .await?;
    let redis_stock: i64 = redis.get(keys.stock()).await?;
    let returned: i64 = redis.get(keys.returned()).await?;
    let by_reason: Vec<(String, i64)> =
        sqlx::query_as(&format!("SELECT reason, count(*) FROM {s}.rejections GROUP BY reason ORDER BY reason"))
            .fetch_all(pool)
            .await?;
    let items = args.items;
    let mut violations = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            violations.push(what);
        }
    };
    expect(sold <= items, format!("oversold: {sold} orders for {items} items"));
    expect(remaining == items - sold, format!("database stock {remaining} != {items} - {sold} sold"));
    expect(buyers == sold, format!("{sold} orders but only {buyers} distinct buyers"));
    expect(redis_stock + sold == items, format!("Redis stock {redis_stock} + sold {sold} != {items}"));
    expect(recorded == accepted, format!("{accepted} purchases accepted but {recorded} recorded"));
    expect(sold + rejected == accepted, format!("{accepted} accepted but {sold} sold + {rejected} rejected"));
    expect(returned == rejected, format!("{rejected} rejections but {returned} units given back"));
    expect(dead == 0, format!("{dead} dead-lettered messages"));
    Ok(Report { sold, rejected, redis_stock, by_reason, violations })
}
