//! The opt-in NOTIFY wake-up: with writers that notify and a relay that
//! listens, events go out at once although the relay's poll interval is long.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use outbox::{Message, Outbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_wakes_an_idle_relay() {
    let world = World::new(1).await;
    let relay = world.relay(&["--wakeup", "notify", "--poll-interval", "30s"]);
    let start = Instant::now();
    while !relay.log_text().contains("listening for wake-ups") || !relay.log_text().contains("slots rebalanced") {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // the relay is now idle, polling only every 30s

    // A writer without notify: its event waits for the next poll.
    let quiet = Message::bytes(&world.topic, "test.quiet", b"{}".to_vec()).with_key("q");
    world.outbox.enqueue(&world.pool, &quiet).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.pending().await, 1, "without a wake-up the relay is still asleep");

    // A notifying writer wakes it: both events go out at once.
    let notifying = Outbox::new(world.config.clone().with_notify(true));
    let loud = Message::bytes(&world.topic, "test.loud", b"{}".to_vec()).with_key("l");
    let mut tx = world.pool.begin().await.unwrap();
    notifying.enqueue(&mut *tx, &loud).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.pending().await, 1, "nothing is announced before the commit");
    tx.commit().await.unwrap();
    world.wait_drained(Duration::from_secs(5)).await;
    let records = world.read_topic(2);
    assert!(records.iter().any(|r| r.id == loud.id()) && records.iter().any(|r| r.id == quiet.id()));
    drop(relay);
}
