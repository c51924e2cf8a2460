//! The fault-injection suite (`./scripts/chaos`): real relays and consumers
//! as processes, one fault at a time, then a Jepsen-style check of what
//! reached the topic against what committed (docs/guarantees.md).
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

mod check;
mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod consumers;
mod load;
mod relays;
mod services;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use check::*;
use cluster::*;
use common::postgres::PrivatePostgres;
use common::proxy::Proxy;
use common::*;
use consumers::*;
use load::*;
use outbox::{Message, Outbox};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relays::*;
use services::*;
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
    ("broker-crash", false, |s| Box::pin(broker_crash(s))),
    ("leader-failover", false, |s| Box::pin(leader_failover(s))),
    ("insync-lost", false, |s| Box::pin(insync_lost(s))),
    ("combined", false, |s| Box::pin(combined(s))),
    ("postgres-crash", false, |s| Box::pin(postgres_crash(s))),
    ("broker-errors", false, |s| Box::pin(broker_errors(s))),
    ("network-faults", false, |s| Box::pin(network_faults(s))),
    ("consumer-crash", false, |s| Box::pin(consumer_crash(s))),
    ("consumer-rebalance", false, |s| Box::pin(consumer_rebalance(s))),
    ("consumer-churn", false, |s| Box::pin(consumer_churn(s))),
    ("bad-inputs", false, |s| Box::pin(bad_inputs(s))),
    ("poison-events", false, |s| Box::pin(poison_events(s))),
];

/// The fault-injection suite: real relays, consumers, PostgreSQL and a
/// broker, one fault per scenario, then a check of the topic against what
/// committed.
#[derive(Debug, clap::Parser)]
#[command(name = "chaos")]
struct Args {
    /// Run every scenario (default: the quick subset).
    #[arg(long)]
    all: bool,
    /// Run only this scenario (repeatable).
    #[arg(long, value_name = "SCENARIO", value_parser = scenario_name)]
    only: Vec<String>,
    /// Seed of the scenarios' random choices (default: a fresh one each).
    #[arg(long)]
    seed: Option<u64>,
    /// List the quick subset as tests (with --ignored: the others), as a
    /// test runner asks.
    #[arg(long)]
    list: bool,
    /// With --list: the scenarios outside the quick subset.
    #[arg(long)]
    ignored: bool,
    /// Filters match whole scenario names (as cargo-nextest asks for one).
    #[arg(long)]
    exact: bool,
    /// Scenarios whose name contains one of these (libtest's filters).
    filters: Vec<String>,
    /// Accepted from test runners and ignored: scenarios run one at a time.
    #[arg(long, hide = true)]
    test_threads: Option<usize>,
    /// Accepted from test runners and ignored.
    #[arg(long, hide = true)]
    format: Option<String>,
    /// Accepted from test runners and ignored: output is never captured.
    #[arg(long, hide = true)]
    nocapture: bool,
    /// Accepted from test runners and ignored.
    #[arg(long, hide = true)]
    color: Option<String>,
    /// Accepted from test runners and ignored.
    #[arg(short, long, hide = true)]
    quiet: bool,
}

fn scenario_name(name: &str) -> Result<String, String> {
    if SCENARIOS.iter().any(|(n, _, _)| *n == name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "no scenario {name:?}; scenarios: {}",
            SCENARIOS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
        ))
    }
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).is_some_and(|a| a == "--writer") {
        return writer_process(&raw[2..]);
    }
    let args = <Args as clap::Parser>::parse();
    if args.list {
        // Test runners' listing: the quick subset as tests, the rest as ignored.
        for (name, quick, _) in SCENARIOS {
            if *quick != args.ignored {
                println!("{name}: test");
            }
        }
        return ExitCode::SUCCESS;
    }
    let filtered =
        |name: &str| args.filters.iter().any(|f| if args.exact { f == name } else { name.contains(f.as_str()) });
    let chosen: Vec<&(&str, bool, Scenario)> = SCENARIOS
        .iter()
        .filter(|(name, quick, _)| {
            if !args.only.is_empty() {
                args.only.iter().any(|o| o == name)
            } else if !args.filters.is_empty() {
                filtered(name)
            } else {
                args.all || *quick
            }
        })
        .collect();
    if chosen.is_empty() {
        eprintln!(
            "error: no scenario matches {:?}; scenarios: {}",
            args.filters,
            SCENARIOS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
        );
        return ExitCode::from(2);
    }
    let seed = args.seed;
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
