//! Poison events (I7 with I4): with the default policy a permanently failing
//! event is dead-lettered and its key quarantined while other keys flow;
//! `dead-letters retry`, once the cause is fixed, delivers it in its original
//! place and releases the key. The alternative policy dead-letters and goes
//! on. And the operator commands against a live system, bad ids included.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Output;
use std::time::Duration;

use common::*;
use outbox::{Message, Outbox};
use uuid::Uuid;

use common::relay_command_on as admin;

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// key "a": a (too large for the first relay), a2, a3; key "b": b1, b2.
async fn poisoned_world() -> (World, Vec<Message>, Vec<Message>) {
    let world = World::new(2).await;
    let outbox = Outbox::new(world.config.clone().with_max_payload_bytes(8192));
    let a: Vec<Message> = [vec![b'x'; 5000], b"2".to_vec(), b"3".to_vec()]
        .into_iter()
        .map(|p| Message::bytes(&world.topic, "test.a", p).with_key("a"))
        .collect();
    let b: Vec<Message> = (1..=2).map(|i| Message::bytes(&world.topic, "test.b", vec![i]).with_key("b")).collect();
    outbox.enqueue_all(&world.pool, &[a.clone(), b.clone()].concat()).await.unwrap();
    (world, a, b)
}

fn ids(messages: &[Message]) -> Vec<Uuid> {
    messages.iter().map(Message::id).collect()
}

async fn quarantined(world: &World) -> Vec<(Uuid, bool)> {
    sqlx::query_as(&format!("SELECT id, quarantined FROM \"{}\".outbox_dead_letter", world.schema))
        .fetch_all(&world.pool)
        .await
        .unwrap()
}

/// Two events per batch, several batches in flight: the first batch is
/// [b1, a1] where a1 is refused at once while b1 awaits its confirmation;
/// the next batch, [a2, a3], is claimed and sent before that first batch is
/// settled, and must hold a2 and a3 back (never sent after a1 failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quarantine_holds_the_key_across_batches_in_flight() {
    let world = World::new(2).await;
    let outbox = Outbox::new(world.config.clone().with_max_payload_bytes(8192));
    let m = |key: &str, payload: Vec<u8>| Message::bytes(&world.topic, "test", payload).with_key(key);
    let (b1, a1, a2, a3, b2) =
        (m("b", vec![1]), m("a", vec![b'x'; 5000]), m("a", vec![2]), m("a", vec![3]), m("b", vec![2]));
    outbox.enqueue_all(&world.pool, &[b1.clone(), a1.clone(), a2, a3, b2.clone()]).await.unwrap();
    let relay = world.relay(&["-X", "message.max.bytes=2000", "--batch-size", "2", "--pipeline-depth", "4"]);
    let start = std::time::Instant::now();
    while world.pending().await != 2 || quarantined(&world).await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "poison not quarantined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(relay);
    assert_eq!(quarantined(&world).await, vec![(a1.id(), true)]);
    assert_eq!(world.pending().await, 2, "a2 and a3 wait behind the dead letter");
    let records = world.read_topic(2);
    let published: Vec<Uuid> = records.iter().map(|r| r.id).collect();
    assert_eq!(published, vec![b1.id(), b2.id()], "only key b was published, in order: {records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quarantine_holds_the_key_until_retried_in_order() {
    let (world, a, b) = poisoned_world().await;
    let small = world.relay(&["-X", "message.max.bytes=2000"]);
    // b flows; a's first event is dead-lettered, a2 and a3 wait behind it.
    let start = std::time::Instant::now();
    while world.pending().await != 2 || quarantined(&world).await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "poison not quarantined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(quarantined(&world).await, vec![(a[0].id(), true)]);
    drop(small);

    // The cause is fixed (a relay that accepts the size), but the key stays
    // quarantined until the operator acts.
    let fixed = world.relay(&[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.pending().await, 2, "quarantined key must wait for the operator");
    let status: serde_json::Value = serde_json::from_str(&ok(&admin(&world, &["status", "--json"]))).unwrap();
    assert_eq!(status["quarantined_keys"], 1);
    assert_eq!(status["pending"], 2);

    let out = ok(&admin(&world, &["dead-letters", "retry", &a[0].id().to_string()]));
    assert!(out.contains("1 dead-lettered event(s) put back in line"), "{out}");
    world.wait_drained(Duration::from_secs(30)).await;
    let records = world.read_topic(5);
    let committed: HashMap<String, Vec<Uuid>> = [("a".into(), ids(&a)), ("b".into(), ids(&b))].into();
    let c = check(&records, &committed, &HashSet::new());
    println!("{c:?}");
    assert_eq!((c.lost, c.order_violations), (0, 0), "a, a2, a3 in order after the retry");
    assert!(quarantined(&world).await.is_empty());
    drop(fixed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_policy_dead_letters_and_goes_on() {
    let (world, a, _b) = poisoned_world().await;
    let relay = world.relay(&["-X", "message.max.bytes=2000", "--on-poison", "continue"]);
    world.wait_drained(Duration::from_secs(30)).await;
    assert_eq!(quarantined(&world).await, vec![(a[0].id(), false)]);
    let records = world.read_topic(4);
    assert!(records.iter().any(|r| r.id == a[2].id()), "later events of the key went on");
    drop(relay);
    let fixed = world.relay(&[]);
    ok(&admin(&world, &["dead-letters", "retry", "--all"]));
    world.wait_drained(Duration::from_secs(30)).await;
    let records = world.read_topic(5);
    assert!(records.iter().any(|r| r.id == a[0].id()), "retried event delivered");
    drop(fixed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_commands_against_a_live_system() {
    let (world, a, _b) = poisoned_world().await;
    let relay = world.relay(&["-X", "message.max.bytes=2000", "--name", "relay-under-test"]);
    let start = std::time::Instant::now();
    while quarantined(&world).await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // a rebalance has run

    let status: serde_json::Value = serde_json::from_str(&ok(&admin(&world, &["status", "--json"]))).unwrap();
    println!("{status:#}");
    assert_eq!(status["dead_letters"], 1);
    assert_eq!(status["slots"], i64::from(outbox::DEFAULT_SLOTS));
    assert_eq!(status["unowned_slots"], 0);
    let relays = status["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 1);
    assert_eq!(relays[0]["name"], "relay-under-test");
    assert_eq!(relays[0]["slots"].as_array().unwrap().len(), usize::from(outbox::DEFAULT_SLOTS));
    let table = ok(&admin(&world, &["status"]));
    assert!(table.contains("relay-under-test") && table.contains("0-63"), "{table}");

    let list: serde_json::Value =
        serde_json::from_str(&ok(&admin(&world, &["dead-letters", "list", "--json"]))).unwrap();
    assert_eq!(list[0]["id"], a[0].id().to_string());
    assert!(list[0]["error"].as_str().unwrap().contains("too large"));
    let table = ok(&admin(&world, &["dead-letters", "list"]));
    assert!(table.contains(&a[0].id().to_string()) && table.contains("yes"), "{table}");
    let shown = ok(&admin(&world, &["dead-letters", "show", &a[0].id().to_string()]));
    assert!(shown.contains("payload (5000 B)"), "{shown}");

    // Unknown and malformed ids: a clear error and nothing changes.
    let unknown = Uuid::now_v7().to_string();
    for args in [
        vec!["dead-letters", "retry", &unknown],
        vec!["dead-letters", "retry", &a[0].id().to_string(), &unknown],
        vec!["dead-letters", "discard", &unknown],
        vec!["dead-letters", "show", &unknown],
    ] {
        let out = admin(&world, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&format!("no dead-lettered event with id {unknown}")), "{stderr}");
    }
    let out = admin(&world, &["dead-letters", "retry", "not-a-uuid"]);
    assert_eq!(out.status.code(), Some(2));
    let out = admin(&world, &["dead-letters", "retry"]);
    assert_eq!(out.status.code(), Some(2), "retry needs ids or --all");
    assert_eq!(quarantined(&world).await, vec![(a[0].id(), true)], "nothing changed");

    // Discard releases the key: a2 and a3 go out.
    ok(&admin(&world, &["dead-letters", "discard", &a[0].id().to_string()]));
    world.wait_drained(Duration::from_secs(30)).await;
    assert!(quarantined(&world).await.is_empty());
    drop(relay);
}
