//! Command line and environment configuration of the relay.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use outbox_core::secrets::is_secret_setting;
use outbox_core::{KafkaPublisherConfig, OutboxConfig, PoisonPolicy, RelayConfig, TopicCreation};

/// Drains a transactional outbox into Kafka.
///
/// Every option can also be set through the environment variable shown.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,

    /// Log format on stderr.
    #[arg(long, env = "OUTBOX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log lines held for a slow stderr before new ones are dropped (and
    /// counted in outbox_log_lines_dropped_total): logging never blocks.
    #[arg(long, env = "OUTBOX_LOG_BUFFER_LINES", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000), global = true)]
    pub log_buffer_lines: u32,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drain the outbox into Kafka until SIGTERM or Ctrl-C (the default).
    Run(Box<RunArgs>),
    /// Create or upgrade the outbox and inbox tables, then exit.
    Migrate,
    /// Show pending and dead-lettered counts and each relay with its slots.
    Status(crate::admin::StatusArgs),
    /// Publish retained events again (needs `run --retention`), by id or by
    /// the time they were written.
    Replay(crate::admin::ReplayArgs),
    /// Inspect, retry or discard dead-lettered events.
    #[command(subcommand)]
    DeadLetters(crate::admin::DeadLetterCommand),
    /// Show sagas: counts by type and status, or one saga with its history.
    Sagas(crate::sagas::SagasArgs),
    /// Print the least-privilege GRANT statements for this outbox (run them
    /// as the tables' owner after `migrate`); needs no database.
    Grants(GrantsArgs),
}

/// Roles of `grants`.
#[derive(Debug, Args)]
pub struct GrantsArgs {
    /// The application's role: may only insert events.
    #[arg(long)]
    pub app_role: String,
    /// The relay's role.
    #[arg(long)]
    pub relay_role: String,
    /// An idempotent consumer's role (its inbox tables).
    #[arg(long)]
    pub consumer_role: String,
}

/// Wake-up mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Wakeup {
    /// Poll every --poll-interval.
    Poll,
    /// LISTEN for writers' NOTIFY, poll as the fallback.
    Notify,
}

/// Poison-event policy (see `PoisonPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Poison {
    /// Dead-letter and hold the key.
    Quarantine,
    /// Dead-letter and let the key go on.
    Continue,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the outbox lives.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// PostgreSQL connection URL (postgres://user:password@host:port/db).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,

    /// File holding the PostgreSQL URL (a mounted secret); when given, it is
    /// used instead of --database-url / DATABASE_URL.
    #[arg(long, env = "DATABASE_URL_FILE", global = true)]
    pub database_url_file: Option<std::path::PathBuf>,

    /// Schema holding the outbox tables.
    #[arg(long, env = "OUTBOX_SCHEMA", default_value = "outbox", global = true)]
    pub schema: String,

    /// Outbox table name.
    #[arg(long, env = "OUTBOX_TABLE", default_value = "outbox", global = true)]
    pub outbox_table: String,

    /// Dead-letter table name.
    #[arg(long, env = "OUTBOX_DEAD_LETTER_TABLE", default_value = "outbox_dead_letter", global = true)]
    pub dead_letter_table: String,

    /// Inbox table name (created by `migrate`).
    #[arg(long, env = "OUTBOX_INBOX_TABLE", default_value = "inbox", global = true)]
    pub inbox_table: String,

    /// Inbox dead-letter table name (created by `migrate`).
    #[arg(long, env = "OUTBOX_INBOX_DEAD_LETTER_TABLE", default_value = "inbox_dead_letter", global = true)]
    pub inbox_dead_letter_table: String,

    /// How long to wait for a database connection.
    #[arg(long, env = "OUTBOX_DB_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub db_connect_timeout: Duration,

    /// Slots the keys are spread over, used when the outbox is first
    /// migrated (fixed afterwards). More slots than relays, always.
    #[arg(long, env = "OUTBOX_SLOTS", default_value_t = outbox_core::DEFAULT_SLOTS, value_parser = clap::value_parser!(u16).range(1..=4096), global = true)]
    pub slots: u16,
}

impl DbArgs {
    /// The database URL: read from --database-url-file if given, else
    /// --database-url.
    pub fn url(&self) -> Result<String, String> {
        if let Some(path) = &self.database_url_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the database URL from {}: {e}", path.display()))?;
            let url = text.trim();
            if url.is_empty() {
                return Err(format!("{} is empty", path.display()));
            }
            return Ok(url.to_owned());
        }
        self.database_url
            .as_ref()
            .map(|u| u.0.clone())
            .ok_or_else(|| "DATABASE_URL (or --database-url, or DATABASE_URL_FILE) is required".to_owned())
    }

    /// The checked outbox configuration.
    pub fn outbox_config(&self) -> Result<OutboxConfig, outbox_core::Error> {
        OutboxConfig::default()
            .with_schema(&self.schema)?
            .with_outbox_table(&self.outbox_table)?
            .with_dead_letter_table(&self.dead_letter_table)?
            .with_inbox_table(&self.inbox_table)?
            .with_inbox_dead_letter_table(&self.inbox_dead_letter_table)?
            .with_slots(self.slots)
    }
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kafka bootstrap brokers, comma-separated host:port.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Extra librdkafka setting as key=value (repeatable; TLS, SASL, tuning).
    /// Values are never logged.
    /// enable.idempotence, acks and message.timeout.ms cannot be weakened.
    /// Several may share one argument, comma-separated; a comma not followed
    /// by `name=` belongs to the value (`debug=broker,topic`). Put secrets in
    /// --kafka-config-file.
    #[arg(short = 'X', long = "kafka-config", env = "OUTBOX_KAFKA_CONFIG", hide_env_values = true)]
    pub kafka_config: Vec<RawSetting>,

    /// File of librdkafka settings, one key=value per line (# comments), read
    /// before -X (a mounted secret holding SASL or TLS key passwords).
    #[arg(long, env = "OUTBOX_KAFKA_CONFIG_FILE")]
    pub kafka_config_file: Option<std::path::PathBuf>,

    /// Most events claimed and published per batch.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Batches in flight at once: while the broker confirms one, the next
    /// ones are claimed and sent (1: one batch at a time).
    #[arg(long, env = "OUTBOX_PIPELINE_DEPTH", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub pipeline_depth: u32,

    /// Pause between polls when the outbox is empty, once it has been empty
    /// this long (e.g. 100ms, 1s).
    #[arg(long, env = "OUTBOX_POLL_INTERVAL", default_value = "10ms", value_parser = parse_positive_duration)]
    pub poll_interval: Duration,

    /// Pause after a claim that found fewer events than a batch: events are
    /// flowing, so claim again soon (capped at --poll-interval).
    #[arg(long, env = "OUTBOX_BUSY_POLL_INTERVAL", default_value = "2ms", value_parser = parse_positive_duration)]
    pub busy_poll_interval: Duration,

    /// First delay after a failed delivery (doubles per attempt, with jitter).
    #[arg(long, env = "OUTBOX_RETRY_MIN_DELAY", default_value = "200ms", value_parser = parse_positive_duration)]
    pub retry_min_delay: Duration,

    /// Longest delay between delivery attempts of one event.
    #[arg(long, env = "OUTBOX_RETRY_MAX_DELAY", default_value = "30s", value_parser = parse_positive_duration)]
    pub retry_max_delay: Duration,

    /// On SIGTERM/Ctrl-C, how long to wait for in-flight confirmations.
    #[arg(long, env = "OUTBOX_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Lease of a slot without heartbeat: a relay that dies or stalls loses
    /// its slots to the others this long after its last heartbeat.
    #[arg(long, env = "OUTBOX_LEASE_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub lease_timeout: Duration,

    /// How often relays re-divide the slots when one joins or leaves.
    #[arg(long, env = "OUTBOX_REBALANCE_INTERVAL", default_value = "1s", value_parser = parse_positive_duration)]
    pub rebalance_interval: Duration,

    /// Name of this relay instance in `status` (default host:pid).
    #[arg(long, env = "OUTBOX_RELAY_NAME")]
    pub name: Option<String>,

    /// When an event fails for good (too large, rejected): `quarantine`
    /// dead-letters it and holds its key's later events until an operator
    /// acts; `continue` dead-letters it and lets the key's later events go.
    #[arg(long, env = "OUTBOX_ON_POISON", value_enum, default_value_t = Poison::Quarantine)]
    pub on_poison: Poison,

    /// How the relay learns of new events: `poll` (every --poll-interval,
    /// no cost to writers) or `notify` (LISTEN for the NOTIFY sent by
    /// writers configured with `OutboxConfig::with_notify`, polling as the
    /// fallback; costs writers commit throughput).
    #[arg(long, env = "OUTBOX_WAKEUP", value_enum, default_value_t = Wakeup::Poll)]
    pub wakeup: Wakeup,

    /// Keep published events this long for `replay` (0s: delete at once).
    #[arg(long, env = "OUTBOX_RETENTION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// While Kafka is unreachable, how often the log is reminded (with the
    /// pending count and the oldest event's age); losing and regaining the
    /// broker are logged once each.
    #[arg(long, env = "OUTBOX_OUTAGE_REPORT_INTERVAL", default_value = "30s", value_parser = parse_positive_duration)]
    pub outage_report_interval: Duration,

    /// How often retained events past --retention are deleted (in batches).
    #[arg(long, env = "OUTBOX_PURGE_INTERVAL", default_value = "10s", value_parser = parse_positive_duration)]
    pub purge_interval: Duration,

    /// Create missing topics (otherwise their events are dead-lettered with
    /// an "unknown topic" error).
    #[arg(long, env = "OUTBOX_CREATE_TOPICS")]
    pub create_topics: bool,

    /// Partitions of topics created by --create-topics.
    #[arg(long, env = "OUTBOX_TOPIC_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub topic_partitions: i32,

    /// Replication factor of topics created by --create-topics.
    #[arg(long, env = "OUTBOX_TOPIC_REPLICATION", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=32))]
    pub topic_replication: i32,

    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, env = "OUTBOX_HTTP_ADDR", default_value = "0.0.0.0:9464")]
    pub http_addr: SocketAddr,

    /// Apply migrations before starting.
    #[arg(long, env = "OUTBOX_MIGRATE")]
    pub migrate: bool,
}

impl RunArgs {
    /// `run`'s options from the environment alone (when no subcommand is given).
    pub fn from_env() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            run: RunArgs,
        }
        Only::parse_from(["outbox-relay"]).run
    }

    /// Relay pacing.
    pub fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            batch_size: self.batch_size as usize,
            poll_interval: self.poll_interval,
            busy_poll_interval: self.busy_poll_interval,
            pipeline_depth: self.pipeline_depth as usize,
            retry_min_delay: self.retry_min_delay,
            retry_max_delay: self.retry_max_delay,
            shutdown_grace: self.shutdown_grace,
            lease_timeout: self.lease_timeout,
            rebalance_interval: self.rebalance_interval,
            name: self.name.clone().unwrap_or_else(|| RelayConfig::default().name),
            retention: self.retention,
            purge_interval: self.purge_interval,
            outage_report_interval: self.outage_report_interval,
            poison_policy: match self.on_poison {
                Poison::Quarantine => PoisonPolicy::QuarantineKey,
                Poison::Continue => PoisonPolicy::DeadLetterAndContinue,
            },
        }
    }

    /// Kafka settings.
    pub fn kafka_config(&self) -> Result<KafkaPublisherConfig, String> {
        let creation = self
            .create_topics
            .then_some(TopicCreation { partitions: self.topic_partitions, replication: self.topic_replication });
        let mut settings = match &self.kafka_config_file {
            Some(path) => read_settings(path)?,
            None => Vec::new(),
        };
        for (i, part) in self.kafka_config.iter().flat_map(|raw| split_settings(&raw.0)).enumerate() {
            let setting = parse_key_value(part)
                .map_err(|e| format!("-X/--kafka-config/OUTBOX_KAFKA_CONFIG setting {}: {e}", i + 1))?;
            settings.push(setting);
        }
        Ok(settings
            .iter()
            .fold(KafkaPublisherConfig::new(&self.kafka_brokers), |c, s| c.with_setting(&s.key, &s.value))
            .with_topic_creation(creation))
    }
}

/// A PostgreSQL URL; `Debug` masks its password.
#[derive(Clone)]
pub struct DatabaseUrl(pub String);

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrl(s.to_owned()))
    }
}

/// A `-X` argument as given, checked after parsing (a parser error would be
/// printed by clap with the value in it); `Debug` shows no secret value.
#[derive(Clone)]
pub struct RawSetting(String);

impl std::str::FromStr for RawSetting {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(RawSetting(s.to_owned()))
    }
}

impl fmt::Debug for RawSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match parse_key_value(&self.0) {
            Ok(setting) => setting.fmt(f),
            Err(_) => f.write_str("<malformed setting, not shown>"),
        }
    }
}

/// One librdkafka setting; `Debug` masks secret values (passwords, keys).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSetting {
    /// Setting name.
    pub key: String,
    /// Its value.
    pub value: String,
}

impl fmt::Debug for KafkaSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if is_secret_setting(&self.key) { "***" } else { &self.value };
        write!(f, "{}={value}", self.key)
    }
}

/// Whether `host` (`host`, `host:port`, `[v6]:port`; a socket path) is this
/// machine.
fn is_loopback(host: &str) -> bool {
    let host = host.trim();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None if host.matches(':').count() > 1 => host, // bare IPv6
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host.is_empty() || host.starts_with('/') || host == "localhost" || host.starts_with("127.") || host == "::1"
}

/// Whether any broker is another machine and `security.protocol` is not TLS.
pub fn kafka_unencrypted(brokers: &str, protocol: Option<&str>) -> bool {
    let tls = protocol.is_some_and(|p| p.eq_ignore_ascii_case("ssl") || p.eq_ignore_ascii_case("sasl_ssl"));
    !tls && brokers.split(',').any(|b| !is_loopback(b))
}

/// librdkafka settings from a properties file: `key=value` lines, `#`
/// comments and blank lines ignored. Errors name the line, never its value.
fn read_settings(path: &std::path::Path) -> Result<Vec<KafkaSetting>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read Kafka settings from {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| (i, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(i, line)| {
            parse_key_value(line).map_err(|_| format!("{} line {}: expected key=value", path.display(), i + 1))
        })
        .collect()
}

/// The settings in one `-X` argument: split at each comma that starts
/// another `name=` (a name being letters, digits, `.`, `_` and `-`), so that
/// lists inside a value (`debug=broker,topic`, `bootstrap.servers=a:9092,b:9092`)
/// stay whole.
fn split_settings(raw: &str) -> impl Iterator<Item = &str> {
    let mut starts = vec![0];
    for (i, _) in raw.match_indices(',') {
        let rest = &raw[i + 1..];
        let name = rest.split(['=', ',']).next().unwrap_or_default();
        let starts_setting = rest.len() > name.len()
            && rest.as_bytes()[name.len()] == b'='
            && !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if starts_setting {
            starts.push(i + 1);
        }
    }
    let ends: Vec<usize> = starts.iter().skip(1).map(|s| s - 1).chain([raw.len()]).collect();
    starts.into_iter().zip(ends).map(move |(s, e)| &raw[s..e])
}

/// One `key=value` setting. The error never echoes the input: a setting
/// without `=` is as likely a secret pasted in the wrong place.
fn parse_key_value(s: &str) -> Result<KafkaSetting, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok(KafkaSetting { key: k.trim().to_owned(), value: v.to_owned() }),
        Some(_) => Err("expected key=value, the key is empty".into()),
        None => Err("expected key=value, found no '=' (the value is not shown)".into()),
    }
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(d)
}

pub use outbox_core::secrets::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_no_secrets() {
        let cli = Cli::try_parse_from([
            "outbox-relay",
            "--database-url",
            "postgres://app:s3cret-pw@db/orders",
            "run",
            "-X",
            "sasl.password=sasl-s3cret",
            "-X",
            "linger.ms=3",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("s3cret-pw") && !shown.contains("sasl-s3cret"), "{shown}");
        assert!(shown.contains("app:***@db") && shown.contains("linger.ms"), "{shown}");
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = std::env::temp_dir().join(format!("outbox-relay-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (url_file, kafka_file) = (dir.join("url"), dir.join("kafka.properties"));
        std::fs::write(&url_file, "postgres://app:pw-from-file@db/orders\n").unwrap();
        std::fs::write(&kafka_file, "# SASL\nsasl.username=relay\n\nsasl.password=kafka-pw-from-file\nlinger.ms=7\n")
            .unwrap();
        let cli = Cli::try_parse_from([
            "outbox-relay".as_ref(),
            "--database-url-file".as_ref(),
            url_file.as_os_str(),
            "run".as_ref(),
            "--kafka-config-file".as_ref(),
            kafka_file.as_os_str(),
            "-X".as_ref(),
            "linger.ms=9".as_ref(),
        ])
        .unwrap();
        assert_eq!(cli.db.url().unwrap(), "postgres://app:pw-from-file@db/orders");
        let Some(Command::Run(run)) = &cli.command else { panic!("run") };
        let shown = format!("{:?}", run.kafka_config().unwrap());
        assert!(shown.contains("sasl.username") && !shown.contains("kafka-pw-from-file"), "{shown}");
        // -X comes after the file: it wins.
        assert!(shown.find("linger.ms\": \"9").is_some() || shown.contains("\"linger.ms\": \"9\""), "{shown}");
        std::fs::write(&kafka_file, "sasl.password\n").unwrap();
        let err = run.kafka_config().unwrap_err();
        assert!(err.contains("line 1") && !err.contains("sasl.password="), "{err}");
        // The file wins over a URL from the flag or the environment.
        let both = Cli::try_parse_from([
            "outbox-relay".as_ref(),
            "--database-url".as_ref(),
            "postgres://other@db/x".as_ref(),
            "--database-url-file".as_ref(),
            url_file.as_os_str(),
        ])
        .unwrap();
        assert_eq!(both.db.url().unwrap(), "postgres://app:pw-from-file@db/orders");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unencrypted_remote_brokers_are_recognised() {
        assert!(kafka_unencrypted("kafka-1:9092,127.0.0.1:9092", None));
        assert!(kafka_unencrypted("kafka-1:9092", Some("SASL_PLAINTEXT")));
        assert!(!kafka_unencrypted("kafka-1:9092", Some("SASL_SSL")));
        assert!(!kafka_unencrypted("127.0.0.1:9092,localhost:9093,[::1]:9094", None));
    }

    #[test]
    fn settings_split_at_commas_that_start_a_setting() {
        let split = |s| split_settings(s).collect::<Vec<_>>();
        assert_eq!(split("linger.ms=1,sasl.username=relay"), ["linger.ms=1", "sasl.username=relay"]);
        assert_eq!(split("debug=broker,topic,msg"), ["debug=broker,topic,msg"]);
        assert_eq!(split("a=x:1,y:2,b.c=3"), ["a=x:1,y:2", "b.c=3"]);
        assert_eq!(split("novalue"), ["novalue"]);
        assert_eq!(split("a=1,,b=2"), ["a=1,", "b=2"]);
    }

    #[test]
    fn key_values_parse() {
        assert_eq!(parse_key_value("a.b=c=d"), Ok(KafkaSetting { key: "a.b".into(), value: "c=d".into() }));
        assert!(parse_key_value("novalue").is_err_and(|e| !e.contains("novalue")));
        assert!(parse_key_value("=v").is_err());
    }
}
