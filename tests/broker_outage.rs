//! A broker outage in the relay's log: one line when every broker is lost, a
//! reminder every `--outage-report-interval` with the backlog, one line when
//! the broker answers again; librdkafka's own repeats stay at debug, and
//! `outbox_kafka_up` follows. (Before, each failed reconnection logged an
//! error: about 40 lines a second.)
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::proxy::Proxy;
use common::{free_port, PrivateBroker, World};
use outbox::Message;

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_is_logged_when_it_starts_while_it_lasts_and_when_it_ends() {
    let (broker_port, proxy_port) = (free_port(), free_port());
    let Some(_broker) = PrivateBroker::start_advertised(broker_port, proxy_port) else {
        eprintln!("SKIPPED: needs Kafka's jars to run a private broker (./scripts/test installs them)");
        return;
    };
    let target = format!("127.0.0.1:{broker_port}");
    let proxy = Proxy::start(proxy_port, &target).await;
    let world = World::with_brokers(3, format!("127.0.0.1:{proxy_port}")).await;
    let relay = world.relay(&["--outage-report-interval", "2s"]);
    let batch = |n: usize| -> Vec<Message> {
        (0..n)
            .map(|i| {
                Message::json(&world.topic, "t", &serde_json::json!({ "i": i })).unwrap().with_key(format!("k{i}"))
            })
            .collect()
    };
    world.outbox.enqueue_all(&world.pool, &batch(10)).await.unwrap();
    world.wait_drained(Duration::from_secs(30)).await;
    let (_, metrics) = relay.http_get("/metrics").await;
    assert!(metrics.contains("outbox_kafka_up 1"), "{metrics}");
    let before = relay.log_text().lines().count();

    // The broker becomes unreachable: connections refused, open ones cut.
    drop(proxy);
    world.outbox.enqueue_all(&world.pool, &batch(20)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let log = relay.log_text();
    let during: String = log.lines().skip(before).map(|l| format!("{l}\n")).collect();
    assert_eq!(count(&during, "lost the connection to every Kafka broker"), 1, "{during}");
    let reminders = count(&during, "Kafka still unreachable");
    assert!((2..=5).contains(&reminders), "a reminder every 2 s over 8 s, {reminders} seen:\n{during}");
    assert!(during.contains("pending=20"), "the reminder gives the backlog:\n{during}");
    assert!(during.lines().count() <= 12, "8 s of outage took {} lines:\n{during}", during.lines().count());
    let (_, metrics) = relay.http_get("/metrics").await;
    assert!(metrics.contains("outbox_kafka_up 0"), "{metrics}");
    assert!(metrics.contains("outbox_kafka_client_errors_total{error=\"AllBrokersDown\"}"), "{metrics}");
    assert_eq!(world.pending().await, 20, "nothing is lost or marked while the broker is away");

    // It comes back.
    let _proxy = Proxy::start(proxy_port, &target).await;
    world.wait_drained(Duration::from_secs(60)).await;
    let log = relay.log_text();
    assert_eq!(count(&log, "Kafka broker reachable again"), 1, "{log}");
    let (_, metrics) = relay.http_get("/metrics").await;
    assert!(metrics.contains("outbox_kafka_up 1"), "{metrics}");
    assert_eq!(world.read_topic(30).iter().map(|r| r.id).collect::<std::collections::HashSet<_>>().len(), 30);
}
