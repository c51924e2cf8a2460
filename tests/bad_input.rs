//! I8: bad input gets a clear, typed error and changes nothing.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use outbox::{Error, Message, OutboxConfig, ValidationError};

async fn outbox_rows(world: &World) -> i64 {
    world.pending().await
}

#[tokio::test]
async fn oversize_payload_is_refused_and_nothing_is_written() {
    let world = World::new(1).await;
    let outbox = outbox::Outbox::new(world.config.clone().with_max_payload_bytes(1024));
    let mut tx = world.pool.begin().await.unwrap();
    let big = Message::bytes(&world.topic, "test.big", vec![b'x'; 1025]);
    let err = outbox.enqueue(&mut *tx, &big).await.unwrap_err();
    assert!(matches!(err, Error::InvalidMessage(ValidationError::PayloadTooLarge { size: 1025, max: 1024 })), "{err}");
    assert_eq!(err.to_string(), "invalid message: payload is 1025 bytes, above the configured maximum of 1024 bytes");
    // One bad message in a batch: none of the batch is written.
    let good = Message::bytes(&world.topic, "test.ok", vec![1]);
    assert!(outbox.enqueue_all(&mut *tx, &[good, big]).await.is_err());
    tx.commit().await.unwrap();
    assert_eq!(outbox_rows(&world).await, 0);
}

#[tokio::test]
async fn invalid_messages_are_refused() {
    let world = World::new(1).await;
    let cases = [
        Message::bytes("", "t", vec![]),
        Message::bytes("bad topic!", "t", vec![]),
        Message::bytes(&world.topic, "", vec![]),
        Message::bytes(&world.topic, "t", vec![]).with_header("ce_id", "spoofed"),
        Message::bytes(&world.topic, "t", vec![]).with_header("x", "nul\0"),
    ];
    for m in &cases {
        let err = world.outbox.enqueue(&world.pool, m).await.unwrap_err();
        assert!(matches!(err, Error::InvalidMessage(_)), "{err}");
    }
    assert_eq!(outbox_rows(&world).await, 0);
}

#[tokio::test]
async fn duplicate_id_is_a_typed_error() {
    let world = World::new(1).await;
    let m = Message::bytes(&world.topic, "t", vec![1]);
    world.outbox.enqueue(&world.pool, &m).await.unwrap();
    let err = world.outbox.enqueue(&world.pool, &m).await.unwrap_err();
    assert!(matches!(err, Error::DuplicateId(id) if id == m.id()), "{err}");
    // In a batch, the error names the id that collided, not the first one.
    let fresh = Message::bytes(&world.topic, "t", vec![2]);
    let err = world.outbox.enqueue_all(&world.pool, &[fresh, m.clone()]).await.unwrap_err();
    assert!(matches!(err, Error::DuplicateId(id) if id == m.id()), "{err}");
    assert_eq!(outbox_rows(&world).await, 1);
}

#[test]
fn invalid_table_names_are_rejected() {
    for bad in ["orders; DROP TABLE users", "Orders", "a-b", "", "x\"y"] {
        let err = OutboxConfig::default().with_outbox_table(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidIdentifier { .. }), "{bad:?}: {err}");
    }
}

use common::relay_command as relay;

async fn schema_exists(world: &World, schema: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&world.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_relay_configuration_fails_clearly_and_writes_nothing() {
    let world = World::new(1).await;
    let fresh = unique("fresh");
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--migrate", "-X", "acks=1"], "acks=1 would weaken delivery guarantees"),
        (&["run", "--migrate", "-X", "enable.idempotence=false"], "enable.idempotence=false"),
        (&["run", "--migrate", "-X", "message.timeout.ms=5000"], "message.timeout.ms must stay 0"),
        (&["run", "--migrate", "-X", "novalue"], "expected key=value"),
        (&["run", "--migrate", "--batch-size", "0"], "--batch-size"),
        (&["run", "--migrate", "--poll-interval", "soon"], "--poll-interval"),
        (&["run", "--migrate", "--outbox-table", "bad-name"], "invalid identifier \"bad-name\""),
        (&["run", "--migrate", "--kafka-brokers", ""], "no Kafka brokers"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["--schema", &fresh];
        all.extend_from_slice(args);
        let out = relay(&all, &database_url());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
    }
    assert!(!schema_exists(&world, &fresh).await, "a refused configuration must not create anything");
}

#[tokio::test]
async fn unreachable_database_fails_clearly_without_leaking_the_password() {
    let port = free_port();
    let url = format!("postgres://app:s3cret-pw@127.0.0.1:{port}/orders");
    let out = relay(&["--db-connect-timeout", "2s", "run"], &url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to PostgreSQL at postgres://app:***@127.0.0.1:{port}/orders")),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret-pw"), "password leaked: {stderr}");
    let out = relay(&["migrate"], &url);
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret-pw"));
}

#[tokio::test]
async fn unmigrated_outbox_is_reported() {
    let world = World::new(1).await;
    let fresh = unique("fresh");
    let out = relay(&["--schema", &fresh, "run"], &database_url());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("run `outbox-relay migrate`"), "{stderr}");
    assert!(!schema_exists(&world, &fresh).await);
    // `migrate` is idempotent and reports the version.
    for _ in 0..2 {
        let out = relay(&["--schema", &fresh, "migrate"], &database_url());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout)
            .contains(&format!("is at version {}", outbox_core::migrate::LATEST_VERSION)));
    }
}
