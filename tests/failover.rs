//! One relay per outbox is active; a second one stands by and takes over
//! when the first dies, with nothing lost and per-key order intact.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn wait_for_log(relay: &RelayProcess, needle: &str, within: Duration) {
    let start = Instant::now();
    while !relay.log_text().contains(needle) {
        assert!(start.elapsed() < within, "{needle:?} not logged within {within:?}:\n{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_relay_takes_over_without_loss_or_reordering() {
    let world = World::new(3).await;
    let first = world.relay(&["--batch-size", "50"]);
    wait_for_log(&first, "active: this relay", Duration::from_secs(20)).await;
    let second = world.relay(&["--batch-size", "50", "--standby-interval", "200ms"]);
    wait_for_log(&second, "standby", Duration::from_secs(20)).await;

    let (mut committed, mut rolled_back) = write_events(&world, 4, 100, 10, 10).await;
    first.sigkill();
    let (after, rb) = write_events(&world, 4, 100, 10, 10).await;
    for (k, ids) in after {
        committed.entry(k).or_default().extend(ids);
    }
    rolled_back.extend(rb);
    wait_for_log(&second, "active: this relay", Duration::from_secs(20)).await;
    world.wait_drained(Duration::from_secs(60)).await;

    let records = world.read_topic(total(&committed));
    let c = check(&records, &committed, &rolled_back);
    println!("committed={} {c:?}", total(&committed));
    assert_eq!((c.lost, c.unexpected, c.order_violations), (0, 0, 0));
    let (_, metrics) = second.http_get("/metrics").await;
    assert!(metrics.contains("outbox_relay_active 1"), "{metrics}");
}
