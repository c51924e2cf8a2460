//! Which slot a key belongs to, computed in Rust so that every backend puts
//! a key in the same slot.
//!
//! The function is the one the PostgreSQL outbox has used since its slots
//! were introduced (migration 0003's generated column,
//! `(hashtextextended(coalesce(key, id::text), 0) & 2147483647) % slots`),
//! so existing PostgreSQL outboxes keep every key in its slot. A backend
//! without that SQL function (MySQL, MariaDB, SQLite) writes the slot the
//! writer computes here. `tests/slot_hash.rs` checks the two against a real
//! PostgreSQL server.
//!
//! `hashtextextended` hashes the text's bytes with Bob Jenkins' lookup3
//! (`hashlittle`, 32-bit words read little-endian on every platform
//! PostgreSQL's result is defined for), seeded with the byte length; the
//! slot uses the low 31 bits of its result.

use uuid::Uuid;

/// The slot of an event: its key's, or for an event without a key its id's
/// (in its hyphenated lower-case form), among `slots` slots.
///
/// ```
/// use outbox_core::slot::slot_of;
/// use uuid::Uuid;
/// let id = Uuid::now_v7();
/// // Every event of a key lands in the same slot, whatever its id.
/// assert_eq!(slot_of(Some("order-7"), id, 64), slot_of(Some("order-7"), Uuid::now_v7(), 64));
/// assert!((0..64).contains(&slot_of(None, id, 64)));
/// assert_eq!(slot_of(Some("anything"), id, 1), 0);
/// ```
pub fn slot_of(key: Option<&str>, id: Uuid, slots: u16) -> i32 {
    let hash = match key {
        Some(key) => hash_low_word(key.as_bytes()),
        None => hash_low_word(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()).as_bytes()),
    };
    // The low 31 bits of the 64-bit hash are the low 31 bits of its low word.
    let slot = (hash & 0x7fff_ffff) % u32::from(slots.max(1));
    i32::try_from(slot).unwrap_or(0)
}

/// The low 32 bits of PostgreSQL's `hash_bytes_extended(bytes, 0)`: lookup3's
/// final `c`.
fn hash_low_word(bytes: &[u8]) -> u32 {
    // lookup3 keeps the length modulo 2^32.
    let init = 0x9e37_79b9_u32.wrapping_add(bytes.len() as u32).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut rest = bytes;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The last 0–11 bytes: into a, b and c's upper three bytes (the lowest
    // byte of c is left for the length, which the seed already holds).
    a = a.wrapping_add(word(&rest[..rest.len().min(4)]));
    if rest.len() > 4 {
        b = b.wrapping_add(word(&rest[4..rest.len().min(8)]));
    }
    if rest.len() > 8 {
        c = c.wrapping_add(word(&rest[8..]) << 8);
    }
    final_mix(&mut a, &mut b, &mut c);
    c
}

/// Up to four bytes as a little-endian word (missing high bytes are zero).
fn word(bytes: &[u8]) -> u32 {
    bytes.iter().rev().fold(0, |w, &b| (w << 8) | u32::from(b))
}

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c) ^ c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c) ^ c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(14));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(11));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(25));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(16));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(4));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(14));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(24));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_keeps_its_slot_and_slots_stay_in_range() {
        for slots in [1_u16, 2, 7, 64, 4096] {
            for key in ["", "a", "order-7", "ключ", "twelve bytes", "thirteen byte"] {
                let s = slot_of(Some(key), Uuid::now_v7(), slots);
                assert!((0..i32::from(slots)).contains(&s));
                assert_eq!(s, slot_of(Some(key), Uuid::now_v7(), slots));
            }
        }
    }

    #[test]
    fn keys_spread_over_the_slots() {
        let mut counts = [0_u32; 64];
        for i in 0..64_000 {
            counts[usize::try_from(slot_of(Some(&format!("key-{i}")), Uuid::nil(), 64)).unwrap_or(0)] += 1;
        }
        // 1,000 expected per slot; a fair hash stays well within ±20 %.
        assert!(counts.iter().all(|&n| (800..1200).contains(&n)), "{counts:?}");
    }
}
