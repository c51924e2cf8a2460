//! Scenarios 6–10: the database and the broker fail under the relays.

use super::*;

/// Scenario 6: Every database connection but the harness's terminated every second,
/// writers' and relays' alike, COMMITs included.
pub(crate) async fn connections_killed(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let _relays = relays(&world, 2);
    let mut terminated = 0i64;
    let done = AtomicBool::new(false);
    let writes =
        during(load(&world, seed, Load::new(4, 300, 50, 10, Duration::from_millis(10)).killing(5)), &done, async {
            while !done.load(Ordering::SeqCst) {
                sleep_ms(1000).await;
                terminated += terminate_connections(&world.pool).await;
            }
        })
        .await;
    let mut o = settle(&world, "db-connections-killed", seed, started, &writes).await;
    o.fault_acted = terminated > 0 && o.indeterminate > 0;
    o.note = format!("{terminated} connections terminated");
    o
}

/// Terminates every connection to the database but the harness's own;
/// returns how many.
pub(crate) async fn terminate_connections(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND backend_type = 'client backend' \
         AND application_name <> $1 AND pid <> pg_backend_pid()) t",
    )
    .bind(HARNESS)
    .fetch_one(pool)
    .await
    .unwrap_or(0)
}

/// Scenario 8: The broker stops answering (SIGSTOP) for longer than a request
/// timeout, then comes back.
pub(crate) async fn broker_unreachable(seed: u64) -> Outcome {
    let started = Instant::now();
    let Some(broker) = PrivateBroker::start() else {
        let mut o = Outcome { name: "broker-unreachable", seed, ..Default::default() };
        o.note =
            "needs Kafka's jars (KAFKA_LIBS, installed by scripts/services.sh) to run a broker it can pause".into();
        return o;
    };
    let world = world(Some(broker.brokers.clone())).await;
    let _relays = relays(&world, 2);
    let mut paused = Duration::ZERO;
    let done = AtomicBool::new(false);
    let writes = during(load(&world, seed, Load::new(4, 300, 50, 10, Duration::from_millis(10))), &done, async {
        sleep_ms(1500).await;
        broker.pause();
        let since = Instant::now();
        sleep_ms(8000).await;
        broker.resume();
        paused = since.elapsed();
    })
    .await;
    let mut o = settle(&world, "broker-unreachable", seed, started, &writes).await;
    o.fault_acted = !paused.is_zero();
    o.note = format!("broker paused {:.1}s", paused.as_secs_f64());
    drop(broker);
    o
}

/// Scenario 15: The only broker SIGKILLed mid-run (whatever it had not yet
/// written is gone with the process; what it acknowledged is in its log) and
/// started again on the same log directory, while writers, relays and a
/// consumer go on.
pub(crate) async fn broker_crash(seed: u64) -> Outcome {
    let started = Instant::now();
    let Some(mut broker) = PrivateBroker::start() else {
        let mut o = Outcome { name: "broker-crash", seed, ..Default::default() };
        o.note = "needs Kafka's jars (KAFKA_LIBS, installed by scripts/services.sh) to run a broker it can kill".into();
        return o;
    };
    let world = world(Some(broker.brokers.clone())).await;
    let _relays = relays(&world, 2);
    // A consumer runs through the crash: it must resume by itself. Its
    // target is out of reach, so only the checker stops it.
    let group = unique("chaos");
    let consumer = spawn_consumer(&world, &group, usize::MAX / 2);
    let (mut down, mut applied_before) = (Duration::ZERO, 0);
    let done = AtomicBool::new(false);
    let writes = during(load(&world, seed, Load::new(4, 300, 50, 10, Duration::from_millis(10))), &done, async {
        sleep_ms(1500).await;
        let waiting = Instant::now();
        while effects_so_far(&world).await == 0 && waiting.elapsed() < Duration::from_secs(15) {
            sleep_ms(100).await;
        }
        applied_before = effects_so_far(&world).await;
        let since = Instant::now();
        broker.crash();
        sleep_ms(2000).await;
        // Starting a JVM blocks this thread for seconds: not a runtime worker's.
        tokio::task::block_in_place(|| broker.restart());
        down = since.elapsed();
    })
    .await;
    let (mut o, _) =
        settle_with(&world, "broker-crash", seed, started, &writes, ConsumerFault::Running(&group, consumer)).await;
    o.fault_acted = !down.is_zero() && applied_before > 0;
    let fault = format!(
        "broker SIGKILLed, answering again on the same log after {:.1}s; one consumer ran throughout, \
         {applied_before} events applied before the crash",
        down.as_secs_f64()
    );
    o.note = if o.note.is_empty() { fault } else { format!("{fault}; {}", o.note) };
    drop(broker);
    o
}

/// Scenario 10: The network between the relays and the database, and
/// between the relays and the broker, cut (connections reset) and stalled
/// (nothing flows for seconds) at random, through TCP proxies.
pub(crate) async fn network_faults(seed: u64) -> Outcome {
    let started = Instant::now();
    let (broker_port, kafka_port, db_port) = (free_port(), free_port(), free_port());
    let Some(broker) = PrivateBroker::start_advertised(broker_port, kafka_port) else {
        let mut o = Outcome { name: "network-faults", seed, ..Default::default() };
        o.note =
            "needs Kafka's jars (KAFKA_LIBS, installed by scripts/services.sh) to run a broker behind a proxy".into();
        return o;
    };
    let kafka = Proxy::start(kafka_port, &format!("127.0.0.1:{broker_port}")).await;
    let db = Proxy::start(db_port, &url_address(&database_url())).await;
    let relay_url = url_replacing(&database_url(), None, Some(&format!("127.0.0.1:{db_port}")));
    let world = world(Some(broker.brokers.clone())).await;
    let procs: Vec<RelayProcess> = (0..2)
        .map(|_| {
            RelayProcess::start(
                &world.schema,
                &world.brokers,
                &["--batch-size", "200"],
                &[("DATABASE_URL", &relay_url)],
            )
        })
        .collect();
    let mut faults: Vec<&str> = Vec::new();
    let done = AtomicBool::new(false);
    let writes = during(load(&world, seed, Load::new(4, 600, 50, 10, Duration::from_millis(15))), &done, async {
        let mut rng = StdRng::seed_from_u64(seed);
        sleep_ms(1000).await;
        // At least six faults, however fast the writers are.
        // Each kind of fault once, in a seeded order, then at random.
        let mut plan = vec![0, 1, 2, 3];
        rand::seq::SliceRandom::shuffle(plan.as_mut_slice(), &mut rng);
        while !done.load(Ordering::SeqCst) || faults.len() < 6 {
            let kind = if faults.len() < plan.len() { plan[faults.len()] } else { rng.random_range(0..4) };
            match kind {
                0 => {
                    db.cut();
                    faults.push("db-cut");
                }
                1 => {
                    db.stall(true);
                    sleep_ms(rng.random_range(1000..4000)).await;
                    db.stall(false);
                    faults.push("db-stall");
                }
                2 => {
                    kafka.cut();
                    faults.push("broker-cut");
                }
                _ => {
                    kafka.stall(true);
                    sleep_ms(rng.random_range(2000..8000)).await;
                    kafka.stall(false);
                    faults.push("broker-stall");
                }
            }
            sleep_ms(rng.random_range(300..1500)).await;
        }
    })
    .await;
    let mut o = settle(&world, "network-faults", seed, started, &writes).await;
    let cut = db.cut_connections() + kafka.cut_connections();
    let kinds: HashSet<&str> = faults.iter().copied().collect();
    o.fault_acted = faults.len() >= 6 && kinds.len() == 4 && cut > 0;
    o.note = format!("{} faults ({}), {cut} connections cut", faults.len(), faults.join(" "));
    drop(procs);
    drop(broker);
    o
}

/// Scenario 7: PostgreSQL stopped in immediate mode (no checkpoint, every
/// connection dropped, COMMITs in flight) and started again, twice, on a
/// private server.
pub(crate) async fn postgres_crash(seed: u64) -> Outcome {
    let started = Instant::now();
    let Some(pg) = tokio::task::spawn_blocking(PrivatePostgres::start).await.unwrap() else {
        let mut o = Outcome { name: "postgres-crash", seed, ..Default::default() };
        o.note = "needs PostgreSQL's server binaries (initdb, pg_ctl) for a private server".into();
        return o;
    };
    let world = world_on(&pg.url(), None).await;
    let _relays: Vec<RelayProcess> = (0..2).map(|_| world.relay(&["--batch-size", "200"])).collect();
    let mut restarts = 0;
    let done = AtomicBool::new(false);
    let writes = during(load(&world, seed, Load::new(4, 400, 50, 10, Duration::from_millis(10))), &done, async {
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..2 {
            sleep_ms(rng.random_range(800..2000)).await;
            pg.crash();
            sleep_ms(rng.random_range(500..3000)).await;
            if pg.run() {
                restarts += 1;
            }
        }
    })
    .await;
    let mut o = settle(&world, "postgres-crash", seed, started, &writes).await;
    o.fault_acted = restarts == 2;
    o.note = format!("{restarts} immediate-mode stops and restarts");
    o
}

/// Scenario 9: librdkafka's mock cluster (three brokers, replication 3)
/// answers produce requests with retriable errors, then slowly, then with a
/// sequence error that breaks the idempotent producer's state.
pub(crate) async fn broker_errors(seed: u64) -> Outcome {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr as E};
    let started = Instant::now();
    let mock = MockCluster::new(3).unwrap();
    let topic = unique("topic");
    mock.create_topic(&topic, 6, 3).unwrap();
    let world = prepare(World::with_topic(&database_url(), mock.bootstrap_servers(), topic).await).await;
    let relays = relays(&world, 2);
    let mut injected = Vec::new();
    let done = AtomicBool::new(false);
    let writes = during(load(&world, seed, Load::new(4, 400, 50, 10, Duration::from_millis(10))), &done, async {
        let mut rng = StdRng::seed_from_u64(seed);
        sleep_ms(1000).await;
        let retriable = [
            E::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            E::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            E::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            E::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            E::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            E::RD_KAFKA_RESP_ERR__TRANSPORT,
        ];
        let errors: Vec<E> = (0..30).map(|_| retriable[rng.random_range(0..retriable.len())]).collect();
        mock.request_errors(RDKafkaApiKey::Produce, &errors);
        injected.push(format!("{} retriable produce errors", errors.len()));
        sleep_ms(1500).await;
        for broker in 1..=3 {
            mock.broker_round_trip_time(broker, Duration::from_millis(rng.random_range(200..600))).unwrap();
        }
        injected.push("slow round trips".to_owned());
        sleep_ms(2000).await;
        for broker in 1..=3 {
            mock.broker_round_trip_time(broker, Duration::ZERO).unwrap();
        }
        mock.request_errors(RDKafkaApiKey::Produce, &[E::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER; 3]);
        injected.push("out-of-order sequence errors".to_owned());
        sleep_ms(1500).await;
    })
    .await;
    let mut o = settle(&world, "broker-errors", seed, started, &writes).await;
    let logs: String = relays.iter().map(RelayProcess::log_text).collect();
    let fatal = logs.contains("fatal producer error");
    o.fault_acted = injected.len() == 3 && fatal;
    o.note = format!("{}; producer reset after a fatal error: {fatal}", injected.join(", "));
    drop(relays);
    drop(mock);
    o
}
