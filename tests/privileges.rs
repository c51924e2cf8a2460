//! Least-privilege roles: the application may only insert events, the relay
//! works with exactly the grants `outbox-relay grants` prints, and without
//! them it stops at start with a clear error, touching nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use async_trait::async_trait;
use common::*;
use outbox::privileges::{grants_sql, Roles};
use outbox::{
    CancellationToken, ConsumerConfig, Handler, HandlerError, Ident, InboxConsumer, Message, Outbox, ReceivedEvent,
};
use sqlx::postgres::PgPoolOptions;

/// A login role with no privileges, dropped with everything it owns at the end.
struct Role {
    name: String,
    url: String,
}

async fn login_role(world: &World, what: &str) -> Role {
    let name = unique(what);
    let password = unique("pw");
    sqlx::raw_sql(&format!("CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")).execute(&world.pool).await.unwrap();
    // Connecting needs CONNECT on the database, which PUBLIC has by default.
    Role { url: url_replacing(&database_url(), Some(&format!("{name}:{password}")), None), name }
}

async fn drop_roles(world: &World, roles: &[&Role]) {
    sqlx::raw_sql(&format!("DROP SCHEMA \"{}\" CASCADE", world.schema)).execute(&world.pool).await.unwrap();
    for role in roles {
        sqlx::raw_sql(&format!("DROP OWNED BY \"{0}\"; DROP ROLE \"{0}\"", role.name))
            .execute(&world.pool)
            .await
            .unwrap();
    }
}

/// A handler with no effect of its own (so the consumer role needs only its
/// inbox grants) that refuses one event for good.
struct NoEffect {
    poison: uuid::Uuid,
}

#[async_trait]
impl Handler for NoEffect {
    async fn handle(&self, event: &ReceivedEvent, _tx: &mut sqlx::PgConnection) -> Result<(), HandlerError> {
        if event.id == self.poison {
            return Err(HandlerError::permanent("refused on purpose"));
        }
        Ok(())
    }
}

fn is_permission_denied(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42501")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_runs_with_exactly_the_printed_grants_and_the_app_only_inserts() {
    let world = World::new(1).await;
    let (app, relay_role, consumer) =
        (login_role(&world, "app").await, login_role(&world, "relay").await, login_role(&world, "consumer").await);
    let roles = Roles {
        app: Ident::new(&app.name).unwrap(),
        relay: Ident::new(&relay_role.name).unwrap(),
        consumer: Ident::new(&consumer.name).unwrap(),
    };
    sqlx::raw_sql(&grants_sql(&world.config, &roles)).execute(&world.pool).await.unwrap();
    // The CLI prints the same script.
    let printed = relay_command(
        &[
            "grants",
            "--schema",
            &world.schema,
            "--app-role",
            &app.name,
            "--relay-role",
            &relay_role.name,
            "--consumer-role",
            &consumer.name,
        ],
        "",
    );
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    assert_eq!(String::from_utf8_lossy(&printed.stdout), grants_sql(&world.config, &roles));

    // The application inserts events, and can do nothing else with the outbox.
    let app_pool = PgPoolOptions::new().max_connections(2).connect(&app.url).await.unwrap();
    let outbox = Outbox::new(world.config.clone());
    let mut ids = Vec::new();
    for i in 0..20 {
        let m = Message::json(&world.topic, "test.event", &serde_json::json!({ "i": i })).unwrap().with_key("k");
        ids.push(m.id());
        outbox.enqueue(&app_pool, &m).await.unwrap();
    }
    let q = |sql: &str| sql.replace("{o}", &format!("\"{}\".outbox", world.schema));
    for sql in ["SELECT count(*) FROM {o}", "DELETE FROM {o}", "UPDATE {o} SET attempts = 1", "TRUNCATE {o}"] {
        let e = sqlx::query(&q(sql)).execute(&app_pool).await.unwrap_err();
        assert!(is_permission_denied(&e), "{sql}: {e}");
    }
    let e = sqlx::query(&format!("CREATE TABLE \"{}\".x (i int)", world.schema)).execute(&app_pool).await.unwrap_err();
    assert!(is_permission_denied(&e), "{e}");
    app_pool.close().await;

    // The relay drains them with its own grants only.
    let relay = RelayProcess::start(&world.schema, &world.brokers, &[], &[("DATABASE_URL", &relay_role.url)]);
    world.wait_drained(Duration::from_secs(30)).await;
    let records = world.read_topic(ids.len());
    assert!(ids.iter().all(|id| records.iter().any(|r| r.id == *id)), "not every event was published");
    let log = relay.log_text();
    drop(relay);
    assert!(!log.contains("permission denied"), "{log}");
    assert!(!log.contains("unencrypted"), "loopback connections need no TLS warning: {log}");
    // An idempotent consumer works with the consumer role's grants: inbox
    // rows for what it applies, a dead letter for what it cannot.
    let consumer_pool = PgPoolOptions::new().max_connections(2).connect(&consumer.url).await.unwrap();
    let poison = ids[0];
    let mut config = ConsumerConfig::new(&world.brokers, unique("group"), &[&world.topic]);
    config.max_attempts = 1;
    let inbox = InboxConsumer::new(consumer_pool.clone(), &world.config, config, NoEffect { poison }).unwrap();
    let stats = inbox.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { inbox.run(stop).await }
    });
    let start = std::time::Instant::now();
    while stats.applied() + stats.dead_lettered() < ids.len() as u64 {
        assert!(start.elapsed() < Duration::from_secs(60), "consumer stuck: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    run.await.unwrap().unwrap();
    assert_eq!((stats.applied(), stats.dead_lettered()), (ids.len() as u64 - 1, 1));
    consumer_pool.close().await;

    // It cannot change the schema.
    let relay_pool = PgPoolOptions::new().max_connections(1).connect(&relay_role.url).await.unwrap();
    let e = sqlx::query(&q("ALTER TABLE {o} ADD COLUMN x int")).execute(&relay_pool).await.unwrap_err();
    assert!(is_permission_denied(&e) || e.to_string().contains("owner"), "{e}");
    relay_pool.close().await;
    drop_roles(&world, &[&app, &relay_role, &consumer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_without_grants_stops_at_start_and_names_what_is_missing() {
    let world = World::new(1).await;
    let bare = login_role(&world, "bare").await;
    let m = Message::json(&world.topic, "test.event", &serde_json::json!({})).unwrap();
    world.outbox.enqueue(&world.pool, &m).await.unwrap();

    // No USAGE on the schema at all.
    let relay = RelayProcess::start(&world.schema, &world.brokers, &[], &[("DATABASE_URL", &bare.url)]);
    let log_path = relay.log.clone();
    let status = relay.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "a configuration error exits 2");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("lacks privileges") && log.contains("USAGE on schema"), "{log}");

    // Schema usage and read access, but no right to mark or dead-letter.
    sqlx::raw_sql(&format!(
        "GRANT USAGE ON SCHEMA \"{0}\" TO \"{1}\"; GRANT SELECT ON ALL TABLES IN SCHEMA \"{0}\" TO \"{1}\"",
        world.schema, bare.name
    ))
    .execute(&world.pool)
    .await
    .unwrap();
    let relay = RelayProcess::start(&world.schema, &world.brokers, &[], &[("DATABASE_URL", &bare.url)]);
    let log_path = relay.log.clone();
    let status = relay.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("DELETE on") && log.contains("UPDATE on"), "{log}");
    assert!(!log.contains(&bare.url), "the URL (with its password) must not be logged: {log}");
    assert_eq!(world.pending().await, 1, "nothing was claimed or changed");
    drop_roles(&world, &[&bare]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unencrypted_remote_broker_is_warned_about() {
    let world = World::new(1).await;
    // 192.0.2.1 is TEST-NET-1: never answers, never local.
    let relay = RelayProcess::start(&world.schema, "192.0.2.1:9092", &[], &[]);
    let start = std::time::Instant::now();
    while !relay.log_text().contains("Kafka connection is unencrypted") {
        assert!(start.elapsed() < Duration::from_secs(20), "no warning: {}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.sigkill();
}

#[test]
fn hostile_names_are_refused_before_any_sql_is_printed() {
    let hostile = [r#"app"; DROP SCHEMA public CASCADE; --"#, "App", "pg_read_all_data", "a b", ""];
    for name in hostile {
        for (flag, other) in [("--app-role", "--relay-role"), ("--relay-role", "--consumer-role")] {
            let mut args = vec!["grants", flag, name, other, "ok_role"];
            for (f, v) in [("--app-role", "a"), ("--relay-role", "r"), ("--consumer-role", "c")] {
                if f != flag && f != other {
                    args.extend([f, v]);
                }
            }
            let out = relay_command(&args, "");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name:?}: {stderr}");
            assert!(stderr.contains("invalid identifier"), "{name:?}: {stderr}");
            assert!(out.stdout.is_empty(), "{name:?}: printed {}", String::from_utf8_lossy(&out.stdout));
        }
    }
    let out = relay_command(
        &[
            "grants",
            "--schema",
            "x\"; DROP TABLE t; --",
            "--app-role",
            "a",
            "--relay-role",
            "r",
            "--consumer-role",
            "c",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}
