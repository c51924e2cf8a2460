//! The idempotent consumer: each Kafka message is applied by the user's
//! handler in one PostgreSQL transaction together with an inbox row keyed by
//! (consumer group, event id). A redelivered event finds its inbox row,
//! commits nothing new and is acknowledged. The Kafka offset is stored only
//! after that transaction committed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::OutboxConfig;
use crate::error::{Error, Result};
use crate::store::InboxSql;

/// An event as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEvent {
    /// CloudEvents `id` (the outbox message id).
    pub id: Uuid,
    /// CloudEvents `type`.
    pub event_type: String,
    /// CloudEvents `source`.
    pub source: Option<String>,
    /// CloudEvents `time`.
    pub time: Option<DateTime<Utc>>,
    /// Topic it came from.
    pub topic: String,
    /// Partition it came from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The Kafka key.
    pub key: Option<Vec<u8>>,
    /// The payload.
    pub payload: Vec<u8>,
    /// Every header, CloudEvents ones included (non-UTF-8 values are left out).
    pub headers: BTreeMap<String, String>,
}

impl ReceivedEvent {
    /// Deserialises the JSON payload.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
    /// The key as UTF-8, if it is.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
    }
    /// The writer's W3C `traceparent`, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.headers.get("traceparent").map(String::as_str)
    }
}

/// The error type of the standard library, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A handler's failure, with what to do about it.
///
/// Any `std::error::Error` converts into [`HandlerError::Retry`] with `?`.
#[derive(Debug)]
pub enum HandlerError {
    /// Try again later (up to the configured attempts).
    Retry(BoxError),
    /// Never going to work: dead-letter at once.
    Permanent(BoxError),
}

impl HandlerError {
    /// A permanent failure from any error or message.
    pub fn permanent(e: impl Into<BoxError>) -> Self {
        HandlerError::Permanent(e.into())
    }
    /// A retryable failure from any error or message.
    pub fn retry(e: impl Into<BoxError>) -> Self {
        HandlerError::Retry(e.into())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::Retry(Box::new(e))
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerError::Retry(e) => write!(f, "{e}"),
            HandlerError::Permanent(e) => write!(f, "permanent: {e}"),
        }
    }
}

/// Applies events. Runs inside the inbox transaction: do the event's database
/// effect through `tx` and it commits atomically with the inbox row.
///
/// ```
/// use outbox_core::{Handler, HandlerError, ReceivedEvent};
/// struct CountOrders;
///
/// #[async_trait::async_trait]
/// impl Handler for CountOrders {
///     async fn handle(&self, event: &ReceivedEvent, tx: &mut sqlx::PgConnection) -> Result<(), HandlerError> {
///         let order: serde_json::Value = event.json()?;
///         sqlx::query("UPDATE stats SET orders = orders + 1, last = $1")
///             .bind(order["id"].as_i64())
///             .execute(&mut *tx)
///             .await?;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Applies one event through `tx`. Must not commit or roll back `tx`.
    async fn handle(&self, event: &ReceivedEvent, tx: &mut PgConnection) -> Result<(), HandlerError>;
}

/// A shared handler is a handler (so tests and services can keep a handle).
#[async_trait]
impl<H: Handler> Handler for Arc<H> {
    async fn handle(&self, event: &ReceivedEvent, tx: &mut PgConnection) -> Result<(), HandlerError> {
        (**self).handle(event, tx).await
    }
}

/// Configuration of an [`InboxConsumer`].
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Kafka brokers.
    pub brokers: String,
    /// Consumer group; also the first half of the inbox dedupe key.
    pub group_id: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Extra librdkafka settings (TLS, SASL, tuning).
    pub kafka_settings: Vec<(String, String)>,
    /// Handler attempts before a message is dead-lettered.
    pub max_attempts: u32,
    /// First delay between handler attempts (doubles, with jitter).
    pub retry_min_delay: Duration,
    /// Longest delay between handler attempts.
    pub retry_max_delay: Duration,
    /// Inbox rows older than this are deleted. Must exceed the longest time
    /// after which an event can still be redelivered (topic retention).
    pub inbox_horizon: Duration,
    /// How often old inbox rows are cleaned up.
    pub cleanup_interval: Duration,
}

impl ConsumerConfig {
    /// Defaults for `group_id` consuming `topics` from `brokers`.
    pub fn new(brokers: impl Into<String>, group_id: impl Into<String>, topics: &[&str]) -> Self {
        ConsumerConfig {
            brokers: brokers.into(),
            group_id: group_id.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            kafka_settings: Vec::new(),
            max_attempts: 5,
            retry_min_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(10),
            inbox_horizon: Duration::from_secs(7 * 24 * 3600),
            cleanup_interval: Duration::from_secs(60),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_owned()));
        if self.group_id.trim().is_empty() {
            return bad("consumer group id must not be empty");
        }
        if self.topics.is_empty() {
            return bad("at least one topic is required");
        }
        for t in &self.topics {
            crate::message::validate_topic(t).map_err(|e| Error::Config(e.to_string()))?;
        }
        if self.max_attempts == 0 {
            return bad("max attempts must be at least 1");
        }
        if self.retry_min_delay > self.retry_max_delay {
            return bad("retry delays must satisfy min <= max");
        }
        Ok(())
    }
}

/// The outcome of processing one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// The handler's effect committed.
    Applied,
    /// Already applied before: acknowledged without effect.
    Duplicate,
    /// Moved to the inbox dead-letter table.
    DeadLettered,
}

/// Counters of what an [`InboxConsumer`] did since it started.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    applied: AtomicU64,
    duplicates: AtomicU64,
    dead_lettered: AtomicU64,
}

impl ConsumerStats {
    /// Events whose effect this consumer committed.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }
    /// Redelivered events acknowledged without effect.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
    /// Messages moved to the inbox dead-letter table.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
    fn count(&self, outcome: Processed) {
        let (counter, name) = match outcome {
            Processed::Applied => (&self.applied, "outbox_inbox_applied_total"),
            Processed::Duplicate => (&self.duplicates, "outbox_inbox_duplicates_total"),
            Processed::DeadLettered => (&self.dead_lettered, "outbox_inbox_dead_lettered_total"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(name).increment(1);
    }
}

/// Runs a [`Handler`] over a consumer group, effect-once per event id.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool, handler: impl outbox_core::Handler) -> outbox_core::Result<()> {
/// use outbox_core::{ConsumerConfig, InboxConsumer, OutboxConfig};
/// let config = ConsumerConfig::new("localhost:9092", "billing", &["orders"]);
/// let consumer = InboxConsumer::new(pool, &OutboxConfig::default(), config, handler)?;
/// consumer.run(tokio_util::sync::CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
pub struct InboxConsumer<H> {
    pool: PgPool,
    sql: Arc<InboxSql>,
    config: ConsumerConfig,
    handler: H,
    consumer: StreamConsumer,
    stats: Arc<ConsumerStats>,
}

impl<H: Handler> InboxConsumer<H> {
    /// Builds the consumer and subscribes (connections are made lazily).
    pub fn new(pool: PgPool, outbox: &OutboxConfig, config: ConsumerConfig, handler: H) -> Result<Self> {
        config.validate()?;
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (k, v) in &config.kafka_settings {
            client.set(k, v);
        }
        // The guarantee rests on these: never store an offset before the
        // inbox transaction committed.
        client.set("enable.auto.offset.store", "false").set("enable.auto.commit", "true");
        let consumer: StreamConsumer = client.create()?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(InboxConsumer {
            pool,
            sql: Arc::new(InboxSql::new(outbox)),
            config,
            handler,
            consumer,
            stats: Arc::default(),
        })
    }

    /// Live counters, shareable with other tasks.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        Arc::clone(&self.stats)
    }

    /// Consumes until `shutdown` is cancelled, then commits stored offsets.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let cleanup =
            tokio::spawn(cleanup_loop(self.pool.clone(), self.sql.clone(), self.config.clone(), shutdown.clone()));
        let result = self.consume(&shutdown).await;
        shutdown.cancel();
        let _ = cleanup.await;
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final offset commit");
        }
        result
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<()> {
        loop {
            let message = tokio::select! {
                m = self.consumer.recv() => m,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Some(outcome) = self.process(&message, shutdown).await else {
                return Ok(()); // shutting down mid-message: it will be redelivered
            };
            self.stats.count(outcome);
            tracing::debug!(?outcome, topic = message.topic(), offset = message.offset(), "processed");
            self.consumer.store_offset_from_message(&message)?;
        }
    }

    /// Applies one message; `None` if shutdown interrupted it.
    async fn process(&self, message: &BorrowedMessage<'_>, shutdown: &CancellationToken) -> Option<Processed> {
        let event = to_event(message);
        let Some(event) = event.as_ref().ok() else {
            let reason = event.err().unwrap_or_default();
            return self.dead_letter(message, None, &reason, 0, shutdown).await;
        };
        let span = tracing::info_span!("outbox.consume", event_id = %event.id, event_type = %event.event_type,
            topic = %event.topic, partition = event.partition, offset = event.offset);
        if let Some(tp) = event.traceparent() {
            crate::trace::set_remote_parent(&span, tp);
        }
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.config.retry_min_delay)
            .with_max_delay(self.config.retry_max_delay)
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempts = 0;
        loop {
            match self.apply(event).instrument(span.clone()).await {
                Ok(outcome) => {
                    if outcome == Processed::Applied {
                        crate::failpoint::hit("inbox-after-commit");
                    }
                    return Some(outcome);
                }
                Err(Attempt::Infrastructure(e)) => {
                    tracing::warn!(parent: &span, error = %e, "inbox transaction failed; retrying");
                }
                Err(Attempt::Handler(e)) => {
                    attempts += 1;
                    metrics::counter!("outbox_inbox_handler_errors_total").increment(1);
                    let permanent = matches!(e, HandlerError::Permanent(_));
                    if permanent || attempts >= self.config.max_attempts {
                        tracing::error!(parent: &span, error = %e, attempts, "handler failed: dead-lettering");
                        return self.dead_letter(message, Some(event.id), &e.to_string(), attempts, shutdown).await;
                    }
                    tracing::warn!(parent: &span, error = %e, attempts, "handler failed; retrying");
                }
            }
            let delay = delays.next().unwrap_or(self.config.retry_max_delay);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    async fn apply(&self, event: &ReceivedEvent) -> Result<Processed, Attempt> {
        let mut tx = self.pool.begin().await.map_err(Attempt::infra)?;
        let inserted = sqlx::query(&self.sql.insert)
            .bind(&self.config.group_id)
            .bind(event.id)
            .bind(&event.topic)
            .execute(&mut *tx)
            .await
            .map_err(Attempt::infra)?
            .rows_affected();
        if inserted == 0 {
            tx.rollback().await.map_err(Attempt::infra)?;
            return Ok(Processed::Duplicate);
        }
        if let Err(e) = self.handler.handle(event, &mut tx).await {
            let _ = tx.rollback().await;
            return Err(Attempt::Handler(e));
        }
        tx.commit().await.map_err(Attempt::infra)?;
        Ok(Processed::Applied)
    }

    /// Records the message in the inbox dead-letter table (and its id in the
    /// inbox, so a redelivery is skipped), retrying database errors.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        id: Option<Uuid>,
        error: &str,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Option<Processed> {
        let headers: BTreeMap<String, String> = header_map(message);
        loop {
            let result: Result<(), sqlx::Error> = async {
                let mut tx = self.pool.begin().await?;
                if let Some(id) = id {
                    sqlx::query(&self.sql.insert)
                        .bind(&self.config.group_id)
                        .bind(id)
                        .bind(message.topic())
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(&self.sql.dead_letter)
                    .bind(&self.config.group_id)
                    .bind(id)
                    .bind(message.topic())
                    .bind(message.partition())
                    .bind(message.offset())
                    .bind(message.key())
                    .bind(message.payload())
                    .bind(sqlx::types::Json(&headers))
                    .bind(error)
                    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
            .await;
            match result {
                Ok(()) => return Some(Processed::DeadLettered),
                Err(e) => tracing::warn!(error = %e, "could not dead-letter message; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }
}

enum Attempt {
    Infrastructure(sqlx::Error),
    Handler(HandlerError),
}

impl Attempt {
    fn infra(e: sqlx::Error) -> Self {
        Attempt::Infrastructure(e)
    }
}

fn header_map(message: &BorrowedMessage<'_>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    if let Some(headers) = message.headers() {
        for h in headers.iter() {
            if let Some(v) = h.value.and_then(|v| std::str::from_utf8(v).ok()) {
                map.insert(h.key.to_owned(), v.to_owned());
            }
        }
    }
    map
}

fn to_event(message: &BorrowedMessage<'_>) -> Result<ReceivedEvent, String> {
    let headers = header_map(message);
    let id = headers.get("ce_id").ok_or("message has no ce_id header: not an outbox event")?;
    let id = Uuid::parse_str(id).map_err(|e| format!("ce_id {id:?} is not a UUID: {e}"))?;
    Ok(ReceivedEvent {
        id,
        event_type: headers.get("ce_type").cloned().unwrap_or_default(),
        source: headers.get("ce_source").cloned(),
        time: headers.get("ce_time").and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc)),
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
    })
}

/// Deletes inbox rows past the horizon, in batches, every `cleanup_interval`.
async fn cleanup_loop(pool: PgPool, sql: Arc<InboxSql>, config: ConsumerConfig, shutdown: CancellationToken) {
    loop {
        match cleanup_inbox(&pool, &sql, config.inbox_horizon).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "cleaned up inbox rows past the horizon"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "inbox cleanup failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(config.cleanup_interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn cleanup_inbox(pool: &PgPool, sql: &InboxSql, horizon: Duration) -> Result<u64> {
    const BATCH: i64 = 5000;
    let mut total = 0;
    loop {
        let n = sqlx::query(&sql.cleanup).bind(horizon.as_secs_f64()).bind(BATCH).execute(pool).await?.rows_affected();
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Deletes inbox rows older than `horizon` now, returning how many.
pub async fn cleanup_inbox_now(pool: &PgPool, config: &OutboxConfig, horizon: Duration) -> Result<u64> {
    cleanup_inbox(pool, &InboxSql::new(config), horizon).await
}
