//! What a handler receives: a Kafka message read as an outbox event.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use uuid::Uuid;

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

pub(super) fn header_map(message: &BorrowedMessage<'_>) -> BTreeMap<String, String> {
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

pub(super) fn to_event(message: &BorrowedMessage<'_>) -> Result<ReceivedEvent, String> {
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
