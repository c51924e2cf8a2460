//! Flash sale: thousands of buyers at once for a few items.
//!
//! The fast operation — take a unit of stock — happens in Redis, in real
//! time; an accepted purchase is recorded in PostgreSQL with its outbox event
//! before the buyer is answered. The slow operations — has this user bought
//! already, take the unit in the database, create the order — run in a
//! consumer process fed through the relay and Kafka. A purchase the slow
//! path rejects gives its unit back to Redis.
//!
//! ```text
//! cargo build --bins --examples && target/debug/examples/flash_sale --attempts 10000 --items 100 --kill consumer
//! ```
//!
//! Last line: `flash sale: attempts=… accepted=… sold=… … invariants=ok`.

mod check;
#[path = "../common/child.rs"]
mod child;
#[path = "../common/cli.rs"]
mod cli;
mod fast_path;
mod slow_path;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use outbox::{CancellationToken, ConsumerConfig, InboxConsumer, Outbox, OutboxConfig};
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use fast_path::{Answer, Keys};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Runs the sale: sets up, starts the relay and the consumer, sends the buyers, checks.
    Run,
    /// The slow path: the orders consumer and the restock consumer.
    Consume,
}

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long, value_enum, default_value_t = Role::Run)]
    role: Role,
    /// PostgreSQL.
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
    /// Redis.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Name of this sale: its schemas, topics and Redis keys (default: a new one).
    #[arg(long)]
    sale: Option<String>,
    /// Purchase attempts.
    #[arg(long, default_value_t = 10_000)]
    attempts: u32,
    /// Distinct buyers the attempts come from.
    #[arg(long, default_value_t = 500)]
    users: u32,
    /// Items on sale.
    #[arg(long, default_value_t = 100)]
    items: i64,
    /// The attempts arrive spread over this window (all are in flight at once).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Time the slow path spends on each purchase (stands for real work).
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    work: Duration,
    /// SIGKILL this process mid-run and restart it: `consumer` or `relay` (repeatable).
    #[arg(long)]
    kill: Vec<String>,
    /// How long a killed process stays down.
    /// A consumer back before its dead predecessor's 6 s session timeout
    /// has run out gets the partitions when the broker evicts the dead
    /// member, so any down time works.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    down_for: Duration,
    /// Kill once the slow path has handled this many purchases.
    #[arg(long, default_value_t = 30)]
    kill_after: i64,
    /// Directory of `outbox-relay` (default: next to this program, or one up).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Give up after this long.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl Args {
    fn sale(&self) -> &str {
        self.sale.as_deref().unwrap_or("flash")
    }
    fn schema(&self) -> String {
        self.sale().replace('-', "_")
    }
    fn outbox(&self) -> anyhow::Result<Outbox> {
        let config =
            OutboxConfig::default().with_schema(&format!("{}_outbox", self.schema()))?.with_source("/flash-sale")?;
        Ok(Outbox::new(config))
    }
    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.sale())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let mut args = cli::parse::<Args>();
    match args.role {
        Role::Consume => consume(&args).await,
        Role::Run => {
            if args.sale.is_none() {
                args.sale = Some(format!("flash_{}_{}", chrono::Utc::now().timestamp(), std::process::id()));
            }
            run(&args).await
        }
    }
}

async fn connect(url: &str, max: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .connect_with(outbox::pg_connect_options(url)?)
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")
}

async fn redis(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).context("REDIS_URL")?;
    client.get_multiplexed_tokio_connection().await.context("connecting to Redis (REDIS_URL)")
}

/// The slow path: consumes accepted purchases and rejections until SIGTERM.
async fn consume(args: &Args) -> anyhow::Result<()> {
    let pool = connect(&args.database_url, 8).await?;
    let outbox = args.outbox()?;
    let shutdown = CancellationToken::new();
    let orders = slow_path::Orders {
        schema: args.schema(),
        outbox: outbox.clone(),
        rejections_topic: args.topic("rejections"),
        work: args.work,
    };
    let restock = slow_path::Restock { redis: redis(&args.redis_url).await?, keys: Keys::new(args.sale()) };
    let config = |group: &str, topic: String| {
        let mut c = ConsumerConfig::new(&args.brokers, format!("{}-{group}", args.sale()), &[&topic]);
        c.kafka_settings.push(("session.timeout.ms".into(), "6000".into()));
        c.kafka_settings.push(("heartbeat.interval.ms".into(), "1000".into()));
        c
    };
    let orders = InboxConsumer::new(pool.clone(), outbox.config(), config("orders", args.topic("purchases")), orders)?;
    let restock =
        InboxConsumer::new(pool.clone(), outbox.config(), config("restock", args.topic("rejections")), restock)?;
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                term.recv().await;
            }
            shutdown.cancel();
        });
    }
    println!("ready");
    let (a, b) = tokio::join!(orders.run(shutdown.clone()), restock.run(shutdown.clone()));
    a?;
    b?;
    Ok(())
}

/// Child processes: the relay and the consumer.
struct Children {
    args: Args,
    relay_bin: PathBuf,
    consumer: Option<Child>,
    relay: Option<Child>,
}

impl Children {
    async fn start(&mut self, what: &str) -> anyhow::Result<()> {
        let a = &self.args;
        if what == "relay" {
            let mut c = Command::new(&self.relay_bin);
            c.args(["run", "--kafka-brokers", &a.brokers, "--http-addr", "127.0.0.1:0", "--lease-timeout", "3s"])
                .args(["--schema", &format!("{}_outbox", a.schema())])
                .arg("--database-url")
                .arg(&a.database_url)
                .env("RUST_LOG", "warn,librdkafka=error")
                .stdout(Stdio::null())
                .kill_on_drop(true);
            self.relay = Some(c.spawn().context("starting the relay")?);
            return Ok(());
        }
        let mut c = Command::new(std::env::current_exe()?);
        c.args(["--role", "consume", "--sale", a.sale(), "--brokers", &a.brokers])
            .args(["--work", &humantime::format_duration(a.work).to_string()])
            .arg("--database-url")
            .arg(&a.database_url)
            .arg("--redis-url")
            .arg(&a.redis_url)
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().context("starting the consumer")?;
        child::wait_ready(&mut child, "the consumer").await?;
        self.consumer = Some(child);
        Ok(())
    }

    fn kill(&mut self, what: &str) -> anyhow::Result<()> {
        let child = if what == "relay" { self.relay.as_mut() } else { self.consumer.as_mut() };
        child.context("not running")?.start_kill()?;
        Ok(())
    }

    async fn stop(&mut self) {
        let consumer = self.consumer.take().map(|c| ("consumer".to_owned(), c));
        let relay = self.relay.take().map(|c| ("relay".to_owned(), c));
        child::stop_all(consumer.into_iter().chain(relay)).await;
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    for k in &args.kill {
        if k != "consumer" && k != "relay" {
            bail!("--kill takes `consumer` or `relay`, not {k:?}");
        }
    }
    let pool = connect(&args.database_url, 16).await?;
    let outbox = args.outbox()?;
    let keys = Keys::new(args.sale());
    let mut redis = redis(&args.redis_url).await?;
    check::set_up(args, &pool, &outbox, &mut redis, &keys).await?;
    println!(
        "== flash sale {}: {} items, {} attempts from {} buyers",
        args.sale(),
        args.items,
        args.attempts,
        args.users
    );

    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => child::own_dir()?,
    };
    let relay_bin = child::relay_binary(&bin_dir)?;
    let mut children = Children { args: args.clone(), relay_bin, consumer: None, relay: None };
    children.start("relay").await?;
    children.start("consumer").await?;

    // Every attempt in flight at once, arriving over the window.
    let buyers = Arc::new((pool.clone(), outbox.clone(), keys.clone(), args.schema(), args.topic("purchases")));
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..args.attempts {
        let (buyers, redis) = (buyers.clone(), redis.clone());
        let mut rng = rand::rng();
        let delay = args.window.mul_f64(rng.random_range(0.0..1.0));
        let user = i64::from(rng.random_range(0..args.users.max(1)));
        attempts.spawn(async move {
            tokio::time::sleep(delay).await;
            let asked = Instant::now();
            let (pool, outbox, keys, schema, topic) = &*buyers;
            let answer = fast_path::buy(redis, pool, outbox, keys, schema, topic, user).await;
            (answer, asked.elapsed())
        });
    }

    let mut killed = args.kill.is_empty();
    let mut answers = Vec::with_capacity(args.attempts as usize);
    let mut watch = tokio::time::interval(Duration::from_millis(20));
    while !attempts.is_empty() || !killed {
        tokio::select! {
            Some(done) = attempts.join_next(), if !attempts.is_empty() => answers.push(done?),
            _ = watch.tick() => {
                if !killed && check::handled(args, &pool).await? >= args.kill_after {
                    killed = true;
                    for k in &args.kill {
                        println!("== kill -9 {k}");
                        children.kill(k)?;
                    }
                    tokio::time::sleep(args.down_for).await;
                    for k in &args.kill {
                        children.start(k).await?;
                        println!("== {k} restarted");
                    }
                }
                if started.elapsed() > args.timeout {
                    bail!("the sale did not finish within {:?}", args.timeout);
                }
            }
        }
    }
    let accepted = answers.iter().filter(|(a, _)| *a == Answer::Accepted).count() as i64;
    let sold_out = answers.iter().filter(|(a, _)| *a == Answer::SoldOut).count();
    let failed = answers.iter().filter(|(a, _)| *a == Answer::Failed).count();
    let mut latencies: Vec<Duration> = answers.iter().map(|(_, l)| *l).collect();
    latencies.sort();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default();
    println!(
        "   buyers answered: accepted={accepted} sold_out={sold_out} failed={failed}; answer time p50={:.1}ms p99={:.1}ms",
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0
    );

    check::wait_settled(args, &pool, &mut redis, &keys, accepted, started).await?;
    let report = check::check(args, &pool, &mut redis, &keys, accepted).await?;
    children.stop().await;
    report.print();
    println!("   took {:.1}s", started.elapsed().as_secs_f64());
    let ok = report.violations.is_empty();
    println!(
        "flash sale: attempts={} accepted={accepted} sold={} rejected={} redis_stock={} invariants={}",
        args.attempts,
        report.sold,
        report.rejected,
        report.redis_stock,
        if ok { "ok" } else { "FAILED" }
    );
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
