//! Crash points for fault-injection tests.
//!
//! Setting `OUTBOX_FAILPOINT=<name>` (or `<name>@<n>`, the n-th time it is
//! reached) makes the process abort at that point, as a crash would. Unset,
//! a failpoint costs one relaxed atomic load. Names used by this crate:
//! `relay-after-publish` (broker confirmed, rows not yet marked) and
//! `inbox-after-commit` (effect committed, Kafka offset not yet stored).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static CONFIG: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn config() -> &'static Option<(String, u64)> {
    CONFIG.get_or_init(|| {
        let raw = std::env::var("OUTBOX_FAILPOINT").ok()?;
        match raw.split_once('@') {
            Some((name, n)) => Some((name.to_owned(), n.parse().unwrap_or(1))),
            None => Some((raw, 1)),
        }
    })
}

/// Aborts the process if the failpoint `name` is armed and due.
pub(crate) fn hit(name: &str) {
    if let Some((armed, nth)) = config() {
        if armed == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 >= *nth {
            eprintln!("failpoint {name} reached: aborting");
            std::process::abort();
        }
    }
}
