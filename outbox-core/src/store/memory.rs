//! An outbox kept in memory, with the semantics every backend's statements
//! must have (slot leases with epochs, fenced settles, per-key backoff and
//! quarantine), for fast tests of the relay's logic without a server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use uuid::Uuid;

use super::{DeadLetter, Fence, OutboxEvent, OutboxStats, OutboxStore, Rebalance, RelayId, RetryLater};
use crate::error::Result;

#[derive(Debug, Clone, Default)]
struct Lease {
    owner: Option<RelayId>,
    epoch: i64,
    expires: Option<Instant>,
}

#[derive(Debug)]
struct Row {
    event: OutboxEvent,
    next_attempt: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    rows: BTreeMap<i64, Row>,
    leases: Vec<Lease>,
    relays: HashMap<RelayId, Instant>,
    /// Dead letters: the event, its error, whether its key is quarantined.
    dead: Vec<(OutboxEvent, String, bool)>,
    next_seq: i64,
}

/// The in-memory store; clones share one outbox.
#[derive(Debug, Clone)]
pub(crate) struct MemoryStore {
    state: Arc<Mutex<State>>,
    /// How long each settle takes (a slow database).
    settle_delay: Duration,
}

impl MemoryStore {
    pub(crate) fn new(slots: usize) -> Self {
        let state = State { leases: vec![Lease::default(); slots], next_seq: 1, ..Default::default() };
        MemoryStore { state: Arc::new(Mutex::new(state)), settle_delay: Duration::ZERO }
    }

    pub(crate) fn with_settle_delay(mut self, delay: Duration) -> Self {
        self.settle_delay = delay;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event of `key` (committed at once); returns its id.
    pub(crate) fn enqueue(&self, key: &str) -> Uuid {
        let seq = self.reserve();
        self.commit(seq, key)
    }

    /// Takes the next sequence number for a transaction that commits later
    /// (with [`Self::commit`]), after rows with higher numbers.
    pub(crate) fn reserve(&self) -> i64 {
        let mut s = self.state();
        s.next_seq += 1;
        s.next_seq - 1
    }

    /// Commits an event of `key` under the reserved sequence number `seq`;
    /// returns its id.
    pub(crate) fn commit(&self, seq: i64, key: &str) -> Uuid {
        let mut s = self.state();
        let slots = s.leases.len();
        let id = Uuid::now_v7();
        let now = chrono::Utc::now();
        let slot = i32::try_from(key.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b.into())) % slots)
            .unwrap_or(0);
        let event = OutboxEvent {
            seq,
            id,
            topic: "t".into(),
            key: Some(key.to_owned()),
            event_type: "test".into(),
            source: "memory".into(),
            content_type: None,
            payload: Vec::new(),
            headers: BTreeMap::new(),
            traceparent: None,
            tracestate: None,
            occurred_at: now,
            created_at: now,
            attempts: 0,
            slot,
            epoch: -1,
        };
        s.rows.insert(seq, Row { event, next_attempt: None });
        id
    }

    /// Ids of the rows still pending, in sequence order.
    pub(crate) fn pending(&self) -> Vec<Uuid> {
        self.state().rows.values().map(|r| r.event.id).collect()
    }

    /// Dead letters: id, error, quarantined.
    pub(crate) fn dead_letters(&self) -> Vec<(Uuid, String, bool)> {
        self.state().dead.iter().map(|(e, err, q)| (e.id, err.clone(), *q)).collect()
    }

    /// Applies `f` to each fenced row `owner` still holds; returns how many.
    fn fenced(&self, owner: RelayId, fences: &[Fence], mut f: impl FnMut(&mut State, i64)) -> u64 {
        let mut s = self.state();
        let now = Instant::now();
        let mut n = 0;
        for fence in fences {
            let holds = s.leases.get(usize::try_from(fence.slot).unwrap_or(usize::MAX)).is_some_and(|l| {
                l.owner == Some(owner) && l.epoch == fence.epoch && l.expires.is_some_and(|e| e > now)
            });
            if holds && s.rows.contains_key(&fence.seq) {
                f(&mut s, fence.seq);
                n += 1;
            }
        }
        n
    }
}

#[async_trait]
impl OutboxStore for MemoryStore {
    async fn claim(&self, owner: RelayId, limit: usize, in_flight: &[i64]) -> Result<Vec<OutboxEvent>> {
        let s = self.state();
        let now = Instant::now();
        let skip: HashSet<i64> = in_flight.iter().copied().collect();
        let quarantined: HashSet<&str> =
            s.dead.iter().filter(|(_, _, q)| *q).filter_map(|(e, _, _)| e.key.as_deref()).collect();
        let backing_off: HashSet<&str> = s
            .rows
            .values()
            .filter(|r| r.next_attempt.is_some_and(|t| t > now))
            .filter_map(|r| r.event.key.as_deref())
            .collect();
        let mut claimed = Vec::new();
        for row in s.rows.values() {
            let key = row.event.key.as_deref();
            if row.next_attempt.is_some_and(|t| t > now) {
                continue;
            }
            let lease = &s.leases[usize::try_from(row.event.slot).unwrap_or(0)];
            let held = lease.owner == Some(owner) && lease.expires.is_some_and(|e| e > now);
            let blocked = key.is_some_and(|k| backing_off.contains(k) || quarantined.contains(k));
            if held && !blocked && !skip.contains(&row.event.seq) {
                claimed.push(OutboxEvent { epoch: lease.epoch, ..row.event.clone() });
                if claimed.len() == limit {
                    break;
                }
            }
        }
        Ok(claimed)
    }

    async fn mark_published(&self, owner: RelayId, done: &[Fence], _retain: bool) -> Result<u64> {
        tokio::time::sleep(self.settle_delay).await;
        Ok(self.fenced(owner, done, |s, seq| {
            s.rows.remove(&seq);
        }))
    }

    async fn purge_published(&self, _older_than: Duration, _limit: i64) -> Result<u64> {
        Ok(0)
    }

    async fn retry_later(&self, owner: RelayId, failures: &[RetryLater]) -> Result<u64> {
        let fences: Vec<Fence> = failures.iter().map(|f| f.fence).collect();
        let delays: HashMap<i64, Duration> = failures.iter().map(|f| (f.fence.seq, f.retry_after)).collect();
        Ok(self.fenced(owner, &fences, |s, seq| {
            if let Some(row) = s.rows.get_mut(&seq) {
                row.event.attempts += 1;
                row.next_attempt = Some(Instant::now() + delays[&seq]);
            }
        }))
    }

    async fn dead_letter(&self, owner: RelayId, rows: &[DeadLetter], quarantine: bool) -> Result<u64> {
        let fences: Vec<Fence> = rows.iter().map(|d| d.fence).collect();
        let errors: HashMap<i64, String> = rows.iter().map(|d| (d.fence.seq, d.error.clone())).collect();
        Ok(self.fenced(owner, &fences, |s, seq| {
            if let Some(row) = s.rows.remove(&seq) {
                let q = quarantine && row.event.key.is_some();
                s.dead.push((row.event, errors[&seq].clone(), q));
            }
        }))
    }

    async fn heartbeat(&self, owner: RelayId, _name: &str, lease: Duration) -> Result<()> {
        let mut s = self.state();
        let now = Instant::now();
        s.relays.insert(owner, now);
        for l in s.leases.iter_mut().filter(|l| l.owner == Some(owner)) {
            l.expires = Some(now + lease);
        }
        Ok(())
    }

    async fn rebalance(&self, owner: RelayId, lease: Duration) -> Result<Rebalance> {
        let mut s = self.state();
        let now = Instant::now();
        let mut live: Vec<RelayId> =
            s.relays.iter().filter(|(_, t)| now.duration_since(**t) < lease).map(|(id, _)| *id).collect();
        live.sort();
        let mut r = Rebalance { live_relays: live.len(), ..Default::default() };
        for (slot, l) in s.leases.iter_mut().enumerate() {
            let slot_no = i32::try_from(slot).unwrap_or(i32::MAX);
            let mine = !live.is_empty() && live[slot % live.len()] == owner;
            let alive = l.expires.is_some_and(|e| e > now);
            if l.owner == Some(owner) && !mine {
                *l = Lease { owner: None, epoch: l.epoch, expires: None };
                r.released.push(slot_no);
            } else if mine && (l.owner.is_none() || !alive) {
                // Free, or its holder's lease ran out.
                if l.owner.is_some_and(|o| o != owner) {
                    r.taken_over.push(slot_no);
                }
                *l = Lease { owner: Some(owner), epoch: l.epoch + 1, expires: Some(now + lease) };
                r.acquired.push(slot_no);
            }
            if l.owner == Some(owner) && l.expires.is_some_and(|e| e > now) {
                r.owned.push(slot_no);
            }
        }
        Ok(r)
    }

    async fn leave(&self, owner: RelayId) -> Result<()> {
        let mut s = self.state();
        for l in s.leases.iter_mut().filter(|l| l.owner == Some(owner)) {
            l.owner = None;
            l.expires = None;
        }
        s.relays.remove(&owner);
        Ok(())
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let s = self.state();
        Ok(OutboxStats {
            pending: i64::try_from(s.rows.len()).unwrap_or(i64::MAX),
            dead_letters: i64::try_from(s.dead.len()).unwrap_or(i64::MAX),
            ..Default::default()
        })
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
