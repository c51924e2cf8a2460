//! The idempotent consumer: each Kafka message is applied by the user's
//! handler in one database transaction together with an inbox row keyed by
//! (consumer group, event id). A redelivered event finds its inbox row,
//! commits nothing new and is acknowledged. The Kafka offset is stored only
//! after that transaction committed.
//!
//! Messages that are already waiting are applied together: one transaction
//! writes all their inbox rows in one statement, runs the handler for each
//! new one in order, and commits once. If any handler fails, that
//! transaction rolls back and the messages are applied one at a time, so a
//! failure only ever affects its own message.

mod event;
mod handler;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};

use crate::publish::link::LinkContext;
use sqlx::{Pool, Postgres};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

pub use event::ReceivedEvent;
pub use handler::{BoxError, Handler, HandlerError};

use event::{header_map, to_event};

use crate::backend::{Backend, InboxDeadLetter};
use crate::config::OutboxConfig;
use crate::error::{Error, Result};

/// Configuration of an [`InboxConsumer`]. Its `Debug` output masks secret
/// librdkafka values (passwords, keys).
#[derive(Clone)]
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
    /// Most messages applied in one transaction (1 applies each message in
    /// its own transaction). Only messages already received are batched:
    /// the consumer never waits to fill a batch.
    pub batch_size: usize,
}

impl std::fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("kafka_settings", &crate::secrets::Settings(&self.kafka_settings))
            .field("max_attempts", &self.max_attempts)
            .field("retry_min_delay", &self.retry_min_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("inbox_horizon", &self.inbox_horizon)
            .field("cleanup_interval", &self.cleanup_interval)
            .field("batch_size", &self.batch_size)
            .finish()
    }
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
            batch_size: 256,
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
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return bad("batch size must be between 1 and 10000");
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
pub struct InboxConsumer<H, DB: Backend = Postgres> {
    pool: Pool<DB>,
    sql: Arc<DB::InboxSql>,
    config: ConsumerConfig,
    handler: H,
    consumer: StreamConsumer<LinkContext>,
    context: LinkContext,
    stats: Arc<ConsumerStats>,
}

impl<DB: Backend, H: Handler<DB>> InboxConsumer<H, DB> {
    /// Builds the consumer and subscribes (connections are made lazily).
    pub fn new(pool: Pool<DB>, outbox: &OutboxConfig, config: ConsumerConfig, handler: H) -> Result<Self> {
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
        // librdkafka's reconnection errors logged by state change, as the relay's.
        let context = LinkContext::default();
        let consumer: StreamConsumer<LinkContext> =
            client.create_with_context(context.clone()).map_err(crate::secrets::kafka_config_error)?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(InboxConsumer {
            pool,
            sql: Arc::new(DB::inbox_sql(outbox)),
            config,
            handler,
            consumer,
            context,
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
        let mut batch = Vec::with_capacity(self.config.batch_size);
        loop {
            let message = tokio::select! {
                m = self.consumer.recv() => m,
                _ = shutdown.cancelled() => return Ok(()),
            };
            match message {
                Ok(m) => {
                    self.context.link.reached();
                    batch.push(m)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            // Take whatever else has already arrived, without waiting.
            while batch.len() < self.config.batch_size {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "kafka consumer error");
                        break;
                    }
                    None => break,
                }
            }
            let finished = self.process_batch(&batch, shutdown).await?;
            batch.clear();
            if !finished {
                return Ok(()); // shutting down mid-batch: the rest will be redelivered
            }
        }
    }

    /// Applies `batch` and stores each message's offset once its effect
    /// committed; `false` if shutdown interrupted it.
    async fn process_batch(&self, batch: &[BorrowedMessage<'_>], shutdown: &CancellationToken) -> Result<bool> {
        if batch.len() > 1 {
            let events: Option<Vec<ReceivedEvent>> = batch.iter().map(|m| to_event(m).ok()).collect();
            if let Some(events) = events {
                match self.apply_batch(&events).await {
                    Ok(outcomes) => {
                        // Once per applied message, as on the one-by-one path.
                        for _ in outcomes.iter().filter(|o| **o == Processed::Applied) {
                            crate::failpoint::hit("inbox-after-commit");
                        }
                        for (message, outcome) in batch.iter().zip(outcomes) {
                            self.done(message, outcome)?;
                        }
                        metrics::histogram!("outbox_inbox_batch_size").record(batch.len() as f64);
                        return Ok(true);
                    }
                    Err(Attempt::Handler(e)) => {
                        tracing::debug!(error = %e, "a handler failed in a batch: applying its messages one by one");
                    }
                    Err(Attempt::Infrastructure(e)) => {
                        tracing::warn!(error = %e, "inbox batch failed: applying its messages one by one");
                    }
                }
            }
        }
        for message in batch {
            let Some(outcome) = self.process(message, shutdown).await else {
                return Ok(false);
            };
            self.done(message, outcome)?;
        }
        Ok(true)
    }

    /// Counts an outcome and stores the message's offset.
    fn done(&self, message: &BorrowedMessage<'_>, outcome: Processed) -> Result<()> {
        self.stats.count(outcome);
        tracing::debug!(?outcome, topic = message.topic(), offset = message.offset(), "processed");
        self.consumer.store_offset_from_message(message)?;
        Ok(())
    }

    /// One transaction for many events: every inbox row in one statement,
    /// then the handler for each event seen for the first time, in order.
    async fn apply_batch(&self, events: &[ReceivedEvent]) -> Result<Vec<Processed>, Attempt> {
        let mut tx = self.pool.begin().await.map_err(Attempt::infra)?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
        let new: HashSet<Uuid> =
            DB::record_many(&self.sql, &mut tx, &self.config.group_id, &ids, &topics).await.map_err(Attempt::infra)?;
        let mut applied = HashSet::with_capacity(new.len());
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            if new.contains(&event.id) && applied.insert(event.id) {
                if let Err(e) = self.handler.handle(event, &mut tx).instrument(span(event)).await {
                    let _ = tx.rollback().await;
                    return Err(Attempt::Handler(e));
                }
                outcomes.push(Processed::Applied);
            } else {
                outcomes.push(Processed::Duplicate);
            }
        }
        if applied.is_empty() {
            tx.rollback().await.map_err(Attempt::infra)?;
        } else {
            tx.commit().await.map_err(Attempt::infra)?;
        }
        Ok(outcomes)
    }

    /// Applies one message; `None` if shutdown interrupted it.
    async fn process(&self, message: &BorrowedMessage<'_>, shutdown: &CancellationToken) -> Option<Processed> {
        let event = to_event(message);
        let Some(event) = event.as_ref().ok() else {
            let reason = event.err().unwrap_or_default();
            return self.dead_letter(message, None, &reason, 0, shutdown).await;
        };
        let span = span(event);
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
        let inserted = DB::record(&self.sql, &mut tx, &self.config.group_id, event.id, &event.topic)
            .await
            .map_err(Attempt::infra)?;
        if !inserted {
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
                    DB::record(&self.sql, &mut tx, &self.config.group_id, id, message.topic()).await?;
                }
                let row = InboxDeadLetter {
                    group: &self.config.group_id,
                    event_id: id,
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key(),
                    payload: message.payload(),
                    headers: &headers,
                    error,
                    attempts,
                };
                DB::dead_letter(&self.sql, &mut tx, &row).await?;
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

/// The span a handler runs in, continuing the writer's trace.
fn span(event: &ReceivedEvent) -> tracing::Span {
    let span = tracing::info_span!("outbox.consume", event_id = %event.id, event_type = %event.event_type,
        topic = %event.topic, partition = event.partition, offset = event.offset);
    if let Some(tp) = event.traceparent() {
        crate::trace::set_remote_parent(&span, tp);
    }
    span
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

/// Deletes inbox rows past the horizon, in batches, every `cleanup_interval`.
async fn cleanup_loop<DB: Backend>(
    pool: Pool<DB>,
    sql: Arc<DB::InboxSql>,
    config: ConsumerConfig,
    shutdown: CancellationToken,
) {
    loop {
        match cleanup_inbox::<DB>(&pool, &sql, config.inbox_horizon).await {
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

async fn cleanup_inbox<DB: Backend>(pool: &Pool<DB>, sql: &DB::InboxSql, horizon: Duration) -> Result<u64> {
    crate::store::delete_in_batches(|batch| DB::cleanup_batch(sql, pool, horizon, batch)).await
}

/// Deletes inbox rows older than `horizon` now, returning how many.
pub async fn cleanup_inbox_now<DB: Backend>(pool: &Pool<DB>, config: &OutboxConfig, horizon: Duration) -> Result<u64> {
    cleanup_inbox::<DB>(pool, &DB::inbox_sql(config), horizon).await
}
