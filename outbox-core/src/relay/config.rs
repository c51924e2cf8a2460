//! How a relay paces itself and what it does with poison events.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::error::Result;

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
    /// Pause after finding no work, once the outbox has been empty for
    /// this long.
    pub poll_interval: Duration,
    /// Pause after a claim that found some work but less than a full batch,
    /// and after an empty claim less than `poll_interval` after one that
    /// found work: events are flowing, so the next one is likely close
    /// (never longer than `poll_interval`).
    pub busy_poll_interval: Duration,
    /// Batches in flight at once: while the broker confirms one batch, the
    /// relay claims and sends the next ones (1 waits for each batch to be
    /// confirmed and marked before claiming the next).
    pub pipeline_depth: usize,
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
    /// While the broker is unreachable, how often the log is reminded of it
    /// (with the pending count and the oldest event's age). Losing and
    /// regaining the broker are logged once each, when they happen.
    pub outage_report_interval: Duration,
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
            busy_poll_interval: Duration::from_millis(2),
            pipeline_depth: 1,
            retry_min_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            lease_timeout: Duration::from_secs(10),
            rebalance_interval: Duration::from_secs(1),
            name: default_name(),
            poison_policy: PoisonPolicy::QuarantineKey,
            retention: Duration::ZERO,
            purge_interval: Duration::from_secs(10),
            outage_report_interval: Duration::from_secs(30),
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
        if self.pipeline_depth == 0 || self.pipeline_depth > 64 {
            return bad("pipeline depth must be between 1 and 64");
        }
        if self.poll_interval.is_zero() || self.busy_poll_interval.is_zero() {
            return bad("poll intervals must be above zero");
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
        if self.outage_report_interval.is_zero() {
            return bad("outage report interval must be above zero");
        }
        Ok(())
    }

    /// Delay before attempt number `attempts + 1`, exponential with jitter.
    pub(super) fn retry_delay(&self, attempts: i32) -> Duration {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.retry_min_delay)
            .with_max_delay(self.retry_max_delay)
            .with_jitter()
            .without_max_times()
            .build();
        delays.nth(usize::try_from(attempts.max(0)).unwrap_or(0).min(64)).unwrap_or(self.retry_max_delay)
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
