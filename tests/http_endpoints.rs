//! `/healthz`, `/readyz` and `/metrics` answer with real values.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_readiness_reflect_the_relay() {
    let world = World::new(2).await;
    let relay = world.relay(&["--log-format", "json"]);
    let (committed, _) = write_events(&world, 2, 15, 5, 0).await;
    world.wait_drained(Duration::from_secs(30)).await;

    assert_eq!(relay.http_get("/healthz").await.0, 200);
    let (status, body) = relay.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready, serde_json::json!({"ready": true, "database": "ok", "broker": "ok"}));

    let (status, metrics) = relay.http_get("/metrics").await;
    assert_eq!(status, 200);
    println!("{metrics}");
    assert!(metrics.contains(&format!("outbox_events_published_total {}", total(&committed))), "{metrics}");
    assert!(metrics.contains("outbox_pending_events 0"));
    assert!(metrics.contains("outbox_oldest_pending_age_seconds 0"));
    assert!(metrics.contains("outbox_delivery_failures_total 0"));
    assert!(metrics.contains("outbox_batch_publish_duration_seconds_bucket"));
    assert!(metrics.contains("outbox_batch_publish_duration_seconds_count"));
    for histogram in ["outbox_claim_duration_seconds", "outbox_settle_duration_seconds"] {
        let count = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{histogram}_count ")))
            .unwrap_or_else(|| panic!("{histogram} missing: {metrics}"));
        assert!(count.trim().parse::<f64>().unwrap() >= 1.0, "{histogram}_count {count}");
    }

    // --log-format json: every log line is a JSON object.
    let log = relay.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_fails_when_the_broker_is_unreachable() {
    let world = World::new(1).await;
    write_events(&world, 1, 10, 3, 0).await;
    let dead_broker = format!("127.0.0.1:{}", free_port());
    let relay = RelayProcess::start(&world.schema, &dead_broker, &[], &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = relay.http_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["database"], "ok");
    assert!(ready["broker"].as_str().unwrap().starts_with("error"), "{body}");
    let (_, metrics) = relay.http_get("/metrics").await;
    assert!(metrics.contains("outbox_pending_events 10"), "{metrics}");
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outbox_oldest_pending_age_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(age >= 1.0, "oldest pending age {age}");
    // Shutdown during an outage ends within the grace period, events kept.
    let status = relay.sigterm(Duration::from_secs(45));
    assert!(status.success());
    assert_eq!(world.pending().await, 10);
}
