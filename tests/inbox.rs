//! The idempotent consumer runtime in-process: CloudEvents headers and trace
//! context reach the handler, failing handlers are retried then
//! dead-lettered without stopping consumption, old inbox rows are cleaned up.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use outbox::{CancellationToken, ConsumerConfig, Handler, HandlerError, InboxConsumer, Message, ReceivedEvent};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgConnection;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

fn init_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tests")));
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

fn current_trace_id() -> String {
    tracing::Span::current().context().span().span_context().trace_id().to_string()
}

#[derive(Default)]
struct Recorder {
    retry_always: HashSet<Uuid>,
    permanent: HashSet<Uuid>,
    seen: Mutex<Vec<(ReceivedEvent, String)>>,
    schema: String,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, event: &ReceivedEvent, tx: &mut PgConnection) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push((event.clone(), current_trace_id()));
        if self.retry_always.contains(&event.id) {
            return Err(HandlerError::retry("boom"));
        }
        if self.permanent.contains(&event.id) {
            return Err(HandlerError::permanent("cannot parse"));
        }
        sqlx::query(&format!("INSERT INTO \"{}\".effects (event_id) VALUES ($1)", self.schema))
            .bind(event.id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handler_sees_cloudevents_and_failures_are_dead_lettered() {
    init_tracing();
    let world = World::new(1).await;
    sqlx::query(&format!("CREATE TABLE \"{}\".effects (event_id uuid NOT NULL)", world.schema))
        .execute(&world.pool)
        .await
        .unwrap();

    let (good, writer_trace) = {
        let span = tracing::info_span!("place_order");
        let _entered = span.enter();
        let m = Message::json(&world.topic, "order.placed", &serde_json::json!({"id": 1}))
            .unwrap()
            .with_key("order-1")
            .with_header("tenant", "acme");
        (m, current_trace_id())
    };
    assert!(good.traceparent().is_some_and(|tp| tp.contains(&writer_trace)), "traceparent captured from the span");
    let flaky = Message::bytes(&world.topic, "order.flaky", b"{}".to_vec()).with_key("order-2");
    let poison = Message::bytes(&world.topic, "order.poison", b"{}".to_vec()).with_key("order-3");
    let last = Message::bytes(&world.topic, "order.last", b"{}".to_vec()).with_key("order-4");
    world.outbox.enqueue_all(&world.pool, &[good.clone(), flaky.clone(), poison.clone()]).await.unwrap();
    let relay = world.relay(&[]);
    world.wait_drained(Duration::from_secs(30)).await;
    // A message that is not an outbox event at all.
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &world.brokers).create().unwrap();
    producer
        .send(
            FutureRecord::<str, str>::to(&world.topic)
                .payload("raw")
                // Not published by the relay: the CloudEvents check skips it.
                .headers(
                    rdkafka::message::OwnedHeaders::new()
                        .insert(rdkafka::message::Header { key: "x-outbox-test", value: Some("raw") }),
                ),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    world.outbox.enqueue(&world.pool, &last).await.unwrap();
    world.wait_drained(Duration::from_secs(30)).await;
    drop(relay);

    let recorder = Arc::new(Recorder {
        retry_always: [flaky.id()].into(),
        permanent: [poison.id()].into(),
        schema: world.schema.clone(),
        ..Default::default()
    });
    let mut config = ConsumerConfig::new(&world.brokers, unique("group"), &[&world.topic]);
    config.max_attempts = 3;
    config.retry_min_delay = Duration::from_millis(10);
    config.retry_max_delay = Duration::from_millis(50);
    let consumer = InboxConsumer::new(world.pool.clone(), &world.config, config, recorder.clone()).unwrap();
    let stats = consumer.stats();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { consumer.run(shutdown).await }
    });
    let start = Instant::now();
    while stats.applied() + stats.dead_lettered() < 5 {
        assert!(start.elapsed() < Duration::from_secs(60), "consumer stuck: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert_eq!((stats.applied(), stats.dead_lettered()), (2, 3));

    let seen = recorder.seen.lock().unwrap().clone();
    let (event, handler_trace) = seen.iter().find(|(e, _)| e.id == good.id()).unwrap();
    assert_eq!(event.event_type, "order.placed");
    assert_eq!(event.source.as_deref(), Some("/tests"));
    assert_eq!(event.key_str(), Some("order-1"));
    assert_eq!(event.headers["ce_specversion"], "1.0");
    assert_eq!(event.headers["content-type"], "application/json");
    assert_eq!(event.headers["tenant"], "acme");
    assert!(event.time.is_some());
    assert_eq!(event.json::<serde_json::Value>().unwrap(), serde_json::json!({"id": 1}));
    assert_eq!(handler_trace, &writer_trace, "the consumer's span continues the writer's trace");
    assert_eq!(seen.iter().filter(|(e, _)| e.id == flaky.id()).count(), 3, "retried up to max_attempts");
    assert_eq!(seen.iter().filter(|(e, _)| e.id == poison.id()).count(), 1, "permanent errors are not retried");

    let dead: Vec<(Option<Uuid>, String, i32)> = sqlx::query_as(&format!(
        "SELECT event_id, error, attempts FROM \"{}\".inbox_dead_letter ORDER BY id",
        world.schema
    ))
    .fetch_all(&world.pool)
    .await
    .unwrap();
    println!("{dead:?}");
    assert!(dead.contains(&(Some(flaky.id()), "boom".into(), 3)));
    assert!(dead.contains(&(Some(poison.id()), "permanent: cannot parse".into(), 1)));
    assert!(dead.iter().any(|(id, e, _)| id.is_none() && e.contains("no ce_id")));
    let effects: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{}\".effects", world.schema))
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert_eq!(effects, 2, "good and last applied, nothing else");
}

#[tokio::test]
async fn inbox_rows_past_the_horizon_are_cleaned_up() {
    let world = World::new(1).await;
    let inbox = format!("\"{}\".inbox", world.schema);
    sqlx::query(&format!(
        "INSERT INTO {inbox} (consumer_group, event_id, topic, processed_at) \
         SELECT 'g', gen_random_uuid(), 't', now() - interval '10 days' FROM generate_series(1, 12000)"
    ))
    .execute(&world.pool)
    .await
    .unwrap();
    sqlx::query(&format!("INSERT INTO {inbox} (consumer_group, event_id, topic) VALUES ('g', gen_random_uuid(), 't')"))
        .execute(&world.pool)
        .await
        .unwrap();
    let deleted =
        outbox::cleanup_inbox_now(&world.pool, &world.config, Duration::from_secs(7 * 24 * 3600)).await.unwrap();
    assert_eq!(deleted, 12000);
    let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {inbox}")).fetch_one(&world.pool).await.unwrap();
    assert_eq!(left, 1);
}
