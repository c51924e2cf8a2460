//! The fault-injection suite (`./scripts/chaos`): real relays and consumers
//! as processes, one fault at a time, then a Jepsen-style check of what
//! reached the topic against what committed (DESIGN.md §2).
//!
//! ```text
//! cargo test --test chaos                     # the quick subset (./scripts/test)
//! cargo test --test chaos -- --all            # every scenario (./scripts/chaos)
//! cargo test --test chaos -- --only relay-kill --seed 42
//! ```
//!
//! Each scenario prints its seed and one line of counts; the last line is
//! `chaos: P/N passed lost=… unexpected=… dup_effect=… order_violations=… stuck=…`
//! and the exit status is non-zero if any scenario failed.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::postgres::PrivatePostgres;
use common::proxy::Proxy;
use common::*;
use outbox::{Message, Outbox};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

/// What the harness's own connections call themselves (faults spare them).
const HARNESS: &str = "outbox-chaos";

type Scenario = fn(u64) -> Pin<Box<dyn Future<Output = Outcome>>>;

/// Every scenario: (name, in the quick subset, runner).
const SCENARIOS: &[(&str, bool, Scenario)] = &[
    ("baseline", true, |s| Box::pin(baseline(s))),
    ("relay-kill", true, |s| Box::pin(relay_kill(s))),
    ("zombie-relay", false, |s| Box::pin(zombie_relay(s))),
    ("three-relays", false, |s| Box::pin(three_relays(s))),
    ("late-commits", true, |s| Box::pin(late_commits(s))),
    ("db-connections-killed", false, |s| Box::pin(connections_killed(s))),
    ("broker-unreachable", false, |s| Box::pin(broker_unreachable(s))),
    ("postgres-crash", false, |s| Box::pin(postgres_crash(s))),
    ("broker-errors", false, |s| Box::pin(broker_errors(s))),
    ("network-faults", false, |s| Box::pin(network_faults(s))),
    ("consumer-crash", false, |s| Box::pin(consumer_crash(s))),
    ("consumer-rebalance", false, |s| Box::pin(consumer_rebalance(s))),
    ("bad-inputs", false, |s| Box::pin(bad_inputs(s))),
    ("poison-events", false, |s| Box::pin(poison_events(s))),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--writer") {
        return writer_process(&args[1..]);
    }
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let all = args.iter().any(|a| a == "--all");
    // `--exact` is how cargo-nextest asks for one test by name.
    let only: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i > 0 && (args[i - 1] == "--only" || args[i - 1] == "--exact"))
        .map(|(_, a)| a)
        .collect();
    let seed: Option<u64> = value("--seed").map(|s| s.parse().expect("--seed takes a number"));
    if args.iter().any(|a| a == "--list") {
        // Test runners' listing: the quick subset as tests, the rest as ignored.
        let ignored = args.iter().any(|a| a == "--ignored");
        for (name, quick, _) in SCENARIOS {
            if *quick != ignored {
                println!("{name}: test");
            }
        }
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<&(&str, bool, Scenario)> = SCENARIOS
        .iter()
        .filter(|(name, quick, _)| if only.is_empty() { all || *quick } else { only.iter().any(|o| o == name) })
        .collect();
    assert!(
        !chosen.is_empty(),
        "no scenario matches {only:?}; names: {:?}",
        SCENARIOS.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let mut outcomes = Vec::new();
    for (name, _, run) in chosen {
        let seed = seed.unwrap_or_else(|| rand::rng().random());
        println!("chaos: {name} seed={seed} (rerun: ./scripts/chaos --only {name} --seed {seed})");
        let outcome = runtime.block_on(run(seed));
        println!("{}", outcome.line());
        outcomes.push(outcome);
    }
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    let sum = |f: fn(&Outcome) -> usize| outcomes.iter().map(f).sum::<usize>();
    println!(
        "chaos: {passed}/{} passed lost={} unexpected={} dup_effect={} order_violations={} stuck={}",
        outcomes.len(),
        sum(|o| o.lost),
        sum(|o| o.unexpected),
        sum(|o| o.dup_effect),
        sum(|o| o.order_violations),
        sum(|o| o.stuck),
    );
    if passed == outcomes.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The checker's counts for one scenario.
#[derive(Debug, Default)]
struct Outcome {
    name: &'static str,
    seed: u64,
    seconds: f64,
    attempted: usize,
    committed: usize,
    indeterminate: usize,
    delivered: usize,
    lost: usize,
    unexpected: usize,
    dup_topic: usize,
    dup_effect: usize,
    /// Events in the topic the consumer never applied.
    unapplied: usize,
    order_violations: usize,
    stuck: usize,
    /// Whether the fault was seen to act (a scenario whose fault did nothing
    /// proves nothing).
    fault_acted: bool,
    note: String,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.lost == 0
            && self.unexpected == 0
            && self.dup_effect == 0
            && self.unapplied == 0
            && self.order_violations == 0
            && self.stuck == 0
            && self.committed > 0
            && self.fault_acted
    }

    fn line(&self) -> String {
        format!(
            "{:<22} {} attempted={} committed={} indeterminate={} delivered={} lost={} unexpected={} dup_topic={} \
             dup_effect={} unapplied={} order_violations={} stuck={} seed={} {:.1}s{}",
            self.name,
            if self.passed() { "ok  " } else { "FAIL" },
            self.attempted,
            self.committed,
            self.indeterminate,
            self.delivered,
            self.lost,
            self.unexpected,
            self.dup_topic,
            self.dup_effect,
            self.unapplied,
            self.order_violations,
            self.stuck,
            self.seed,
            self.seconds,
            if self.note.is_empty() { String::new() } else { format!(" ({})", self.note) }
        )
    }
}

/// How one write transaction ended, as far as the writer could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Committed,
    RolledBack,
    /// COMMIT was sent but its answer was lost: either.
    Unknown,
}

#[derive(Debug, Clone)]
struct Written {
    key: String,
    n: i64,
    id: Uuid,
    fate: Fate,
}

/// The harness's pool: spared by connection faults.
async fn harness_pool(url: &str) -> PgPool {
    let _ = pool_at(url).await; // creates the database if missing
    let options: PgConnectOptions = url.parse().unwrap();
    PgPoolOptions::new().max_connections(24).connect_with(options.application_name(HARNESS)).await.unwrap()
}

async fn world(brokers: Option<String>) -> World {
    world_on(&database_url(), brokers).await
}

async fn world_on(url: &str, brokers: Option<String>) -> World {
    let world = World::on(url, 6, brokers.unwrap_or_else(common::brokers)).await;
    prepare(world).await
}

/// The harness's pool and the writers' aggregates table.
async fn prepare(mut world: World) -> World {
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
async fn write_one(
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
fn writer_process(args: &[String]) -> ExitCode {
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
        let outbox = Outbox::new(outbox::OutboxConfig::default().with_schema(schema).unwrap().with_source("/chaos"));
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
struct WorldRef {
    schema: String,
    topic: String,
}

/// `writers` writer processes writing `per_writer` transactions each over
/// `keys` keys, one every `pace`, about `rollback_percent` of them rolled
/// back. Writers have their own connections (connection faults hit them).
async fn load(
    world: &World,
    seed: u64,
    writers: usize,
    per_writer: usize,
    keys: usize,
    rollback_percent: u32,
    pace: Duration,
) -> Vec<Written> {
    load_killing(world, seed, writers, per_writer, keys, rollback_percent, pace, 0).await
}

/// [`load`], with `kill_percent` of the commits racing a termination of
/// their own connection.
#[allow(clippy::too_many_arguments)]
async fn load_killing(
    world: &World,
    seed: u64,
    writers: usize,
    per_writer: usize,
    keys: usize,
    rollback_percent: u32,
    pace: Duration,
    kill_percent: u32,
) -> Vec<Written> {
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

/// Waits for the outbox to drain, reads the topic from offset 0, runs an
/// idempotent consumer over it, and counts.
async fn settle(world: &World, name: &'static str, seed: u64, started: Instant, writes: &[Written]) -> Outcome {
    settle_with(world, name, seed, started, writes, ConsumerFault::None).await.0
}

/// Events a typed handler cannot parse: they must end in the inbox
/// dead-letter table, not in an effect and not in a crash loop.
static UNPARSEABLE: std::sync::Mutex<Vec<Uuid>> = std::sync::Mutex::new(Vec::new());

/// What happens to the consumers before the one that runs to the end.
enum ConsumerFault<'a> {
    None,
    /// Runs (same group) each under one failpoint, in turn.
    Crash(&'a [&'a str]),
    /// Two consumers in the group; one is SIGKILLed as soon as effects
    /// start to appear (mid-stream).
    KillOneOfTwo,
}

/// [`settle`], with a consumer fault first; also returns how many consumer
/// processes the fault took down.
async fn settle_with(
    world: &World,
    name: &'static str,
    seed: u64,
    started: Instant,
    writes: &[Written],
    fault: ConsumerFault<'_>,
) -> (Outcome, usize) {
    let mut o = Outcome { name, seed, attempted: writes.len(), ..Default::default() };
    let drained_by = Instant::now() + Duration::from_secs(90);
    let mut pending = world.pending().await;
    while pending > 0 && Instant::now() < drained_by {
        tokio::time::sleep(Duration::from_millis(200)).await;
        pending = world.pending().await;
    }
    o.stuck = usize::try_from(pending).unwrap_or(0);
    let mut committed: HashMap<String, Vec<(i64, Uuid)>> = HashMap::new();
    let mut rolled_back = HashSet::new();
    let mut unknown = HashSet::new();
    for w in writes {
        match w.fate {
            Fate::Committed => committed.entry(w.key.clone()).or_default().push((w.n, w.id)),
            Fate::RolledBack => {
                rolled_back.insert(w.id);
            }
            Fate::Unknown => {
                unknown.insert(w.id);
            }
        }
    }
    let committed: HashMap<String, Vec<Uuid>> = committed
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_unstable();
            (k, v.into_iter().map(|(_, id)| id).collect())
        })
        .collect();
    o.committed = total(&committed);
    o.indeterminate = unknown.len();
    let records = world.read_topic(o.committed);
    let records: Vec<Record> = records.into_iter().filter(|r| !unknown.contains(&r.id)).collect();
    let c = check(&records, &committed, &rolled_back);
    (o.delivered, o.lost, o.unexpected, o.dup_topic, o.order_violations) =
        (c.delivered, c.lost, c.unexpected, c.dup_topic, c.order_violations);
    // The consume side: every event in the topic applied once.
    let distinct: HashSet<Uuid> = records.iter().map(|r| r.id).collect();
    let unparseable: HashSet<Uuid> = std::mem::take(&mut *UNPARSEABLE.lock().unwrap()).into_iter().collect();
    let group = unique("chaos");
    let expect = distinct.len() - distinct.intersection(&unparseable).count();
    let mut crashed = 0;
    let status = match fault {
        ConsumerFault::None => run_consumer(world, &group, expect, None).0,
        ConsumerFault::Crash(failpoints) => {
            for failpoint in failpoints {
                let (status, _) = run_consumer(world, &group, expect, Some(failpoint));
                crashed += usize::from(!status.success());
            }
            run_consumer(world, &group, expect, None).0
        }
        ConsumerFault::KillOneOfTwo => {
            let mut victim = spawn_consumer(world, &group, expect);
            let survivor = spawn_consumer(world, &group, expect);
            let waiting = Instant::now();
            while effects_so_far(world).await == 0 && waiting.elapsed() < Duration::from_secs(30) {
                sleep_ms(10).await;
            }
            if victim.try_wait().ok().flatten().is_none() {
                let _ = victim.kill();
                crashed += 1;
            }
            let _ = victim.wait();
            tokio::task::spawn_blocking(move || survivor.wait_with_output()).await.unwrap().unwrap().status
        }
    };
    let (effects, distinct_effects) = effects(world).await;
    o.dup_effect = usize::try_from(effects - distinct_effects).unwrap_or(0);
    o.unapplied = expect.saturating_sub(usize::try_from(distinct_effects).unwrap_or(0));
    if !unparseable.is_empty() {
        let ids: Vec<Uuid> = unparseable.iter().copied().collect();
        let parked: i64 = sqlx::query_scalar(&format!(
            "SELECT count(DISTINCT event_id) FROM \"{}\".inbox_dead_letter WHERE event_id = ANY($1)",
            world.schema
        ))
        .bind(&ids)
        .fetch_one(&world.pool)
        .await
        .unwrap_or(0);
        // An unparseable event not parked is as bad as one not applied.
        o.unapplied += ids.len().saturating_sub(usize::try_from(parked).unwrap_or(0));
    }
    if !status.success() {
        o.note = format!("consumer exited {status}");
        o.dup_effect = o.dup_effect.max(1);
    }
    o.seconds = started.elapsed().as_secs_f64();
    (o, crashed)
}

fn relays(world: &World, n: usize) -> Vec<RelayProcess> {
    (0..n).map(|_| world.relay(&["--batch-size", "200"])).collect()
}

/// Scenario 1: Steady load plus a backlog written before any relay runs.
async fn baseline(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let mut writes = load(&world, seed, 4, 400, 50, 0, Duration::ZERO).await;
    let _relays = relays(&world, 2);
    writes.extend(load(&world, seed ^ 1, 4, 250, 50, 10, Duration::from_millis(4)).await);
    let mut o = settle(&world, "baseline", seed, started, &writes).await;
    o.fault_acted = true;
    o
}

/// Runs `writes` to completion while `fault` acts; `done` turns true once
/// the writes are done (the fault's loop watches it).
async fn during(
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

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Scenario 2: Relays SIGKILLed at random moments, one of them right after the
/// broker confirmed a batch and before it was marked (failpoint).
async fn relay_kill(seed: u64) -> Outcome {
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
    let writes = during(load(&world, seed, 4, 400, 50, 10, Duration::from_millis(5)), &done, async {
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
async fn zombie_relay(seed: u64) -> Outcome {
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
    let writes = during(load(&world, seed, 4, 400, 50, 10, Duration::from_millis(5)), &done, async {
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
async fn three_relays(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let procs = relays(&world, 3);
    let writes = load(&world, seed, 4, 500, 100, 10, Duration::from_millis(2)).await;
    let mut o = settle(&world, "three-relays", seed, started, &writes).await;
    let working = procs.iter().filter(|p| p.log_text().contains("slots rebalanced")).count();
    o.fault_acted = working == 3;
    o.note = format!("{working} relays held slots");
    o
}

/// Scenario 5: Long transactions take their sequence numbers early and commit (or
/// roll back) after later rows were published.
async fn late_commits(seed: u64) -> Outcome {
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
    let mut writes = load(&world, seed, 4, 300, 50, 10, Duration::from_millis(3)).await;
    let published_meanwhile = world.pending().await < i64::try_from(writes.len()).unwrap_or(i64::MAX);
    for (tx, key, id, rollback) in open {
        let fate = if rollback {
            tx.rollback().await.unwrap();
            Fate::RolledBack
        } else {
            tx.commit().await.unwrap();
            Fate::Committed
        };
        late.push(Written { key, n: 1, id, fate });
    }
    writes.extend(late);
    let mut o = settle(&world, "late-commits", seed, started, &writes).await;
    o.fault_acted = published_meanwhile;
    o
}

/// Scenario 6: Every database connection but the harness's terminated every second,
/// writers' and relays' alike, COMMITs included.
async fn connections_killed(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let _relays = relays(&world, 2);
    let mut terminated = 0i64;
    let done = AtomicBool::new(false);
    let writes = during(load_killing(&world, seed, 4, 300, 50, 10, Duration::from_millis(10), 5), &done, async {
        while !done.load(Ordering::SeqCst) {
            sleep_ms(1000).await;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity                  WHERE datname = current_database() AND backend_type = 'client backend'                  AND application_name <> $1 AND pid <> pg_backend_pid()) t",
            )
            .bind(HARNESS)
            .fetch_one(&world.pool)
            .await
            .unwrap_or(0);
            terminated += n;
        }
    })
    .await;
    let mut o = settle(&world, "db-connections-killed", seed, started, &writes).await;
    o.fault_acted = terminated > 0 && o.indeterminate > 0;
    o.note = format!("{terminated} connections terminated");
    o
}

/// Scenario 8: The broker stops answering (SIGSTOP) for longer than a request
/// timeout, then comes back.
async fn broker_unreachable(seed: u64) -> Outcome {
    let started = Instant::now();
    let Some(broker) = PrivateBroker::start() else {
        let mut o = Outcome { name: "broker-unreachable", seed, ..Default::default() };
        o.note = "needs the tansu binary to run a broker it can pause".into();
        return o;
    };
    let world = world(Some(broker.brokers.clone())).await;
    let _relays = relays(&world, 2);
    let mut paused = Duration::ZERO;
    let done = AtomicBool::new(false);
    let writes = during(load(&world, seed, 4, 300, 50, 10, Duration::from_millis(10)), &done, async {
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

/// Scenario 11: The idempotent consumer killed between its inbox commit and
/// its offset commit, three times, then run to the end in the same group.
async fn consumer_crash(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let _relays = relays(&world, 1);
    let writes = load(&world, seed, 4, 300, 50, 10, Duration::ZERO).await;
    let crashes = ["inbox-after-commit@30", "inbox-after-commit@100", "inbox-after-commit@200"];
    let (mut o, crashed) =
        settle_with(&world, "consumer-crash", seed, started, &writes, ConsumerFault::Crash(&crashes)).await;
    o.fault_acted = crashed == crashes.len();
    o.note = format!("consumer aborted {crashed} times after its inbox commit, before its offset commit");
    o
}

/// Scenario 12: Poison events (a topic that does not exist) among the load:
/// they end in the dead-letter table, the rest flows.
async fn poison_events(seed: u64) -> Outcome {
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
    let writes = load(&world, seed, 4, 300, 50, 10, Duration::from_millis(3)).await;
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

/// `host:port` of a database URL, and the URL with that part replaced.
fn db_address(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, host) = authority.rsplit_once('@').map_or(("", authority), |(u, h)| (u, h));
    let host = if host.contains(':') { host.to_owned() } else { format!("{host}:5432") };
    let rebuild = move |addr: &str| {
        let user = if user.is_empty() { String::new() } else { format!("{user}@") };
        format!("{scheme}://{user}{addr}{tail}")
    };
    (host, rebuild("{addr}"))
}

/// Scenario 10: The network between the relays and the database, and
/// between the relays and the broker, cut (connections reset) and stalled
/// (nothing flows for seconds) at random, through TCP proxies.
async fn network_faults(seed: u64) -> Outcome {
    let started = Instant::now();
    let (tansu_port, kafka_port, db_port) = (free_port(), free_port(), free_port());
    let Some(broker) = PrivateBroker::start_advertised(tansu_port, kafka_port) else {
        let mut o = Outcome { name: "network-faults", seed, ..Default::default() };
        o.note = "needs the tansu binary to run a broker behind a proxy".into();
        return o;
    };
    let kafka = Proxy::start(kafka_port, &format!("127.0.0.1:{tansu_port}")).await;
    let (db_target, url_template) = db_address(&database_url());
    let db = Proxy::start(db_port, &db_target).await;
    let relay_url = url_template.replace("{addr}", &format!("127.0.0.1:{db_port}"));
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
    let writes = during(load(&world, seed, 4, 600, 50, 10, Duration::from_millis(15)), &done, async {
        let mut rng = StdRng::seed_from_u64(seed);
        sleep_ms(1000).await;
        // At least six faults, however fast the writers are.
        while !done.load(Ordering::SeqCst) || faults.len() < 6 {
            match rng.random_range(0..4) {
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
    o.fault_acted = faults.len() >= 6 && cut > 0;
    o.note = format!("{} faults ({}), {cut} connections cut", faults.len(), faults.join(" "));
    drop(procs);
    drop(broker);
    o
}

/// Scenario 7: PostgreSQL stopped in immediate mode (no checkpoint, every
/// connection dropped, COMMITs in flight) and started again, twice, on a
/// private server.
async fn postgres_crash(seed: u64) -> Outcome {
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
    let writes = during(load(&world, seed, 4, 400, 50, 10, Duration::from_millis(10)), &done, async {
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
async fn broker_errors(seed: u64) -> Outcome {
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
    let writes = during(load(&world, seed, 4, 400, 50, 10, Duration::from_millis(10)), &done, async {
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

/// The demo consumer as a child process, not waited for.
fn spawn_consumer(world: &World, group: &str, expect: usize) -> std::process::Child {
    std::process::Command::new(binary("consumer_service"))
        .args(["--outbox-schema", &world.schema, "--app-schema", &format!("{}_app", world.schema)])
        .args(["--topic", &world.topic, "--group", group, "--brokers", &world.brokers])
        .args(["--expect", &expect.to_string(), "--idle-exit", "3s", "--timeout", "90s"])
        .env("DATABASE_URL", &world.url)
        .env("RUST_LOG", "warn")
        .env_remove("OUTBOX_FAILPOINT")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Scenario 11b: Two consumers in one group; one is SIGKILLed mid-stream and
/// the group rebalances its partitions to the other.
async fn consumer_rebalance(seed: u64) -> Outcome {
    let started = Instant::now();
    let world = world(None).await;
    let _relays = relays(&world, 1);
    let writes = load(&world, seed, 8, 1500, 100, 10, Duration::ZERO).await;
    let (mut o, killed) =
        settle_with(&world, "consumer-rebalance", seed, started, &writes, ConsumerFault::KillOneOfTwo).await;
    o.fault_acted = killed == 1;
    o.note = format!("{killed} of two consumers SIGKILLed as effects began to appear");
    o
}

/// Effect rows so far (0 while the consumer has not created its table).
async fn effects_so_far(world: &World) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM \"{}_app\".effects", world.schema))
        .fetch_one(&world.pool)
        .await
        .unwrap_or(0)
}

/// Scenario 12: Bad inputs among the load: an oversize payload (refused at
/// enqueue with a typed error, its transaction rolled back), payloads the
/// consumer's typed handler cannot parse (parked in the inbox dead-letter
/// table), a relay configured with a hostile table name and one whose role
/// lacks privileges (both stop at start, exit 2, create and change nothing).
async fn bad_inputs(seed: u64) -> Outcome {
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
    let bare_url = {
        let (scheme, rest) = world.url.split_once("://").unwrap();
        format!("{scheme}://{role}:chaos-pw@{}", rest.rsplit_once('@').map_or(rest, |(_, host)| host))
    };
    let out = relay_command(&["--schema", &world.schema, "run"], &bare_url);
    let unprivileged_refused =
        out.status.code() == Some(2) && String::from_utf8_lossy(&out.stderr).contains("lacks privileges");
    sqlx::raw_sql(&format!("DROP ROLE \"{role}\"")).execute(&world.pool).await.unwrap();
    let mut writes = load(&world, seed, 4, 300, 50, 10, Duration::from_millis(3)).await;
    writes.extend(refused);
    UNPARSEABLE.lock().unwrap().extend(unparseable.iter().copied());
    let mut o = settle(&world, "bad-inputs", seed, started, &writes).await;
    o.fault_acted = oversize_typed && hostile_refused && public_survives && unprivileged_refused;
    o.note = format!(
        "oversize refused with a typed error: {oversize_typed}; 3 unparseable events parked by the consumer; \
         hostile schema name refused: {hostile_refused}; relay without privileges refused: {unprivileged_refused}"
    );
    o
}
