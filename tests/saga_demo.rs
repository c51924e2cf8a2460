//! The saga demo end to end: three services with their own databases and
//! relays, one of them (and a relay) killed and restarted mid-run; the demo
//! checks its invariants across the databases and must end with
//! `invariants=ok`. Each test uses its own databases.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;

use common::*;

/// Runs the demo with `extra` arguments into databases named after `name`;
/// returns its output.
fn run_demo(name: &str, extra: &[&str]) -> String {
    let url = url_replacing(&database_url(), None, None);
    let base = url.rsplit_once('/').unwrap().0;
    let mut command = Command::new(binary("saga_demo"));
    command
        .args(["--database-url", &format!("{base}/{name}"), "--brokers", &brokers()])
        .args(["--orders", "150", "--rate", "40", "--shortage-percent", "10", "--decline-percent", "10"])
        .args(["--timeout-percent", "8", "--kill-at", "0.3", "--timeout", "240s"]);
    command.args(extra);
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "saga demo failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The number after `name=` in the demo's last line.
fn field(line: &str, name: &str) -> i64 {
    line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).unwrap().parse().unwrap()
}

/// The demo's verdict, and (with `every_reason`) that each failure mode —
/// shortage, decline, timeout — occurred.
fn check(stdout: &str, every_reason: bool) {
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("saga demo: ") && last.ends_with("invariants=ok"), "{stdout}");
    assert_eq!(field(last, "orders"), 150);
    assert_eq!(field(last, "completed") + field(last, "compensated"), 150, "{stdout}");
    assert!(field(last, "completed") > 0, "{stdout}");
    // Every failure mode happened: shortage, decline and timeout.
    for reason in if every_reason { &["out of stock", "card declined", "timed out"][..] } else { &[] } {
        assert!(
            stdout.lines().any(|l| l.starts_with("| compensated") && l.contains(reason)),
            "no {reason:?}:\n{stdout}"
        );
    }
}

#[test]
fn orchestrator_and_a_relay_killed_mid_run() {
    let stdout = run_demo("saga_test_a", &["--kill", "orders", "--kill", "relay-payments"]);
    assert!(stdout.contains("== kill -9 orders") && stdout.contains("== orders restarted"), "{stdout}");
    check(&stdout, true);
}

#[test]
fn both_participants_killed_mid_run() {
    let stdout = run_demo("saga_test_b", &["--kill", "payments", "--kill", "inventory", "--kill", "relay-orders"]);
    assert!(stdout.contains("== kill -9 payments") && stdout.contains("== inventory restarted"), "{stdout}");
    check(&stdout, true);
}

/// Crashes at exact points: the orchestrator and a participant abort right
/// after an inbox transaction committed (their Kafka offsets not stored, so
/// the replies and commands come again), and a relay aborts after the
/// broker confirmed a batch it had not marked yet (so it is published again).
#[test]
fn crashes_between_commit_and_acknowledgement() {
    let stdout = run_demo(
        "saga_test_c",
        &[
            "--crash",
            "orders:inbox-after-commit@40",
            "--crash",
            "payments:inbox-after-commit@25",
            "--crash",
            "relay-inventory:relay-after-publish@3",
        ],
    );
    for who in ["orders", "payments", "relay-inventory"] {
        assert!(stdout.contains(&format!("== {who} crashed at its failpoint")), "{who} did not crash:\n{stdout}");
    }
    // The services' down time may push many steps past their deadline:
    // which failure modes show is not the point here.
    check(&stdout, false);
}
