//! A chat client: follows one room over Server-Sent Events, reconnecting
//! with `Last-Event-ID` whenever its stream ends, and remembers every
//! message it received.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use outbox::CancellationToken;

use super::server::RoomMessage;

/// What a client has seen.
#[derive(Debug, Default)]
pub struct Seen {
    pub messages: Vec<RoomMessage>,
    pub connections: u32,
}

/// A client of `room`, connected to the server at `base` (changeable, to
/// move it to another server).
pub struct Client {
    pub room: i64,
    pub base: Arc<Mutex<String>>,
    pub seen: Arc<Mutex<Seen>>,
    /// Cancel to drop the connection (the client reconnects unless `done`).
    pub drop_connection: Arc<Mutex<CancellationToken>>,
}

impl Client {
    pub fn new(room: i64, base: String) -> Self {
        Client {
            room,
            base: Arc::new(Mutex::new(base)),
            seen: Arc::default(),
            drop_connection: Arc::new(Mutex::new(CancellationToken::new())),
        }
    }

    fn last_id(&self) -> i64 {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).messages.last().map_or(0, |m| m.seq)
    }

    /// Follows the room until `done` is cancelled.
    pub async fn follow(&self, http: reqwest::Client, done: CancellationToken) {
        while !done.is_cancelled() {
            let cut = self.drop_connection.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let base = self.base.lock().unwrap_or_else(|p| p.into_inner()).clone();
            tokio::select! {
                _ = self.session(&http, &base) => {}
                _ = cut.cancelled() => {
                    // Reset the token for the next connection.
                    *self.drop_connection.lock().unwrap_or_else(|p| p.into_inner()) = CancellationToken::new();
                }
                _ = done.cancelled() => return,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One connection: reads events until the stream ends or fails.
    async fn session(&self, http: &reqwest::Client, base: &str) {
        let url = format!("{base}/rooms/{}/events", self.room);
        let response = http.get(&url).header("Last-Event-ID", self.last_id().to_string()).send().await;
        let Ok(response) = response.and_then(reqwest::Response::error_for_status) else { return };
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).connections += 1;
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let data: String = event.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
                if let Ok(message) = serde_json::from_str::<RoomMessage>(&data) {
                    self.seen.lock().unwrap_or_else(|p| p.into_inner()).messages.push(message);
                }
            }
        }
    }
}
