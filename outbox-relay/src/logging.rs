//! Logs on stderr that can never stop the relay.
//!
//! Lines go through a bounded queue to a writer thread: when stderr is not
//! read (a full pipe, a stuck log shipper), lines past the bound are dropped
//! and counted (`outbox_log_lines_dropped_total`) instead of blocking the
//! thread that logs, and with it the relay, SIGTERM handling included.

use std::io::Write;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The installed logger; dropping it flushes what is queued (for at most
/// about a second).
pub struct Logging {
    writer: NonBlocking,
    _guard: WorkerGuard,
}

impl Logging {
    /// Installs the global subscriber: `RUST_LOG` filter (default `info`),
    /// at most `buffered_lines` waiting for stderr.
    pub fn init(format: LogFormat, buffered_lines: usize) -> Logging {
        let (writer, guard) =
            NonBlockingBuilder::default().lossy(true).buffered_lines_limit(buffered_lines).finish(std::io::stderr());
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        // Colours only for a person at a terminal, not in files or pipes.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer.clone());
        match format {
            LogFormat::Json => builder.json().init(),
            LogFormat::Text => builder.init(),
        }
        Logging { writer, _guard: guard }
    }

    /// How many lines were dropped so far.
    pub fn dropped(&self) -> ErrorCounter {
        self.writer.error_counter()
    }

    /// Writes `text` (a final error) through the same queue, so that even
    /// the last words cannot block the exit.
    pub fn write_line(&self, text: &str) {
        let mut writer = self.writer.clone();
        let _ = writeln!(writer, "{text}");
    }
}

/// Publishes the dropped-line count as a metric every few seconds.
pub async fn export_dropped(dropped: ErrorCounter) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        every.tick().await;
        metrics::counter!("outbox_log_lines_dropped_total").absolute(dropped.dropped_lines() as u64);
    }
}
