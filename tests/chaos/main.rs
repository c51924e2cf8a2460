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

mod check;
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
