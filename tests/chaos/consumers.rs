//! Scenarios 11–12: consumers crash and rebalance; bad inputs and poison.

use super::*;

/// Scenario 11: The idempotent consumer killed between its inbox commit and
/// its offset commit, three times, then run to the end in the same group.
pub(crate) async fn consumer_crash(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let _relays = relays(&world, 1);
    let writes = load(&world, seed, Load::new(4, 300, 50, 10, Duration::ZERO)).await;
    let crashes = ["inbox-after-commit@30", "inbox-after-commit@100", "inbox-after-commit@200"];
    let (mut o, crashed) =
        settle_with(&world, "consumer-crash", seed, started, &writes, ConsumerFault::Crash(&crashes)).await;
    o.fault_acted = crashed == crashes.len();
    o.note = format!("consumer aborted {crashed} times after its inbox commit, before its offset commit");
    o
}

/// Scenario 12: Poison events (a topic that does not exist) among the load:
/// they end in the dead-letter table, the rest flows.
pub(crate) async fn poison_events(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let _relays = relays(&world, 2);
    let missing = unique("no_such_topic");
    let mut ids = Vec::new();
    for i in 0..5 {
        let m = Message::json(&missing, "chaos.poison", &serde_json::json!({ "i": i }))
            .unwrap()
            .with_key(format!("poison-{i}"));
        world.outbox.enqueue(&world.pool, &m).await.unwrap();
        ids.push(m.id());
    }
    let writes = load(&world, seed, Load::new(4, 300, 50, 10, Duration::from_millis(3))).await;
    let mut o = settle(&world, "poison-events", seed, started, &writes).await;
    let dead: HashSet<Uuid> = world.dead_letters().await.into_iter().map(|(id, _, _)| id).collect();
    let expected: HashSet<Uuid> = ids.into_iter().collect();
    o.fault_acted = dead == expected;
    o.note = format!(
        "{} of 5 poison events dead-lettered, {} other dead letters",
        dead.intersection(&expected).count(),
        dead.difference(&expected).count()
    );
    o
}

/// Scenario 11b: Two consumers in one group; one is SIGKILLed mid-stream and
/// the group rebalances its partitions to the other.
pub(crate) async fn consumer_rebalance(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let _relays = relays(&world, 1);
    let writes = load(&world, seed, Load::new(8, 1500, 100, 10, Duration::ZERO)).await;
    let (mut o, killed) =
        settle_with(&world, "consumer-rebalance", seed, started, &writes, ConsumerFault::KillOneOfTwo).await;
    o.fault_acted = killed == 1;
    let fault = format!("{killed} of two consumers SIGKILLed as effects began to appear");
    o.note = if o.note.is_empty() { fault } else { format!("{fault}; {}", o.note) };
    o
}

/// Scenario 19: Three consumers in one group with cooperative-sticky
/// assignment, one SIGKILLed and restarted at four points of the stream:
/// every effect exactly once.
pub(crate) async fn consumer_churn(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let _relays = relays(&world, 1);
    let writes = load(&world, seed, Load::new(8, 1500, 100, 10, Duration::ZERO)).await;
    let (mut o, killed) =
        settle_with(&world, "consumer-churn", seed, started, &writes, ConsumerFault::Churn(seed)).await;
    o.fault_acted = killed >= 3;
    let fault = format!("{killed} SIGKILLs among three members, each restarted");
    o.note = if o.note.is_empty() { fault } else { format!("{fault}; {}", o.note) };
    o
}

/// Scenario 12: Bad inputs among the load: an oversize payload (refused at
/// enqueue with a typed error, its transaction rolled back), payloads the
/// consumer's typed handler cannot parse (parked in the inbox dead-letter
/// table), a relay configured with a hostile table name and one whose role
/// lacks privileges (both stop at start, exit 2, create and change nothing).
pub(crate) async fn bad_inputs(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let _relays = relays(&world, 2);
    let mut refused = Vec::new();
    // Oversize: a typed error from enqueue, the transaction rolled back.
    let big =
        Message::bytes(&world.topic, "chaos.big", vec![b'x'; outbox::DEFAULT_MAX_PAYLOAD_BYTES + 1]).with_key("big");
    let mut tx = world.pool.begin().await.unwrap();
    let oversize = world.outbox.enqueue(&mut *tx, &big).await;
    tx.rollback().await.unwrap();
    let oversize_typed =
        matches!(oversize, Err(outbox::Error::InvalidMessage(outbox::ValidationError::PayloadTooLarge { .. })));
    refused.push(Written { key: "big".into(), n: 1, id: big.id(), fate: Fate::RolledBack });
    // Unparseable for the consumer's typed handler, committed and published.
    let mut unparseable = Vec::new();
    for i in 0..3 {
        let m = Message::bytes(&world.topic, "chaos.garbage", b"{not json".to_vec()).with_key(format!("garbage-{i}"));
        world.outbox.enqueue(&world.pool, &m).await.unwrap();
        unparseable.push(m.id());
        refused.push(Written { key: format!("garbage-{i}"), n: 1, id: m.id(), fate: Fate::Committed });
    }
    // Hostile configuration: refused before anything is created.
    let hostile_schema = "chaos\"; DROP SCHEMA public CASCADE; --";
    let out = relay_command(&["--schema", hostile_schema, "run", "--migrate"], &world.url);
    let hostile_refused =
        out.status.code() == Some(2) && String::from_utf8_lossy(&out.stderr).contains("invalid identifier");
    let public_survives: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')")
            .fetch_one(&world.pool)
            .await
            .unwrap();
    // A role without privileges: the relay names what is missing and stops.
    let role = unique("bare");
    sqlx::raw_sql(&format!("CREATE ROLE \"{role}\" LOGIN PASSWORD 'chaos-pw'")).execute(&world.pool).await.unwrap();
    let bare_url = url_replacing(&world.url, Some(&format!("{role}:chaos-pw")), None);
    let out = relay_command(&["--schema", &world.schema, "run"], &bare_url);
    let unprivileged_refused =
        out.status.code() == Some(2) && String::from_utf8_lossy(&out.stderr).contains("lacks privileges");
    sqlx::raw_sql(&format!("DROP ROLE \"{role}\"")).execute(&world.pool).await.unwrap();
    let mut writes = load(&world, seed, Load::new(4, 300, 50, 10, Duration::from_millis(3))).await;
    writes.extend(refused);
    let (mut o, _) =
        settle_with(&world, "bad-inputs", seed, started, &writes, ConsumerFault::Unparseable(&unparseable)).await;
    o.fault_acted = oversize_typed && hostile_refused && public_survives && unprivileged_refused;
    o.note = format!(
        "oversize refused with a typed error: {oversize_typed}; 3 unparseable events parked by the consumer; \
         hostile schema name refused: {hostile_refused}; relay without privileges refused: {unprivileged_refused}"
    );
    o
}
