//! I7: events that can never be delivered go to the dead-letter table with
//! their error instead of blocking the relay; other events flow on.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use outbox::{Message, Outbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_failures_are_dead_lettered_and_others_flow() {
    let world = World::new(2).await;
    // The writer accepts 8 KiB payloads; this relay's producer only 2,000 bytes.
    let outbox = Outbox::new(world.config.clone().with_max_payload_bytes(8192));
    let too_large = Message::bytes(&world.topic, "test.large", vec![b'x'; 5000]).with_key("a");
    let after_large = Message::bytes(&world.topic, "test.after", b"{}".to_vec()).with_key("a");
    let missing_topic = unique("missing");
    let unknown = Message::bytes(&missing_topic, "test.unknown", b"{}".to_vec()).with_key("b");
    let mut ok = Vec::new();
    for i in 0..20 {
        ok.push(Message::bytes(&world.topic, "test.ok", format!("{i}").into_bytes()).with_key(format!("k{i}")));
    }
    let mut all = vec![too_large.clone(), after_large.clone(), unknown.clone()];
    all.extend(ok.iter().cloned());
    outbox.enqueue_all(&world.pool, &all).await.unwrap();

    let relay = world.relay(&["-X", "message.max.bytes=2000", "--on-poison", "continue"]);
    world.wait_drained(Duration::from_secs(60)).await;
    let dead = world.dead_letters().await;
    println!("{dead:?}");
    assert_eq!(dead.len(), 2);
    let error_of = |id| dead.iter().find(|(d, _, _)| *d == id).map(|(_, e, a)| (e.clone(), *a)).unwrap();
    let (err, attempts) = error_of(too_large.id());
    assert!(err.contains("too large"), "{err}");
    assert_eq!(attempts, 1);
    let (err, _) = error_of(unknown.id());
    assert!(err.contains("unknown topic") && err.contains(&missing_topic), "{err}");

    let records = world.read_topic(21);
    for m in ok.iter().chain([&after_large]) {
        assert!(records.iter().any(|r| r.id == m.id()), "event {} not published", m.id());
    }
    assert!(!records.iter().any(|r| r.id == too_large.id()));
    let (_, metrics) = relay.http_get("/metrics").await;
    assert!(metrics.contains("outbox_dead_lettered_total 2"), "{metrics}");
    assert!(metrics.contains("outbox_dead_letter_events 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_topics_are_created_when_asked() {
    let world = World::new(1).await;
    let topic = unique("created");
    let m = Message::bytes(&topic, "test.created", b"{}".to_vec()).with_key("k");
    world.outbox.enqueue(&world.pool, &m).await.unwrap();
    let relay = world.relay(&["--create-topics", "--topic-partitions", "2"]);
    world.wait_drained(Duration::from_secs(60)).await;
    assert!(world.dead_letters().await.is_empty());
    let records = read_topic(&world.brokers, &topic, 1, Duration::from_secs(30));
    assert_eq!(records.iter().filter(|r| r.id == m.id()).count(), 1);
    assert!(relay.log_text().contains("created topic"));
}
