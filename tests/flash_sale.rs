//! The flash sale end to end against real Redis, PostgreSQL and Kafka:
//! 10,000 concurrent attempts from 500 buyers for 100 items, with the
//! slow-path consumer and the relay SIGKILLed and restarted mid-run.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;

use common::*;

fn field(line: &str, name: &str) -> i64 {
    line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).unwrap().parse().unwrap()
}

#[test]
fn no_oversell_one_purchase_per_buyer_stock_conserved_through_kills() {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let output = Command::new(binary("flash_sale"))
        .args(["--database-url", &database_url(), "--brokers", &brokers(), "--redis-url", &redis])
        .args(["--attempts", "10000", "--users", "500", "--items", "100", "--kill", "consumer", "--kill", "relay"])
        .args(["--kill-after", "20", "--sale", &unique("flash")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("flash sale: ") && last.ends_with("invariants=ok"), "{stdout}");
    assert!(stdout.contains("== consumer restarted") && stdout.contains("== relay restarted"), "{stdout}");
    assert_eq!(field(last, "attempts"), 10_000);
    // Duplicate buyers reached the slow path and were turned away there,
    // their units given back to Redis (resold if the rush was still on).
    assert!(field(last, "rejected") > 0, "no duplicate buyer reached the slow path:\n{stdout}");
    assert!(field(last, "sold") > 0, "{stdout}");
    assert_eq!(field(last, "sold") + field(last, "redis_stock"), 100, "{stdout}");
    assert_eq!(field(last, "accepted"), field(last, "sold") + field(last, "rejected"));
}
