//! The checker: what a scenario wrote against what reached the topic and
//! what the consumer applied.

use super::*;

/// The checker's counts for one scenario.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) name: &'static str,
    pub(crate) seed: u64,
    pub(crate) seconds: f64,
    pub(crate) attempted: usize,
    pub(crate) committed: usize,
    pub(crate) indeterminate: usize,
    pub(crate) delivered: usize,
    pub(crate) lost: usize,
    pub(crate) unexpected: usize,
    pub(crate) dup_topic: usize,
    pub(crate) dup_effect: usize,
    /// Events in the topic the consumer never applied.
    pub(crate) unapplied: usize,
    pub(crate) order_violations: usize,
    pub(crate) stuck: usize,
    /// Whether the fault was seen to act (a scenario whose fault did nothing
    /// proves nothing).
    pub(crate) fault_acted: bool,
    pub(crate) note: String,
}

impl Outcome {
    pub(crate) fn passed(&self) -> bool {
        self.lost == 0
            && self.unexpected == 0
            && self.dup_effect == 0
            && self.unapplied == 0
            && self.order_violations == 0
            && self.stuck == 0
            && self.committed > 0
            && self.fault_acted
    }

    pub(crate) fn line(&self) -> String {
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
pub(crate) enum Fate {
    Committed,
    RolledBack,
    /// COMMIT was sent but its answer was lost: either.
    Unknown,
}

#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub(crate) key: String,
    pub(crate) n: i64,
    pub(crate) id: Uuid,
    pub(crate) fate: Fate,
}

/// Waits for the outbox to drain, reads the topic from offset 0, runs an
/// idempotent consumer over it, and counts.
pub(crate) async fn settle(
    world: &World,
    name: &'static str,
    seed: u64,
    started: Instant,
    writes: &[Written],
) -> Outcome {
    settle_with(world, name, seed, started, writes, ConsumerFault::None).await.0
}

/// What the consume side faces before the consumer that runs to the end.
pub(crate) enum ConsumerFault<'a> {
    None,
    /// Events the typed handler cannot parse: they must end in the inbox
    /// dead-letter table, not in an effect and not in a crash loop.
    Unparseable(&'a [Uuid]),
    /// Runs (same group) each under one failpoint, in turn.
    Crash(&'a [&'a str]),
    /// Two consumers in the group; one is SIGKILLed as soon as effects
    /// start to appear (mid-stream).
    KillOneOfTwo,
    /// Three consumers in the group (cooperative-sticky assignment); one
    /// SIGKILLed and restarted at four seeded points of the stream (5–90 % applied).
    Churn(u64),
    /// A consumer of this group that has been running since before the
    /// fault: it alone must apply every event, with no restart, and is
    /// then stopped as a deployment stops it (SIGINT).
    Running(&'a str, std::process::Child),
}

/// [`settle`], with a consumer fault first; also returns how many consumer
/// processes the fault took down.
pub(crate) async fn settle_with(
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
    let unparseable: HashSet<Uuid> = match fault {
        ConsumerFault::Unparseable(ids) => ids.iter().copied().collect(),
        _ => HashSet::new(),
    };
    let group = match &fault {
        ConsumerFault::Running(group, _) => (*group).to_owned(),
        _ => unique("chaos"),
    };
    let expect = distinct.len() - distinct.intersection(&unparseable).count();
    let mut crashed = 0;
    let status = match fault {
        ConsumerFault::None | ConsumerFault::Unparseable(_) => run_consumer(world, &group, expect, None).0,
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
        ConsumerFault::Churn(seed) => {
            // Small batches: the stream lasts long enough for several kills.
            let extra = ["--assignment", "cooperative-sticky", "--batch-size", "5"];
            let spawn = || spawn_consumer_with(world, &group, expect, &extra);
            let mut members = vec![spawn(), spawn(), spawn()];
            let mut rng = StdRng::seed_from_u64(seed);
            // Kills at seeded points of the stream's progress, not at timed
            // intervals: a group that applies everything in two seconds
            // still loses three members mid-stream.
            let expect_i = i64::try_from(expect).unwrap_or(i64::MAX);
            let mut marks: Vec<i64> = [(5, 20), (30, 45), (55, 70), (75, 90)]
                .iter()
                .map(|&(lo, hi)| expect_i * rng.random_range(lo..hi) / 100)
                .collect();
            marks.reverse();
            let give_up = Instant::now() + Duration::from_secs(60);
            while let Some(&mark) = marks.last() {
                let applied = effects_so_far(world).await;
                if applied >= expect_i || Instant::now() >= give_up {
                    break;
                }
                if applied < mark {
                    sleep_ms(5).await;
                    continue;
                }
                marks.pop();
                let victim = rng.random_range(0..members.len());
                let _ = members[victim].kill();
                let _ = members[victim].wait();
                crashed += 1;
                members[victim] = spawn();
            }
            while effects_so_far(world).await < expect_i && Instant::now() < give_up {
                sleep_ms(100).await;
            }
            for mut member in members {
                let _ = member.kill();
                let _ = member.wait();
            }
            // Whatever the churn left unapplied, one last member finishes.
            run_consumer(world, &group, expect, None).0
        }
        ConsumerFault::Running(_, child) => {
            let give_up = Instant::now() + Duration::from_secs(60);
            while effects(world).await.1 < i64::try_from(expect).unwrap_or(i64::MAX) && Instant::now() < give_up {
                sleep_ms(200).await;
            }
            std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
            tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap().status
        }
    };
    let (effects, distinct_effects) = effects(world).await;
    o.dup_effect = usize::try_from(effects - distinct_effects).unwrap_or(0);
    o.unapplied = expect.saturating_sub(usize::try_from(distinct_effects).unwrap_or(0));
    if o.unapplied > 0 {
        o.note = unapplied_where(world, &records, &unparseable).await;
    }
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
        let exited = format!("consumer exited {status}");
        o.note = if o.note.is_empty() { exited } else { format!("{exited}; {}", o.note) };
        o.dup_effect = o.dup_effect.max(1);
    }
    o.seconds = started.elapsed().as_secs_f64();
    (o, crashed)
}

/// The demo consumer as a child process, not waited for.
pub(crate) fn spawn_consumer(world: &World, group: &str, expect: usize) -> std::process::Child {
    spawn_consumer_with(world, group, expect, &[])
}

/// [`spawn_consumer`] with more arguments.
pub(crate) fn spawn_consumer_with(world: &World, group: &str, expect: usize, extra: &[&str]) -> std::process::Child {
    std::process::Command::new(binary("consumer_service"))
        .args(extra)
        .args(["--outbox-schema", &world.schema, "--app-schema", &format!("{}_app", world.schema)])
        .args(["--topic", &world.topic, "--group", group, "--brokers", &world.brokers])
        .args(["--expect", &expect.to_string(), "--idle-exit", "3s", "--timeout", "90s"])
        .env("DATABASE_URL", &world.url)
        // CHAOS_CONSUMER_LOG / CHAOS_KAFKA_DEBUG (e.g. `info` / `cgrp,fetch`)
        // make a failing run tell what its consumers saw.
        .env("RUST_LOG", std::env::var("CHAOS_CONSUMER_LOG").unwrap_or_else(|_| "warn".into()))
        .env("CONSUMER_KAFKA_DEBUG", std::env::var("CHAOS_KAFKA_DEBUG").unwrap_or_default())
        .env_remove("OUTBOX_FAILPOINT")
        .stdout(consumer_stdout(group))
        .spawn()
        .unwrap()
}

/// A consumer's stdout: a file under the temp dir when CHAOS_CONSUMER_LOG
/// asks for its log (a pipe nobody reads would fill and block it).
fn consumer_stdout(group: &str) -> std::process::Stdio {
    if std::env::var_os("CHAOS_CONSUMER_LOG").is_none() {
        return std::process::Stdio::piped();
    }
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("{group}-consumer-{n}.log"));
    eprintln!("consumer log: {}", path.display());
    std::fs::File::create(path).unwrap().into()
}

/// Effect rows so far (0 while the consumer has not created its table).
pub(crate) async fn effects_so_far(world: &World) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM \"{}_app\".effects", world.schema))
        .fetch_one(&world.pool)
        .await
        .unwrap_or(0)
}

/// Where the events no consumer applied sit in the topic: partition and
/// offsets, so a failure says which partition a consumer never read.
async fn unapplied_where(world: &World, records: &[Record], skip: &HashSet<Uuid>) -> String {
    let applied: Vec<Uuid> =
        sqlx::query_scalar(&format!("SELECT DISTINCT event_id FROM \"{}_app\".effects", world.schema))
            .fetch_all(&world.pool)
            .await
            .unwrap_or_default();
    let applied: HashSet<Uuid> = applied.into_iter().collect();
    let mut missing: std::collections::BTreeMap<i32, Vec<i64>> = std::collections::BTreeMap::new();
    for r in records.iter().filter(|r| !applied.contains(&r.id) && !skip.contains(&r.id)) {
        missing.entry(r.partition).or_default().push(r.offset);
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(p, offsets)| {
            let (lo, hi) = (offsets.iter().min().unwrap(), offsets.iter().max().unwrap());
            format!("p{p}: {} at offsets {lo}..={hi}", offsets.len())
        })
        .collect();
    format!("unapplied in {}", parts.join(", "))
}
