//! I3 and I5: a relay killed between the broker's confirmation and the mark,
//! or at any random moment, loses nothing; the duplicates it causes are
//! counted, and the inbox consumer applies each effect once.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::*;
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_relay_loses_nothing_and_effects_apply_once() {
    let world = World::new(3).await;
    let (committed, rolled_back) = write_events(&world, 4, 150, 30, 0).await;
    let n = total(&committed);

    // Crash right after the broker confirmed the 2nd batch, before marking it.
    let relay = RelayProcess::start(
        &world.schema,
        &world.brokers,
        &["--batch-size", "100"],
        &[("OUTBOX_FAILPOINT", "relay-after-publish@2")],
    );
    let status = relay.wait_exit(Duration::from_secs(30));
    assert_eq!(status.signal(), Some(6), "relay should have aborted at the failpoint: {status}");
    assert_eq!(world.pending().await, (n - 100) as i64, "first batch marked, second confirmed but not marked");

    // SIGKILL at random moments, three times.
    for _ in 0..3 {
        let relay = world.relay(&["--batch-size", "20"]);
        let ms = rand::rng().random_range(100..500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        relay.sigkill();
    }
    let relay = world.relay(&[]);
    world.wait_drained(Duration::from_secs(60)).await;
    let records = world.read_topic(n);
    let c = check(&records, &committed, &rolled_back);
    println!("committed={n} {c:?}");
    assert_eq!((c.lost, c.unexpected, c.order_violations), (0, 0, 0));
    assert!(c.dup_topic >= 100, "the confirmed-but-unmarked batch must have been published again");
    drop(relay);

    let (status, summary) = run_consumer(&world, &unique("group"), n, None);
    println!("{summary}");
    assert!(status.success());
    let (rows, distinct) = effects(&world).await;
    assert_eq!((rows, distinct), (n as i64, n as i64), "each effect exactly once");
    assert_eq!(field(&summary, "duplicates_now"), c.dup_topic as i64, "every duplicate acknowledged without effect");
}
