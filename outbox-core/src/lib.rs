//! # outbox-core
//!
//! The transactional outbox for Rust services on PostgreSQL and Kafka.
//!
//! * **Write side** — [`Outbox::enqueue`] writes a [`Message`] in *your*
//!   transaction: the event exists if and only if your business change
//!   commits.
//! * **Relay** — [`Relay`] drains the outbox through a [`Publisher`]
//!   ([`KafkaPublisher`]): claim in sequence order, produce idempotently with
//!   `acks=all`, wait for the broker's confirmation, and only then mark the
//!   rows done. The `outbox-relay` binary runs it as a sidecar.
//! * **Consume side** — [`InboxConsumer`] runs your [`Handler`] in one
//!   transaction with an inbox row keyed by (consumer group, event id), so a
//!   redelivered event is acknowledged but never applied twice.
//! * **Sagas** — [`saga`]: a persisted orchestrator built on the outbox and
//!   the inbox, with compensations in reverse order and deadlines.
//!
//! Delivery to Kafka is at-least-once; effects through the inbox happen
//! once per event id.
//!
//! ```no_run
//! # async fn f(pool: sqlx::PgPool) -> outbox_core::Result<()> {
//! use outbox_core::{Message, Outbox, OutboxConfig};
//! let outbox = Outbox::new(OutboxConfig::default());
//! outbox.migrate(&pool).await?;
//! let mut tx = pool.begin().await?;
//! // ... your business writes through &mut *tx ...
//! outbox.enqueue(&mut *tx, &Message::json("orders", "order.placed", &serde_json::json!({"id": 1}))?.with_key("1")).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```

mod backend;
mod cloudevents;
mod config;
mod database_url;
mod enqueue;
mod error;
mod failpoint;
mod inbox;
pub mod lease;
mod message;
pub mod migrate;
pub mod privileges;
mod publish;
mod relay;
pub mod saga;
pub mod secrets;
pub mod slot;
mod store;
pub mod trace;

pub use backend::Backend;
pub use config::{Ident, OutboxConfig, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_SLOTS};
pub use database_url::{database_unencrypted, pg_connect_options};
pub use enqueue::Outbox;
pub use error::{Error, Result, ValidationError};
pub use inbox::{
    cleanup_inbox_now, BoxError, ConsumerConfig, ConsumerStats, Handler, HandlerError, InboxConsumer, Processed,
    ReceivedEvent,
};
pub use message::{Message, MAX_HEADER_NAME_BYTES, MAX_HEADER_VALUE_BYTES, MAX_KEY_BYTES, RESERVED_HEADERS};
pub use publish::{
    cloudevents_headers, Delivery, KafkaPublisher, KafkaPublisherConfig, Publisher, Sending, TopicCreation,
};
pub use relay::{BatchReport, PoisonPolicy, Relay, RelayConfig};
pub use store::{listen_for_wakeups, queue_session_options, QUEUE_SESSION_SETTINGS};
pub use store::{
    DeadLetter, Fence, OutboxEvent, OutboxStats, OutboxStore, PgStore, Rebalance, RelayId, RetryLater, SlotLag,
};
pub use store::{DeadLetterEntry, OutboxAdmin, RelayStatus, Status};

/// Re-exported so applications and the relay use the same versions.
pub use tokio_util::sync::CancellationToken;
