//! The services and processes a benchmark run works with.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use outbox_core::{Message, Outbox, OutboxConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Where the services are.
#[derive(Debug, Clone)]
pub struct Env {
    pub database_url: String,
    pub brokers: String,
    pub pool: PgPool,
    /// Extra arguments for every relay process (they replace the
    /// scenario's own value of the same flag).
    pub relay_args: Vec<String>,
}

impl Env {
    pub async fn connect(database_url: String, brokers: String, relay_args: Vec<String>) -> anyhow::Result<Env> {
        let pool = PgPoolOptions::new()
            .max_connections(40)
            .connect_with(outbox_core::pg_connect_options(&database_url)?)
            .await
            .context("connect to PostgreSQL (DATABASE_URL)")?;
        Ok(Env { database_url, brokers, pool, relay_args })
    }

    /// A fresh outbox in its own schema.
    pub async fn outbox(&self, name: &str) -> anyhow::Result<(OutboxConfig, Outbox)> {
        let schema = format!("bench_{name}");
        sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&self.pool).await?;
        let config = OutboxConfig::default().with_schema(&schema)?.with_source("/bench")?;
        let outbox = Outbox::new(config.clone());
        outbox.migrate(&self.pool).await?;
        Ok((config, outbox))
    }

    /// A new topic with `partitions` partitions.
    pub async fn topic(&self, name: &str, partitions: i32) -> anyhow::Result<String> {
        self.topic_with(name, partitions, &[]).await
    }

    /// A new topic with `partitions` partitions and topic `config`.
    pub async fn topic_with(&self, name: &str, partitions: i32, config: &[(&str, &str)]) -> anyhow::Result<String> {
        let topic = format!("bench-{name}-{}", uuid::Uuid::now_v7().simple());
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.brokers).create()?;
        let new =
            config.iter().fold(NewTopic::new(&topic, partitions, TopicReplication::Fixed(1)), |t, (k, v)| t.set(k, v));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&[new], &options).await? {
            result.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
        }
        Ok(topic)
    }

    /// An idempotent, `acks=all` producer with `settings`, warmed by one
    /// confirmed message to `topic` (connection, producer id and metadata
    /// in place before anything is timed).
    pub async fn warm_producer(
        &self,
        topic: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<rdkafka::producer::FutureProducer> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("enable.idempotence", "true").set("acks", "all");
        for (k, v) in settings {
            config.set(*k, *v);
        }
        let producer: rdkafka::producer::FutureProducer = config.create()?;
        let warm = rdkafka::producer::FutureRecord::to(topic).payload("warm-up").key("warm-up");
        producer.send(warm, Duration::from_secs(30)).await.map_err(|(e, _)| e)?;
        Ok(producer)
    }

    /// Whether any event is still pending.
    pub async fn pending(&self, config: &OutboxConfig) -> anyhow::Result<bool> {
        // Through the primary key: a sequential scan would visit every row
        // the relay already deleted (the probe runs every 10 ms and would
        // compete with the drain it measures).
        let sql = format!("SELECT min(seq) IS NOT NULL FROM {}.outbox", config.schema());
        Ok(sqlx::query_scalar(&sql).fetch_one(&self.pool).await?)
    }

    /// Waits until the outbox is empty (at most `limit`).
    pub async fn drained(&self, config: &OutboxConfig, limit: Duration) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        while self.pending(config).await? {
            anyhow::ensure!(start.elapsed() < limit, "outbox not drained within {limit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Starts `n` relays and waits until they are warm: every slot owned,
    /// a first round of events (one per key) published, so connections,
    /// producer ids and topic metadata are in place before anything is timed.
    pub async fn warm_relays(
        &self,
        config: &OutboxConfig,
        outbox: &Outbox,
        topic: &str,
        n: usize,
        extra: &[&str],
        keys: usize,
    ) -> anyhow::Result<Vec<RelayProcess>> {
        let relays: Vec<RelayProcess> =
            (0..n).map(|_| RelayProcess::start(self, config, extra)).collect::<anyhow::Result<_>>()?;
        let leases = format!(
            "SELECT count(*) FROM {}.outbox_leases WHERE owner IS NOT NULL AND expires_at > now()",
            config.schema()
        );
        let owners =
            format!("SELECT count(DISTINCT owner) FROM {}.outbox_leases WHERE expires_at > now()", config.schema());
        let start = std::time::Instant::now();
        loop {
            let owned: i64 = sqlx::query_scalar(&leases).fetch_one(&self.pool).await?;
            let distinct: i64 = sqlx::query_scalar(&owners).fetch_one(&self.pool).await?;
            if owned == i64::from(config.slots()) && distinct == n as i64 {
                break;
            }
            anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "relays did not take all slots in 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        backlog(self, outbox, topic, 0, keys, keys).await?;
        self.drained(config, Duration::from_secs(60)).await?;
        Ok(relays)
    }
}

/// A 256-byte JSON payload.
pub fn payload(i: usize) -> serde_json::Value {
    let base = serde_json::json!({ "order_id": i, "pad": "" }).to_string().len();
    serde_json::json!({ "order_id": i, "pad": "x".repeat(256usize.saturating_sub(base)) })
}

/// The key of event `i` among `keys` keys.
pub fn key(i: usize, keys: usize) -> String {
    format!("key-{}", i % keys)
}

/// Enqueues events `from..to` (256-byte JSON, `keys` keys), 1,000 per
/// statement, all in one transaction: the relay sees the whole backlog at
/// once, when it commits.
pub async fn backlog(
    env: &Env,
    outbox: &Outbox,
    topic: &str,
    from: usize,
    to: usize,
    keys: usize,
) -> anyhow::Result<()> {
    let mut tx = env.pool.begin().await?;
    let mut i = from;
    while i < to {
        let end = (i + 1000).min(to);
        let batch: Vec<Message> = (i..end)
            .map(|j| Message::json(topic, "bench.event", &payload(j)).map(|m| m.with_key(key(j, keys))))
            .collect::<Result<_, _>>()?;
        outbox.enqueue_all(&mut *tx, &batch).await?;
        i = end;
    }
    tx.commit().await?;
    Ok(())
}

/// A release relay process.
pub struct RelayProcess {
    pub child: Child,
}

impl RelayProcess {
    pub fn start(env: &Env, config: &OutboxConfig, extra: &[&str]) -> anyhow::Result<RelayProcess> {
        let exe = std::env::current_exe()?;
        let relay: PathBuf = exe.with_file_name("outbox-relay");
        anyhow::ensure!(
            relay.exists(),
            "{} missing: build it with `cargo build --release -p outbox-relay`",
            relay.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // The scenario's flags (flag, value pairs), unless the user gave the same flag.
        let user_flags: Vec<&str> = env.relay_args.iter().map(|a| a.split('=').next().unwrap_or(a)).collect();
        let own: Vec<&str> = extra.chunks(2).filter(|pair| !user_flags.contains(&pair[0])).flatten().copied().collect();
        let child = Command::new(relay)
            .args(["run", "--schema", config.schema().as_str(), "--kafka-brokers", &env.brokers])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(own)
            .args(&env.relay_args)
            .env("DATABASE_URL", &env.database_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(RelayProcess { child })
    }

    /// Peak resident memory in MiB (VmHWM).
    pub fn peak_rss_mb(&self) -> f64 {
        proc_peak_rss_mb(self.child.id())
    }

    /// CPU seconds used so far (user + system).
    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.child.id())
    }
}

/// Counts the records in a topic (the sum of its partitions' high
/// watermarks) through one consumer, so that polling the count while a
/// competitor drains costs a few requests, not a client each time.
pub struct TopicRecords {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl TopicRecords {
    pub fn new(brokers: &str, topic: &str) -> anyhow::Result<TopicRecords> {
        let consumer = reader(brokers, topic, &[])?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = i32::try_from(metadata.topics().first().map_or(0, |t| t.partitions().len()))?;
        Ok(TopicRecords { consumer, topic: topic.to_owned(), partitions })
    }

    /// The records in the topic now.
    pub fn count(&self) -> anyhow::Result<i64> {
        let mut total = 0;
        for p in 0..self.partitions {
            total += self.consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(10))?.1;
        }
        Ok(total)
    }
}

/// Peak resident memory of process `pid` in MiB (VmHWM).
pub fn proc_peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds process `pid` used so far (user + system, all threads).
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the ")" the fields start at "state" (field 3): utime is 14, stime 15.
    (ticks(11) + ticks(12)) / 100.0
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The p-th percentile (0–100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// fdatasync calls per second on a file in the system temp directory.
pub fn fsync_per_second() -> f64 {
    use std::io::Write;
    let path = std::env::temp_dir().join(format!("outbox-bench-fsync-{}", std::process::id()));
    let Ok(mut file) = std::fs::File::create(&path) else { return 0.0 };
    let start = std::time::Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(1) {
        if file.write_all(&[0u8; 512]).and_then(|()| file.sync_data()).is_err() {
            break;
        }
        n += 1;
    }
    let _ = std::fs::remove_file(&path);
    f64::from(n) / start.elapsed().as_secs_f64()
}

/// A consumer outside any group's offsets, assigned every partition of
/// `topic` from the beginning (for reading a run's results back).
pub fn reader(brokers: &str, topic: &str, settings: &[(&str, &str)]) -> anyhow::Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-reader-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics().first().map(|t| t.partitions()).unwrap_or_default() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}
