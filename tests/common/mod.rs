//! Shared test harness: real PostgreSQL (DATABASE_URL) and a real Kafka-API
//! broker (KAFKA_BROKERS), a fresh schema and topic per test, the relay and
//! demo consumer as child processes, and a topic reader.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

mod broker;
pub mod postgres;
pub mod proxy;

#[allow(unused_imports)] // not every test binary pauses a broker
pub use broker::{PrivateBroker, PrivateCluster};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use outbox::{Outbox, OutboxConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/outbox_test".into())
}

/// A database URL's parts: (`scheme`, user info, `host:port` with 5432 when
/// none is given, the rest from the first `/` or `?`).
fn url_parts(url: &str) -> (&str, Option<&str>, String, &str) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (user, host) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
    let address = if host.contains(':') { host.to_owned() } else { format!("{host}:5432") };
    (scheme, user, address, tail)
}

/// The `host:port` a database URL points at.
pub fn url_address(url: &str) -> String {
    url_parts(url).2
}

/// `url` with its user (and password) and/or its `host:port` replaced.
pub fn url_replacing(url: &str, user: Option<&str>, address: Option<&str>) -> String {
    let (scheme, old_user, old_address, tail) = url_parts(url);
    let user = user.or(old_user).map(|u| format!("{u}@")).unwrap_or_default();
    format!("{scheme}://{user}{}{tail}", address.unwrap_or(&old_address))
}

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &Uuid::now_v7().simple().to_string()[20..])
}

/// A pool on the test database, creating the database if it is missing.
pub async fn pool() -> PgPool {
    pool_at(&database_url()).await
}

/// A pool on the database at `url`, creating the database if it is missing.
pub async fn pool_at(url: &str) -> PgPool {
    let url = url.to_owned();
    match PgPoolOptions::new().max_connections(20).connect(&url).await {
        Ok(pool) => pool,
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("3D000") => {
            let (base, db) = url.rsplit_once('/').unwrap();
            let db = db.split('?').next().unwrap();
            let admin = PgPoolOptions::new().max_connections(1).connect(&format!("{base}/postgres")).await.unwrap();
            let _ = sqlx::query(&format!("CREATE DATABASE \"{db}\"")).execute(&admin).await;
            PgPoolOptions::new().max_connections(20).connect(&url).await.unwrap()
        }
        Err(e) => panic!("cannot connect to DATABASE_URL: {e} (./scripts/test starts PostgreSQL for you)"),
    }
}

/// One test's world: its own schema (outbox tables) and topic.
pub struct World {
    /// The database (DATABASE_URL unless the test brought its own).
    pub url: String,
    pub pool: PgPool,
    pub schema: String,
    pub config: OutboxConfig,
    pub outbox: Outbox,
    pub topic: String,
    pub brokers: String,
}

impl World {
    pub async fn new(partitions: i32) -> World {
        Self::with_brokers(partitions, brokers()).await
    }

    pub async fn with_brokers(partitions: i32, brokers: String) -> World {
        Self::on(&database_url(), partitions, brokers).await
    }

    /// A world on the database at `url`.
    pub async fn on(url: &str, partitions: i32, brokers: String) -> World {
        Self::on_replicated(url, partitions, 1, brokers).await
    }

    /// A world whose topic has `replication` copies of each partition.
    pub async fn on_replicated(url: &str, partitions: i32, replication: i32, brokers: String) -> World {
        let topic = unique("topic");
        let creation = outbox::TopicCreation { partitions, replication };
        creation.create(&brokers, &[&topic]).await.unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
        Self::with_topic(url, brokers, topic).await
    }

    /// A world whose topic the test created itself (on a broker without the
    /// admin API, such as librdkafka's mock cluster).
    pub async fn with_topic(url: &str, brokers: String, topic: String) -> World {
        let pool = pool_at(url).await;
        let schema = unique("t");
        let config = OutboxConfig::default().with_schema(&schema).unwrap().with_source("/tests").unwrap();
        let outbox = Outbox::new(config.clone());
        outbox.migrate(&pool).await.unwrap();
        World { url: url.to_owned(), pool, schema, config, outbox, topic, brokers }
    }

    /// Rows still pending in the outbox.
    pub async fn pending(&self) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM \"{}\".outbox", self.schema))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn dead_letters(&self) -> Vec<(Uuid, String, i32)> {
        sqlx::query_as(&format!("SELECT id, error, attempts FROM \"{}\".outbox_dead_letter ORDER BY seq", self.schema))
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until the outbox is empty.
    pub async fn wait_drained(&self, within: Duration) {
        let start = Instant::now();
        loop {
            let pending = self.pending().await;
            if pending == 0 {
                return;
            }
            assert!(start.elapsed() < within, "outbox not drained after {within:?}: {pending} pending");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn relay(&self, extra: &[&str]) -> RelayProcess {
        RelayProcess::start(&self.schema, &self.brokers, extra, &[("DATABASE_URL", &self.url)])
    }

    pub fn read_topic(&self, expect: usize) -> Vec<Record> {
        read_topic(&self.brokers, &self.topic, expect, Duration::from_secs(60))
    }
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let creation = outbox::TopicCreation { partitions, replication: 1 };
    creation.create(brokers, &[topic]).await.unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
}

/// A binary of this workspace (the relay or an example), built by
/// `./scripts/test` before the tests run; built here if missing.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().unwrap().parent().unwrap().to_path_buf(); // target/debug
    let path = if name.starts_with("outbox-") { target.join(name) } else { target.join("examples").join(name) };
    if !path.exists() {
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "outbox-relay", "-p", "outbox-bench", "-p", "outbox", "--bins", "--examples"])
                .status()
                .unwrap();
            assert!(status.success(), "building the relay and examples failed");
        });
    }
    assert!(path.exists(), "{} missing: run `cargo build --workspace --all-targets` first", path.display());
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The relay as a child process.
pub struct RelayProcess {
    pub child: Child,
    pub http_port: u16,
    pub log: PathBuf,
}

impl RelayProcess {
    pub fn start(schema: &str, brokers: &str, extra: &[&str], env: &[(&str, &str)]) -> RelayProcess {
        let http_port = free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique("relay")));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(binary("outbox-relay"));
        // Test defaults, unless the test sets them itself.
        let mut defaults = vec!["--lease-timeout", "3s", "--retry-min-delay", "50ms"];
        if !extra.contains(&"--poll-interval") {
            defaults.extend(["--poll-interval", "20ms"]);
        }
        cmd.args(["run", "--schema", schema, "--kafka-brokers", brokers])
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .args(defaults)
            .args(extra)
            .env("DATABASE_URL", database_url())
            .env("RUST_LOG", "info,librdkafka=warn")
            .env_remove("OUTBOX_FAILPOINT")
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        RelayProcess { child: cmd.spawn().unwrap(), http_port, log }
    }

    /// Whether the process is stopped (SIGSTOP).
    pub fn is_stopped(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T'))
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    pub fn sigkill(mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit status within `within`.
    pub fn sigterm(mut self, within: Duration) -> ExitStatus {
        self.signal("TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < within, "relay did not stop within {within:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(mut self, within: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > within {
                let _ = self.child.kill();
                panic!("relay still running after {within:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path).await
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.1 GET (no client crate needed for three endpoints).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = Instant::now();
    let mut stream = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => break s,
            Err(e) if start.elapsed() > Duration::from_secs(15) => panic!("HTTP port {port}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A message read back from the topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: Uuid,
    pub key: Option<String>,
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// Reads `topic` from offset 0 to the end of its log: until `expect`
/// distinct ids were seen and every partition's position reached the high
/// watermark the broker reports at that moment, or until nothing new arrived
/// for `max` (the writer may still be producing while fewer are in).
///
/// Reading to the watermark means a short read is a real absence from the
/// topic, and the duplicates a test counts are all that the log holds, not
/// what arrived before some quiet period.
pub fn read_topic(brokers: &str, topic: &str, expect: usize, max: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    // Metadata can come back without partitions for a moment: ask again
    // rather than read nothing.
    let asked = Instant::now();
    let partitions: Vec<i32> = loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let ids: Vec<i32> =
            metadata.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
        if !ids.is_empty() || asked.elapsed() > Duration::from_secs(10) {
            break ids;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!partitions.is_empty(), "topic {topic} has no partitions in the broker's metadata");
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    // Next offset to read per partition: the offset after the last record.
    let mut next: HashMap<i32, i64> = partitions.iter().map(|&p| (p, 0)).collect();
    let at_end = |next: &HashMap<i32, i64>| {
        next.iter().all(|(&p, &n)| match consumer.fetch_watermarks(topic, p, Duration::from_secs(5)) {
            Ok((_, high)) => n >= high,
            Err(e) => {
                eprintln!("reader: watermarks of {topic}/{p}: {e}");
                false
            }
        })
    };
    let start = Instant::now();
    let mut last_message = Instant::now();
    let mut records = Vec::new();
    let mut ids = HashSet::new();
    // Slow reading is not absence: the limit is on waiting without progress,
    // with an overall cap so a broken broker cannot hang the suite.
    while start.elapsed() < max * 4 && last_message.elapsed() < max {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_message = Instant::now();
                next.insert(m.partition(), m.offset() + 1);
                let mut headers: BTreeMap<String, String> = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for h in h.iter() {
                        headers.insert(
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                let id = Uuid::parse_str(&headers["ce_id"]).unwrap();
                ids.insert(id);
                records.push(Record {
                    id,
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    partition: m.partition(),
                    offset: m.offset(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => eprintln!("reader: {e}"),
            None => {
                if ids.len() >= expect && at_end(&next) {
                    return records;
                }
            }
        }
    }
    if ids.len() < expect {
        eprintln!("reader: {} of {expect} distinct ids in {topic} ({} records)", ids.len(), records.len());
    }
    records
}

/// What a run put into the topic, against what was committed.
#[derive(Debug, Default)]
pub struct Check {
    pub delivered: usize,
    pub lost: usize,
    pub unexpected: usize,
    pub dup_topic: usize,
    pub order_violations: usize,
}

/// Compares the topic with the committed events. `committed` maps each key to
/// its event ids in commit order; `rolled_back` holds ids that must not appear.
pub fn check(records: &[Record], committed: &HashMap<String, Vec<Uuid>>, rolled_back: &HashSet<Uuid>) -> Check {
    let mut seen = HashSet::new();
    let mut first_by_key: HashMap<String, Vec<Uuid>> = HashMap::new();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut c = Check::default();
    for r in sorted {
        if !seen.insert(r.id) {
            c.dup_topic += 1;
            continue;
        }
        if rolled_back.contains(&r.id) {
            c.unexpected += 1;
        }
        first_by_key.entry(r.key.clone().unwrap_or_default()).or_default().push(r.id);
    }
    for (key, ids) in committed {
        let position: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        c.lost += ids.iter().filter(|id| !seen.contains(id)).count();
        c.delivered += ids.iter().filter(|id| seen.contains(id)).count();
        let order: Vec<usize> = first_by_key
            .get(key)
            .map(|v| v.iter().filter_map(|id| position.get(id).copied()).collect())
            .unwrap_or_default();
        c.order_violations += order.windows(2).filter(|w| w[0] > w[1]).count();
    }
    let known: HashSet<&Uuid> = committed.values().flatten().chain(rolled_back.iter()).collect();
    c.unexpected += seen.iter().filter(|id| !known.contains(id)).count();
    c
}

/// Writes events from `writers` concurrent tasks over `keys` keys; each
/// transaction locks its key's row (the aggregate), so per-key commit order
/// is the order of the counter it increments. About `rollback_percent` of the
/// transactions roll back. Returns (committed per key in order, rolled back).
pub async fn write_events(
    world: &World,
    writers: usize,
    per_writer: usize,
    keys: usize,
    rollback_percent: u32,
) -> (HashMap<String, Vec<Uuid>>, HashSet<Uuid>) {
    let s = &world.schema;
    sqlx::query(&format!("CREATE TABLE IF NOT EXISTS \"{s}\".aggregates (key text PRIMARY KEY, n bigint NOT NULL)"))
        .execute(&world.pool)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let pool = world.pool.clone();
        let outbox = world.outbox.clone();
        let topic = world.topic.clone();
        let upsert = format!(
            "INSERT INTO \"{s}\".aggregates (key, n) VALUES ($1, 1) \
             ON CONFLICT (key) DO UPDATE SET n = aggregates.n + 1 RETURNING n"
        );
        tasks.push(tokio::spawn(async move {
            let mut done: Vec<(String, i64, Uuid, bool)> = Vec::new();
            for _ in 0..per_writer {
                let (key, rollback) = {
                    use rand::Rng;
                    let mut rng = rand::rng();
                    (format!("key-{}", rng.random_range(0..keys)), rng.random_range(0..100) < rollback_percent)
                };
                let mut tx = pool.begin().await.unwrap();
                let n: i64 = sqlx::query_scalar(&upsert).bind(&key).fetch_one(&mut *tx).await.unwrap();
                let msg = outbox::Message::json(&topic, "test.event", &serde_json::json!({ "key": key, "n": n }))
                    .unwrap()
                    .with_key(&key);
                outbox.enqueue(&mut *tx, &msg).await.unwrap();
                if rollback {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
                done.push((key, n, msg.id(), !rollback));
            }
            done
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by_key(|(k, n, _, _)| (k.clone(), *n));
    let mut committed: HashMap<String, Vec<Uuid>> = HashMap::new();
    let mut rolled_back = HashSet::new();
    for (key, _, id, ok) in all {
        if ok {
            committed.entry(key).or_default().push(id);
        } else {
            rolled_back.insert(id);
        }
    }
    (committed, rolled_back)
}

pub fn total(committed: &HashMap<String, Vec<Uuid>>) -> usize {
    committed.values().map(Vec::len).sum()
}

/// Runs the demo consumer (examples/consumer_service) against `world`;
/// returns its exit status and stdout.
pub fn run_consumer(world: &World, group: &str, expect: usize, failpoint: Option<&str>) -> (ExitStatus, String) {
    run_consumer_with(world, group, expect, failpoint, &[])
}

/// [`run_consumer`] with more `consumer_service` arguments.
pub fn run_consumer_with(
    world: &World,
    group: &str,
    expect: usize,
    failpoint: Option<&str>,
    extra: &[&str],
) -> (ExitStatus, String) {
    let mut cmd = Command::new(binary("consumer_service"));
    cmd.args(extra);
    cmd.args(["--outbox-schema", &world.schema, "--app-schema", &format!("{}_app", world.schema)])
        .args(["--topic", &world.topic, "--group", group, "--brokers", &world.brokers])
        .args(["--expect", &expect.to_string(), "--idle-exit", "3s", "--timeout", "90s"])
        .env("DATABASE_URL", &world.url)
        .env("RUST_LOG", "warn")
        .env_remove("OUTBOX_FAILPOINT")
        .stderr(Stdio::inherit());
    if let Some(fp) = failpoint {
        cmd.env("OUTBOX_FAILPOINT", fp);
    }
    let out = cmd.output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `name=value` number from a summary line.
pub fn field(summary: &str, name: &str) -> i64 {
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} not in {summary:?}"))
        .parse()
        .unwrap()
}

/// (effect rows, distinct event ids) the demo consumer applied.
pub async fn effects(world: &World) -> (i64, i64) {
    sqlx::query_as(&format!("SELECT count(*), count(DISTINCT event_id) FROM \"{}_app\".effects", world.schema))
        .fetch_one(&world.pool)
        .await
        .unwrap()
}

/// Runs an `outbox-relay` command (migrate, status, dead-letters, replay…)
/// to completion against `database_url`.
pub fn relay_command(args: &[&str], database_url: &str) -> std::process::Output {
    Command::new(binary("outbox-relay")).args(args).env("DATABASE_URL", database_url).output().unwrap()
}

/// Runs an `outbox-relay` command on `world`'s schema.
pub fn relay_command_on(world: &World, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--schema", world.schema.as_str()];
    all.extend_from_slice(args);
    relay_command(&all, &database_url())
}
