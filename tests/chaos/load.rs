//! Writers (separate processes reporting every outcome), worlds, relays
//! and small helpers the scenarios share.

use super::*;

/// The harness's pool: spared by connection faults.
pub(crate) async fn harness_pool(url: &str) -> PgPool {
    let _ = pool_at(url).await; // creates the database if missing
    let options: PgConnectOptions = url.parse().unwrap();
    PgPoolOptions::new().max_connections(24).connect_with(options.application_name(HARNESS)).await.unwrap()
}

pub(crate) async fn world(brokers: Option<String>) -> World {
    world_on(&database_url(), brokers).await
}

pub(crate) async fn world_on(url: &str, brokers: Option<String>) -> World {
    let world = World::on(url, 6, brokers.unwrap_or_else(common::brokers)).await;
    prepare(world).await
}

/// A world on a three-broker cluster: its topic replicated three times.
pub(crate) async fn replicated_world(brokers: &str) -> World {
    prepare(World::on_replicated(&database_url(), 6, 3, brokers.to_owned()).await).await
}

/// The harness's pool and the writers' aggregates table.
pub(crate) async fn prepare(mut world: World) -> World {
    world.pool = harness_pool(&world.url).await;
    let s = &world.schema;
    sqlx::query(&format!("CREATE TABLE IF NOT EXISTS \"{s}\".aggregates (key text PRIMARY KEY, n bigint NOT NULL)"))
        .execute(&world.pool)
        .await
        .unwrap();
    world
}

/// One write transaction: lock the key's aggregate (so per-key commit order
/// is the counter's order), enqueue one event, commit or roll back. With
/// `killer`, the transaction's connection is terminated from `killer` at the
/// same moment its COMMIT is sent: the outcome is then truly unknown.
pub(crate) async fn write_one(
    pool: &PgPool,
    outbox: &Outbox,
    world: &WorldRef,
    key: String,
    rollback: bool,
    killer: Option<&PgPool>,
) -> Written {
    let msg = Message::json(&world.topic, "chaos.event", &serde_json::json!({ "key": key })).unwrap().with_key(&key);
    let id = msg.id();
    let upsert = format!(
        "INSERT INTO \"{}\".aggregates (key, n) VALUES ($1, 1) ON CONFLICT (key) DO UPDATE SET n = aggregates.n + 1 RETURNING n",
        world.schema
    );
    let gone = |key: String| Written { key, n: -1, id, fate: Fate::RolledBack };
    let Ok(mut tx) = pool.begin().await else { return gone(key) };
    let Ok(n) = sqlx::query_scalar::<_, i64>(&upsert).bind(&key).fetch_one(&mut *tx).await else { return gone(key) };
    if outbox.enqueue(&mut *tx, &msg).await.is_err() {
        return gone(key);
    }
    if rollback {
        let _ = tx.rollback().await;
        return Written { key, n, id, fate: Fate::RolledBack };
    }
    let committed = match killer {
        None => tx.commit().await,
        Some(killer) => {
            let Ok(pid) = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&mut *tx).await else {
                return gone(key);
            };
            // The termination is sent first and the COMMIT right behind it:
            // which one the server acts on first is a genuine race.
            let kill = sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(killer);
            tokio::join!(kill, tx.commit()).1
        }
    };
    let fate = if committed.is_ok() { Fate::Committed } else { Fate::Unknown };
    Written { key, n, id, fate }
}

/// A writer process (`chaos --writer URL SCHEMA TOPIC SEED COUNT KEYS
/// ROLLBACK% PACE_MS KILL_AT_COMMIT%`): one line per transaction on stdout,
/// `W key n id fate`, written as each one ends.
pub(crate) fn writer_process(args: &[String]) -> ExitCode {
    use std::io::Write;
    let [url, schema, topic, seed, count, keys, rollback, pace, kill] = args else {
        eprintln!("usage: chaos --writer URL SCHEMA TOPIC SEED COUNT KEYS ROLLBACK% PACE_MS KILL_AT_COMMIT%");
        return ExitCode::from(2);
    };
    let num = |s: &String| s.parse::<u64>().unwrap();
    let (seed, count, keys, rollback, pace, kill) =
        (num(seed), num(count), num(keys), num(rollback), num(pace), num(kill));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let pool = PgPoolOptions::new().max_connections(1).connect(url).await.unwrap();
        let killer = PgPoolOptions::new().max_connections(1).connect(url).await.unwrap();
        let outbox =
            Outbox::new(outbox::OutboxConfig::default().with_schema(schema).unwrap().with_source("/chaos").unwrap());
        let wr = WorldRef { schema: schema.clone(), topic: topic.clone() };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = std::io::stdout().lock();
        for _ in 0..count {
            let key = format!("key-{}", rng.random_range(0..keys));
            let rollback = rng.random_range(0..100) < rollback;
            let kill = !rollback && rng.random_range(0..100) < kill;
            let w = write_one(&pool, &outbox, &wr, key, rollback, kill.then_some(&killer)).await;
            let fate = match w.fate {
                Fate::Committed => 'C',
                Fate::RolledBack => 'R',
                Fate::Unknown => 'U',
            };
            writeln!(out, "W {} {} {} {fate}", w.key, w.n, w.id).unwrap();
            out.flush().unwrap();
            if pace > 0 {
                tokio::time::sleep(Duration::from_millis(pace)).await;
            }
        }
    });
    ExitCode::SUCCESS
}

/// The parts of a world a writer task needs.
#[derive(Clone)]
pub(crate) struct WorldRef {
    pub(crate) schema: String,
    pub(crate) topic: String,
}

/// A write load: `writers` processes writing `per_writer` transactions each
/// over `keys` keys, one every `pace`, about `rollback_percent` of them
/// rolled back and `kill_percent` of the commits racing a termination of
/// their own connection.
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub(crate) writers: usize,
    pub(crate) per_writer: usize,
    pub(crate) keys: usize,
    pub(crate) rollback_percent: u32,
    pub(crate) pace: Duration,
    pub(crate) kill_percent: u32,
}

impl Load {
    pub(crate) fn new(writers: usize, per_writer: usize, keys: usize, rollback_percent: u32, pace: Duration) -> Load {
        Load { writers, per_writer, keys, rollback_percent, pace, kill_percent: 0 }
    }

    pub(crate) fn killing(self, kill_percent: u32) -> Load {
        Load { kill_percent, ..self }
    }
}

/// Runs `load` to its end; writers have their own connections (connection
/// faults hit them) and report every transaction's outcome.
pub(crate) async fn load(world: &World, seed: u64, load: Load) -> Vec<Written> {
    let Load { writers, per_writer, keys, rollback_percent, pace, kill_percent } = load;
    let exe = std::env::current_exe().unwrap();
    let runs = (0..writers).map(|w| {
        tokio::process::Command::new(&exe)
            .arg("--writer")
            .args([&world.url, &world.schema, &world.topic])
            .args([seed.wrapping_add(w as u64).to_string(), per_writer.to_string(), keys.to_string()])
            .args([rollback_percent.to_string(), pace.as_millis().to_string(), kill_percent.to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()
    });
    let mut all = Vec::new();
    for output in futures::future::join_all(runs).await {
        let output = output.unwrap();
        assert!(output.status.success(), "a writer process failed: {}", output.status);
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let [_, key, n, id, fate] = parts[..] else { continue };
            let fate = match fate {
                "C" => Fate::Committed,
                "R" => Fate::RolledBack,
                _ => Fate::Unknown,
            };
            all.push(Written { key: key.to_owned(), n: n.parse().unwrap(), id: id.parse().unwrap(), fate });
        }
    }
    all
}

pub(crate) fn relays(world: &World, n: usize) -> Vec<RelayProcess> {
    (0..n).map(|_| world.relay(&["--batch-size", "200"])).collect()
}

/// Runs `writes` to completion while `fault` acts; `done` turns true once
/// the writes are done (the fault's loop watches it).
pub(crate) async fn during(
    writes: impl Future<Output = Vec<Written>>,
    done: &AtomicBool,
    fault: impl Future<Output = ()>,
) -> Vec<Written> {
    let writing = async {
        let w = writes.await;
        done.store(true, Ordering::SeqCst);
        w
    };
    let (w, ()) = tokio::join!(writing, fault);
    w
}

pub(crate) async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
