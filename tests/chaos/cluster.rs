//! Scenarios 16–17: a three-broker cluster (replication 3,
//! `min.insync.replicas=2`, no unclean leader election) loses brokers under
//! the relays.

use common::PrivateCluster;

use super::*;

fn no_cluster(name: &'static str, seed: u64) -> Outcome {
    let mut o = Outcome { name, seed, ..Default::default() };
    o.note = "needs Kafka's jars (KAFKA_LIBS, installed by scripts/services.sh) to run a private cluster".into();
    o
}

/// The leader of partition 0 now, waiting a moment for an election.
async fn leader_of(cluster: &PrivateCluster, topic: &str) -> Option<usize> {
    for _ in 0..50 {
        if let Some(leader) = tokio::task::block_in_place(|| cluster.leader(topic, 0)) {
            return Some(leader);
        }
        sleep_ms(200).await;
    }
    None
}

/// Scenario 16: the leader of the partitions being written SIGKILLed
/// mid-run, restarted on its log; then the new leader (another broker)
/// likewise.
pub(crate) async fn leader_failover(seed: u64) -> Outcome {
    let started = Instant::now();
    let Some(mut cluster) = tokio::task::spawn_blocking(PrivateCluster::start).await.unwrap() else {
        return no_cluster("leader-failover", seed);
    };
    let world = replicated_world(&cluster.brokers).await;
    let _relays = relays(&world, 2);
    let mut killed: Vec<usize> = Vec::new();
    let done = AtomicBool::new(false);
    // Writers outlast both failovers.
    let writes = during(load(&world, seed, Load::new(4, 1500, 50, 10, Duration::from_millis(10))), &done, async {
        for _ in 0..2 {
            sleep_ms(1500).await;
            let Some(leader) = leader_of(&cluster, &world.topic).await else { return };
            cluster.nodes[leader].crash();
            killed.push(leader + 1);
            sleep_ms(3000).await;
            tokio::task::block_in_place(|| cluster.nodes[leader].restart());
            // Back in the in-sync replicas before the next leader goes.
            sleep_ms(2000).await;
        }
    })
    .await;
    let mut o = settle(&world, "leader-failover", seed, started, &writes).await;
    o.fault_acted = killed.len() == 2 && killed[0] != killed[1];
    o.note = format!("leaders SIGKILLed and restarted: brokers {killed:?}");
    drop(cluster);
    o
}

/// Scenario 17: two of the three brokers stopped, so that no write can
/// reach two in-sync replicas (and the controllers lose their quorum), for
/// longer than any client timeout; then both come back.
pub(crate) async fn insync_lost(seed: u64) -> Outcome {
    let started = Instant::now();
    let Some(mut cluster) = tokio::task::spawn_blocking(PrivateCluster::start).await.unwrap() else {
        return no_cluster("insync-lost", seed);
    };
    let world = replicated_world(&cluster.brokers).await;
    let _relays = relays(&world, 2);
    let mut away = Duration::ZERO;
    let done = AtomicBool::new(false);
    // Writers go on committing into the outage.
    let writes = during(load(&world, seed, Load::new(4, 1000, 50, 10, Duration::from_millis(20))), &done, async {
        sleep_ms(1500).await;
        let since = Instant::now();
        cluster.nodes[1].crash();
        cluster.nodes[2].crash();
        // librdkafka's request timeout is 30 s by default.
        sleep_ms(35_000).await;
        cluster.nodes[1].restart_in_background();
        cluster.nodes[2].restart_in_background();
        tokio::task::block_in_place(|| {
            cluster.nodes[1].wait();
            cluster.nodes[2].wait();
        });
        away = since.elapsed();
    })
    .await;
    let mut o = settle(&world, "insync-lost", seed, started, &writes).await;
    o.fault_acted = !away.is_zero();
    o.note = format!("two of three brokers away for {:.1}s", away.as_secs_f64());
    drop(cluster);
    o
}

/// Waits, without blocking the runtime, until `port` accepts connections.
async fn answering(port: u16) {
    let give_up = Instant::now() + Duration::from_secs(90);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() && Instant::now() < give_up {
        sleep_ms(100).await;
    }
}

/// Scenario 18: faults together. A relay SIGKILL storm, the leader of the
/// partitions being written SIGKILLed and restarted, and every database
/// connection terminated each second (writers' COMMITs included), all in
/// one run on the three-broker cluster.
pub(crate) async fn combined(seed: u64) -> Outcome {
    let started = Instant::now();
    let Some(mut cluster) = tokio::task::spawn_blocking(PrivateCluster::start).await.unwrap() else {
        return no_cluster("combined", seed);
    };
    let world = replicated_world(&cluster.brokers).await;
    let start = || RelayProcess::start(&world.schema, &world.brokers, &["--batch-size", "100"], &[]);
    let mut procs = vec![start(), start()];
    let (mut kills, mut failed_over, mut terminated) = (0, Vec::new(), 0i64);
    let done = AtomicBool::new(false);
    let plan = Load::new(4, 1200, 50, 10, Duration::from_millis(10)).killing(5);
    let writes = during(load(&world, seed, plan), &done, async {
        let storm = async {
            let mut rng = StdRng::seed_from_u64(seed);
            while !done.load(Ordering::SeqCst) {
                sleep_ms(rng.random_range(300..1500)).await;
                let victim = rng.random_range(0..procs.len());
                let _ = procs[victim].child.kill();
                let _ = procs[victim].child.wait();
                kills += 1;
                procs[victim] = start();
            }
        };
        let failover = async {
            sleep_ms(2000).await;
            if let Some(leader) = leader_of(&cluster, &world.topic).await {
                cluster.nodes[leader].crash();
                failed_over.push(leader + 1);
                sleep_ms(3000).await;
                cluster.nodes[leader].restart_in_background();
                answering(cluster.nodes[leader].port()).await;
            }
        };
        let connections = async {
            while !done.load(Ordering::SeqCst) {
                sleep_ms(1000).await;
                terminated += terminate_connections(&world.pool).await;
            }
        };
        tokio::join!(storm, failover, connections);
    })
    .await;
    let mut o = settle(&world, "combined", seed, started, &writes).await;
    o.fault_acted = kills > 0 && failed_over.len() == 1 && terminated > 0;
    o.note = format!(
        "{kills} relay SIGKILLs, leader {failed_over:?} SIGKILLed and restarted, {terminated} connections terminated"
    );
    drop(procs);
    drop(cluster);
    o
}
