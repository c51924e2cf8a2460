//! I4 (one relay) and I6: per-key order in the topic equals commit order, and
//! a transaction that commits late is still published.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use outbox::Message;

/// Few keys, many events, writers racing the relay: the first occurrences of
/// each key's events in the topic follow the key's commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_order_follows_commit_order() {
    let world = World::new(3).await;
    let relay = world.relay(&["--batch-size", "64"]);
    let (committed, rolled_back) = write_events(&world, 8, 250, 5, 5).await;
    world.wait_drained(Duration::from_secs(60)).await;
    let records = world.read_topic(total(&committed));
    let c = check(&records, &committed, &rolled_back);
    println!("events={} keys={} {c:?}", total(&committed), committed.len());
    assert_eq!(c.order_violations, 0, "per-key order broken");
    assert_eq!((c.lost, c.unexpected), (0, 0));
    // The topic order must also match the payload's per-key counter.
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    let mut sorted = records.clone();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut seen = std::collections::HashSet::new();
    for r in sorted.iter().filter(|r| seen.insert(r.id)) {
        let n = r.json()["n"].as_i64().unwrap();
        let prev = last.insert(r.key.clone().unwrap(), n).unwrap_or(0);
        assert!(n > prev, "key {:?}: n={n} after {prev}", r.key);
    }
    drop(relay);
}

/// A transaction takes its sequence number, then stays open for seconds
/// while later ones commit and are published (by two relays sharing the
/// slots); when it commits, it is published too (no "last id seen"
/// watermark skips it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_commit_is_not_skipped() {
    let world = World::new(1).await;
    let relays = [world.relay(&[]), world.relay(&[])];
    let mut slow = world.pool.begin().await.unwrap();
    let late = Message::json(&world.topic, "test.late", &serde_json::json!({"late": true})).unwrap().with_key("slow");
    world.outbox.enqueue(&mut *slow, &late).await.unwrap();

    let mut early_ids = Vec::new();
    for i in 0..50 {
        let m = Message::json(&world.topic, "test.early", &serde_json::json!({ "i": i }))
            .unwrap()
            .with_key(format!("k{i}"));
        world.outbox.enqueue(&world.pool, &m).await.unwrap();
        early_ids.push(m.id());
    }
    // The later rows get published while the early sequence number is open.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let published = world.read_topic(50);
    assert!(
        early_ids.iter().all(|id| published.iter().any(|r| r.id == *id)),
        "later rows not published meanwhile: {} of 50 read back",
        published.len()
    );
    assert!(!published.iter().any(|r| r.id == late.id()));

    slow.commit().await.unwrap();
    world.wait_drained(Duration::from_secs(30)).await;
    let records = world.read_topic(51);
    assert!(records.iter().any(|r| r.id == late.id()), "late-committing event was skipped");
    drop(relays);
}
