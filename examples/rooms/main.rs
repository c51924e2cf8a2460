//! Broadcast rooms: chat rooms served by several web servers.
//!
//! A message posted to a room (to any server) is stored with its outbox
//! event in one transaction; the relay publishes it to the room's topic
//! `msg_room_<id>`; every server consumes all room topics and pushes the
//! messages to its clients over Server-Sent Events.
//!
//! `rooms` (the default role) starts a relay and three servers, connects
//! clients of each room spread over the servers, posts messages to random
//! servers, drops and moves one client mid-run, SIGKILLs and restarts one
//! server, and checks that every client received every message of its room
//! exactly once, in the same order.
//!
//! ```text
//! cargo build --bins --examples && target/debug/examples/rooms --rooms 3 --messages 200
//! ```

#[path = "../common/child.rs"]
mod child;
#[path = "../common/cli.rs"]
mod cli;
mod client;
mod server;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use outbox::{CancellationToken, Outbox, OutboxConfig, TopicCreation};
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use tokio::process::{Child, Command};
use uuid::Uuid;

use client::Client;
use server::{Post, RoomMessage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Runs the scenario and checks it.
    Run,
    /// One web server.
    Server,
}

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long, value_enum, default_value_t = Role::Run)]
    role: Role,
    /// PostgreSQL.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/outbox_demo"
    )]
    database_url: String,
    /// Kafka brokers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Schema of the rooms' tables (`<schema>_outbox` holds the outbox).
    #[arg(long, default_value = "rooms")]
    schema: String,
    /// Web servers (run).
    #[arg(long, default_value_t = 3)]
    servers: u16,
    /// Rooms (run).
    #[arg(long, default_value_t = 3)]
    rooms: i64,
    /// Clients per room, spread over the servers (run).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Messages posted to each room (run).
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Server name (server): its consumer group is `rooms-<name>`, and the
    /// name its static membership in it.
    #[arg(long, default_value = "web")]
    name: String,
    /// Port to listen on (server).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Give up after this long (run).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl Args {
    fn outbox(&self) -> anyhow::Result<Outbox> {
        Ok(Outbox::new(OutboxConfig::default().with_schema(&format!("{}_outbox", self.schema))?.with_source("/rooms")?))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = cli::parse::<Args>();
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(outbox::pg_connect_options(&args.database_url)?)
        .await
        .context("connect")?;
    match args.role {
        Role::Server => {
            let outbox = args.outbox()?;
            server::serve(pool, outbox, args.schema.clone(), args.brokers.clone(), args.name.clone(), args.port).await
        }
        Role::Run => run(args, pool).await,
    }
}

/// The relay and the web servers, as child processes.
struct Processes {
    args: Args,
    servers: Vec<(u16, Option<Child>)>,
    relay: Option<Child>,
}

impl Processes {
    async fn start_server(&mut self, i: usize) -> anyhow::Result<()> {
        let a = &self.args;
        let port = self.servers[i].0;
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--role", "server", "--schema", &a.schema, "--brokers", &a.brokers])
            .args(["--name", &format!("{}-web{i}", a.schema), "--port", &port.to_string()])
            .arg("--database-url")
            .arg(&a.database_url)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        child::wait_ready(&mut child, &format!("server {i}")).await?;
        self.servers[i].1 = Some(child);
        Ok(())
    }

    fn start_relay(&mut self) -> anyhow::Result<()> {
        let child = Command::new(child::relay_binary(&child::own_dir()?)?)
            .args(["run", "--kafka-brokers", &self.args.brokers, "--http-addr", "127.0.0.1:0"])
            .args(["--schema", &format!("{}_outbox", self.args.schema), "--create-topics", "--topic-partitions", "1"])
            .arg("--database-url")
            .arg(&self.args.database_url)
            .env("RUST_LOG", "warn,librdkafka=error")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.relay = Some(child);
        Ok(())
    }

    async fn stop(&mut self) {
        let servers =
            self.servers.iter_mut().enumerate().filter_map(|(i, (_, c))| Some((format!("server {i}"), c.take()?)));
        let relay = self.relay.take().map(|c| ("relay".to_owned(), c));
        child::stop_all(servers.chain(relay).collect::<Vec<_>>()).await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn run(mut args: Args, pool: sqlx::PgPool) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.schema == "rooms" {
        args.schema = format!("rooms_{}_{}", chrono::Utc::now().timestamp(), std::process::id());
    }
    let s = args.schema.clone();
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {s}, {s}_outbox CASCADE")).execute(&pool).await?;
    args.outbox()?.migrate(&pool).await?;
    sqlx::raw_sql(&server::ddl(&s)).execute(&pool).await?;
    // Room ids unique to this run, so its topics are new.
    let first_room = chrono::Utc::now().timestamp_millis() % 1_000_000_000 * 100;
    let rooms: Vec<i64> = (1..=args.rooms).map(|r| first_room + r).collect();
    let names: Vec<String> = rooms.iter().map(|r| server::topic(*r)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    TopicCreation { partitions: 1, replication: 1 }.create(&args.brokers, &names).await?;

    let mut processes = Processes {
        args: args.clone(),
        servers: (0..args.servers).map(|_| Ok((free_port()?, None))).collect::<anyhow::Result<_>>()?,
        relay: None,
    };
    processes.start_relay()?;
    for i in 0..processes.servers.len() {
        processes.start_server(i).await?;
    }
    let bases: Vec<String> = processes.servers.iter().map(|(p, _)| format!("http://127.0.0.1:{p}")).collect();
    println!(
        "== rooms: {} servers, {} rooms, {} clients per room, {} messages per room",
        bases.len(),
        rooms.len(),
        args.clients,
        args.messages
    );
    let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).build()?;

    // Clients, spread over the servers.
    let done = CancellationToken::new();
    let mut clients = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for c in 0..args.clients {
            clients.push(Arc::new(Client::new(*room, bases[(r + c) % bases.len()].clone())));
        }
    }
    let mut following = Vec::new();
    for client in &clients {
        let (client, http, done) = (client.clone(), http.clone(), done.clone());
        following.push(tokio::spawn(async move { client.follow(http, done).await }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Posters: two per room, to random servers, retrying with the same id.
    let posted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut posters = tokio::task::JoinSet::new();
    for room in &rooms {
        for half in 0..2 {
            let (http, bases, posted, room) = (http.clone(), bases.clone(), posted.clone(), *room);
            let count = args.messages / 2 + if half == 0 { args.messages % 2 } else { 0 };
            posters.spawn(async move {
                for n in 0..count {
                    let post =
                        Post { id: Uuid::now_v7(), author: format!("poster-{half}"), text: format!("message {n}") };
                    loop {
                        let pick = rand::rng().random_range(0..bases.len());
                        let base = &bases[pick];
                        let sent = http.post(format!("{base}/rooms/{room}/messages")).json(&post).send().await;
                        if sent.is_ok_and(|r| r.status().is_success()) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    posted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let pause = Duration::from_millis(rand::rng().random_range(0..20));
                    tokio::time::sleep(pause).await;
                }
            });
        }
    }

    // Mid-run: one client drops and comes back on another server; one server is killed and restarted.
    let total = args.messages * rooms.len();
    let at = |share: f64| (total as f64 * share) as usize;
    while posted.load(std::sync::atomic::Ordering::Relaxed) < at(0.3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved = &clients[0];
    *moved.base.lock().unwrap_or_else(|p| p.into_inner()) = bases[1 % bases.len()].clone();
    moved.drop_connection.lock().unwrap_or_else(|p| p.into_inner()).cancel();
    println!("== a client of room {} dropped its connection; it reconnects to another server", moved.room);
    while posted.load(std::sync::atomic::Ordering::Relaxed) < at(0.5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(mut child) = processes.servers[0].1.take() {
        child.start_kill()?;
        let _ = child.wait().await;
    }
    println!("== kill -9 server 0 (its clients reconnect when it is back)");
    tokio::time::sleep(Duration::from_secs(1)).await;
    processes.start_server(0).await?;
    println!("== server 0 restarted");
    while posters.join_next().await.transpose()?.is_some() {}

    // Every client must get every message of its room.
    let expected = args.messages;
    loop {
        let behind = clients.iter().filter(|c| c.seen.lock().map_or(0, |s| s.messages.len()) < expected).count();
        if behind == 0 {
            break;
        }
        if started.elapsed() > args.timeout {
            println!("   {behind} clients still missing messages after {:?}", args.timeout);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.cancel();
    for f in following {
        let _ = f.await;
    }
    processes.stop().await;

    // The check: each client's messages are its room's stored messages, in
    // stored order, each once.
    let mut violations = Vec::new();
    let (mut delivered, mut connections) = (0, 0);
    for room in &rooms {
        let stored: Vec<RoomMessage> = sqlx::query_as(&format!(
            "SELECT room, seq, id, author, text FROM {s}.messages WHERE room = $1 ORDER BY seq"
        ))
        .bind(room)
        .fetch_all(&pool)
        .await?;
        if stored.len() != expected || stored.iter().enumerate().any(|(i, m)| m.seq != i as i64 + 1) {
            violations.push(format!("room {room}: {} messages stored, seq not 1..{expected}", stored.len()));
        }
        for (i, client) in clients.iter().filter(|c| c.room == *room).enumerate() {
            let seen = client.seen.lock().unwrap_or_else(|p| p.into_inner());
            delivered += seen.messages.len();
            connections += seen.connections;
            if seen.messages != stored {
                let got: Vec<i64> = seen.messages.iter().map(|m| m.seq).collect();
                let first_wrong = got.iter().enumerate().find(|(k, q)| **q != *k as i64 + 1).map(|(k, _)| k);
                violations.push(format!(
                    "room {room} client {i}: received {} messages, first out of place at position {first_wrong:?}",
                    got.len()
                ));
            }
        }
    }
    let reconnects = connections as usize - clients.len();
    for v in &violations {
        println!("   VIOLATION: {v}");
    }
    println!("   took {:.1}s", started.elapsed().as_secs_f64());
    let ok = violations.is_empty();
    println!(
        "rooms: servers={} rooms={} clients={} messages={} delivered={delivered} reconnects={reconnects} invariants={}",
        bases.len(),
        rooms.len(),
        clients.len(),
        expected * rooms.len(),
        if ok { "ok" } else { "FAILED" }
    );
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
