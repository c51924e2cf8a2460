//! One web server of the broadcast rooms. A posted message is stored with
//! its outbox event in one transaction (the room's row lock gives it the
//! room's next sequence number, in commit order) and the relay publishes it
//! to `msg_room_<id>`. Every server consumes all room topics and pushes each
//! message to its Server-Sent-Events clients of that room.
//!
//! The database is the source of truth: a client connecting with
//! `Last-Event-ID: n` first gets what it missed from the database, then the
//! live messages; a live message that skips a number makes the server fill
//! the gap from the database. So every client gets every message of its
//! room, once, in sequence order — through reconnects and server restarts.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use outbox::{CancellationToken, Message, Outbox};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::broadcast;
use uuid::Uuid;

/// How often the server looks in the database for messages of its active
/// rooms that Kafka has not brought it (yet).
const RESYNC_EVERY: Duration = Duration::from_secs(1);

/// A room message, as stored, published and pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct RoomMessage {
    pub room: i64,
    pub seq: i64,
    pub id: Uuid,
    pub author: String,
    pub text: String,
}

/// What a client posts.
#[derive(Debug, Deserialize, Serialize)]
pub struct Post {
    /// Chosen by the client: posting the same id again is answered with
    /// the first post's sequence number (safe retries).
    pub id: Uuid,
    pub author: String,
    pub text: String,
}

/// The topic of a room.
pub fn topic(room: i64) -> String {
    format!("msg_room_{room}")
}

pub fn ddl(schema: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.rooms (id bigint PRIMARY KEY, last_seq bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS {schema}.messages (room bigint NOT NULL, seq bigint NOT NULL, id uuid NOT NULL UNIQUE,
             author text NOT NULL, text text NOT NULL, posted_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (room, seq));"
    )
}

struct Shared {
    pool: PgPool,
    outbox: Outbox,
    schema: String,
    rooms: Mutex<HashMap<i64, broadcast::Sender<RoomMessage>>>,
    /// Highest sequence number put on each room's channel.
    pushed: Mutex<HashMap<i64, i64>>,
    /// Ends every client stream when the server stops.
    shutdown: CancellationToken,
}

impl Shared {
    /// Puts `m` on its room's channel (nobody listening is fine).
    fn push(&self, m: RoomMessage) {
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        let top = pushed.entry(m.room).or_insert(0);
        *top = (*top).max(m.seq);
        drop(pushed);
        let _ = self.channel(m.room).send(m);
    }

    fn channel(&self, room: i64) -> broadcast::Sender<RoomMessage> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.entry(room).or_insert_with(|| broadcast::channel(1024).0).clone()
    }

    /// Messages of `room` after `after` (and before `before`), in order.
    async fn stored(&self, room: i64, after: i64, before: Option<i64>) -> sqlx::Result<Vec<RoomMessage>> {
        sqlx::query_as(&format!(
            "SELECT room, seq, id, author, text FROM {}.messages WHERE room = $1 AND seq > $2 AND seq < $3 ORDER BY seq",
            self.schema
        ))
        .bind(room)
        .bind(after)
        .bind(before.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
    }
}

/// A request the server refuses, with why.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl From<outbox::Error> for Refused {
    fn from(e: outbox::Error) -> Self {
        Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<sqlx::Error> for Refused {
    fn from(e: sqlx::Error) -> Self {
        Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

async fn post_message(
    State(s): State<Arc<Shared>>,
    Path(room): Path<i64>,
    Json(post): Json<Post>,
) -> Result<Json<RoomMessage>, Refused> {
    if room <= 0 || post.author.trim().is_empty() || post.text.len() > 4096 {
        return Err(Refused(StatusCode::BAD_REQUEST, "room must be > 0, author non-empty, text at most 4 KiB".into()));
    }
    let sc = &s.schema;
    let mut tx = s.pool.begin().await?;
    // The room's row lock serialises its posts: sequence order = commit order.
    let seq: i64 = sqlx::query_scalar(&format!(
        "INSERT INTO {sc}.rooms (id, last_seq) VALUES ($1, 1) \
         ON CONFLICT (id) DO UPDATE SET last_seq = {sc}.rooms.last_seq + 1 RETURNING last_seq"
    ))
    .bind(room)
    .fetch_one(&mut *tx)
    .await?;
    let existing: Option<RoomMessage> =
        sqlx::query_as(&format!("SELECT room, seq, id, author, text FROM {sc}.messages WHERE id = $1"))
            .bind(post.id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(existing) = existing {
        tx.rollback().await?; // a retried post: nothing new
        return Ok(Json(existing));
    }
    let message = RoomMessage { room, seq, id: post.id, author: post.author, text: post.text };
    sqlx::query(&format!("INSERT INTO {sc}.messages (room, seq, id, author, text) VALUES ($1, $2, $3, $4, $5)"))
        .bind(room)
        .bind(seq)
        .bind(message.id)
        .bind(&message.author)
        .bind(&message.text)
        .execute(&mut *tx)
        .await?;
    let event = Message::json(topic(room), "room.message", &message)?.with_key(room.to_string());
    s.outbox.enqueue(&mut *tx, &event).await?;
    tx.commit().await?;
    Ok(Json(message))
}

/// The SSE feed of one client: stored messages after its last id, then live
/// ones, gaps filled from the database, each message once and in order.
struct Feed {
    shared: Arc<Shared>,
    room: i64,
    last: i64,
    live: broadcast::Receiver<RoomMessage>,
    queue: VecDeque<RoomMessage>,
}

impl Feed {
    async fn next(&mut self) -> Option<RoomMessage> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                if m.seq <= self.last {
                    continue;
                }
                if m.seq > self.last + 1 {
                    // Something is missing (not consumed yet here, or before we
                    // subscribed): the database has it.
                    let missing = self.shared.stored(self.room, self.last, Some(m.seq)).await.ok()?;
                    self.queue.push_front(m);
                    for earlier in missing.into_iter().rev() {
                        self.queue.push_front(earlier);
                    }
                    if self.queue.front().is_some_and(|f| f.seq > self.last + 1) {
                        return None; // not in the database: end the stream, the client reconnects
                    }
                    continue;
                }
                self.last = m.seq;
                return Some(m);
            }
            let received = tokio::select! {
                r = self.live.recv() => r,
                _ = self.shared.shutdown.cancelled() => return None,
            };
            match received {
                Ok(m) => self.queue.push_back(m),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.queue.extend(self.shared.stored(self.room, self.last, None).await.ok()?);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

async fn events(
    State(s): State<Arc<Shared>>,
    Path(room): Path<i64>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Refused> {
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
    // Subscribe before reading the database, so nothing falls in between.
    let live = s.channel(room).subscribe();
    let queue = s.stored(room, last, None).await?.into();
    let feed = Feed { shared: s, room, last, live, queue };
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let m = feed.next().await?;
        let event = Event::default().id(m.seq.to_string()).json_data(&m).unwrap_or_default();
        Some((Ok(event), feed))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Pushes every room message from Kafka to the room's channel. Each server
/// is a consumer group of its own (`rooms-<name>`), so every server gets
/// every message. The server's name is also its static group membership
/// (`group.instance.id`): a server restarted after a crash takes its
/// partitions back at once, instead of waiting for the broker to time the
/// dead member out, and resumes from its group's committed offsets. What it
/// replays from the time it was down reaches nobody (its clients reconnect
/// and read the database); what arrives before its partitions are assigned
/// is covered by [`resync`].
async fn consume(
    shared: Arc<Shared>,
    brokers: String,
    name: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("rooms-{name}"))
        .set("group.instance.id", &name)
        .set("auto.offset.reset", "latest")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()?;
    consumer.subscribe(&["^msg_room_.*"])?;
    loop {
        let message = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.cancelled() => return Ok(()),
        };
        match message {
            Ok(m) => match m.payload().map(serde_json::from_slice::<RoomMessage>) {
                Some(Ok(msg)) => {
                    shared.push(msg);
                }
                _ => tracing::warn!(topic = m.topic(), offset = m.offset(), "not a room message"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "kafka");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Once a second, pushes from the database what Kafka has not brought yet
/// for each room with listeners: a message that went by before this
/// server's consumer had its partitions (just after a start) would otherwise
/// wait for a later one to show the gap. One query per active room, however
/// many clients; the feeds skip what they already sent.
async fn resync(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RESYNC_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        let active: Vec<i64> = {
            let rooms = shared.rooms.lock().unwrap_or_else(|p| p.into_inner());
            rooms.iter().filter(|(_, tx)| tx.receiver_count() > 0).map(|(room, _)| *room).collect()
        };
        for room in active {
            let after = shared.pushed.lock().unwrap_or_else(|p| p.into_inner()).get(&room).copied().unwrap_or(0);
            match shared.stored(room, after, None).await {
                Ok(missed) => missed.into_iter().for_each(|m| shared.push(m)),
                Err(e) => tracing::warn!(room, error = %e, "resync from the database failed"),
            }
        }
    }
}

/// Runs one server on `port` until SIGTERM.
pub async fn serve(
    pool: PgPool,
    outbox: Outbox,
    schema: String,
    brokers: String,
    name: String,
    port: u16,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let shared = Arc::new(Shared {
        pool,
        outbox,
        schema,
        rooms: Mutex::default(),
        pushed: Mutex::default(),
        shutdown: shutdown.clone(),
    });
    let consumer = tokio::spawn(consume(shared.clone(), brokers, name, shutdown.clone()));
    tokio::spawn(resync(shared.clone(), shutdown.clone()));
    let app = Router::new()
        .route("/rooms/{room}/messages", post(post_message))
        .route("/rooms/{room}/events", get(events))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("ready");
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                term.recv().await;
            }
            stop.cancel();
        })
        .await?;
    shutdown.cancel();
    consumer.await??;
    Ok(())
}
