//! The saga demo: three services — orders (the orchestrator), inventory and
//! payments — each a separate process with its own database and its own
//! relay, talking only through Kafka. Places N orders with configurable
//! rates of stock shortage, card decline and participant timeout, can kill
//! and restart one service (or relay) mid-run, then checks the invariants
//! across the three databases.
//!
//! ```text
//! cargo build --bins --examples && target/debug/examples/saga_demo --orders 300 --kill payments
//! ```
//!
//! Last line: `saga demo: orders=N completed=X compensated=Y invariants=ok`
//! (exit 0), or `invariants=FAILED` after the list of what broke (exit 1).

mod check;
#[path = "../common/child.rs"]
mod child;
#[path = "../common/cli.rs"]
mod cli;
mod processes;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use outbox::TopicCreation;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use processes::{Service, Services};

/// The three services, in start order.
pub const SERVICES: [&str; 3] = ["inventory", "payments", "orders"];

#[derive(Parser, Debug, Clone)]
struct Args {
    /// PostgreSQL URL; each service gets its own database beside it
    /// (`<name>_orders`, `<name>_inventory`, `<name>_payments`).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/outbox_demo"
    )]
    database_url: String,
    /// Kafka brokers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Orders to place.
    #[arg(long, default_value_t = 300)]
    orders: u32,
    /// Orders placed per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Share of orders for a SKU that runs out, in percent.
    #[arg(long, default_value_t = 10)]
    shortage_percent: u32,
    /// Share of orders paid with a card that is declined, in percent.
    #[arg(long, default_value_t = 10)]
    decline_percent: u32,
    /// Share of orders whose payment answers after the deadline, in percent.
    #[arg(long, default_value_t = 5)]
    timeout_percent: u32,
    /// How long the orchestrator waits for each reply.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    step_deadline: Duration,
    /// Seed of the order plan.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Kill (SIGKILL) this process mid-run and restart it: `orders`,
    /// `inventory`, `payments`, or `relay-orders`, `relay-inventory`,
    /// `relay-payments`. May be given more than once.
    #[arg(long)]
    kill: Vec<String>,
    /// Arm a failpoint in a process, e.g. `orders:inbox-after-commit@30`
    /// (abort after the 30th reply applied, before its offset is stored) or
    /// `relay-payments:relay-after-publish@5`; the process is restarted when
    /// it aborts there. May be given more than once.
    #[arg(long)]
    crash: Vec<String>,
    /// When to kill: after this share of the orders has been placed.
    #[arg(long, default_value_t = 0.4)]
    kill_at: f64,
    /// How long a killed or crashed process stays down.
    /// A consumer back before its dead predecessor's 6 s session timeout
    /// has run out gets the partitions when the broker evicts the dead
    /// member, so any down time works.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    down_for: Duration,
    /// Directory of the `saga_service` example and the `outbox-relay`
    /// binary (default: next to this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the services' and relays' logs go (default: a new temporary
    /// directory, printed at the start).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Give up after this long.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    // The host starts after the last `@`: a pasted password may hold `/` or `?`.
    let scheme_end = url.find("://").context("DATABASE_URL has no scheme")? + 3;
    let host_start = url[scheme_end..].rfind('@').map_or(scheme_end, |i| scheme_end + i + 1);
    let (base, query) = match url[host_start..].find('?') {
        Some(i) => (&url[..host_start + i], Some(&url[host_start + i + 1..])),
        None => (url, None),
    };
    let path_start = base[host_start..].find('/').map_or(base.len(), |i| host_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out = format!("{out}?{q}");
    }
    Ok(out)
}

fn database_name(url: &str) -> String {
    let after = url.split_once("://").map_or(url, |(_, rest)| rest);
    let after = after.rsplit_once('@').map_or(after, |(_, host)| host);
    let after = after.split('?').next().unwrap_or(after);
    after.split_once('/').map(|(_, db)| db).filter(|db| !db.is_empty()).unwrap_or("outbox_demo").to_owned()
}

/// Creates the service's database if needed and empties it of earlier runs.
async fn fresh_database(args: &Args, service: &str) -> anyhow::Result<(String, PgPool)> {
    let name = format!("{}_{service}", database_name(&args.database_url));
    let url = with_database(&args.database_url, &name)?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(outbox::pg_connect_options(&with_database(&args.database_url, "postgres")?)?)
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&admin)
        .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&admin).await?;
    }
    admin.close().await;
    let pool = PgPoolOptions::new().max_connections(2).connect_with(outbox::pg_connect_options(&url)?).await?;
    let app = if service == "orders" { "shop" } else { service };
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS outbox, {app} CASCADE")).execute(&pool).await?;
    Ok((url, pool))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = cli::parse::<Args>();
    let started = Instant::now();
    // Unique per run: topics, consumer groups and the log directory.
    let prefix = format!("saga-demo-{}-{}", chrono::Utc::now().timestamp_millis(), std::process::id());
    let log_dir = args.log_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(&prefix));
    std::fs::create_dir_all(&log_dir)?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => child::own_dir()?,
    };
    println!("== saga demo {prefix}: {} orders, logs in {}", args.orders, log_dir.display());

    let mut pools = Vec::new();
    let mut urls = Vec::new();
    for service in SERVICES {
        let (url, pool) = fresh_database(&args, service).await?;
        urls.push(url);
        pools.push(pool);
    }
    let topics = ["inventory.commands", "payments.commands", "orders.replies"].map(|t| format!("{prefix}.{t}"));
    TopicCreation { partitions: 3, replication: 1 }
        .create(&args.brokers, &topics.each_ref().map(String::as_str))
        .await
        .context("creating the demo's topics")?;

    let mut services = Services::new(&args, &bin_dir, &log_dir, &prefix, &urls)?;
    for service in SERVICES {
        services.start(Service::App(service)).await?;
    }
    for service in SERVICES {
        services.start(Service::Relay(service)).await?;
    }
    println!("== running: 3 services and 3 relays up after {:.1}s", started.elapsed().as_secs_f64());

    let orders_pool = &pools[2];
    let mut killed = false;
    let mut last_report = Instant::now();
    loop {
        if started.elapsed() > args.timeout {
            services.stop().await;
            bail!("the demo did not finish within {:?}; logs in {}", args.timeout, log_dir.display());
        }
        services.supervise().await?;
        let (placed, open): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = 'pending') FROM shop.orders")
                .fetch_one(orders_pool)
                .await
                .unwrap_or((0, 0));
        if !killed && !args.kill.is_empty() && placed as f64 >= args.kill_at * f64::from(args.orders) {
            killed = true;
            let mut targets = args.kill.iter().map(|t| Service::parse(t)).collect::<anyhow::Result<Vec<_>>>()?;
            for &which in &targets {
                println!(
                    "== kill -9 {} after {placed} orders placed; back in {:?}",
                    which.label(),
                    which.down_time(args.down_for)
                );
                services.kill(which)?;
            }
            // Back in order of their down time (relays first).
            targets.sort_by_key(|w| w.down_time(args.down_for));
            let mut waited = Duration::ZERO;
            for which in targets {
                let down = which.down_time(args.down_for);
                tokio::time::sleep(down.saturating_sub(waited)).await;
                waited = waited.max(down);
                services.start(which).await?;
                println!("== {} restarted", which.label());
            }
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            println!("   placed={placed} in_flight={open}");
            last_report = Instant::now();
        }
        if placed == i64::from(args.orders) && open == 0 && check::quiet(&pools).await? {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = check::check(&pools, args.orders).await?;
    services.stop().await;
    report.print();
    println!("   took {:.1}s", started.elapsed().as_secs_f64());
    let mut ok = report.violations.is_empty();
    if services.crashed() < args.crash.len() as u32 {
        println!(
            "   VIOLATION: {} of {} armed failpoints were never reached",
            args.crash.len() as u32 - services.crashed(),
            args.crash.len()
        );
        ok = false;
    }
    println!(
        "saga demo: orders={} completed={} compensated={} invariants={}",
        report.orders,
        report.completed,
        report.compensated,
        if ok { "ok" } else { "FAILED" }
    );
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_derived() {
        let url = "postgres://u:p@h:5/app?sslmode=require";
        assert_eq!(with_database(url, "x").unwrap(), "postgres://u:p@h:5/x?sslmode=require");
        assert_eq!(database_name(url), "app");
        assert_eq!(with_database("postgres://h", "x").unwrap(), "postgres://h/x");
        assert_eq!(database_name("postgres://h"), "outbox_demo");
    }
}
