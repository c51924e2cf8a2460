//! The durability every figure is measured under, read from the servers
//! themselves (not assumed from how the scripts started them) and printed
//! beside the figures.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use crate::env::Env;

/// PostgreSQL's and Kafka's settings that decide what a commit and an
/// acknowledgement survive.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Durability {
    pub fsync: String,
    pub synchronous_commit: String,
    pub full_page_writes: String,
    pub wal_level: String,
    /// The broker's `log.flush.interval.messages` and `log.flush.interval.ms`
    /// (Kafka's default leaves flushing to the OS and relies on
    /// replication).
    pub kafka_flush_messages: String,
    pub kafka_flush_ms: String,
}

impl Durability {
    /// Reads the settings from both servers.
    pub async fn read(env: &Env) -> anyhow::Result<Durability> {
        let show = |name: &'static str| {
            let pool = env.pool.clone();
            async move { sqlx::query_scalar::<_, String>(&format!("SHOW {name}")).fetch_one(&pool).await }
        };
        let (kafka_flush_messages, kafka_flush_ms) = kafka_flush(&env.brokers).await?;
        Ok(Durability {
            fsync: show("fsync").await?,
            synchronous_commit: show("synchronous_commit").await?,
            full_page_writes: show("full_page_writes").await?,
            wal_level: show("wal_level").await?,
            kafka_flush_messages,
            kafka_flush_ms,
        })
    }

    /// PostgreSQL as production runs it: a commit is on disk when it returns.
    pub fn production(&self) -> bool {
        self.fsync == "on" && self.synchronous_commit == "on" && self.full_page_writes == "on"
    }

    /// One line for the results table.
    pub fn describe(&self) -> String {
        let flush = if self.kafka_flush_messages == i64::MAX.to_string() {
            "Kafka's default flush policy (the OS flushes; log.flush.interval.messages unset)".to_owned()
        } else {
            format!(
                "Kafka log.flush.interval.messages={}, log.flush.interval.ms={}",
                self.kafka_flush_messages, self.kafka_flush_ms
            )
        };
        format!(
            "PostgreSQL fsync={}, synchronous_commit={}, full_page_writes={}, wal_level={}; {flush}",
            self.fsync, self.synchronous_commit, self.full_page_writes, self.wal_level
        )
    }
}

/// The first broker's flush settings, as it reports them.
async fn kafka_flush(brokers: &str) -> anyhow::Result<(String, String)> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10))?;
    let broker = metadata.brokers().first().map(rdkafka::metadata::MetadataBroker::id).unwrap_or(1);
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let resources = admin.describe_configs(&[ResourceSpecifier::Broker(broker)], &options).await?;
    let resource = resources
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("broker {broker} returned no configuration"))?
        .map_err(|e| anyhow::anyhow!("describe broker {broker}'s configuration: {e}"))?;
    let value = |name: &str| resource.get(name).and_then(|e| e.value.clone()).unwrap_or_else(|| "unknown".to_owned());
    Ok((value("log.flush.interval.messages"), value("log.flush.interval.ms")))
}
