//! The peer: Debezium's PostgreSQL connector with its Outbox Event Router in
//! a Kafka Connect standalone worker (installed by `scripts/debezium`), run
//! on the same PostgreSQL and Kafka as the relay, with the same payloads,
//! keys and partitions.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::env::{proc_cpu_seconds, proc_peak_rss_mb, Env};

mod drain;
mod latency;

pub use drain::drain;
pub use latency::{steady, PeerLatency};

const WORKER: &str = include_str!("../../../scripts/debezium/worker.properties");
const CONNECTOR: &str = include_str!("../../../scripts/debezium/connector.properties");
const LOG4J: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/debezium/log4j2.xml");

/// How writers use Debezium's outbox table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Variant {
    /// The row stays (a job deletes old rows later).
    Keep,
    /// The row is inserted and deleted in the same transaction: only the
    /// write-ahead log carries the event.
    InsertDelete,
}

/// The connector's settings beyond those of `scripts/debezium`'s
/// `connector.properties`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Tuning {
    /// Debezium's defaults (`max.batch.size` 2048, `max.queue.size` 8192,
    /// `poll.interval.ms` 500).
    Defaults,
    /// Larger batches and queue, and a 10 ms poll interval: Debezium's own
    /// options for throughput and latency.
    Tuned,
}

impl Tuning {
    fn properties(self) -> &'static str {
        match self {
            Tuning::Defaults => "",
            Tuning::Tuned => "max.batch.size=8192\nmax.queue.size=32768\npoll.interval.ms=10\n",
        }
    }
}

/// Where Debezium's jars are: `DEBEZIUM_HOME`, set by `./scripts/bench`
/// after `install_debezium`.
pub fn home() -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("DEBEZIUM_HOME")?);
    home.join(".complete").exists().then_some(home)
}

/// A running Connect worker with one connector.
pub struct Worker {
    child: Child,
    rest_port: u16,
    name: String,
}

impl Worker {
    /// Starts a worker in `dir` (offsets kept there) for `schema.outbox`.
    pub fn start(
        env: &Env,
        home: &Path,
        dir: &Path,
        name: &str,
        schema: &str,
        tuning: Tuning,
    ) -> anyhow::Result<Worker> {
        std::fs::create_dir_all(dir)?;
        let url = url_parts(&env.database_url)?;
        let rest_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let worker = WORKER
            .replace("@BROKERS@", &env.brokers)
            .replace("@REST_PORT@", &rest_port.to_string())
            .replace("@PLUGINS@", &home.join("plugins").display().to_string())
            .replace("@DIR@", &dir.display().to_string());
        let connector = CONNECTOR
            .replace("@NAME@", name)
            .replace("@SCHEMA@", schema)
            .replace("@DB_HOST@", &url.host)
            .replace("@DB_PORT@", &url.port)
            .replace("@DB_USER@", &url.user)
            .replace("@DB_PASSWORD@", &url.password)
            .replace("@DB_NAME@", &url.dbname)
            + tuning.properties();
        std::fs::write(dir.join("worker.properties"), worker)?;
        // It holds the database password: readable by this user only.
        let mut file = std::fs::OpenOptions::new();
        std::os::unix::fs::OpenOptionsExt::mode(file.write(true).create(true).truncate(true), 0o600);
        std::io::Write::write_all(&mut file.open(dir.join("connector.properties"))?, connector.as_bytes())?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("connect.log"))?;
        let child = Command::new("java")
            .args(["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:ParallelGCThreads=2"])
            .args(["-XX:ConcGCThreads=1", "-XX:CICompilerCount=2", "-Djava.awt.headless=true"])
            .arg(format!("-Dlog4j2.configurationFile={LOG4J}"))
            .arg("-cp")
            .arg(format!("{}/*", home.join("connect").display()))
            .arg("org.apache.kafka.connect.cli.ConnectStandalone")
            .arg(dir.join("worker.properties"))
            .arg(dir.join("connector.properties"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("start java (Kafka Connect)")?;
        Ok(Worker { child, rest_port, name: name.to_owned() })
    }

    /// Waits until the connector's task runs (it has its slot and
    /// publication then).
    pub async fn running(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the Connect worker exited ({status}) before its connector ran");
            }
            // Until the worker listens, or has the connector, there is no status.
            let status = self.status().await.unwrap_or_default();
            let task = &status["tasks"][0]["state"];
            if task == "RUNNING" {
                return Ok(());
            }
            anyhow::ensure!(
                task != "FAILED" && status["connector"]["state"] != "FAILED",
                "Debezium's connector failed: {status}"
            );
            anyhow::ensure!(start.elapsed() < limit, "Debezium's connector did not run within {limit:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The connector's status from the worker's REST API.
    async fn status(&self) -> anyhow::Result<serde_json::Value> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.rest_port)).await?;
        let request = format!("GET /connectors/{}/status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", self.name);
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        Ok(serde_json::from_str(body)?)
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The worker's peak resident memory in MiB.
    pub fn peak_rss_mb(&self) -> f64 {
        proc_peak_rss_mb(self.child.id())
    }

    /// CPU seconds the worker used so far.
    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.child.id())
    }

    /// Stops the worker as an operator does (SIGTERM: offsets are flushed).
    pub fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let start = Instant::now();
        while self.child.try_wait()?.is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct UrlParts {
    host: String,
    port: String,
    user: String,
    password: String,
    dbname: String,
}

fn url_parts(url: &str) -> anyhow::Result<UrlParts> {
    let options = outbox_core::pg_connect_options(url)?;
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(auth, _)| auth.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .unwrap_or_default();
    Ok(UrlParts {
        host: options.get_host().to_owned(),
        port: options.get_port().to_string(),
        user: options.get_username().to_owned(),
        password,
        dbname: options.get_database().unwrap_or("postgres").to_owned(),
    })
}

/// A fresh schema with the outbox table Debezium's documentation describes.
pub async fn table(env: &Env, schema: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"))
        .execute(&env.pool)
        .await?;
    create_table(env, &format!("{schema}.outbox")).await
}

/// Creates `name` (schema-qualified) with the layout of Debezium's outbox
/// documentation.
pub async fn create_table(env: &Env, name: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(&format!(
        "CREATE TABLE {name} (id uuid PRIMARY KEY, aggregatetype varchar(255) NOT NULL, \
         aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload jsonb)"
    ))
    .execute(&env.pool)
    .await?;
    Ok(())
}

/// A writer's event in Debezium's table `name`, inside its transaction: the
/// row kept, or inserted and deleted (only the write-ahead log carries it).
pub async fn insert_one(
    tx: &mut sqlx::PgConnection,
    name: &str,
    id: uuid::Uuid,
    aggregatetype: &str,
    aggregateid: &str,
    payload: &serde_json::Value,
    variant: Variant,
) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO {name} (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, $3, 'bench.event', $4)"
    ))
    .bind(id)
    .bind(aggregatetype)
    .bind(aggregateid)
    .bind(payload)
    .execute(&mut *tx)
    .await?;
    if variant == Variant::InsertDelete {
        sqlx::query(&format!("DELETE FROM {name} WHERE id = $1")).bind(id).execute(&mut *tx).await?;
    }
    Ok(())
}

/// Removes what the connector left in PostgreSQL: a replication slot
/// retains the write-ahead log for as long as it exists.
pub async fn drop_slot(env: &Env, name: &str) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1")
        .bind(name)
        .execute(&env.pool)
        .await?;
    sqlx::raw_sql(&format!("DROP PUBLICATION IF EXISTS {name}")).execute(&env.pool).await?;
    Ok(())
}
