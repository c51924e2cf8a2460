//! The relay loop: claim → produce → await confirmation → mark, with retries.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::publish::{Delivery, Publisher};
use crate::store::{DeadLetter, OutboxStore, RetryLater};

/// How the relay paces itself.
///
/// ```
/// use std::time::Duration;
/// use outbox_core::RelayConfig;
/// let config = RelayConfig { batch_size: 1000, poll_interval: Duration::from_millis(50), ..Default::default() };
/// assert!(config.validate().is_ok());
/// assert!(RelayConfig { batch_size: 0, ..Default::default() }.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// Most rows claimed and published per batch.
    pub batch_size: usize,
    /// Pause after finding no work.
    pub poll_interval: Duration,
    /// First delay after a failed delivery; doubles per attempt, with jitter.
    pub retry_min_delay: Duration,
    /// Longest delay between delivery attempts.
    pub retry_max_delay: Duration,
    /// How long shutdown waits for in-flight confirmations before leaving
    /// them pending (they are published again by the next relay: duplicates,
    /// never losses).
    pub shutdown_grace: Duration,
    /// How often a standby relay tries to become the active one.
    pub standby_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 1000,
            poll_interval: Duration::from_millis(100),
            retry_min_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            standby_interval: Duration::from_secs(1),
        }
    }
}

impl RelayConfig {
    /// Rejects values that cannot work.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(crate::Error::Config(m.to_owned()));
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return bad("batch size must be between 1 and 100000");
        }
        if self.poll_interval.is_zero() {
            return bad("poll interval must be above zero");
        }
        if self.retry_min_delay.is_zero() || self.retry_min_delay > self.retry_max_delay {
            return bad("retry delays must satisfy 0 < min <= max");
        }
        Ok(())
    }

    /// Delay before attempt number `attempts + 1`, exponential with jitter.
    fn retry_delay(&self, attempts: i32) -> Duration {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.retry_min_delay)
            .with_max_delay(self.retry_max_delay)
            .with_jitter()
            .without_max_times()
            .build();
        delays.nth(usize::try_from(attempts.max(0)).unwrap_or(0).min(64)).unwrap_or(self.retry_max_delay)
    }
}

async fn pause(shutdown: &CancellationToken, duration: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows confirmed by the broker and marked.
    pub published: usize,
    /// Rows that failed and will be retried.
    pub retried: usize,
    /// Rows moved to the dead-letter table.
    pub dead_lettered: usize,
    /// Rows held back behind an earlier failed row of their key.
    pub held: usize,
}

/// Drains an outbox through a publisher.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> anyhow::Result<()> {
/// use outbox_core::{KafkaPublisher, KafkaPublisherConfig, OutboxConfig, PgStore, Relay, RelayConfig};
/// let store = PgStore::new(pool, &OutboxConfig::default());
/// let publisher = KafkaPublisher::new(KafkaPublisherConfig::new("localhost:9092"))?;
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// Relay::new(store, publisher, RelayConfig::default())?.run(shutdown).await?;
/// # Ok(()) }
/// ```
pub struct Relay<S, P> {
    store: Arc<S>,
    publisher: Arc<P>,
    config: RelayConfig,
}

impl<S: OutboxStore, P: Publisher> Relay<S, P> {
    /// A relay over `store` and `publisher`.
    pub fn new(store: S, publisher: P, config: RelayConfig) -> Result<Self> {
        config.validate()?;
        Ok(Relay { store: Arc::new(store), publisher: Arc::new(publisher), config })
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The publisher.
    pub fn publisher(&self) -> &Arc<P> {
        &self.publisher
    }

    /// Runs until `shutdown` is cancelled, then finishes the batch in flight
    /// (within [`RelayConfig::shutdown_grace`]) and returns.
    ///
    /// Only one relay per outbox publishes at a time: the others wait as
    /// standbys (checking every [`RelayConfig::standby_interval`]) and take
    /// over when the active relay's database session ends.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let mut error_streak = 0u32;
        let mut leadership: Option<Box<dyn crate::store::Leadership>> = None;
        let mut announced_standby = false;
        while !shutdown.is_cancelled() {
            let held = match leadership.as_mut() {
                Some(l) => l.still_held().await.unwrap_or(false),
                None => false,
            };
            if !held {
                if leadership.take().is_some() {
                    tracing::warn!("lost the outbox lock (database session ended): standing by");
                }
                metrics::gauge!("outbox_relay_active").set(0.0);
                match self.store.try_lead().await {
                    Ok(Some(l)) => {
                        tracing::info!("active: this relay now drains the outbox");
                        metrics::gauge!("outbox_relay_active").set(1.0);
                        leadership = Some(l);
                    }
                    Ok(None) => {
                        if !announced_standby {
                            tracing::info!("standby: another relay is draining this outbox");
                            announced_standby = true;
                        }
                        pause(&shutdown, self.config.standby_interval).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take the outbox lock");
                        pause(&shutdown, self.config.standby_interval).await;
                        continue;
                    }
                }
            }
            let pause_for = match self.run_once(&shutdown).await {
                Ok(report) => {
                    error_streak = 0;
                    if report.claimed < self.config.batch_size && report.published == 0 {
                        Some(self.config.poll_interval)
                    } else {
                        None
                    }
                }
                Err(e) => {
                    error_streak += 1;
                    let delay = self.config.retry_delay(i32::try_from(error_streak).unwrap_or(i32::MAX));
                    tracing::warn!(error = %e, retry_in = ?delay, "relay batch failed");
                    Some(delay.min(Duration::from_secs(5)))
                }
            };
            if let Some(d) = pause_for {
                pause(&shutdown, d).await;
            }
        }
        tracing::info!("relay stopped");
        Ok(())
    }

    /// Claims, publishes and settles one batch.
    pub async fn run_once(&self, shutdown: &CancellationToken) -> Result<BatchReport> {
        let events = self.store.claim(self.config.batch_size).await?;
        let mut report = BatchReport { claimed: events.len(), ..Default::default() };
        if events.is_empty() {
            return Ok(report);
        }
        let started = Instant::now();
        let grace = self.config.shutdown_grace;
        let outcomes = tokio::select! {
            outcomes = self.publisher.publish(&events) => outcomes,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(in_flight = events.len(), "shutdown grace expired: unconfirmed events stay pending");
                return Ok(report);
            }
        };
        metrics::histogram!("outbox_batch_publish_duration_seconds").record(started.elapsed().as_secs_f64());

        let mut delivered = Vec::new();
        let mut retries = Vec::new();
        let mut dead = Vec::new();
        let mut failed_keys: HashSet<&str> = HashSet::new();
        for (event, outcome) in events.iter().zip(outcomes) {
            match outcome {
                Delivery::Delivered => {
                    if event.key.as_deref().is_some_and(|k| failed_keys.contains(k)) {
                        metrics::counter!("outbox_order_gaps_total").increment(1);
                        tracing::error!(id = %event.id, key = ?event.key, "event confirmed after an earlier event of its key failed");
                    }
                    delivered.push(event.seq);
                }
                Delivery::Retry(error) => {
                    if let Some(k) = &event.key {
                        failed_keys.insert(k);
                    }
                    let retry_after = self.config.retry_delay(event.attempts);
                    tracing::warn!(id = %event.id, topic = %event.topic, attempts = event.attempts + 1, %error, ?retry_after, "delivery failed, will retry");
                    retries.push(RetryLater { seq: event.seq, error, retry_after });
                }
                Delivery::Permanent(error) => {
                    if let Some(k) = &event.key {
                        failed_keys.insert(k);
                    }
                    tracing::error!(id = %event.id, topic = %event.topic, %error, "delivery failed permanently: dead-lettering");
                    dead.push(DeadLetter { seq: event.seq, error });
                }
                Delivery::Held => report.held += 1,
            }
        }
        report.published = delivered.len();
        report.retried = retries.len();
        report.dead_lettered = dead.len();

        crate::failpoint::hit("relay-after-publish");
        self.settle(shutdown, &delivered, &retries, &dead).await?;
        metrics::counter!("outbox_events_published_total").increment(delivered.len() as u64);
        metrics::counter!("outbox_delivery_failures_total").increment((retries.len() + dead.len()) as u64);
        metrics::counter!("outbox_dead_lettered_total").increment(dead.len() as u64);
        tracing::debug!(?report, "batch settled");
        Ok(report)
    }

    /// Records the batch's outcome. Marking confirmed rows is retried until it
    /// succeeds or the relay shuts down: forgetting a confirmation costs a
    /// duplicate, never a loss.
    async fn settle(
        &self,
        shutdown: &CancellationToken,
        delivered: &[i64],
        retries: &[RetryLater],
        dead: &[DeadLetter],
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            let result = async {
                self.store.mark_published(delivered).await?;
                self.store.dead_letter(dead).await?;
                self.store.retry_later(retries).await
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if shutdown.is_cancelled() => return Err(e),
                Err(e) => {
                    attempt += 1;
                    let delay = self.config.retry_delay(attempt).min(Duration::from_secs(5));
                    tracing::warn!(error = %e, retry_in = ?delay, "could not record batch outcome, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }
}
