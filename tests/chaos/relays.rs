//! Scenarios 1–5: relays killed, paused, tripled; late commits.

use super::*;

/// Scenario 1: Steady load plus a backlog written before any relay runs.
pub(crate) async fn baseline(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let mut writes = load(&world, seed, Load::new(4, 400, 50, 0, Duration::ZERO)).await;
    let _relays = relays(&world, 2);
    writes.extend(load(&world, seed ^ 1, Load::new(4, 250, 50, 10, Duration::from_millis(4))).await);
    let mut o = settle(&world, "baseline", seed, started, &writes).await;
    o.fault_acted = true;
    o
}

/// Scenario 2: Relays SIGKILLed at random moments, one of them right after the
/// broker confirmed a batch and before it was marked (failpoint).
pub(crate) async fn relay_kill(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let start = |fail: bool| {
        let env: &[(&str, &str)] = if fail { &[("OUTBOX_FAILPOINT", "relay-after-publish@2")] } else { &[] };
        RelayProcess::start(&world.schema, &world.brokers, &["--batch-size", "100"], env)
    };
    // procs[0] carries the failpoint until it has aborted there; it is not a
    // SIGKILL victim before that, so both faults always happen.
    let mut procs = vec![start(true), start(false)];
    let mut armed = true;
    let (mut kills, mut aborted) = (0, 0);
    let done = AtomicBool::new(false);
    let writes = during(load(&world, seed, Load::new(4, 400, 50, 10, Duration::from_millis(5))), &done, async {
        let mut rng = StdRng::seed_from_u64(seed);
        let give_up = Instant::now() + Duration::from_secs(60);
        while (!done.load(Ordering::SeqCst) || armed) && Instant::now() < give_up {
            sleep_ms(rng.random_range(300..1500)).await;
            for (i, p) in procs.iter_mut().enumerate() {
                if let Ok(Some(_)) = p.child.try_wait() {
                    aborted += 1;
                    armed &= i != 0;
                    *p = start(false);
                }
            }
            if done.load(Ordering::SeqCst) {
                continue;
            }
            let victim = if armed { 1 } else { rng.random_range(0..procs.len()) };
            let _ = procs[victim].child.kill();
            let _ = procs[victim].child.wait();
            kills += 1;
            procs[victim] = start(false);
        }
    })
    .await;
    let mut o = settle(&world, "relay-kill", seed, started, &writes).await;
    o.fault_acted = kills > 0 && aborted > 0;
    o.note = format!("{kills} SIGKILLs, {aborted} aborts between confirmation and mark");
    drop(procs);
    o
}

/// Scenario 3: A relay stops itself right after a confirmation, before marking, stays
/// stopped past its lease while the others take its slots, then resumes.
pub(crate) async fn zombie_relay(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let zombie = RelayProcess::start(
        &world.schema,
        &world.brokers,
        &["--batch-size", "100"],
        &[("OUTBOX_FAILPOINT", "relay-after-publish@2:stop")],
    );
    let _others = relays(&world, 2);
    let mut stopped_for = Duration::ZERO;
    let done = AtomicBool::new(false);
    let writes = during(load(&world, seed, Load::new(4, 400, 50, 10, Duration::from_millis(5))), &done, async {
        let waited = Instant::now();
        while !zombie.is_stopped() && waited.elapsed() < Duration::from_secs(20) {
            sleep_ms(50).await;
        }
        if zombie.is_stopped() {
            let since = Instant::now();
            sleep_ms(5_000).await; // lease timeout in tests: 3 s
            zombie.signal("CONT");
            stopped_for = since.elapsed();
        }
    })
    .await;
    let mut o = settle(&world, "zombie-relay", seed, started, &writes).await;
    let fenced = zombie.log_text().contains("left alone rows of slots this relay no longer owns");
    o.fault_acted = !stopped_for.is_zero() && fenced;
    o.note = format!("stopped {:.1}s (lease 3s), its late marks fenced: {fenced}", stopped_for.as_secs_f64());
    o
}

/// Scenario 4: Three relays, no faults.
pub(crate) async fn three_relays(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let procs = relays(&world, 3);
    let writes = load(&world, seed, Load::new(4, 500, 100, 10, Duration::from_millis(2))).await;
    let mut o = settle(&world, "three-relays", seed, started, &writes).await;
    let working = procs.iter().filter(|p| p.log_text().contains("slots rebalanced")).count();
    o.fault_acted = working == 3;
    o.note = format!("{working} relays held slots");
    o
}

/// Scenario 5: Long transactions take their sequence numbers early and commit (or
/// roll back) after later rows were published.
pub(crate) async fn late_commits(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let _relays = relays(&world, 2);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut late = Vec::new();
    let mut open = Vec::new();
    for i in 0..10 {
        // Keys of their own: a late transaction holds its key's lock.
        let key = format!("late-{i}");
        let m = Message::json(&world.topic, "chaos.event", &serde_json::json!({ "late": i })).unwrap().with_key(&key);
        let mut tx = world.pool.begin().await.unwrap();
        world.outbox.enqueue(&mut *tx, &m).await.unwrap();
        open.push((tx, key, m.id(), rng.random_range(0..100) < 30));
    }
    let mut writes = load(&world, seed, Load::new(4, 300, 50, 10, Duration::from_millis(3))).await;
    let published_meanwhile = world.pending().await < i64::try_from(writes.len()).unwrap_or(i64::MAX);
    for (tx, key, id, rollback) in open {
        let fate = if rollback {
            tx.rollback().await.unwrap();
            Fate::RolledBack
        } else {
            tx.commit().await.unwrap();
            Fate::Committed
        };
        // The key's next event, written once the late one has committed (as
        // the application's lock on the key orders them): it has a higher
        // sequence number, and must still be published after the late one.
        let next = Message::json(&world.topic, "chaos.event", &serde_json::json!({ "late_next": key }))
            .unwrap()
            .with_key(&key);
        world.outbox.enqueue(&world.pool, &next).await.unwrap();
        late.push(Written { key: key.clone(), n: 1, id, fate });
        late.push(Written { key, n: 2, id: next.id(), fate: Fate::Committed });
    }
    writes.extend(late);
    let mut o = settle(&world, "late-commits", seed, started, &writes).await;
    o.fault_acted = published_meanwhile;
    o
}
