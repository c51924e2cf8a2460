//! While the broker is unreachable: a reminder in the log every so often
//! with what waits (pending events, the age of the oldest), and a probe so
//! that its return is noticed even when nothing is in flight.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::publish::Publisher;
use crate::store::OutboxStore;

/// How often the watcher looks at the broker's state.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How often, while the broker is away, it asks the broker for metadata.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Runs until `shutdown`: every `remind_every` of an outage, one warning
/// with the outage's length and the outbox's backlog.
pub(super) async fn watch<S: OutboxStore, P: Publisher>(
    store: Arc<S>,
    publisher: Arc<P>,
    remind_every: Duration,
    shutdown: CancellationToken,
) {
    let mut reminded_at = Duration::ZERO;
    let mut probed_at = Duration::ZERO;
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        let down = publisher.unreachable_for();
        // Kept current here too: a metrics recorder installed after the
        // publisher was created missed its first state.
        metrics::gauge!("outbox_kafka_up").set(if down.is_some() { 0.0 } else { 1.0 });
        let Some(down_for) = down else {
            (reminded_at, probed_at) = (Duration::ZERO, Duration::ZERO);
            continue;
        };
        if down_for >= probed_at + PROBE_EVERY {
            probed_at = down_for;
            // A success marks the broker reachable (and logs it).
            let _ = tokio::time::timeout(PROBE_EVERY, publisher.ping()).await;
        }
        if down_for >= reminded_at + remind_every {
            reminded_at = down_for;
            match store.stats().await {
                Ok(stats) => tracing::warn!(
                    down_for = ?Duration::from_secs(down_for.as_secs()),
                    pending = stats.pending,
                    oldest_pending_age = ?Duration::from_secs(stats.oldest_pending_age.as_secs()),
                    "Kafka still unreachable; events wait in the outbox"
                ),
                Err(e) => tracing::warn!(down_for = ?Duration::from_secs(down_for.as_secs()), error = %e,
                    "Kafka still unreachable (and the outbox's backlog could not be read)"),
            }
        }
    }
}
