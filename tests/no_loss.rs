//! I1, I2: exactly the committed events reach the topic, whatever happens to
//! the broker meanwhile.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;

/// Concurrent writers commit and roll back at random while the relay runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_committed_events_are_published() {
    let world = World::new(4).await;
    let relay = world.relay(&[]);
    let (committed, rolled_back) = write_events(&world, 8, 150, 50, 25).await;
    assert!(!rolled_back.is_empty() && total(&committed) > 0);
    world.wait_drained(Duration::from_secs(60)).await;
    let records = world.read_topic(total(&committed));
    let c = check(&records, &committed, &rolled_back);
    println!("committed={} rolled_back={} {c:?}", total(&committed), rolled_back.len());
    assert_eq!(c.lost, 0, "lost events");
    assert_eq!(c.unexpected, 0, "rolled-back or unknown events published");
    assert_eq!(c.delivered, total(&committed));
    assert_eq!(c.order_violations, 0);
    assert_eq!(c.dup_topic, 0, "duplicates with no fault at all");
    let status = relay.sigterm(Duration::from_secs(10));
    assert!(status.success(), "relay exit status on SIGTERM: {status}");
}

/// A backlog drained in many small batches, four in flight and two being
/// deleted in the background while the next ones are claimed: every claim
/// skips the rows still being deleted, so each event is published once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_being_settled_are_never_claimed_again() {
    let world = World::new(4).await;
    let (committed, rolled_back) = write_events(&world, 4, 250, 40, 0).await;
    assert_eq!(world.pending().await, 1000);
    let relay = world.relay(&["--batch-size", "10", "--pipeline-depth", "4"]);
    world.wait_drained(Duration::from_secs(60)).await;
    let records = world.read_topic(total(&committed));
    let c = check(&records, &committed, &rolled_back);
    println!("{c:?}");
    assert_eq!((c.lost, c.unexpected, c.order_violations), (0, 0, 0));
    assert_eq!(c.dup_topic, 0, "an event claimed again while its batch was being settled");
    assert_eq!(c.delivered, 1000);
    let status = relay.sigterm(Duration::from_secs(10));
    assert!(status.success(), "relay exit status on SIGTERM: {status}");
}

/// The broker is unreachable (paused) for several seconds while events keep
/// being committed: afterwards everything is published, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outage_loses_nothing() {
    let Some(broker) = PrivateBroker::start() else {
        eprintln!("SKIPPED: needs Kafka's jars to run a private broker (./scripts/test installs them)");
        return;
    };
    let world = World::with_brokers(3, broker.brokers.clone()).await;
    let relay = world.relay(&[]);
    let (mut committed, rolled_back) = write_events(&world, 4, 50, 20, 10).await;
    broker.pause();
    let (during, rolled_back_during) = write_events(&world, 4, 100, 20, 10).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stuck = world.pending().await;
    assert!(stuck > 0, "events should wait while the broker is unreachable");
    broker.resume();
    let (after, rolled_back_after) = write_events(&world, 4, 50, 20, 10).await;
    for (k, ids) in during.into_iter().chain(after) {
        committed.entry(k).or_default().extend(ids);
    }
    let rolled_back: std::collections::HashSet<_> =
        rolled_back.into_iter().chain(rolled_back_during).chain(rolled_back_after).collect();
    world.wait_drained(Duration::from_secs(90)).await;
    let records = world.read_topic(total(&committed));
    let c = check(&records, &committed, &rolled_back);
    println!("pending during outage={stuck} committed={} {c:?}", total(&committed));
    assert_eq!((c.lost, c.unexpected, c.order_violations), (0, 0, 0));
    drop(relay);
}

/// SIGTERM while a batch waits for the broker: the relay stops claiming,
/// waits for the in-flight confirmations, marks them, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_waits_for_in_flight_confirmations() {
    let Some(broker) = PrivateBroker::start() else {
        eprintln!("SKIPPED: needs Kafka's jars to run a private broker (./scripts/test installs them)");
        return;
    };
    let world = World::with_brokers(1, broker.brokers.clone()).await;
    let relay = world.relay(&["--shutdown-grace", "20s"]);
    write_events(&world, 1, 5, 5, 0).await;
    world.wait_drained(Duration::from_secs(30)).await;

    broker.pause();
    // One transaction, so that one batch claims all of it.
    let batch: Vec<outbox::Message> = (0..50)
        .map(|i| {
            outbox::Message::json(&world.topic, "test.event", &serde_json::json!({ "i": i })).unwrap().with_key("k")
        })
        .collect();
    world.outbox.enqueue_all(&world.pool, &batch).await.unwrap();
    let committed: std::collections::HashMap<String, Vec<uuid::Uuid>> =
        [("k".to_owned(), batch.iter().map(|m| m.id()).collect())].into();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(world.pending().await, 50, "in flight, not confirmed");
    relay.signal("TERM");
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.resume();
    let status = relay.wait_exit(Duration::from_secs(25));
    assert!(status.success(), "{status}");
    assert_eq!(world.pending().await, 0, "confirmations that arrived during shutdown are marked");
    let records = world.read_topic(total(&committed) + 5);
    let c = check(&records, &committed, &Default::default());
    assert_eq!((c.lost, c.order_violations), (0, 0));
}
