//! Every program we ship refuses an argument it does not know, or a value it
//! cannot read, with a clear error and a non-zero exit: a mistyped option
//! must never silently run something else (`./scripts/chaos --onyl x` once
//! ran the whole suite and reported success).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::binary;

/// The fault-injection suite's test binary (`target/debug/deps/chaos-…`),
/// the newest one built.
fn chaos_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    std::fs::read_dir(&deps)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("chaos-") && p.extension().is_none()
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).unwrap())
        .unwrap_or_else(|| panic!("no chaos test binary in {}: cargo build --tests", deps.display()))
}

fn run(program: &PathBuf, args: &[&str]) -> Output {
    Command::new(program).args(args).env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none").output().unwrap()
}

fn refused(program: &PathBuf, args: &[&str], says: &str) {
    let out = run(program, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{} {args:?} succeeded", program.display());
    assert_eq!(out.status.code(), Some(2), "{} {args:?}: {stderr}", program.display());
    assert!(stderr.contains(says), "{} {args:?}: expected {says:?} in:\n{stderr}", program.display());
}

#[test]
fn unknown_arguments_are_refused_by_every_program() {
    let mut programs: Vec<PathBuf> = ["outbox-relay", "outbox-bench"].iter().map(|b| binary(b)).collect();
    for example in ["order_service", "consumer_service", "flash_sale", "rooms", "saga_demo", "saga_service"] {
        programs.push(binary(example));
    }
    programs.push(chaos_binary());
    for program in &programs {
        refused(program, &["--onyl", "relay-kill"], "unexpected argument '--onyl'");
        refused(program, &["--backend", "x"], "unexpected argument '--backend'");
    }
}

#[test]
fn malformed_values_are_refused() {
    let relay = binary("outbox-relay");
    refused(&relay, &["run", "--batch-size", "many"], "invalid value 'many'");
    refused(&relay, &["run", "--poll-interval", "0s"], "must be above zero");
    refused(&relay, &["run", "--on-poison", "ignore"], "invalid value 'ignore'");
    refused(&binary("outbox-bench"), &["--mode", "fast"], "invalid value 'fast'");
    refused(&binary("order_service"), &["--orders", "lots"], "invalid value 'lots' for '--orders <ORDERS>'");
    let chaos = chaos_binary();
    refused(&chaos, &["--only", "relay-kil"], "no scenario \"relay-kil\"");
    refused(&chaos, &["--seed", "forty-two"], "invalid value 'forty-two'");
    refused(&chaos, &["no-such-scenario"], "no scenario matches");
}

#[test]
fn the_suite_lists_its_scenarios_as_test_runners_ask() {
    let out = run(&chaos_binary(), &["--list", "--format", "terse"]);
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.lines().any(|l| l == "baseline: test"), "{listed}");
    // libtest's own options, as `cargo test -- --test-threads 4` passes them.
    let out = run(&chaos_binary(), &["--list", "--test-threads", "4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
