//! The relay loop: claim → produce → await confirmation → mark, with retries.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::publish::{Delivery, Publisher};
use crate::store::{DeadLetter, Fence, OutboxStore, RelayId, RetryLater};

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
    /// How long a slot lease lasts without a heartbeat: a relay that stops
    /// (killed, paused) loses its slots this long after its last heartbeat.
    /// Heartbeats are sent every third of it.
    pub lease_timeout: Duration,
    /// How often the relay re-divides slots when relays join or leave.
    pub rebalance_interval: Duration,
    /// A human-readable name for this relay instance (shown by `status`).
    pub name: String,
    /// What happens to the later events of a key whose event failed for good.
    pub poison_policy: PoisonPolicy,
    /// How long published events are kept for replay (zero: deleted at once).
    pub retention: Duration,
    /// How often retained events past the retention period are purged.
    pub purge_interval: Duration,
}

/// What to do with a key after one of its events failed permanently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PoisonPolicy {
    /// Dead-letter the event and hold back the key's later events until an
    /// operator retries (in original order) or discards it. Other keys flow
    /// on. Per-key order is never broken.
    #[default]
    QuarantineKey,
    /// Dead-letter the event and let the key's later events go on. A later
    /// retry of the dead letter publishes it after them.
    DeadLetterAndContinue,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 1000,
            poll_interval: Duration::from_millis(10),
            retry_min_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            lease_timeout: Duration::from_secs(10),
            rebalance_interval: Duration::from_secs(1),
            name: default_name(),
            poison_policy: PoisonPolicy::QuarantineKey,
            retention: Duration::ZERO,
            purge_interval: Duration::from_secs(10),
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
        if self.lease_timeout < Duration::from_millis(300) {
            return bad("lease timeout must be at least 300ms");
        }
        if self.rebalance_interval.is_zero() {
            return bad("rebalance interval must be above zero");
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

/// `host:pid`, the default relay name.
fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".to_owned());
    format!("{host}:{}", std::process::id())
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
    id: RelayId,
    waker: Arc<tokio::sync::Notify>,
    store: Arc<S>,
    publisher: Arc<P>,
    config: RelayConfig,
}

impl<S: OutboxStore, P: Publisher> Relay<S, P> {
    /// A relay over `store` and `publisher`.
    pub fn new(store: S, publisher: P, config: RelayConfig) -> Result<Self> {
        config.validate()?;
        Ok(Relay {
            id: uuid::Uuid::now_v7(),
            waker: Arc::default(),
            store: Arc::new(store),
            publisher: Arc::new(publisher),
            config,
        })
    }

    /// Notifying this ends an idle pause at once (see
    /// [`listen_for_wakeups`](crate::listen_for_wakeups)).
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.waker)
    }

    /// This instance's id (a new one per process).
    pub fn id(&self) -> RelayId {
        self.id
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
    /// (within [`RelayConfig::shutdown_grace`]), releases its slots and
    /// returns.
    ///
    /// Any number of relays may run on one outbox: they divide the slots
    /// among themselves (see [`crate::lease`]).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let heartbeats = CancellationToken::new();
        // Be visible as live before the first rebalance, so it assigns slots.
        if let Err(e) = self.store.heartbeat(self.id, &self.config.name, self.config.lease_timeout).await {
            tracing::warn!(error = %e, "first heartbeat failed");
        }
        let heartbeat =
            tokio::spawn(heartbeat_loop(Arc::clone(&self.store), self.id, self.config.clone(), heartbeats.clone()));
        tracing::info!(relay = %self.id, name = %self.config.name, "relay joined");
        let mut error_streak = 0u32;
        let mut last_rebalance: Option<Instant> = None;
        let mut owned: Vec<i32> = Vec::new();
        let mut last_purge = Instant::now();
        while !shutdown.is_cancelled() {
            if !self.config.retention.is_zero() && last_purge.elapsed() >= self.config.purge_interval {
                last_purge = Instant::now();
                self.purge().await;
            }
            if last_rebalance.is_none_or(|t| t.elapsed() >= self.config.rebalance_interval) {
                match self.rebalance(&mut owned).await {
                    Ok(()) => last_rebalance = Some(Instant::now()),
                    Err(e) => tracing::warn!(error = %e, "rebalance failed"),
                }
            }
            let pause_for = if owned.is_empty() {
                Some(self.config.rebalance_interval.min(self.config.poll_interval * 10))
            } else {
                match self.run_once(&shutdown).await {
                    Ok(report) => {
                        error_streak = 0;
                        (report.claimed < self.config.batch_size && report.published == 0)
                            .then_some(self.config.poll_interval)
                    }
                    Err(e) => {
                        error_streak += 1;
                        let delay = self.config.retry_delay(i32::try_from(error_streak).unwrap_or(i32::MAX));
                        tracing::warn!(error = %e, retry_in = ?delay, "relay batch failed");
                        Some(delay.min(Duration::from_secs(5)))
                    }
                }
            };
            if let Some(d) = pause_for {
                tokio::select! {
                    _ = pause(&shutdown, d) => {}
                    _ = self.waker.notified() => {}
                }
            }
        }
        heartbeats.cancel();
        let _ = heartbeat.await;
        match self.store.leave(self.id).await {
            Ok(()) => tracing::info!("relay stopped; slots released"),
            Err(e) => tracing::warn!(error = %e, "relay stopped; could not release slots (they expire)"),
        }
        metrics::gauge!("outbox_slots_owned").set(0.0);
        Ok(())
    }

    /// Deletes retained events past the retention period, in batches.
    async fn purge(&self) {
        const BATCH: i64 = 5000;
        loop {
            match self.store.purge_published(self.config.retention, BATCH).await {
                Ok(n) => {
                    metrics::counter!("outbox_purged_total").increment(n);
                    if n < BATCH as u64 {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging retained events failed");
                    return;
                }
            }
        }
    }

    /// Re-divides slots among live relays and records what changed.
    async fn rebalance(&self, owned: &mut Vec<i32>) -> Result<()> {
        let r = self.store.rebalance(self.id, self.config.lease_timeout).await?;
        if !r.acquired.is_empty() || !r.released.is_empty() {
            metrics::counter!("outbox_rebalances_total").increment(1);
            metrics::counter!("outbox_lease_takeovers_total").increment(r.taken_over.len() as u64);
            tracing::info!(
                live_relays = r.live_relays,
                owned = r.owned.len(),
                acquired = ?r.acquired,
                taken_over = ?r.taken_over,
                released = ?r.released,
                "slots rebalanced"
            );
        }
        for slot in owned.iter().filter(|s| !r.owned.contains(s)) {
            metrics::gauge!("outbox_slot_owned", "slot" => slot.to_string()).set(0.0);
        }
        for slot in &r.owned {
            metrics::gauge!("outbox_slot_owned", "slot" => slot.to_string()).set(1.0);
        }
        metrics::gauge!("outbox_slots_owned").set(r.owned.len() as f64);
        metrics::gauge!("outbox_live_relays").set(r.live_relays as f64);
        *owned = r.owned;
        Ok(())
    }

    /// Claims, publishes and settles one batch.
    pub async fn run_once(&self, shutdown: &CancellationToken) -> Result<BatchReport> {
        let events = self.store.claim(self.id, self.config.batch_size).await?;
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
        let confirmed_at = chrono::Utc::now();

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
                    delivered.push(event.fence());
                    let waited = (confirmed_at - event.created_at).to_std().unwrap_or_default();
                    metrics::histogram!("outbox_commit_to_confirm_seconds").record(waited.as_secs_f64());
                }
                Delivery::Retry(error) => {
                    if let Some(k) = &event.key {
                        failed_keys.insert(k);
                    }
                    let retry_after = self.config.retry_delay(event.attempts);
                    tracing::warn!(id = %event.id, topic = %event.topic, attempts = event.attempts + 1, %error, ?retry_after, "delivery failed, will retry");
                    retries.push(RetryLater { fence: event.fence(), error, retry_after });
                }
                Delivery::Permanent(error) => {
                    if let Some(k) = &event.key {
                        failed_keys.insert(k);
                    }
                    tracing::error!(id = %event.id, topic = %event.topic, %error, "delivery failed permanently: dead-lettering");
                    dead.push(DeadLetter { fence: event.fence(), error });
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

    /// Records the batch's outcome, fenced by the lease epochs the rows were
    /// claimed under. Retried until it succeeds or the relay shuts down:
    /// forgetting a confirmation costs a duplicate, never a loss.
    async fn settle(
        &self,
        shutdown: &CancellationToken,
        delivered: &[Fence],
        retries: &[RetryLater],
        dead: &[DeadLetter],
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            let result = async {
                let marked = self.store.mark_published(self.id, delivered, !self.config.retention.is_zero()).await?;
                let quarantine = self.config.poison_policy == PoisonPolicy::QuarantineKey;
                let dead_lettered = self.store.dead_letter(self.id, dead, quarantine).await?;
                let rescheduled = self.store.retry_later(self.id, retries).await?;
                Ok::<_, crate::Error>(marked + dead_lettered + rescheduled)
            }
            .await;
            match result {
                Ok(settled) => {
                    let expected = (delivered.len() + dead.len() + retries.len()) as u64;
                    if settled < expected {
                        // The slot changed owner meanwhile (this relay was
                        // paused past its lease): the new owner publishes
                        // these rows again; duplicates, never losses.
                        metrics::counter!("outbox_fenced_rows_total").increment(expected - settled);
                        tracing::warn!(
                            fenced = expected - settled,
                            "left alone rows of slots this relay no longer owns"
                        );
                    }
                    return Ok(());
                }
                Err(e) if shutdown.is_cancelled() => return Err(e),
                Err(e) => {
                    attempt += 1;
                    let delay = self.config.retry_delay(attempt).min(Duration::from_secs(5));
                    tracing::warn!(error = %e, retry_in = ?delay, "could not record batch outcome, retrying");
                    pause(shutdown, delay).await;
                }
            }
        }
    }
}

/// Keeps this relay's heartbeat and leases fresh, independently of batches
/// (a batch may wait on the broker for a long time).
async fn heartbeat_loop<S: OutboxStore>(store: Arc<S>, id: RelayId, config: RelayConfig, stop: CancellationToken) {
    let every = config.lease_timeout / 3;
    loop {
        if let Err(e) = store.heartbeat(id, &config.name, config.lease_timeout).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}
