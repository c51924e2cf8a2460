//! Logs never stop the relay: with stderr a pipe nobody reads, the relay
//! keeps publishing, counts the lines it drops, and stops on SIGTERM.
//! (Before, logging wrote synchronously to stderr: a full pipe froze the
//! relay, signal handling included.)
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{binary, free_port, http_get, World};
use outbox::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stderr_nobody_reads_does_not_stop_the_relay() {
    let world = World::new(3).await;
    let http_port = free_port();
    let mut child = Command::new(binary("outbox-relay"))
        .args(["run", "--schema", &world.schema, "--kafka-brokers", &world.brokers])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}"), "--log-buffer-lines", "100"])
        // Every statement and every librdkafka request logged: far more
        // than a pipe holds.
        .args(["-X", "debug=broker,topic,msg,protocol"])
        .env("DATABASE_URL", &world.url)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Held open and never read.
    let _stderr = child.stderr.take().unwrap();
    // Killed if the test fails before its SIGTERM.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut guard = KillOnDrop(child);
    let child = &mut guard.0;

    for round in 0..10 {
        let events: Vec<Message> = (0..100)
            .map(|i| {
                Message::json(&world.topic, "t", &serde_json::json!({ "round": round, "i": i }))
                    .unwrap()
                    .with_key(format!("k{i}"))
            })
            .collect();
        world.outbox.enqueue_all(&world.pool, &events).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    world.wait_drained(Duration::from_secs(60)).await;
    let ids: std::collections::HashSet<_> = world.read_topic(1000).iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 1000, "every event published while stderr was full");

    let (_, metrics) = http_get(http_port, "/metrics").await;
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outbox_log_lines_dropped_total "))
        .unwrap_or_else(|| panic!("no dropped-lines counter in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(dropped > 0.0, "the pipe filled, so lines were dropped (and counted)");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "the relay did not stop on SIGTERM with stderr full");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}
