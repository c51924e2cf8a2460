//! Crash points for fault-injection tests.
//!
//! Setting `OUTBOX_FAILPOINT=<name>` (or `<name>@<n>`, the n-th time it is
//! reached) makes the process abort at that point, as a crash would;
//! `<name>@<n>:stop` instead stops it there (SIGSTOP, once), as a long pause
//! would, until it gets SIGCONT. Unset, a failpoint costs one relaxed atomic
//! load. Names used by this crate:
//! `relay-after-publish` (broker confirmed, rows not yet marked) and
//! `inbox-after-commit` (effect committed, Kafka offset not yet stored).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// An armed failpoint: its name, on which hit, and whether it stops
/// (instead of aborting).
struct Armed {
    name: String,
    nth: u64,
    stop: bool,
}

static CONFIG: OnceLock<Option<Armed>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn config() -> &'static Option<Armed> {
    CONFIG.get_or_init(|| {
        let raw = std::env::var("OUTBOX_FAILPOINT").ok()?;
        let (raw, stop) = match raw.strip_suffix(":stop") {
            Some(r) => (r.to_owned(), true),
            None => (raw, false),
        };
        let (name, nth) = match raw.split_once('@') {
            Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
            None => (raw, 1),
        };
        Some(Armed { name, nth, stop })
    })
}

/// Aborts (or stops) the process if the failpoint `name` is armed and due.
pub(crate) fn hit(name: &str) {
    let Some(armed) = config() else { return };
    if armed.name != name {
        return;
    }
    let hits = HITS.fetch_add(1, Ordering::Relaxed) + 1;
    if armed.stop && hits == armed.nth {
        eprintln!("failpoint {name} reached: stopping until SIGCONT");
        let _ = std::process::Command::new("kill").args(["-STOP", &std::process::id().to_string()]).status();
    } else if !armed.stop && hits >= armed.nth {
        eprintln!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}
