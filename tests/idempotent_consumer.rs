//! I5: a consumer killed between its database commit and its offset commit
//! does not apply the redelivered event twice.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_crash_after_commit_does_not_double_apply() {
    let world = World::new(2).await;
    let (committed, _) = write_events(&world, 2, 100, 10, 0).await;
    let n = total(&committed);
    let relay = world.relay(&[]);
    world.wait_drained(Duration::from_secs(60)).await;
    drop(relay);

    let group = unique("group");
    // The consumer applies waiting messages in batches, and the whole
    // backlog may arrive at once: batches of at most 20 put the crash
    // mid-stream, after the commit of the batch holding the 50th message.
    let batch = 20;
    let (status, _) =
        run_consumer_with(&world, &group, n, Some("inbox-after-commit@50"), &["--batch-size", &batch.to_string()]);
    assert_eq!(status.signal(), Some(6), "consumer should have aborted at the failpoint: {status}");
    let (rows, distinct) = effects(&world).await;
    assert_eq!(rows, distinct, "no effect applied twice before the crash");
    assert!((50..50 + batch).contains(&rows), "the crash came in the batch holding the 50th effect: {rows}");

    let (status, summary) = run_consumer(&world, &group, n, None);
    println!("{summary}");
    assert!(status.success(), "{status}");
    assert!(field(&summary, "duplicates_now") >= 1, "the crashed message must have been redelivered");
    let (rows, distinct) = effects(&world).await;
    assert_eq!((rows, distinct), (n as i64, n as i64), "each event applied exactly once");
}
