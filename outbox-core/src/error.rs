//! The error types of the crate.

use uuid::Uuid;

/// Why a [`Message`](crate::Message) was refused at enqueue time.
///
/// Nothing is written when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// The topic is empty.
    #[error("topic must not be empty")]
    EmptyTopic,
    /// The topic is not a legal Kafka topic name.
    #[error("topic {topic:?} is not a legal Kafka topic name: {reason}")]
    InvalidTopic {
        /// The offending topic.
        topic: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The event type is empty.
    #[error("event type must not be empty")]
    EmptyEventType,
    /// The payload is larger than the configured maximum.
    #[error("payload is {size} bytes, above the configured maximum of {max} bytes")]
    PayloadTooLarge {
        /// Size of the payload in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The key is larger than the configured maximum.
    #[error("key is {size} bytes, above the maximum of {max} bytes")]
    KeyTooLarge {
        /// Size of the key in bytes.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// A header name cannot be carried as a Kafka header.
    #[error("header name {name:?} is invalid: {reason}")]
    InvalidHeaderName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A header value cannot be carried.
    #[error("value of header {name:?} is invalid: {reason}")]
    InvalidHeaderValue {
        /// The header whose value is invalid.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A text field holds a character PostgreSQL cannot store (NUL).
    #[error("{field} contains a NUL character")]
    NulCharacter {
        /// Which field.
        field: &'static str,
    },
    /// The CloudEvents `source` is not a non-empty URI-reference.
    #[error("source {value:?} is not a CloudEvents source: {reason}")]
    InvalidSource {
        /// The offending source.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The CloudEvents `time` is outside the years 1–9999 (RFC 3339 has four
    /// digits; consumers' date types start at year 1).
    #[error("time {time} cannot be written as an RFC 3339 timestamp that consumers read (years 0001-9999)")]
    InvalidTime {
        /// The offending time.
        time: String,
    },
    /// The `content-type` (CloudEvents `datacontenttype`) is not an RFC 2046 media type.
    #[error("content type {content_type:?} is not a media type: {reason}")]
    InvalidContentType {
        /// The offending value.
        content_type: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A text attribute holds characters a CloudEvents `String` may not.
    #[error("{field} is not a valid CloudEvents string: {reason}")]
    InvalidAttribute {
        /// Which attribute.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `traceparent` is not a W3C trace-context header.
    #[error("traceparent {0:?} is not a valid W3C trace context")]
    InvalidTraceparent(String),
}

/// Errors returned by this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message failed validation; nothing was written.
    #[error("invalid message: {0}")]
    InvalidMessage(#[from] ValidationError),
    /// A schema or table name is not a plain SQL identifier.
    #[error("invalid identifier {name:?}: {reason}")]
    InvalidIdentifier {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A database URL cannot be used; `url` has its password masked.
    #[error("invalid database URL {url}: {reason}")]
    InvalidDatabaseUrl {
        /// The URL, password masked.
        url: String,
        /// What is wrong with it (never a value from the URL).
        reason: String,
    },
    /// librdkafka refused a setting; its value is never shown (it may be a
    /// secret, or a secret under a mistyped name).
    #[error("invalid Kafka setting {key:?}: {reason}")]
    KafkaConfig {
        /// The setting's name.
        key: String,
        /// Why librdkafka refused it, with the value masked.
        reason: String,
    },
    /// A message with this id is already in the outbox.
    #[error("a message with id {0} is already in the outbox")]
    DuplicateId(Uuid),
    /// The payload could not be serialised.
    #[error("payload could not be serialised: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A database operation failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database holds a newer schema than this library knows.
    #[error(
        "the outbox schema in the database is at version {found}, newer than the {known} this \
         build knows: upgrade the library/relay"
    )]
    SchemaTooNew {
        /// Highest version found in the database.
        found: i64,
        /// Highest version this build knows.
        known: i64,
    },
    /// No event of this kind has these ids; nothing was changed.
    #[error("no {kind} with id {}; nothing was changed", ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", "))]
    UnknownIds {
        /// What was looked for ("dead-lettered event", "retained event").
        kind: &'static str,
        /// The ids not found.
        ids: Vec<Uuid>,
    },
    /// A Kafka client operation failed.
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// No saga of this type is registered with the orchestrator; nothing was written.
    #[error("no saga named {0:?} is registered with this orchestrator")]
    UnknownSaga(String),
    /// A saga instance with this id already exists; nothing was written.
    #[error("a saga with id {0} already exists")]
    SagaExists(Uuid),
}

impl Error {
    /// `true` when retrying the same operation later may succeed
    /// (connection problems, timeouts, broker unavailable).
    ///
    /// ```
    /// use outbox_core::Error;
    /// assert!(!Error::Config("bad".into()).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                        | sqlx::Error::Protocol(_)
                ) || e.as_database_error().is_some_and(crate::store::is_transient_database_error)
            }
            Error::Kafka(_) => true,
            _ => false,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
