//! S3: end-to-end latency at a steady rate, per event: commit → broker
//! confirmation and commit → consumer receipt. Writers, relay and consumer
//! share this process's clock: the relay runs here as a library (on its own
//! runtime and connection pool, with the relay binary's defaults), its
//! publisher wrapped to note when each event's confirmation arrived.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_core::{
    CancellationToken, Delivery, KafkaPublisher, KafkaPublisherConfig, Message, OutboxConfig, OutboxEvent, PgStore,
    Publisher, Relay, RelayConfig, Sending,
};
use rdkafka::message::{Headers, Message as _};
use sqlx::postgres::PgPoolOptions;

use crate::env::{key, payload, percentile, Env};

/// When each event (by id) was seen.
pub type Clock = Arc<Mutex<HashMap<String, Instant>>>;

/// When the broker appended each event (by id): its `LogAppendTime`
/// timestamp, in ms since the epoch.
pub type Appended = Arc<Mutex<HashMap<String, i64>>>;

/// Percentiles of one latency, in ms.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Spread {
    #[serde(skip)]
    pub sorted_ms: Vec<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    /// Per event seen in `from`, the time until it was seen in `to`.
    pub fn of(what: &str, from: &HashMap<String, Instant>, to: &HashMap<String, Instant>) -> anyhow::Result<Spread> {
        let ms: Vec<f64> = from
            .iter()
            .filter_map(|(id, a)| to.get(id).map(|b| b.saturating_duration_since(*a).as_secs_f64() * 1000.0))
            .collect();
        anyhow::ensure!(ms.len() == from.len(), "{what}: {} of {} events seen", ms.len(), from.len());
        Ok(Spread::from_ms(ms))
    }

    /// The percentiles of `ms`.
    pub fn from_ms(mut ms: Vec<f64>) -> Spread {
        ms.sort_by(f64::total_cmp);
        Spread {
            p50_ms: percentile(&ms, 50.0),
            p99_ms: percentile(&ms, 99.0),
            max_ms: ms.last().copied().unwrap_or_default(),
            sorted_ms: ms,
        }
    }
}

/// Result of S3 at one rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub rate: f64,
    pub events: usize,
    /// Commit → handed to the producer (the relay's poll wait and claim).
    pub sent: Spread,
    /// Commit → broker confirmation (as the relay receives it).
    pub confirm: Spread,
    /// Commit → the broker's append (the record's `LogAppendTime`, ms
    /// resolution): measured alike for the relay and for Debezium.
    pub appended: Spread,
    /// Commit → receipt by a consumer.
    pub receipt: Spread,
}

/// Per event committed at an `Instant`, the time until the broker appended
/// it by its wall clock; `anchor` is one moment on both clocks.
pub fn append_spread(
    committed: &HashMap<String, Instant>,
    appended: &HashMap<String, i64>,
    anchor: (Instant, std::time::SystemTime),
) -> anyhow::Result<Spread> {
    let anchor_ms = anchor.1.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64() * 1000.0;
    let mut ms = Vec::with_capacity(committed.len());
    for (id, at) in committed {
        let Some(&append) = appended.get(id) else { continue };
        // Every commit is after the anchor.
        let commit_ms = anchor_ms + at.saturating_duration_since(anchor.0).as_secs_f64() * 1000.0;
        // The broker's timestamp is truncated to the ms: never before the commit.
        ms.push((append as f64 - commit_ms).max(0.0));
    }
    anyhow::ensure!(
        ms.len() == committed.len(),
        "commit → broker append: {} of {} events seen",
        ms.len(),
        committed.len()
    );
    Ok(Spread::from_ms(ms))
}

/// The Kafka publisher, noting when each event was handed to it and when
/// its confirmation arrived.
struct Timed {
    inner: KafkaPublisher,
    sent: Clock,
    confirmed: Clock,
}

#[async_trait]
impl Publisher for Timed {
    async fn send(&self, events: &[OutboxEvent], hold: &HashSet<String>) -> Sending {
        let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        {
            let now = Instant::now();
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                sent.entry(id.clone()).or_insert(now);
            }
        }
        let sending = self.inner.send(events, hold).await;
        let confirmed = self.confirmed.clone();
        Sending::new(vec![None; ids.len()], async move {
            let outcomes = sending.outcomes().await;
            let now = Instant::now();
            let mut clock = confirmed.lock().unwrap_or_else(|e| e.into_inner());
            for (id, outcome) in ids.iter().zip(&outcomes) {
                if *outcome == Delivery::Delivered {
                    clock.entry(id.clone()).or_insert(now);
                }
            }
            outcomes.into_iter().enumerate().collect()
        })
    }

    async fn ping(&self) -> outbox_core::Result<()> {
        self.inner.ping().await
    }
}

/// Runs a relay on its own thread and runtime until `shutdown`.
fn relay_thread(
    env: &Env,
    config: OutboxConfig,
    sent: Clock,
    confirmed: Clock,
    relay_config: RelayConfig,
    shutdown: CancellationToken,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    let notify = config.notify();
    let (url, brokers) = (env.database_url.clone(), env.brokers.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(async move {
            // Set up as the relay binary sets up its pool.
            let options = outbox_core::queue_session_options(url.parse()?);
            let pool = PgPoolOptions::new().max_connections(4).test_before_acquire(false).connect_with(options).await?;
            let publisher = Timed { inner: KafkaPublisher::new(KafkaPublisherConfig::new(brokers))?, sent, confirmed };
            let relay = Relay::new(PgStore::new(pool.clone(), &config).with_queue_sessions(), publisher, relay_config)?;
            if notify {
                tokio::spawn(outbox_core::listen_for_wakeups(pool, &config, relay.waker(), shutdown.clone()));
            }
            relay.run(shutdown).await?;
            Ok(())
        })
    })
}

/// `relay` is the relay's configuration (the binary's defaults but for the
/// options S3 is run with); with
/// `notify`, writers send a wake-up with each event and the relay listens
/// (`--wakeup notify`).
pub async fn steady(
    env: &Env,
    rate: f64,
    duration: Duration,
    relay: &RelayConfig,
    notify: bool,
) -> anyhow::Result<Latency> {
    let (config, _) = env.outbox("latency").await?;
    let config = config.with_notify(notify);
    let outbox = outbox_core::Outbox::new(config.clone());
    let topic = env.topic_with("latency", 6, &[("message.timestamp.type", "LogAppendTime")]).await?;
    let committed: Clock = Arc::default();
    let appended: Appended = Arc::default();
    let handed: Clock = Arc::default();
    let confirmed: Clock = Arc::default();
    let received: Clock = Arc::default();
    let shutdown = CancellationToken::new();
    let relay = relay_thread(env, config, handed.clone(), confirmed.clone(), relay.clone(), shutdown.clone());
    let reader = spawn_reader(env, &topic, "ce_id", &received, Some(&appended), duration + Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(2)).await; // relay joined, reader assigned
    let anchor = (Instant::now(), std::time::SystemTime::now());
    paced(rate, duration, &committed, |i| {
        let (pool, outbox, topic) = (env.pool.clone(), outbox.clone(), topic.clone());
        async move {
            let m = Message::json(&topic, "bench.event", &payload(i))?.with_key(key(i, 10_000));
            let mut tx = pool.begin().await?;
            outbox.enqueue(&mut *tx, &m).await?;
            tx.commit().await?;
            Ok(m.id().to_string())
        }
    })
    .await?;
    let written = committed.lock().unwrap_or_else(|e| e.into_inner()).len();
    reader.finish(written)?;
    shutdown.cancel();
    relay.join().map_err(|_| anyhow::anyhow!("relay panicked"))??;
    let committed = committed.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.lock().unwrap_or_else(|e| e.into_inner());
    let confirmed = confirmed.lock().unwrap_or_else(|e| e.into_inner());
    let received = received.lock().unwrap_or_else(|e| e.into_inner());
    let appended = appended.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Latency {
        rate,
        events: committed.len(),
        sent: Spread::of("commit → sent", &committed, &handed)?,
        confirm: Spread::of("commit → confirmation", &committed, &confirmed)?,
        appended: append_spread(&committed, &appended, anchor)?,
        receipt: Spread::of("commit → consumer receipt", &committed, &received)?,
    })
}

/// Runs `write(i)` for events 0, 1, … at `rate` per second for `duration`,
/// each in its own task (at most 64 waiting), and notes in `committed` when
/// each one's transaction committed, by the id `write` returns.
pub async fn paced<F, Fut>(rate: f64, duration: Duration, committed: &Clock, mut write: F) -> anyhow::Result<()>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>> + Send + 'static,
{
    let start = Instant::now();
    let mut sent = 0usize;
    let mut writers = tokio::task::JoinSet::new();
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate) as usize;
        while sent < due {
            let (write, committed) = (write(sent), committed.clone());
            writers.spawn(async move {
                let id = write.await?;
                committed.lock().unwrap_or_else(|e| e.into_inner()).insert(id, Instant::now());
                Ok::<_, anyhow::Error>(())
            });
            sent += 1;
        }
        while writers.len() > 64 {
            if let Some(r) = writers.join_next().await {
                r??;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while let Some(r) = writers.join_next().await {
        r??;
    }
    Ok(())
}

/// A consumer on its own thread recording receipts (see [`read`]).
pub struct Reader {
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    expected: Arc<AtomicUsize>,
}

impl Reader {
    /// Waits until `expected` events were received, or the reader's time
    /// ran out (the caller then finds the missing ones).
    pub fn finish(self, expected: usize) -> anyhow::Result<()> {
        self.expected.store(expected, Ordering::SeqCst);
        self.thread.join().map_err(|_| anyhow::anyhow!("reader panicked"))?
    }
}

/// Runs [`read`] on its own thread, for at most `until`.
pub fn spawn_reader(
    env: &Env,
    topic: &str,
    id_header: &'static str,
    received: &Clock,
    appended: Option<&Appended>,
    until: Duration,
) -> Reader {
    let (brokers, topic, received, appended) =
        (env.brokers.clone(), topic.to_owned(), received.clone(), appended.cloned());
    let expected = Arc::new(AtomicUsize::new(usize::MAX));
    let wanted = Arc::clone(&expected);
    let thread =
        std::thread::spawn(move || read(&brokers, &topic, id_header, &received, appended.as_deref(), until, &wanted));
    Reader { thread, expected }
}

/// Records when each event (by its `id_header`) is first received from
/// `topic`, and with `appended` the broker's append time of topics that
/// keep it, until `expected` events were or `until` has passed.
pub fn read(
    brokers: &str,
    topic: &str,
    id_header: &str,
    received: &Mutex<HashMap<String, Instant>>,
    appended: Option<&Mutex<HashMap<String, i64>>>,
    until: Duration,
    expected: &AtomicUsize,
) -> anyhow::Result<()> {
    let consumer = crate::env::reader(brokers, topic, &[("fetch.wait.max.ms", "5")])?;
    let start = Instant::now();
    while start.elapsed() < until {
        if let Some(m) = consumer.poll(Duration::from_millis(50)) {
            let m = m?;
            let now = Instant::now();
            if let Some(id) = m.headers().and_then(|h| h.iter().find(|h| h.key == id_header).and_then(|h| h.value)) {
                let id = String::from_utf8_lossy(id).into_owned();
                if let (Some(appended), rdkafka::Timestamp::LogAppendTime(ms)) = (appended, m.timestamp()) {
                    appended.lock().unwrap_or_else(|e| e.into_inner()).entry(id.clone()).or_insert(ms);
                }
                received.lock().unwrap_or_else(|e| e.into_inner()).entry(id).or_insert(now);
            }
        }
        if received.lock().unwrap_or_else(|e| e.into_inner()).len() >= expected.load(Ordering::SeqCst) {
            break;
        }
    }
    Ok(())
}
