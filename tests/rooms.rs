//! Broadcast rooms end to end: three web-server processes, clients of each
//! room spread over them, one client moved to another server mid-run with
//! its last seen id, one server SIGKILLed and restarted. Every client must
//! receive every message of its room exactly once, in the room's order.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;

use common::*;

fn field(line: &str, name: &str) -> i64 {
    line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).unwrap().parse().unwrap()
}

#[test]
fn every_client_gets_every_message_in_order_through_reconnects_and_a_server_restart() {
    let output = Command::new(binary("rooms"))
        .args(["--database-url", &database_url(), "--brokers", &brokers(), "--schema", &unique("rooms")])
        .args(["--servers", "3", "--rooms", "3", "--clients", "4", "--messages", "150", "--timeout", "90s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("rooms: ") && last.ends_with("invariants=ok"), "{stdout}");
    assert!(stdout.contains("== server 0 restarted"), "{stdout}");
    assert_eq!(field(last, "messages"), 450);
    assert_eq!(field(last, "delivered"), 450 * 4, "each of the 4 clients of a room got each of its messages once");
    // The moved client and server 0's clients (one per room) reconnected.
    assert!(field(last, "reconnects") >= 4, "{stdout}");
}
