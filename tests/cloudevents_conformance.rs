//! Everything the relay publishes is a CloudEvent, by another's reading:
//! each record is parsed with the official CloudEvents SDK for Python
//! (`cloudevents` 2.2, its Kafka binding in binary mode, installed by
//! `./scripts/test`) plus the checks it leaves out (RFC 3339 `time`, a
//! URI-reference `source`, attribute headers in lower case); the test fails
//! on any record it rejects.
//!
//! Run on its own it checks the events it publishes itself: every kind of
//! attribute the relay emits, at the edges of what enqueue accepts. With
//! `OUTBOX_CONFORMANCE_SCAN=all` (the last step of `./scripts/test`, when
//! the script started the broker itself) it reads every topic on the
//! broker, so every record any test made the relay publish, written since
//! `OUTBOX_CONFORMANCE_SINCE_MS`. Records a test produced itself, on purpose
//! not CloudEvents, carry the header `x-outbox-test: raw` and are skipped.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::World;
use outbox::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

/// The header that marks a record a test produced by hand.
const RAW_MARK: &str = "x-outbox-test";

fn python() -> String {
    std::env::var("OUTBOX_CLOUDEVENTS_PYTHON").unwrap_or_else(|_| {
        panic!(
            "OUTBOX_CLOUDEVENTS_PYTHON is not set: ./scripts/test installs the CloudEvents SDK for Python and sets it \
             (or: python3 -m venv V && V/bin/pip install cloudevents==2.2.0, then OUTBOX_CLOUDEVENTS_PYTHON=V/bin/python)"
        )
    })
}

/// The SDK's verdict: (records checked, rejections).
fn check(records: &[Value]) -> (u64, Vec<Value>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cloudevents/conformance.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines: String = records.iter().map(|r| format!("{r}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(lines.as_bytes()).unwrap());
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success(), "the CloudEvents checker failed");
    let verdict: Value = serde_json::from_slice(&output.stdout).unwrap();
    (verdict["checked"].as_u64().unwrap(), verdict["rejected"].as_array().unwrap().clone())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every record of `topics` from offset 0 written at or after `since_ms`
/// (Unix milliseconds), until the topics have been quiet for a while, as the
/// checker's JSON lines; hand-made records left out.
fn read_all(brokers: &str, topics: &[String], since_ms: i64) -> Vec<Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", common::unique("conformance"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let wanted: HashSet<&str> = topics.iter().map(String::as_str).collect();
    let mut tpl = TopicPartitionList::new();
    for topic in metadata.topics().iter().filter(|t| wanted.contains(t.name())) {
        for p in topic.partitions() {
            tpl.add_partition_offset(topic.name(), p.id(), Offset::Beginning).unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let (start, mut last) = (Instant::now(), Instant::now());
    let mut records = Vec::new();
    while last.elapsed() < Duration::from_secs(3) && start.elapsed() < Duration::from_secs(300) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        last = Instant::now();
        let headers: Vec<(String, Option<Vec<u8>>)> = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default();
        if headers.iter().any(|(k, _)| k == RAW_MARK) || m.timestamp().to_millis().is_some_and(|t| t < since_ms) {
            continue;
        }
        records.push(json!({
            "topic": m.topic(),
            "partition": m.partition(),
            "offset": m.offset(),
            "key": m.key().map(hex),
            "value": m.payload().map(hex),
            "headers": headers.iter().map(|(k, v)| json!([k, v.as_deref().map(hex)])).collect::<Vec<_>>(),
        }));
    }
    records
}

/// Events at the edges of what enqueue accepts.
fn edge_cases(topic: &str) -> Vec<Message> {
    let year = |y| {
        chrono::NaiveDate::from_ymd_opt(y, 12, 31).unwrap().and_hms_micro_opt(23, 59, 59, 999_999).unwrap().and_utc()
    };
    vec![
        Message::json(topic, "order.placed", &json!({"id": 1, "note": "ümlaut 漢字 🔑"})).unwrap().with_key("order-1"),
        Message::bytes(topic, "commande.passée.漢字", "plain text".as_bytes().to_vec())
            .with_content_type("text/plain; charset=utf-8")
            .with_key("clé-ü"),
        Message::bytes(topic, "blob", vec![0, 159, 146, 150]).with_content_type("application/octet-stream"),
        Message::bytes(topic, "no.content.type", b"{}".to_vec()),
        Message::json(topic, "sourced", &json!({})).unwrap().with_source("https://shop.example/orders?region=eu#x"),
        Message::json(topic, "urn.sourced", &json!({}))
            .unwrap()
            .with_source("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"),
        Message::json(topic, "relative.sourced", &json!({})).unwrap().with_source("orders/eu%20west"),
        Message::json(topic, "last.moment", &json!({})).unwrap().with_time(year(9999)),
        Message::json(topic, "first.moment", &json!({})).unwrap().with_time(year(1)),
        Message::json(topic, "traced", &json!({}))
            .unwrap()
            .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .with_tracestate("vendor=opaque,other=1"),
        Message::json(topic, "with.headers", &json!({}))
            .unwrap()
            .with_header("tenant", "acme")
            .with_header("X-Request-Id", "r-1")
            .with_header("cex", "not an attribute"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_the_relay_published_is_a_cloudevent() {
    let world = World::new(3).await;
    let events = edge_cases(&world.topic);
    world.outbox.enqueue_all(&world.pool, &events).await.unwrap();
    let relay = world.relay(&[]);
    world.wait_drained(Duration::from_secs(60)).await;
    drop(relay);

    let mut topics = vec![world.topic.clone()];
    // Records of earlier runs on a long-lived broker are not this run's.
    let since_ms = std::env::var("OUTBOX_CONFORMANCE_SINCE_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    if std::env::var("OUTBOX_CONFORMANCE_SCAN").is_ok_and(|v| v == "all") {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &world.brokers).create().unwrap();
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
        topics = metadata.topics().iter().map(|t| t.name().to_owned()).filter(|t| !t.starts_with("__")).collect();
    }
    let records = read_all(&world.brokers, &topics, since_ms);
    let own = records.iter().filter(|r| r["topic"] == world.topic.as_str()).count();
    assert_eq!(own, events.len(), "every event of this test was read back");
    let (checked, rejected) = check(&records);
    eprintln!("conformance: {checked} records in {} topics checked, {} rejected", topics.len(), rejected.len());
    assert_eq!(checked, records.len() as u64);
    assert!(rejected.is_empty(), "records the CloudEvents SDK rejects: {:#}", Value::Array(rejected));
}

/// The checker can fail: each non-conformant record the relay used to
/// publish is rejected, and a conformant one is not.
#[test]
fn the_checker_rejects_what_is_not_a_cloudevent() {
    let record = |headers: &[(&str, &str)]| {
        json!({
            "topic": "t", "partition": 0, "offset": 0, "key": null, "value": hex(b"{}"),
            "headers": headers.iter().map(|(k, v)| json!([k, hex(v.as_bytes())])).collect::<Vec<_>>(),
        })
    };
    let base = [("ce_specversion", "1.0"), ("ce_id", "6e8bc430-9c3a-11d9-9669-0800200c9a66"), ("ce_type", "t")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut headers = base.to_vec();
        headers.extend_from_slice(extra);
        record(&headers)
    };
    let good = with(&[
        ("ce_source", "/outbox"),
        ("ce_time", "2026-12-01T21:00:00.000001Z"),
        ("content-type", "application/json"),
    ]);
    let bad = [
        with(&[("ce_source", ""), ("ce_time", "2026-12-01T21:00:00Z")]),
        with(&[("ce_source", "with space"), ("ce_time", "2026-12-01T21:00:00Z")]),
        with(&[("ce_source", "/outbox"), ("ce_time", "+12000-01-01T00:00:00Z")]),
        with(&[("ce_source", "/outbox"), ("ce_time", "2026-12-01T21:00:00Z"), ("CE_SUBJECT", "x")]),
        with(&[("ce_time", "2026-12-01T21:00:00Z")]),
    ];
    let (checked, rejected) = check(&[good]);
    assert_eq!((checked, rejected.len()), (1, 0), "{rejected:?}");
    let (checked, rejected) = check(&bad);
    assert_eq!(checked, bad.len() as u64);
    assert_eq!(rejected.len(), bad.len(), "every bad record rejected: {rejected:#?}");
}
