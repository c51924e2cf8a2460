//! `outbox-bench`: every scenario of the benchmark in one process run, with
//! the physical references (raw producer, raw inserts) measured in the same
//! run, so the ratios hold on a noisy machine. Run it with `./scripts/bench`.

mod debezium;
mod drain;
mod durability;
mod env;
mod floor;
mod inbox;
mod latency;
mod physical;
mod plot;
mod write_path;

use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::json;

/// Benchmarks the outbox against the physical limits of this machine.
#[derive(Debug, Parser)]
#[command(name = "outbox-bench", version, about)]
struct Args {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Kafka brokers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// quick (under ~2 minutes) or full sizes.
    #[arg(long, value_enum, default_value_t = Mode::Quick)]
    mode: Mode,
    /// Run only these scenarios (e.g. --only s2 --only s4).
    #[arg(long, value_enum)]
    only: Vec<Scenario>,
    /// Backlog size for S2/S4/S5 (overrides the mode's).
    #[arg(long)]
    events: Option<usize>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Extra argument for every relay process, e.g. --relay-arg=--pipeline-depth=8
    /// (repeatable; replaces the scenario's own value of that flag).
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    relay_args: Vec<String>,
    /// The relay's poll interval in S3 (the relay's default is 10ms).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    s3_poll_interval: Duration,
    /// The relay's pipeline depth in S3 (batches in flight; the relay's
    /// default unless given).
    #[arg(long)]
    s3_pipeline_depth: Option<usize>,
    /// The relay's busy poll interval in S3 (after a claim that found
    /// events; the relay's default unless given).
    #[arg(long, value_parser = humantime::parse_duration)]
    s3_busy_poll_interval: Option<Duration>,
    /// Measure even when PostgreSQL does not run with production
    /// durability (fsync, synchronous_commit, full_page_writes on); the
    /// output says so beside the figures.
    #[arg(long)]
    allow_non_durable: bool,
    /// Write S3's latency distribution as an SVG plot to this file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Quick,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    S0,
    S1,
    S2,
    S3,
    S4,
    S5,
    S6,
    S7,
    /// Debezium's drain (S2 for the peer), both outbox-table variants.
    D2,
    /// Debezium's latency at 1,000 events/s (S3 for the peer).
    D3,
}

struct Sizes {
    backlog: usize,
    naive: usize,
    seconds: Duration,
    /// Per S1 variant run (S1 runs eight: four variants, alternated twice).
    write_seconds: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::try_parse().unwrap_or_else(|e| {
        // clap echoes a rejected argument: mask a URL's password in it.
        let text = outbox_core::secrets::redact_own_args_in(&e.render().to_string());
        if e.use_stderr() {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
        std::process::exit(e.exit_code())
    });
    let sizes = match args.mode {
        Mode::Quick => Sizes {
            backlog: 50_000,
            naive: 2_000,
            seconds: Duration::from_secs(8),
            write_seconds: Duration::from_secs(4),
        },
        Mode::Full => Sizes {
            backlog: 200_000,
            naive: 10_000,
            seconds: Duration::from_secs(30),
            write_seconds: Duration::from_secs(30),
        },
    };
    let backlog = args.events.unwrap_or(sizes.backlog);
    let wants = |s: Scenario| args.only.is_empty() || args.only.contains(&s);
    let env = env::Env::connect(args.database_url.clone(), args.brokers.clone(), args.relay_args.clone()).await?;
    let keys = 10_000;
    let mut results = serde_json::Map::new();
    let mut rows: Vec<(String, String)> = Vec::new();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let fsync = env::fsync_per_second();
    eprintln!("machine: {cores} cores, {fsync:.0} fdatasync/s; mode {:?}, backlog {backlog}", args.mode);
    let durability = durability::Durability::read(&env).await?;
    anyhow::ensure!(
        durability.production() || args.allow_non_durable,
        "PostgreSQL runs with {}: the benchmark's figures are for production durability (fsync, synchronous_commit \
         and full_page_writes on). ./scripts/bench starts a private server so when none answers at DATABASE_URL: \
         stop the one running (e.g. a test run's), or pass --allow-non-durable to measure anyway (labelled).",
        durability.describe()
    );
    let settings = if durability.production() {
        durability.describe()
    } else {
        format!("NOT DURABLE (--allow-non-durable): {}", durability.describe())
    };
    eprintln!("settings: {settings}");
    results.insert("durability".into(), serde_json::to_value(&durability)?);

    let (mut k, mut k_headers, mut p) = (None, None, None);
    if wants(Scenario::S0) || wants(Scenario::S2) || wants(Scenario::S5) {
        let v = physical::raw_producer(&env, backlog, keys, false).await?;
        // The same with the relay's headers: what CloudEvents metadata
        // costs the producer and the broker (K itself stays the reference).
        let h = physical::raw_producer(&env, backlog, keys, true).await?;
        rows.push((
            "S0 K: raw idempotent producer".into(),
            format!("{v:.0} events/s; with the relay's six CloudEvents headers per record: {h:.0} ({:.2} of K)", h / v),
        ));
        k = Some(v);
        k_headers = Some(h);
        let v = physical::raw_inserts(&env, sizes.seconds).await?;
        rows.push(("S0 P: raw single-row insert tx, 16 conns".into(), format!("{v:.0} tx/s")));
        p = Some(v);
        results.insert("s0".into(), json!({ "k_eps": k, "k_headers_eps": k_headers, "p_tps": p }));
    }
    let mut floor = None;
    if wants(Scenario::S0) || wants(Scenario::S2) {
        let f = floor::pg_outbox(&env, backlog, keys).await?;
        let of_k = |v: f64| k.map_or(0.0, |k| v / k);
        rows.push((
            "S0 F: floor of a PostgreSQL outbox (stream rows, K's producer)".into(),
            format!(
                "{:.0} events/s ({:.2} of K); deleting each confirmed batch: {:.0} events/s ({:.2} of K)",
                f.read_eps,
                of_k(f.read_eps),
                f.read_delete_eps,
                of_k(f.read_delete_eps)
            ),
        ));
        results.insert("s0_floor".into(), serde_json::to_value(f)?);
        floor = Some(f);
    }
    let mut write_overhead = None;
    if wants(Scenario::S1) {
        let w = write_path::run(&env, sizes.write_seconds).await?;
        rows.push((
            "S1 write path, 16 writers".into(),
            format!(
                "plain {:.0} tx/s (p50 {:.2} ms) vs with outbox {:.0} tx/s (p50 {:.2} ms): {:.1} % slower, p50 {:+.2} ms, p99 {:+.2} ms; C, a plain row shaped like an outbox row instead: {:.0} tx/s, {:.1} % slower (the outbox loses {:.2}x what C does); event + NOTIFY (--wakeup notify): {:.0} tx/s, {:.1} % slower",
                w.plain.tps, w.plain.p50_ms, w.with_outbox.tps, w.with_outbox.p50_ms, w.overhead_pct, w.p50_added_ms, w.p99_added_ms, w.control.tps, w.control_pct, w.vs_control, w.with_notify.tps, w.notify_pct
            ),
        ));
        rows.push((
            "S1 Debezium's outbox table, 16 writers".into(),
            format!(
                "row kept: {:.0} tx/s (p50 {:.2} ms), {:.1} % slower than plain; inserted + deleted: {:.0} tx/s (p50 {:.2} ms), {:.1} % slower",
                w.debezium_keep.tps, w.debezium_keep.p50_ms, w.debezium_keep_pct, w.debezium_delete.tps, w.debezium_delete.p50_ms, w.debezium_delete_pct
            ),
        ));
        write_overhead = Some(w);
        results.insert("s1".into(), serde_json::to_value(w)?);
    }
    let mut one = None;
    if wants(Scenario::S2) || wants(Scenario::S4) || wants(Scenario::S6) {
        let d = drain::relays(&env, backlog, keys, 1, true).await?;
        let of_floor = floor.map_or(String::new(), |f| format!(", {:.2} of the floor F", d.eps / f.read_delete_eps));
        let of_k_headers = k_headers.map_or(String::new(), |h| format!(", {:.2} of K with headers", d.eps / h));
        rows.push((
            "S2 drain, 1 relay".into(),
            format!("{:.0} events/s ({} events){of_floor}{of_k_headers}; {}", d.eps, d.events, check(&d)),
        ));
        rows.push((
            "S6 relay footprint".into(),
            format!(
                "peak RSS {:.1} MiB, {:.2} cores = {:.2} cores per 10k events/s",
                d.peak_rss_mb,
                d.cpu_cores,
                d.cpu_cores / (d.eps / 10_000.0)
            ),
        ));
        results.insert("s2".into(), serde_json::to_value(d)?);
        one = Some(d);
    }
    let debezium_home = debezium::home();
    let (mut debezium_eps, mut debezium_rss, mut debezium_variant) = (None, None, debezium::Variant::InsertDelete);
    if wants(Scenario::D2) {
        match &debezium_home {
            None => rows.push((
                "D2 Debezium drain".into(),
                "not run: DEBEZIUM_HOME unset or incomplete (./scripts/bench installs Debezium)".into(),
            )),
            Some(home) => {
                let mut runs = serde_json::Map::new();
                // Both of its documented table variants with its defaults,
                // then the faster one tuned.
                for step in 0..3 {
                    let (variant, tuning) = match step {
                        0 => (debezium::Variant::Keep, debezium::Tuning::Defaults),
                        1 => (debezium::Variant::InsertDelete, debezium::Tuning::Defaults),
                        _ => (debezium_variant, debezium::Tuning::Tuned),
                    };
                    let (d, started) = debezium::drain(&env, home, backlog, keys, variant, tuning).await?;
                    let vs = one.map_or(String::new(), |o| format!("; ours is {:.2}x", o.eps / d.eps));
                    rows.push((
                        format!("D2 Debezium drain ({variant:?}, {tuning:?})"),
                        format!(
                            "{:.0} events/s ({} events, from the worker's start; its task ran after {started:.1} s){vs}; peak RSS {:.1} MiB, {:.2} cores = {:.2} cores per 10k events/s; {}",
                            d.eps,
                            d.events,
                            d.peak_rss_mb,
                            d.cpu_cores,
                            d.cpu_cores / (d.eps / 10_000.0),
                            check(&d)
                        ),
                    ));
                    if debezium_eps.is_none_or(|v| d.eps > v) {
                        (debezium_eps, debezium_variant) = (Some(d.eps), variant);
                    }
                    debezium_rss = Some(debezium_rss.map_or(d.peak_rss_mb, |v: f64| v.max(d.peak_rss_mb)));
                    runs.insert(format!("{variant:?}/{tuning:?}"), json!({ "drain": d, "task_running_s": started }));
                }
                results.insert("d2".into(), serde_json::Value::Object(runs));
            }
        }
    }
    let mut two_ratio = None;
    if wants(Scenario::S4) {
        let d = drain::relays(&env, backlog, keys, 2, true).await?;
        let ratio = one.map(|o| d.eps / o.eps);
        rows.push((
            "S4 drain, 2 relays".into(),
            format!("{:.0} events/s, ratio to 1 relay {:.2}; {}", d.eps, ratio.unwrap_or(0.0), check(&d)),
        ));
        results.insert("s4".into(), json!({ "drain": d, "ratio": ratio }));
        two_ratio = ratio;
    }
    let mut lat = None;
    if wants(Scenario::S3) {
        let defaults = outbox_core::RelayConfig::default();
        let s3_relay = outbox_core::RelayConfig {
            poll_interval: args.s3_poll_interval,
            pipeline_depth: args.s3_pipeline_depth.unwrap_or(defaults.pipeline_depth),
            busy_poll_interval: args.s3_busy_poll_interval.unwrap_or(defaults.busy_poll_interval),
            ..defaults
        };
        let floor = physical::raw_latency(&env, 1000.0, sizes.seconds).await?;
        rows.push((
            "S0 L: raw producer @ 1,000/s (no database)".into(),
            format!(
                "produce → ack p50 {:.1} ms, p99 {:.1} ms; produce → consumer receipt p50 {:.1} ms, p99 {:.1} ms",
                floor.ack_p50_ms, floor.ack_p99_ms, floor.receipt_p50_ms, floor.receipt_p99_ms
            ),
        ));
        let l = latency::steady(&env, 1000.0, sizes.seconds, &s3_relay, false).await?;
        rows.push(latency_row(&l));
        // Half the most this machine sustains end to end: the lower of the
        // write path (one event per transaction, S1) and the drain (S2).
        // Needs S1 in the same run: the write path is what binds here.
        let max = write_overhead.map(|w| one.map_or(w.with_outbox.tps, |d| w.with_outbox.tps.min(d.eps)));
        let half = if let Some(max) = max {
            let h = latency::steady(&env, max / 2.0, sizes.seconds, &s3_relay, false).await?;
            let (name, value) = latency_row(&h);
            rows.push((format!("{name} (half of max {max:.0}/s)"), value));
            Some(h)
        } else {
            None
        };
        // The same at 1,000/s with `--wakeup notify` (writers NOTIFY in
        // their transaction, the relay LISTENs): no poll wait.
        let woken = latency::steady(&env, 1000.0, sizes.seconds, &s3_relay, true).await?;
        let (name, value) = latency_row(&woken);
        rows.push((format!("{name} with --wakeup notify"), value));
        results.insert("s3".into(), json!({ "floor": floor, "steady": &l, "half_max": half, "notify": woken }));
        lat = Some(l);
    }
    let mut peer_lat = None;
    if wants(Scenario::D3) && debezium_home.is_none() {
        rows.push((
            "D3 Debezium latency".into(),
            "not run: DEBEZIUM_HOME unset or incomplete (./scripts/bench installs Debezium)".into(),
        ));
    }
    if wants(Scenario::D3) {
        if let Some(home) = &debezium_home {
            let mut runs = serde_json::Map::new();
            for tuning in [debezium::Tuning::Defaults, debezium::Tuning::Tuned] {
                let d = debezium::steady(&env, home, 1000.0, sizes.seconds, debezium_variant, tuning).await?;
                rows.push((
                    format!("D3 Debezium latency @ {:.0}/s ({debezium_variant:?}, {tuning:?})", d.rate),
                    format!(
                        "commit → broker append p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; commit → consumer receipt p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events); the Connect worker's CPU {:.2} cores",
                        d.appended.p50_ms, d.appended.p99_ms, d.appended.max_ms, d.receipt.p50_ms, d.receipt.p99_ms, d.receipt.max_ms, d.events, d.cpu_cores
                    ),
                ));
                runs.insert(format!("{tuning:?}"), serde_json::to_value(&d)?);
                // Debezium's best run is the one compared.
                if peer_lat.as_ref().is_none_or(|p: &debezium::PeerLatency| d.receipt.p99_ms < p.receipt.p99_ms) {
                    peer_lat = Some(d);
                }
            }
            results.insert("d3".into(), serde_json::Value::Object(runs));
        }
    }
    if let (Some(path), Some(l)) = (&args.plot, &lat) {
        let title = format!("Commit → consumer receipt at {:.0} events/s, the relay and Debezium", l.rate);
        let mut series: Vec<(&str, &[f64])> = vec![
            ("relay: commit → broker confirmation", &l.confirm.sorted_ms),
            ("relay: commit → consumer receipt", &l.receipt.sorted_ms),
        ];
        if let Some(d) = &peer_lat {
            series.push(("Debezium: commit → broker append", &d.appended.sorted_ms));
            series.push(("Debezium: commit → consumer receipt", &d.receipt.sorted_ms));
        }
        std::fs::write(path, plot::latency_cdf_svg(&series, &title))?;
    }
    let mut inbox_eps = None;
    if wants(Scenario::S5) {
        let v = inbox::throughput(&env, backlog.min(50_000)).await?;
        rows.push((
            "S5 idempotent consumer".into(),
            format!("{v:.0} messages/s, ratio to P {:.2}", p.map_or(0.0, |p| v / p)),
        ));
        results.insert("s5".into(), json!({ "eps": v }));
        inbox_eps = Some(v);
    }
    if wants(Scenario::S7) {
        let v = drain::naive(&env, sizes.naive, keys).await?;
        let gain = one.map_or(0.0, |o| o.eps / v);
        rows.push((
            "S7 hand-written baseline (send one, await)".into(),
            format!("{v:.0} events/s; the relay is {gain:.0}× faster"),
        ));
        results.insert("s7".into(), json!({ "eps": v, "relay_gain": gain }));
    }

    println!("| scenario | result |\n|---|---|");
    println!("| machine | {cores} cores, {fsync:.0} fdatasync/s (temp dir) |");
    println!("| settings | {settings} |");
    for (name, value) in &rows {
        println!("| {name} | {value} |");
    }
    let f = |v: Option<f64>, prec: usize| v.map_or("n/a".to_owned(), |v| format!("{v:.prec$}"));
    println!(
        "bench: drain_eps={} producer_eps={} drain_ratio={} write_overhead_pct={} e2e_p50_ms={} e2e_p99_ms={} two_relay_ratio={} inbox_eps={} inbox_ratio={} relay_rss_mb={} \
         drain_vs_debezium={} drain_ratio_ce={} p99_vs_debezium={} write_overhead_vs_control={} rss_vs_debezium={} debezium_drain_eps={} debezium_e2e_p99_ms={} debezium_rss_mb={} durable={}",
        f(one.map(|d| d.eps), 0),
        f(k, 0),
        f(one.zip(k).map(|(d, k)| d.eps / k), 2),
        f(write_overhead.map(|w| w.overhead_pct), 1),
        f(lat.as_ref().map(|l| l.confirm.p50_ms), 1),
        f(lat.as_ref().map(|l| l.confirm.p99_ms), 1),
        f(two_ratio, 2),
        f(inbox_eps, 0),
        f(inbox_eps.zip(p).map(|(i, p)| i / p), 2),
        f(one.map(|d| d.peak_rss_mb), 1),
        f(one.zip(debezium_eps).map(|(d, v)| d.eps / v), 2),
        f(one.zip(k_headers).map(|(d, h)| d.eps / h), 2),
        // Like with like: commit → consumer receipt, the same consumer.
        f(lat.as_ref().zip(peer_lat.as_ref()).map(|(l, d)| l.receipt.p99_ms / d.receipt.p99_ms), 3),
        f(write_overhead.map(|w| w.vs_control), 2),
        f(one.zip(debezium_rss).map(|(d, r)| d.peak_rss_mb / r), 3),
        f(debezium_eps, 0),
        f(peer_lat.as_ref().map(|d| d.receipt.p99_ms), 1),
        f(debezium_rss, 1),
        durability.production(),
    );
    if let Some(path) = &args.json {
        results.insert("machine".into(), json!({ "cores": cores, "fdatasync_per_s": fsync }));
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}

/// The topic check of a drain, for its row.
fn check(d: &drain::Drain) -> String {
    d.check.map_or("topic not read back".to_owned(), |c| c.to_string())
}

/// A results-table row for S3 at one rate.
fn latency_row(l: &latency::Latency) -> (String, String) {
    (
        format!("S3 latency @ {:.0}/s", l.rate),
        format!(
            "commit → confirmation p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (of which commit → sent p50 {:.1}, p99 {:.1} ms); commit → broker append p50 {:.1} ms, p99 {:.1} ms; commit → consumer receipt p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events)",
            l.confirm.p50_ms, l.confirm.p99_ms, l.confirm.max_ms, l.sent.p50_ms, l.sent.p99_ms, l.appended.p50_ms, l.appended.p99_ms, l.receipt.p50_ms, l.receipt.p99_ms, l.receipt.max_ms, l.events
        ),
    )
}
