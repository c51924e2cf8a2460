//! What every consumer-side test assumes of the broker it runs against: a
//! consumer that resumes from an offset inside a record batch gets the rest
//! of that batch. Apache Kafka does. tansu 0.6.0, the broker the tests ran
//! on before, did not (a group member that took over a partition at a
//! committed offset inside a batch never saw that batch's tail). Kept for
//! any broker given through `KAFKA_BROKERS`: if this test fails, the broker
//! loses messages for its consumers and the other consumer tests cannot be
//! trusted.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Records the producer sends at once, lingering: one batch.
const RECORDS: i64 = 20;

#[tokio::test]
async fn a_consumer_resuming_inside_a_batch_gets_the_rest_of_it() {
    let brokers = brokers();
    let topic = unique("fetch");
    create_topic(&brokers, &topic, 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "200")
        .create()
        .unwrap();
    let payloads: Vec<String> = (0..RECORDS).map(|i| i.to_string()).collect();
    let deliveries: Vec<_> = payloads
        .iter()
        .map(|p| {
            // Not published by the relay: the CloudEvents check skips it.
            let mark = OwnedHeaders::new().insert(Header { key: "x-outbox-test", value: Some("raw") });
            let record = FutureRecord::to(&topic).partition(0).key("k").payload(p).headers(mark);
            producer.send_result(record).map_err(|e| e.0).unwrap()
        })
        .collect();
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|e| e.0).unwrap();
    }
    for from in [0, 7, RECORDS - 1] {
        let offsets = read_from(&brokers, &topic, from);
        let expected: Vec<i64> = (from..RECORDS).collect();
        assert_eq!(offsets, expected, "fetching {topic}/0 from offset {from} returned these offsets");
    }
}

/// Offsets of the records a fresh consumer reads from `from` on, until
/// nothing new came for 3 s.
fn read_from(brokers: &str, topic: &str, from: i64) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("fetch"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from)).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut offsets = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(3) && offsets.len() < usize::try_from(RECORDS - from).unwrap() {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            offsets.push(m.unwrap().offset());
            last = Instant::now();
        }
    }
    offsets
}
