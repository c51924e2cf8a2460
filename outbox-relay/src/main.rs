//! `outbox-relay`: the sidecar that drains a transactional outbox into Kafka.
//!
//! Thin wiring: configuration in [`config`], HTTP endpoints in [`http`], the
//! relay itself in `outbox-core`.

mod admin;
mod config;
mod http;
mod logging;
mod sagas;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use outbox_core::{migrate, KafkaPublisher, KafkaPublisherConfig, OutboxAdmin, OutboxConfig, PgStore, Relay};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::{kafka_unencrypted, redact_url, Cli, Command, DbArgs, RunArgs, Wakeup};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap echoes a rejected argument: a URL typed where a
            // subcommand was expected would show its password.
            let text = outbox_core::secrets::redact_own_args_in(&e.render().to_string());
            if e.use_stderr() {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let logging = logging::Logging::init(cli.log_format, cli.log_buffer_lines as usize);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            logging.write_line(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.spawn(logging::export_dropped(logging.dropped()));
    let result = runtime.block_on(run(cli));
    // Tasks still running (the HTTP server's, librdkafka's callbacks) log
    // nothing more once the runtime is gone.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging.write_line(&format!("error: {}", outbox_core::secrets::redact_urls_in(&format!("{e:#}"))));
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A configuration mistake (exit code 2, like command-line errors).
#[derive(Debug)]
struct ConfigError(String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigError {}

fn config_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(ConfigError(e.to_string()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let outbox = cli.db.outbox_config().map_err(config_error)?;
    match cli.command {
        Some(Command::Migrate) => {
            let pool = connect(&cli.db).await?;
            let applied = migrate::migrate_verbose(&pool, &outbox).await.context("migration failed")?;
            println!(
                "outbox schema {} is at version {} (applied now: {applied:?})",
                outbox.schema(),
                migrate::LATEST_VERSION
            );
            Ok(())
        }
        Some(Command::Status(args)) => {
            let pool = connect(&cli.db).await?;
            require_migrated(&pool, &outbox).await?;
            admin::status(&OutboxAdmin::new(pool, &outbox), &args).await
        }
        Some(Command::DeadLetters(command)) => {
            let pool = connect(&cli.db).await?;
            require_migrated(&pool, &outbox).await?;
            admin::dead_letters(&OutboxAdmin::new(pool, &outbox), &command).await
        }
        Some(Command::Sagas(args)) => {
            let pool = connect(&cli.db).await?;
            require_migrated(&pool, &outbox).await?;
            sagas::sagas(&pool, &outbox, &args).await
        }
        Some(Command::Replay(args)) => {
            let pool = connect(&cli.db).await?;
            require_migrated(&pool, &outbox).await?;
            admin::replay(&OutboxAdmin::new(pool, &outbox), &args).await
        }
        Some(Command::Grants(args)) => {
            let roles = outbox_core::privileges::Roles {
                app: outbox_core::Ident::new(args.app_role).map_err(config_error)?,
                relay: outbox_core::Ident::new(args.relay_role).map_err(config_error)?,
                consumer: outbox_core::Ident::new(args.consumer_role).map_err(config_error)?,
            };
            print!("{}", outbox_core::privileges::grants_sql(&outbox, &roles));
            Ok(())
        }
        Some(Command::Run(args)) => relay(&cli.db, outbox, *args).await,
        None => relay(&cli.db, outbox, RunArgs::from_env()).await,
    }
}

async fn connect(db: &DbArgs) -> anyhow::Result<PgPool> {
    connect_to(db, &db.url().map_err(config_error)?).await
}

async fn connect_to(db: &DbArgs, url: &str) -> anyhow::Result<PgPool> {
    let options = outbox_core::pg_connect_options(url).map_err(config_error)?;
    let context = || format!("cannot connect to PostgreSQL at {}", redact_url(url));
    first_connection(&options, db.db_connect_timeout).await.with_context(context)?;
    // A pool of its own: sessions start with the queue's planner settings,
    // and a broken connection shows on use (and is retried), so no ping
    // before each statement.
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(db.db_connect_timeout)
        .test_before_acquire(false)
        .connect_with(outbox_core::queue_session_options(options))
        .await
        .with_context(context)
}

/// One connection, retried while the server is not (yet) reachable, for
/// at most `timeout`: fails with the server's own reason (refused, unknown
/// database, authentication) where a pool would only say it timed out.
async fn first_connection(
    options: &sqlx::postgres::PgConnectOptions,
    timeout: std::time::Duration,
) -> sqlx::Result<()> {
    use sqlx::Connection;
    let start = std::time::Instant::now();
    loop {
        match sqlx::PgConnection::connect_with(options).await {
            Ok(connection) => return connection.close().await,
            Err(e @ (sqlx::Error::Io(_) | sqlx::Error::Tls(_))) if start.elapsed() < timeout => {
                tracing::debug!(error = %e, "database not reachable yet");
                tokio::time::sleep(std::time::Duration::from_millis(250).min(timeout)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn relay(db: &DbArgs, outbox: OutboxConfig, args: RunArgs) -> anyhow::Result<()> {
    let relay_config = args.relay_config();
    relay_config.validate().map_err(config_error)?;
    // Secrets files are read once, here.
    let kafka = args.kafka_config().map_err(config_error)?;
    let url = db.url().map_err(config_error)?;
    let options = outbox_core::pg_connect_options(&url).map_err(config_error)?;
    warn_if_unencrypted(&url, &options, &kafka);
    let publisher = KafkaPublisher::new(kafka).map_err(config_error)?;
    let pool = connect_to(db, &url).await?;
    if args.migrate {
        migrate::migrate(&pool, &outbox).await.context("migration failed")?;
    }
    let missing = outbox_core::privileges::missing_for_relay(&pool, &outbox).await?;
    if !missing.is_empty() {
        return Err(config_error(format!(
            "the database role lacks privileges the relay needs: {}; `outbox-relay grants` prints them",
            missing.join(", ")
        )));
    }
    require_migrated(&pool, &outbox).await?;
    let metrics = http::install_metrics()?;
    let store = PgStore::new(pool.clone(), &outbox).with_queue_sessions();
    let relay = Relay::new(store, publisher, relay_config).map_err(config_error)?;
    let shutdown = CancellationToken::new();
    if args.wakeup == Wakeup::Notify {
        tokio::spawn(outbox_core::listen_for_wakeups(pool, &outbox, relay.waker(), shutdown.clone()));
    }
    let state = http::AppState {
        store: Arc::clone(relay.store()),
        publisher: Arc::clone(relay.publisher()),
        metrics,
        busy_slots: Arc::default(),
    };
    let http_shutdown = CancellationToken::new();
    let server = tokio::spawn(http::serve(args.http_addr, state, http_shutdown.clone()));
    tokio::spawn(signal_watch(shutdown.clone()));
    tracing::info!(
        brokers = %args.kafka_brokers,
        schema = %outbox.schema(),
        table = %outbox.outbox_table(),
        batch_size = args.batch_size,
        "relay started"
    );
    let result = tokio::select! {
        r = relay.run(shutdown.clone()) => r.map_err(anyhow::Error::from),
        r = wait_server(server) => r.and(Err(anyhow::anyhow!("HTTP server stopped"))),
    };
    http_shutdown.cancel();
    result
}

/// Warns when the relay talks to a non-loopback database or broker without
/// TLS (credentials and events would cross the network in the clear).
fn warn_if_unencrypted(database_url: &str, options: &sqlx::postgres::PgConnectOptions, kafka: &KafkaPublisherConfig) {
    if outbox_core::database_unencrypted(options) {
        tracing::warn!(database = %redact_url(database_url), "database connection may be unencrypted: set sslmode=verify-full");
    }
    if kafka_unencrypted(kafka.brokers(), kafka.setting("security.protocol")) {
        tracing::warn!(brokers = %kafka.brokers(), "Kafka connection is unencrypted: set -X security.protocol=SSL or SASL_SSL");
    }
}

async fn require_migrated(pool: &PgPool, outbox: &OutboxConfig) -> anyhow::Result<()> {
    match migrate::applied_version(pool, outbox).await? {
        Some(v) if v >= migrate::LATEST_VERSION => Ok(()),
        found => anyhow::bail!(
            "outbox tables in schema {:?} are at version {found:?}, expected {}: run `outbox-relay migrate` or pass --migrate",
            outbox.schema().as_str(),
            migrate::LATEST_VERSION
        ),
    }
}

async fn wait_server(server: tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    server.await.context("HTTP server panicked")?
}

async fn signal_watch(shutdown: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: finishing in-flight batch"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: finishing in-flight batch"),
    }
    shutdown.cancel();
}
