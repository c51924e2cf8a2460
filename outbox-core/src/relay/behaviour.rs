//! The relay's logic against an in-memory store and a scripted publisher:
//! per-key holds, retries in order, quarantine, batches deleted in the
//! background never claimed again, and a key's row committed late. Fast, no
//! server.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{PoisonPolicy, Relay, RelayConfig};
use crate::error::Result;
use crate::publish::{Delivery, Publisher, Sending};
use crate::store::{MemoryStore, OutboxEvent};

/// Delivers every event unless scripted otherwise; records what it
/// delivered, in order. Like Kafka's publisher, an event whose key failed
/// earlier in the same batch, or is in `hold`, is held, not sent.
#[derive(Clone, Default)]
struct ScriptedPublisher {
    script: Arc<Mutex<HashMap<Uuid, VecDeque<Delivery>>>>,
    delivered: Arc<Mutex<Vec<(String, Uuid)>>>,
}

impl ScriptedPublisher {
    fn fail(&self, id: Uuid, outcomes: &[Delivery]) {
        self.script.lock().unwrap_or_else(|e| e.into_inner()).insert(id, outcomes.iter().cloned().collect());
    }

    fn delivered(&self) -> Vec<(String, Uuid)> {
        self.delivered.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl Publisher for ScriptedPublisher {
    async fn send(&self, events: &[OutboxEvent], hold: &HashSet<String>) -> Sending {
        let mut known = vec![None; events.len()];
        let mut confirmations = Vec::new();
        let mut failed: HashSet<&str> = HashSet::new();
        for (i, e) in events.iter().enumerate() {
            let key = e.key.as_deref().unwrap_or_default();
            if failed.contains(key) || hold.contains(key) {
                known[i] = Some(Delivery::Held);
                continue;
            }
            let scripted =
                self.script.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&e.id).and_then(VecDeque::pop_front);
            let outcome = scripted.unwrap_or(Delivery::Delivered);
            if outcome == Delivery::Delivered {
                self.delivered.lock().unwrap_or_else(|e| e.into_inner()).push((key.to_owned(), e.id));
            } else {
                failed.insert(key);
            }
            confirmations.push((i, outcome));
        }
        Sending::new(known, async move { confirmations })
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

fn config() -> RelayConfig {
    RelayConfig {
        batch_size: 10,
        poll_interval: Duration::from_millis(2),
        busy_poll_interval: Duration::from_millis(1),
        retry_min_delay: Duration::from_millis(20),
        retry_max_delay: Duration::from_millis(40),
        lease_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

/// `n` events over `keys` keys; the ids per key in commit order.
fn backlog(store: &MemoryStore, n: usize, keys: usize) -> HashMap<String, Vec<Uuid>> {
    let mut committed: HashMap<String, Vec<Uuid>> = HashMap::new();
    for i in 0..n {
        let key = format!("k{}", i % keys);
        let id = store.enqueue(&key);
        committed.entry(key).or_default().push(id);
    }
    committed
}

/// Runs a relay until `done` holds (at most 10 s; checked every 5 ms, and
/// free to act on the outbox meanwhile), then shuts it down.
async fn run_until(
    store: &MemoryStore,
    publisher: &ScriptedPublisher,
    config: RelayConfig,
    mut done: impl FnMut() -> bool,
) {
    let relay = Relay::new(store.clone(), publisher.clone(), config).expect("valid config");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "not done within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    running.await.expect("relay task").expect("relay run");
}

/// Each key's delivered ids, in delivery order.
fn per_key(delivered: &[(String, Uuid)]) -> HashMap<String, Vec<Uuid>> {
    let mut by_key: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (k, id) in delivered {
        by_key.entry(k.clone()).or_default().push(*id);
    }
    by_key
}

#[tokio::test]
async fn rows_being_deleted_in_the_background_are_never_claimed_again() {
    // Every delete takes 30 ms, claims take none: a claim that did not skip
    // the rows being deleted would publish them again at once.
    let store = MemoryStore::new(4).with_settle_delay(Duration::from_millis(30));
    let publisher = ScriptedPublisher::default();
    let committed = backlog(&store, 300, 7);
    run_until(&store, &publisher, RelayConfig { pipeline_depth: 2, ..config() }, || store.pending().is_empty()).await;
    let delivered = publisher.delivered();
    assert_eq!(delivered.len(), 300, "each event exactly once");
    assert_eq!(per_key(&delivered), committed, "per-key order");
}

#[tokio::test]
async fn a_row_committed_late_goes_out_before_the_later_rows_of_its_key() {
    // A transaction takes a sequence number, a backlog behind it is claimed
    // and published past it, then it commits; the application's lock on
    // the key lets the key's next event be written only after that. A
    // claim that started after the rows already claimed (a cursor) would
    // publish the next event first, or never the late one.
    let store = MemoryStore::new(4).with_settle_delay(Duration::from_millis(5));
    let publisher = ScriptedPublisher::default();
    let late_seq = store.reserve();
    backlog(&store, 600, 7);
    let mut written = None;
    run_until(&store, &publisher, RelayConfig { pipeline_depth: 2, ..config() }, || {
        if written.is_none() && publisher.delivered().len() >= 100 {
            let late = store.commit(late_seq, "k-late");
            written = Some((late, store.enqueue("k-late")));
        }
        written.is_some() && store.pending().is_empty()
    })
    .await;
    let (late, next) = written.expect("written once the backlog was draining");
    let delivered = publisher.delivered();
    assert_eq!(delivered.len(), 602, "each event exactly once");
    assert_eq!(per_key(&delivered)["k-late"], vec![late, next], "the key's events in commit order");
}

#[tokio::test]
async fn a_failed_event_holds_back_its_key_and_goes_out_again_in_order() {
    let store = MemoryStore::new(4);
    let publisher = ScriptedPublisher::default();
    let committed = backlog(&store, 60, 3);
    let victim = committed["k1"][2];
    publisher.fail(victim, &[Delivery::Retry("broker busy".into()), Delivery::Retry("broker busy".into())]);
    run_until(&store, &publisher, config(), || store.pending().is_empty()).await;
    let delivered = publisher.delivered();
    assert_eq!(delivered.len(), 60);
    assert_eq!(per_key(&delivered), committed, "the key's later events waited for the retried one");
    assert!(store.dead_letters().is_empty());
}

#[tokio::test]
async fn a_poison_event_quarantines_its_key_and_only_its_key() {
    let store = MemoryStore::new(4);
    let publisher = ScriptedPublisher::default();
    let committed = backlog(&store, 60, 3);
    let poison = committed["k2"][4];
    publisher.fail(poison, &[Delivery::Permanent("record too large".into())]);
    let waiting: Vec<Uuid> = committed["k2"][5..].to_vec();
    let config = RelayConfig { poison_policy: PoisonPolicy::QuarantineKey, ..config() };
    run_until(&store, &publisher, config, || {
        store.pending().len() == waiting.len() && !store.dead_letters().is_empty()
    })
    .await;
    assert_eq!(store.dead_letters(), vec![(poison, "record too large".to_owned(), true)]);
    assert_eq!(store.pending(), waiting, "the key's later events wait, in order, unpublished");
    let by_key = per_key(&publisher.delivered());
    assert_eq!(by_key["k0"], committed["k0"]);
    assert_eq!(by_key["k1"], committed["k1"]);
    assert_eq!(by_key["k2"], committed["k2"][..4].to_vec());
}

#[tokio::test]
async fn with_dead_letter_and_continue_the_key_goes_on() {
    let store = MemoryStore::new(4);
    let publisher = ScriptedPublisher::default();
    let committed = backlog(&store, 30, 3);
    let poison = committed["k0"][1];
    publisher.fail(poison, &[Delivery::Permanent("invalid record".into())]);
    let config = RelayConfig { poison_policy: PoisonPolicy::DeadLetterAndContinue, ..config() };
    run_until(&store, &publisher, config, || store.pending().is_empty()).await;
    assert_eq!(store.dead_letters(), vec![(poison, "invalid record".to_owned(), false)]);
    let expected: Vec<Uuid> = committed["k0"].iter().copied().filter(|id| *id != poison).collect();
    assert_eq!(per_key(&publisher.delivered())["k0"], expected);
}
