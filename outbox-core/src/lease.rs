//! Slots and leases shared by relay replicas.
//!
//! Every key hashes to one of S slots (fixed per outbox). Each slot is leased
//! to at most one live relay; a relay publishes only rows of slots it holds,
//! so the events of one key are only ever published by one relay at a time,
//! in sequence order. Relays heartbeat; a relay that stops heartbeating
//! (killed, paused, cut off) loses its leases after the lease timeout and the
//! others take its slots over. Every change of owner bumps the slot's epoch,
//! and a relay settles (marks, dead-letters, reschedules) rows only under the
//! epoch it claimed them with: a relay that wakes up after losing a slot may
//! publish duplicates, but never marks or deletes another owner's rows.

use crate::store::RelayId;

/// The slots `me` should own when `live` relays share `slots`: slot number
/// `i` (in sorted order) goes to the `i mod n`-th live relay (sorted by id).
/// Every relay computes the same assignment from the same membership.
///
/// ```
/// use outbox_core::lease::assigned_slots;
/// use uuid::Uuid;
/// let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
/// assert_eq!(assigned_slots(&[0, 1, 2, 3, 4], &[a, b], a), vec![0, 2, 4]);
/// assert_eq!(assigned_slots(&[0, 1, 2, 3, 4], &[a, b], b), vec![1, 3]);
/// assert!(assigned_slots(&[0, 1], &[a], b).is_empty());
/// ```
pub fn assigned_slots(slots: &[i32], live: &[RelayId], me: RelayId) -> Vec<i32> {
    let mut live = live.to_vec();
    live.sort_unstable();
    live.dedup();
    let Some(position) = live.iter().position(|r| *r == me) else {
        return Vec::new();
    };
    let mut slots = slots.to_vec();
    slots.sort_unstable();
    slots.into_iter().enumerate().filter(|(i, _)| i % live.len() == position).map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn every_slot_has_exactly_one_owner() {
        let relays: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let slots: Vec<i32> = (0..64).collect();
        let mut all: Vec<i32> = relays.iter().flat_map(|r| assigned_slots(&slots, &relays, *r)).collect();
        all.sort_unstable();
        assert_eq!(all, slots);
        for r in &relays {
            let n = assigned_slots(&slots, &relays, *r).len();
            assert!((21..=22).contains(&n), "unbalanced: {n}");
        }
    }
}
