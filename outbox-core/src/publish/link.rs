//! Whether the broker is reachable, as librdkafka reports it, logged by
//! state change rather than by librdkafka's repeats.
//!
//! librdkafka reports every failed connection attempt (and an "all brokers
//! down" event after each round) through its error callback; rdkafka's
//! default context logs each at error level, which during an outage is tens
//! of lines a second. This context turns them into one line when the broker
//! is lost and one when it answers again (the relay adds a reminder while it
//! stays away: see [`Publisher::unreachable_for`](super::Publisher::unreachable_for)),
//! the `outbox_kafka_up` gauge and the `outbox_kafka_client_errors_total`
//! counter. librdkafka's own log lines go to `debug`; any other error is
//! logged at warn once a minute per kind and at debug in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// How often the same kind of client error is logged at warn.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The broker's reachability, shared by the producer's and admin client's
/// contexts and the publisher.
#[derive(Debug, Default)]
pub(crate) struct BrokerLink {
    /// Fast path for every confirmation: is anything to be done on success?
    down: AtomicBool,
    down_since: Mutex<Option<Instant>>,
    warned: Mutex<HashMap<String, Instant>>,
}

impl BrokerLink {
    /// librdkafka lost its connection to every broker.
    fn lost(&self, reason: &str) {
        let mut since = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        if since.is_none() {
            *since = Some(Instant::now());
            self.down.store(true, Ordering::Release);
            metrics::gauge!("outbox_kafka_up").set(0.0);
            tracing::warn!(%reason, "lost the connection to every Kafka broker: events stay pending (none is lost) until one answers");
        }
    }

    /// Something the broker answered (a confirmation, metadata).
    pub(crate) fn reached(&self) {
        if !self.down.load(Ordering::Acquire) {
            return;
        }
        let mut since = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = since.take() {
            self.down.store(false, Ordering::Release);
            metrics::gauge!("outbox_kafka_up").set(1.0);
            tracing::info!(down_for = ?at.elapsed(), "Kafka broker reachable again");
        }
    }

    /// How long every broker has been unreachable, if it has.
    pub(crate) fn unreachable_for(&self) -> Option<Duration> {
        self.down_since.lock().unwrap_or_else(|e| e.into_inner()).map(|at| at.elapsed())
    }

    /// Any other client error: at warn once per [`WARN_EVERY`] per kind.
    fn other(&self, error: &KafkaError, reason: &str) {
        let kind = error.rdkafka_error_code().map_or_else(|| format!("{error:?}"), |c| format!("{c:?}"));
        let now = Instant::now();
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        let due = warned.get(&kind).is_none_or(|at| now.duration_since(*at) >= WARN_EVERY);
        if due {
            warned.insert(kind, now);
            drop(warned);
            tracing::warn!(%error, %reason, "Kafka client error (the same kind is logged at debug for a minute)");
        } else {
            tracing::debug!(%error, %reason, "Kafka client error");
        }
    }
}

/// The rdkafka context of the publisher's clients.
#[derive(Clone, Default)]
pub(crate) struct LinkContext {
    pub(crate) link: Arc<BrokerLink>,
}

impl ClientContext for LinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(target: "librdkafka", ?level, facility = fac, "{log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        metrics::counter!("outbox_kafka_client_errors_total", "error" => code.map_or_else(|| "other".to_owned(), |c| format!("{c:?}")))
            .increment(1);
        match code {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.link.lost(reason),
            // One connection attempt failing: the outage, if it is one, is
            // reported by AllBrokersDown.
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve) => {
                tracing::debug!(%reason, "Kafka connection attempt failed");
            }
            _ => self.link.other(&error, reason),
        }
    }
}

/// The inbox consumer's clients report the same way (their outage ends at
/// the next message received).
impl rdkafka::consumer::ConsumerContext for LinkContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_one_state_change_however_often_it_is_reported() {
        let link = BrokerLink::default();
        assert_eq!(link.unreachable_for(), None);
        let context = LinkContext { link: Arc::new(link) };
        for _ in 0..100 {
            context.error(KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down");
        }
        let first = context.link.unreachable_for().expect("down");
        std::thread::sleep(Duration::from_millis(5));
        assert!(context.link.unreachable_for().expect("still down") > first, "the outage started once");
        context.link.reached();
        assert_eq!(context.link.unreachable_for(), None);
    }
}
