//! What an event is: id, topic, key, type, payload and headers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::cloudevents;
use crate::error::{Result, ValidationError};

/// Longest key accepted (Kafka has no hard limit; keys are aggregate ids).
pub const MAX_KEY_BYTES: usize = 4096;
/// Longest header name accepted.
pub const MAX_HEADER_NAME_BYTES: usize = 255;
/// Longest header value accepted.
pub const MAX_HEADER_VALUE_BYTES: usize = 16 * 1024;

/// Header names this crate writes itself; applications may not set them, in
/// any case, nor any other name starting with `ce_`.
pub const RESERVED_HEADERS: &[&str] =
    &["ce_id", "ce_type", "ce_source", "ce_time", "ce_specversion", "content-type", "traceparent", "tracestate"];

/// An event to publish: enqueued in the writer's transaction, published to
/// `topic` with `key` as the Kafka key, and deduplicated downstream by `id`.
///
/// ```
/// use outbox_core::Message;
/// #[derive(serde::Serialize)]
/// struct OrderPlaced { order_id: u64, total_cents: u64 }
///
/// let msg = Message::json("orders", "order.placed", &OrderPlaced { order_id: 7, total_cents: 1299 })?
///     .with_key("order-7")
///     .with_header("tenant", "acme");
/// assert_eq!(msg.id().get_version_num(), 7);
/// assert_eq!(msg.content_type(), Some("application/json"));
/// # Ok::<(), outbox_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) id: Uuid,
    pub(crate) topic: String,
    pub(crate) key: Option<String>,
    pub(crate) event_type: String,
    pub(crate) source: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    pub(crate) time: DateTime<Utc>,
}

impl Message {
    /// A message whose payload is `value` serialised as JSON.
    pub fn json<T: Serialize + ?Sized>(
        topic: impl Into<String>,
        event_type: impl Into<String>,
        value: &T,
    ) -> Result<Self> {
        let payload = serde_json::to_vec(value)?;
        Ok(Self::bytes(topic, event_type, payload).with_content_type("application/json"))
    }

    /// A message whose payload is raw bytes.
    pub fn bytes(topic: impl Into<String>, event_type: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Message {
            id: Uuid::now_v7(),
            topic: topic.into(),
            key: None,
            event_type: event_type.into(),
            source: None,
            content_type: None,
            payload: payload.into(),
            headers: BTreeMap::new(),
            traceparent: crate::trace::current_traceparent(),
            tracestate: None,
            time: Utc::now(),
        }
    }

    /// Sets the key (the aggregate id); it becomes the Kafka message key and
    /// decides ordering: events of one key are published in commit order.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Replaces the generated UUID v7 id.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }
    /// Sets the CloudEvents `source` (defaults to the outbox's configured source).
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
    /// Sets the payload's media type (the `content-type` header).
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }
    /// Adds an application header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
    /// Sets the W3C `traceparent` explicitly (by default it is taken from the
    /// current span when the `opentelemetry` integration is active).
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }
    /// Sets the W3C `tracestate`.
    pub fn with_tracestate(mut self, tracestate: impl Into<String>) -> Self {
        self.tracestate = Some(tracestate.into());
        self
    }
    /// Sets the CloudEvents `time` (defaults to the moment of creation).
    pub fn with_time(mut self, time: DateTime<Utc>) -> Self {
        self.time = time;
        self
    }

    /// The id (UUID v7 unless replaced), also the downstream dedupe key.
    pub fn id(&self) -> Uuid {
        self.id
    }
    /// The destination topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// The key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
    /// The event type (CloudEvents `type`).
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// The payload's media type.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }
    /// Application headers.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }
    /// The W3C `traceparent`, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Checks everything that can be checked before writing: Kafka's rules
    /// for topics, and CloudEvents 1.0 with its Kafka binding for every
    /// attribute the relay will emit (see the `cloudevents` rules in the
    /// crate docs). `default_source` is the outbox's, used when the message
    /// sets none.
    ///
    /// ```
    /// use outbox_core::{Message, ValidationError};
    /// let msg = Message::bytes("orders", "order.placed", vec![]);
    /// assert_eq!(msg.validate(1024), Ok(()));
    /// assert!(matches!(msg.clone().with_source("").validate(1024), Err(ValidationError::InvalidSource { .. })));
    /// assert!(matches!(msg.with_header("Ce_Tenant", "acme").validate(1024), Err(ValidationError::InvalidHeaderName { .. })));
    /// ```
    pub fn validate(&self, max_payload_bytes: usize) -> Result<(), ValidationError> {
        validate_topic(&self.topic)?;
        if self.event_type.trim().is_empty() {
            return Err(ValidationError::EmptyEventType);
        }
        cloudevents::check_string("event type", &self.event_type)?;
        if self.payload.len() > max_payload_bytes {
            return Err(ValidationError::PayloadTooLarge { size: self.payload.len(), max: max_payload_bytes });
        }
        if let Some(key) = &self.key {
            if key.len() > MAX_KEY_BYTES {
                return Err(ValidationError::KeyTooLarge { size: key.len(), max: MAX_KEY_BYTES });
            }
            // The binding maps the record key to the `partitionkey` String.
            cloudevents::check_string("key", key)?;
        }
        if let Some(source) = &self.source {
            cloudevents::check_source(source)?;
        }
        if let Some(content_type) = &self.content_type {
            cloudevents::check_media_type(content_type)?;
        }
        cloudevents::check_time(&self.time)?;
        if let Some(tp) = &self.traceparent {
            if !crate::trace::is_valid_traceparent(tp) {
                return Err(ValidationError::InvalidTraceparent(tp.clone()));
            }
        }
        if let Some(ts) = &self.tracestate {
            if ts.len() > 512 || !ts.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(ValidationError::InvalidAttribute {
                    field: "tracestate",
                    reason: "must be at most 512 printable ASCII characters (W3C trace context)",
                });
            }
        }
        for (name, value) in &self.headers {
            validate_header(name, value)?;
        }
        Ok(())
    }
}

/// Kafka's topic rules: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(crate) fn validate_topic(topic: &str) -> Result<(), ValidationError> {
    let invalid = |reason| Err(ValidationError::InvalidTopic { topic: topic.to_owned(), reason });
    if topic.is_empty() {
        return Err(ValidationError::EmptyTopic);
    }
    if topic.len() > 249 {
        return invalid("longer than 249 characters");
    }
    if topic == "." || topic == ".." {
        return invalid("'.' and '..' are not allowed");
    }
    if !topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

fn validate_header(name: &str, value: &str) -> Result<(), ValidationError> {
    let bad_name = |reason| Err(ValidationError::InvalidHeaderName { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad_name("must not be empty");
    }
    if name.len() > MAX_HEADER_NAME_BYTES {
        return bad_name("longer than 255 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad_name("contains control characters");
    }
    if cloudevents::is_reserved_header(name) {
        return bad_name("reserved (in any case) for CloudEvents/trace-context headers set by the outbox");
    }
    if value.len() > MAX_HEADER_VALUE_BYTES {
        return Err(ValidationError::InvalidHeaderValue { name: name.to_owned(), reason: "longer than 16 KiB" });
    }
    if value.contains('\0') {
        return Err(ValidationError::InvalidHeaderValue { name: name.to_owned(), reason: "contains a NUL character" });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        Message::bytes("orders", "order.placed", b"{}".to_vec())
    }

    #[test]
    fn rejects_bad_messages() {
        assert_eq!(Message::bytes("", "t", vec![]).validate(10), Err(ValidationError::EmptyTopic));
        assert!(matches!(Message::bytes("a b", "t", vec![]).validate(10), Err(ValidationError::InvalidTopic { .. })));
        assert_eq!(Message::bytes("t", " ", vec![]).validate(10), Err(ValidationError::EmptyEventType));
        assert_eq!(
            Message::bytes("t", "e", vec![0; 11]).validate(10),
            Err(ValidationError::PayloadTooLarge { size: 11, max: 10 })
        );
        assert!(matches!(msg().with_header("", "v").validate(10), Err(ValidationError::InvalidHeaderName { .. })));
        assert!(matches!(msg().with_header("ce_id", "v").validate(10), Err(ValidationError::InvalidHeaderName { .. })));
        assert!(matches!(msg().with_header("a", "v\0").validate(10), Err(ValidationError::InvalidHeaderValue { .. })));
        assert!(matches!(msg().with_key("k\0").validate(10), Err(ValidationError::NulCharacter { field: "key" })));
        assert!(matches!(msg().with_traceparent("nope").validate(10), Err(ValidationError::InvalidTraceparent(_))));
    }

    #[test]
    fn refuses_what_cloudevents_forbids() {
        let far = chrono::NaiveDate::from_ymd_opt(12_000, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
        let refused = [
            msg().with_source(""),
            msg().with_source("with space"),
            msg().with_time(far),
            msg().with_header("CE_SUBJECT", "x"),
            msg().with_header("Ce_Tenant", "acme"),
            msg().with_header("Content-Type", "text/plain"),
            msg().with_content_type("json"),
            msg().with_key("line\nbreak"),
            Message::bytes("t", "type\twith tab", vec![]),
            msg().with_tracestate("vendor=\u{1}"),
        ];
        for m in refused {
            assert!(m.validate(10).is_err(), "{m:?}");
        }
    }

    #[test]
    fn accepts_good_messages() {
        let m = msg()
            .with_key("order-1")
            .with_header("tenant", "acme")
            .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(m.validate(10), Ok(()));
    }
}
