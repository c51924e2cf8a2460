//! Many relays, one order (I4 with N relays): slots leased to live relays,
//! taken over when a relay dies, fenced when a paused relay wakes up.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use outbox::Message;
use uuid::Uuid;

/// Enqueues `n` events over `keys` keys in transactions of 500; per-key
/// commit order is list order.
async fn backlog(world: &World, n: usize, keys: usize) -> HashMap<String, Vec<Uuid>> {
    let mut committed: HashMap<String, Vec<Uuid>> = HashMap::new();
    let messages: Vec<Message> = (0..n)
        .map(|i| {
            let key = format!("key-{}", i % keys);
            Message::json(&world.topic, "test.event", &serde_json::json!({ "i": i })).unwrap().with_key(key)
        })
        .collect();
    for chunk in messages.chunks(500) {
        world.outbox.enqueue_all(&world.pool, chunk).await.unwrap();
        for m in chunk {
            committed.entry(m.key().unwrap().to_owned()).or_default().push(m.id());
        }
    }
    committed
}

async fn metric(relay: &RelayProcess, name: &str) -> f64 {
    let (_, body) = relay.http_get("/metrics").await;
    body.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map_or(0.0, |v| v.parse().unwrap())
}

async fn wait_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every relay owns slots and together they own all of them.
async fn slots_divided(relays: &[RelayProcess]) {
    wait_until("slots divided", Duration::from_secs(20), async || {
        let mut owned = Vec::new();
        for r in relays {
            owned.push(metric(r, "outbox_slots_owned").await);
        }
        owned.iter().all(|o| *o > 0.0) && owned.iter().sum::<f64>() == f64::from(outbox::DEFAULT_SLOTS)
    })
    .await;
}

/// Three relays drain 20,000 events over 200 keys: nothing lost, per-key
/// order intact, every relay did part of the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_relays_share_the_work_in_order() {
    let world = World::new(6).await;
    let relays: Vec<RelayProcess> = (0..3).map(|_| world.relay(&["--batch-size", "500"])).collect();
    // The backlog arrives once the three share the slots (a relay drains
    // 20,000 events in well under the second a rebalance takes).
    slots_divided(&relays).await;
    let committed = backlog(&world, 20_000, 200).await;
    world.wait_drained(Duration::from_secs(180)).await;
    let records = world.read_topic(20_000);
    let c = check(&records, &committed, &HashSet::new());
    println!("{c:?}");
    assert_eq!((c.lost, c.unexpected, c.order_violations), (0, 0, 0));
    let mut shares = Vec::new();
    for r in &relays {
        shares.push(metric(r, "outbox_events_published_total").await);
    }
    println!("published per relay: {shares:?}");
    assert!(shares.iter().all(|s| *s > 0.0), "every relay publishes: {shares:?}");
}

/// One of three relays is SIGKILLed mid-run: its slots are taken over
/// within the lease timeout, nothing lost, order intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_relay_slots_are_taken_over() {
    let world = World::new(6).await;
    let mut relays: Vec<RelayProcess> = (0..3).map(|_| world.relay(&["--batch-size", "100"])).collect();
    // Wait until the three share the slots, then write while one dies.
    slots_divided(&relays).await;
    let writer = write_events(&world, 4, 300, 50, 10);
    let victim = relays.remove(0);
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        victim.sigkill();
        Instant::now()
    };
    let ((committed, rolled_back), killed_at) = tokio::join!(writer, killer);
    wait_until("takeover", Duration::from_secs(15), async || {
        let mut owned = 0.0;
        for r in &relays {
            owned += metric(r, "outbox_slots_owned").await;
        }
        owned == f64::from(outbox::DEFAULT_SLOTS)
    })
    .await;
    let takeover = killed_at.elapsed();
    println!("all slots owned again {takeover:?} after the kill (lease timeout 3s)");
    assert!(takeover < Duration::from_secs(8));
    world.wait_drained(Duration::from_secs(60)).await;
    let records = world.read_topic(total(&committed));
    let c = check(&records, &committed, &rolled_back);
    println!("{c:?}");
    assert_eq!((c.lost, c.unexpected, c.order_violations), (0, 0, 0));
    let mut takeovers = 0.0;
    for r in &relays {
        takeovers += metric(r, "outbox_lease_takeovers_total").await;
    }
    assert!(takeovers > 0.0, "the dead relay's slots were taken over, not released");
}

/// A relay is SIGSTOPped beyond its lease while the others take over, then
/// SIGCONTed: per-key order intact, nothing lost, duplicates at most; the
/// woken relay's writes to slots it lost are fenced off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_relay_is_fenced_when_it_wakes() {
    let world = World::new(6).await;
    let committed_before = backlog(&world, 6000, 30).await;
    // Relay 0 stops itself after its first confirmed batch, before marking
    // it: a zombie holding confirmed, unmarked rows.
    let zombie = RelayProcess::start(
        &world.schema,
        &world.brokers,
        &["--batch-size", "200"],
        &[("OUTBOX_FAILPOINT", "relay-after-publish@1:stop")],
    );
    wait_until("relay 0 stopped at the failpoint", Duration::from_secs(30), async || zombie.is_stopped()).await;
    let zombie_id: uuid::Uuid = sqlx::query_scalar(&format!("SELECT id FROM \"{}\".outbox_relays", world.schema))
        .fetch_one(&world.pool)
        .await
        .unwrap();
    let others: Vec<RelayProcess> = (0..2).map(|_| world.relay(&["--batch-size", "200"])).collect();
    let (more, rolled_back) = write_events(&world, 4, 200, 30, 5).await;
    // Past its 3 s lease the others take its slots: wait until they hold
    // every one (a stopped relay renews none), however slowly they started.
    let all_held = format!(
        "SELECT count(*) FILTER (WHERE owner <> $1 AND expires_at > now()) = count(*) FROM \"{}\".outbox_leases",
        world.schema
    );
    wait_until("the other relays hold every slot", Duration::from_secs(60), async || {
        sqlx::query_scalar::<_, bool>(&all_held).bind(zombie_id).fetch_one(&world.pool).await.unwrap()
    })
    .await;
    zombie.signal("CONT");
    world.wait_drained(Duration::from_secs(60)).await;
    let mut committed = committed_before;
    for (k, ids) in more {
        committed.entry(k).or_default().extend(ids);
    }
    let records = world.read_topic(total(&committed));
    let c = check(&records, &committed, &rolled_back);
    let fenced = metric(&zombie, "outbox_fenced_rows_total").await;
    println!("{c:?} fenced_rows_on_woken_relay={fenced}");
    assert_eq!((c.lost, c.unexpected, c.order_violations), (0, 0, 0));
    assert!(fenced > 0.0, "the woken relay's marks must be fenced off");
    assert!(c.dup_topic as f64 >= fenced, "its fenced rows were published again by the new owners");
    // It rejoins and gets a share of the slots back.
    wait_until("woken relay owns slots again", Duration::from_secs(15), async || {
        metric(&zombie, "outbox_slots_owned").await > 0.0
    })
    .await;
    drop(others);
}
