//! The key → slot function in Rust (`outbox::slot::slot_of`) is the one
//! PostgreSQL's outbox computes in SQL, so a backend that writes the slot
//! from Rust puts every key in the slot PostgreSQL would.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use outbox::slot::slot_of;
use outbox::{Message, Outbox, OutboxConfig};
use rand::Rng;
use uuid::Uuid;

/// Keys of every length from 0 to 40 bytes (both sides of each 12-byte
/// block and of the 4-byte words in the tail), ASCII and multi-byte, and
/// keyless events hashed by id: the same slot as PostgreSQL's expression.
#[tokio::test]
async fn matches_postgresql_for_every_length_and_keyless_events() {
    let pool = pool().await;
    let mut rng = rand::rng();
    let alphabet: Vec<char> = "abcXYZ019 -_/:é€ключ😀".chars().collect();
    let mut keys: Vec<Option<String>> = vec![None, None, None];
    for len in 0..=40 {
        for _ in 0..6 {
            keys.push(Some((0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect()));
        }
    }
    let ids: Vec<Uuid> = keys.iter().map(|_| Uuid::now_v7()).collect();
    for slots in [1_i32, 7, 64, 4096] {
        let expected: Vec<i32> = sqlx::query_scalar(
            "SELECT ((hashtextextended(coalesce(k, i::text), 0) & 2147483647) % $3)::integer \
             FROM UNNEST($1::text[], $2::uuid[]) WITH ORDINALITY AS t(k, i, n) ORDER BY n",
        )
        .bind(&keys)
        .bind(&ids)
        .bind(slots)
        .fetch_all(&pool)
        .await
        .unwrap();
        let ours: Vec<i32> =
            keys.iter().zip(&ids).map(|(k, id)| slot_of(k.as_deref(), *id, u16::try_from(slots).unwrap())).collect();
        for ((k, theirs), mine) in keys.iter().zip(&expected).zip(&ours) {
            assert_eq!(theirs, mine, "slots={slots} key={k:?} ({} bytes)", k.as_deref().map_or(36, str::len));
        }
    }
}

/// The slot the outbox table's column holds for enqueued events (what the
/// relay's leases go by) is the one Rust computes, with the outbox's own
/// slot count.
#[tokio::test]
async fn matches_the_slot_column_of_enqueued_events() {
    let pool = pool().await;
    let config = OutboxConfig::default().with_schema(&unique("slots")).unwrap().with_slots(13).unwrap();
    let outbox = Outbox::new(config.clone());
    outbox.migrate(&pool).await.unwrap();
    let mut messages = Vec::new();
    for i in 0..200 {
        let m = Message::json("t", "test.slot", &serde_json::json!({ "i": i })).unwrap();
        messages.push(if i % 5 == 0 { m } else { m.with_key(format!("customer-{i}/ключ")) });
    }
    outbox.enqueue_all(&pool, &messages).await.unwrap();
    let table = format!("{}.{}", config.schema().quoted(), config.outbox_table().quoted());
    let rows: Vec<(Uuid, Option<String>, i32)> =
        sqlx::query_as(&format!("SELECT id, key, slot FROM {table}")).fetch_all(&pool).await.unwrap();
    assert_eq!(rows.len(), messages.len());
    for (id, key, slot) in rows {
        assert_eq!(slot, slot_of(key.as_deref(), id, 13), "id={id} key={key:?}");
    }
}
