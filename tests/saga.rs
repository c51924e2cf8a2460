//! Saga orchestration against real PostgreSQL and Kafka: the orchestrator
//! and scripted participants run in-process as inbox consumers, the relay as
//! a child process. Failed steps are compensated in reverse order, a step
//! past its deadline is compensated too (itself included), a compensation
//! past its deadline is sent again yet applied once, and the participant
//! helper refuses an execute that arrives after its compensation.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use outbox::saga::{
    Action, Decision, SagaCommand, SagaDefinition, SagaInstance, SagaListener, SagaOrchestrator, SagaParticipant,
    SagaStatus, SagaStep, StepOutcome,
};
use outbox::{CancellationToken, ConsumerConfig, Handler, HandlerError, InboxConsumer, ReceivedEvent};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

/// A participant that does what the test scripts, recording each effect.
struct Script {
    participant: SagaParticipant,
    schema: String,
    fail_execute: HashSet<i32>,
    silent_execute: HashSet<i32>,
    slow_first_compensation: HashMap<i32, Duration>,
}

#[async_trait]
impl Handler for Script {
    async fn handle(&self, event: &ReceivedEvent, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let command = SagaCommand::from_event(event)?;
        let step = command.step;
        let insert = format!("INSERT INTO \"{}\".effects (saga_id, step, kind) VALUES ($1, $2, $3)", self.schema);
        let effect = |kind: &'static str| sqlx::query(&insert).bind(command.saga_id).bind(step).bind(kind);
        let outcome = match self.participant.begin(tx, &command).await? {
            Decision::AlreadyHandled => return Ok(()),
            Decision::Execute if self.silent_execute.contains(&step) => return Ok(()),
            Decision::Execute if self.fail_execute.contains(&step) => StepOutcome::failed("scripted failure"),
            Decision::Execute => {
                effect("execute").execute(&mut *tx).await?;
                StepOutcome::succeeded().with_data(json!({ format!("step{step}"): "done" }))
            }
            Decision::Compensate { executed } => {
                if command.attempt == 1 {
                    if let Some(delay) = self.slow_first_compensation.get(&step) {
                        tokio::time::sleep(*delay).await;
                    }
                }
                effect(if executed { "compensate" } else { "compensate-nothing" }).execute(&mut *tx).await?;
                StepOutcome::succeeded()
            }
        };
        self.participant.finish(tx, &command, outcome).await?;
        Ok(())
    }
}

/// The metrics this test process records, as Prometheus text.
fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// The value of the first metric line named `name` whose labels include all of `labels`.
fn metric(name: &str, labels: &[&str]) -> Option<f64> {
    metrics().render().lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let matches = series.split('{').next() == Some(name) && labels.iter().all(|l| series.contains(l));
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// Records each saga's terminal state, in its last transaction.
struct Finished(String);

#[async_trait]
impl SagaListener for Finished {
    async fn on_finished(&self, saga: &SagaInstance, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query(&format!("INSERT INTO \"{}\".finished (saga_id, status) VALUES ($1, $2)", self.0))
            .bind(saga.id)
            .bind(saga.status.as_str())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

struct Rig {
    world: World,
    orchestrator: SagaOrchestrator,
    participant: SagaParticipant,
    shutdown: CancellationToken,
    relay: Option<RelayProcess>,
}

impl Rig {
    /// A world with one saga definition built by `saga(commands_topic,
    /// replies_topic)`, the relay, the orchestrator and `script` running.
    async fn start(
        saga: impl FnOnce(&str, &str) -> SagaDefinition,
        script: impl FnOnce(SagaParticipant, String) -> Script,
    ) -> Rig {
        metrics(); // recording from the first saga on
        let world = World::new(3).await;
        let s = &world.schema;
        sqlx::raw_sql(&format!(
            "CREATE TABLE \"{s}\".effects (seq bigserial PRIMARY KEY, saga_id uuid, step int, kind text);
             CREATE TABLE \"{s}\".finished (saga_id uuid, status text);"
        ))
        .execute(&world.pool)
        .await
        .unwrap();
        let (commands, replies) = (unique("commands"), unique("replies"));
        create_topic(&world.brokers, &commands, 3).await;
        create_topic(&world.brokers, &replies, 3).await;
        let orchestrator = SagaOrchestrator::new(world.outbox.clone(), [saga(&commands, &replies)])
            .unwrap()
            .with_listener(Finished(s.clone()))
            .with_sweep_interval(Duration::from_millis(100));
        let participant = SagaParticipant::new(world.outbox.clone());
        let shutdown = CancellationToken::new();
        let consumer = |group: &str, topic: &str| {
            let mut c = ConsumerConfig::new(&world.brokers, unique(group), &[topic]);
            c.max_attempts = 50;
            c.retry_min_delay = Duration::from_millis(20);
            c
        };
        let o = InboxConsumer::new(world.pool.clone(), &world.config, consumer("orch", &replies), orchestrator.clone())
            .unwrap();
        let script = script(participant.clone(), s.clone());
        let p = InboxConsumer::new(world.pool.clone(), &world.config, consumer("part", &commands), script).unwrap();
        tokio::spawn(run(o, shutdown.clone()));
        tokio::spawn(run(p, shutdown.clone()));
        tokio::spawn(orchestrator.clone().run_deadlines(world.pool.clone(), shutdown.clone()));
        let relay = Some(world.relay(&[]));
        Rig { world, orchestrator, participant, shutdown, relay }
    }

    async fn start_saga(&self, name: &str) -> Uuid {
        let id = Uuid::now_v7();
        let mut tx = self.world.pool.begin().await.unwrap();
        self.orchestrator.start(&mut tx, name, id, json!({"order": id})).await.unwrap();
        tx.commit().await.unwrap();
        id
    }

    async fn wait_terminal(&self, id: Uuid) -> SagaInstance {
        let start = Instant::now();
        loop {
            let saga = self.orchestrator.status(&self.world.pool, id).await.unwrap().unwrap();
            if saga.status.is_terminal() {
                return saga;
            }
            assert!(start.elapsed() < Duration::from_secs(90), "saga {id} still {} after 90 s", saga.status);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (step, kind) of each effect of saga `id`, in the order they committed.
    async fn effects(&self, id: Uuid) -> Vec<(i32, String)> {
        sqlx::query_as(&format!(
            "SELECT step, kind FROM \"{}\".effects WHERE saga_id = $1 ORDER BY seq",
            self.world.schema
        ))
        .bind(id)
        .fetch_all(&self.world.pool)
        .await
        .unwrap()
    }

    /// (step, action, outcome) of each history row of saga `id`.
    async fn history(&self, id: Uuid) -> Vec<(i32, Action, Option<String>)> {
        let history = self.orchestrator.history(&self.world.pool, id).await.unwrap();
        history.into_iter().map(|r| (r.step, r.action, r.outcome)).collect()
    }

    fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(relay) = self.relay.take() {
            relay.sigterm(Duration::from_secs(30));
        }
    }
}

async fn run<H: Handler>(consumer: InboxConsumer<H>, shutdown: CancellationToken) {
    consumer.run(shutdown).await.unwrap();
}

fn ok(step: i32, action: Action) -> (i32, Action, Option<String>) {
    (step, action, Some("succeeded".into()))
}

fn effect(step: i32, kind: &str) -> (i32, String) {
    (step, kind.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_step_compensates_completed_steps_in_reverse_order() {
    let rig = Rig::start(
        |commands, replies| {
            let step = |name: &str| SagaStep::new(name, commands, format!("{name}.do"));
            SagaDefinition::new("four", replies)
                .step(step("a").compensate_with("a.undo"))
                .step(step("b")) // nothing to undo
                .step(step("c").compensate_with("c.undo"))
                .step(step("d").compensate_with("d.undo"))
        },
        |participant, schema| Script {
            participant,
            schema,
            fail_execute: HashSet::from([3]),
            silent_execute: HashSet::new(),
            slow_first_compensation: HashMap::new(),
        },
    )
    .await;
    let id = rig.start_saga("four").await;
    let saga = rig.wait_terminal(id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(saga.reason.as_deref(), Some("scripted failure"));
    assert_eq!(saga.data["step0"], "done", "reply data is merged into the saga's data");
    assert_eq!(saga.data["step2"], "done");
    let failed = (3, Action::Execute, Some("failed".into()));
    assert_eq!(
        rig.history(id).await,
        vec![
            ok(0, Action::Execute),
            ok(1, Action::Execute),
            ok(2, Action::Execute),
            failed,
            ok(2, Action::Compensate),
            ok(0, Action::Compensate)
        ]
    );
    // Each effect exactly once, compensations in reverse order; the failed
    // step had no effect and is not compensated.
    assert_eq!(
        rig.effects(id).await,
        vec![
            effect(0, "execute"),
            effect(1, "execute"),
            effect(2, "execute"),
            effect(2, "compensate"),
            effect(0, "compensate")
        ]
    );
    let finished: Vec<(String,)> =
        sqlx::query_as(&format!("SELECT status FROM \"{}\".finished WHERE saga_id = $1", rig.world.schema))
            .bind(id)
            .fetch_all(&rig.world.pool)
            .await
            .unwrap();
    assert_eq!(finished, vec![("compensated".to_owned(),)], "the listener ran once, in the last transition");
    let counts = rig.orchestrator.counts(&rig.world.pool).await.unwrap();
    assert_eq!(counts.get(&("four".to_owned(), SagaStatus::Compensated)), Some(&1));
    // The operator's view: `outbox-relay sagas <id> --json`.
    let output = std::process::Command::new(binary("outbox-relay"))
        .args(["sagas", &id.to_string(), "--json", "--schema", &rig.world.schema])
        .env("DATABASE_URL", &rig.world.url)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["saga"]["status"], "compensated");
    assert_eq!(shown["history"].as_array().unwrap().len(), 6);
    assert_eq!(shown["history"][4]["action"], "compensate");
    rig.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_whose_steps_all_succeed_completes() {
    let rig = Rig::start(
        |commands, replies| {
            SagaDefinition::new("two", replies)
                .step(SagaStep::new("a", commands, "a.do").compensate_with("a.undo"))
                .step(SagaStep::new("b", commands, "b.do").compensate_with("b.undo"))
        },
        |participant, schema| Script {
            participant,
            schema,
            fail_execute: HashSet::new(),
            silent_execute: HashSet::new(),
            slow_first_compensation: HashMap::new(),
        },
    )
    .await;
    let ids = [rig.start_saga("two").await, rig.start_saga("two").await, rig.start_saga("two").await];
    for id in ids {
        let saga = rig.wait_terminal(id).await;
        assert_eq!(saga.status, SagaStatus::Completed);
        assert_eq!(saga.deadline, None);
        assert_eq!(rig.history(id).await, vec![ok(0, Action::Execute), ok(1, Action::Execute)]);
        assert_eq!(rig.effects(id).await, vec![effect(0, "execute"), effect(1, "execute")]);
    }
    // Metrics: started, per-status gauges (from the database, by the
    // deadline loop), step latency.
    assert_eq!(metric("outbox_saga_started_total", &[r#"saga="two""#]), Some(3.0));
    let start = Instant::now();
    while metric("outbox_sagas", &[r#"saga="two""#, r#"status="completed""#]) != Some(3.0) {
        assert!(start.elapsed() < Duration::from_secs(10), "gauge not updated:\n{}", metrics().render());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric("outbox_sagas", &[r#"saga="two""#, r#"status="running""#]), Some(0.0));
    let step_b = [r#"saga="two""#, r#"step="b""#, r#"action="execute""#, r#"outcome="succeeded""#];
    assert_eq!(metric("outbox_saga_step_seconds_count", &step_b), Some(3.0), "{}", metrics().render());

    // Retention: finished sagas (with their history) and remembered
    // commands are deleted; nothing else is.
    assert_eq!(rig.orchestrator.cleanup(&rig.world.pool, Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(rig.orchestrator.cleanup(&rig.world.pool, Duration::ZERO).await.unwrap(), 3);
    assert_eq!(rig.orchestrator.status(&rig.world.pool, ids[0]).await.unwrap(), None);
    assert!(rig.orchestrator.history(&rig.world.pool, ids[0]).await.unwrap().is_empty());
    assert_eq!(rig.participant.cleanup(&rig.world.pool, Duration::ZERO).await.unwrap(), 6);

    // Starting the same saga id twice, or an unknown saga, writes nothing.
    let existing = rig.start_saga("two").await;
    let mut tx = rig.world.pool.begin().await.unwrap();
    let again = rig.orchestrator.start(&mut tx, "two", existing, json!({})).await;
    assert!(matches!(again, Err(outbox::Error::SagaExists(id)) if id == existing), "{again:?}");
    drop(tx);
    let mut tx = rig.world.pool.begin().await.unwrap();
    let unknown = rig.orchestrator.start(&mut tx, "nope", Uuid::now_v7(), json!({})).await;
    assert!(matches!(unknown, Err(outbox::Error::UnknownSaga(_))), "{unknown:?}");
    rig.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timed_out_step_is_compensated_and_a_resent_compensation_applies_once() {
    let rig = Rig::start(
        |commands, replies| {
            let step =
                |name: &str| SagaStep::new(name, commands, format!("{name}.do")).deadline(Duration::from_secs(2));
            SagaDefinition::new("slow", replies)
                .step(step("a").compensate_with("a.undo"))
                .step(step("b").compensate_with("b.undo"))
        },
        |participant, schema| Script {
            participant,
            schema,
            fail_execute: HashSet::new(),
            silent_execute: HashSet::from([1]), // b never answers
            // a's first compensation takes longer than its deadline: it is
            // sent again while the first is still being applied.
            slow_first_compensation: HashMap::from([(0, Duration::from_secs(3))]),
        },
    )
    .await;
    let id = rig.start_saga("slow").await;
    let saga = rig.wait_terminal(id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(saga.reason.as_deref(), Some("step b timed out"));
    let history = rig.history(id).await;
    assert_eq!(history[0], ok(0, Action::Execute));
    assert_eq!(history[1], (1, Action::Execute, Some("timed_out".into())));
    // b is compensated although it never answered: it may have acted late.
    assert_eq!(history[2], ok(1, Action::Compensate));
    assert_eq!(history[3], (0, Action::Compensate, Some("timed_out".into())));
    assert_eq!(history[4].0, 0);
    assert_eq!(history[4].1, Action::Compensate);
    assert_eq!(history.len(), 5, "{history:?}");
    let records = rig.orchestrator.history(&rig.world.pool, id).await.unwrap();
    assert_eq!(records[4].attempt, 2, "the compensation was sent a second time");
    // Sent twice, applied once; b's compensation had nothing to undo.
    tokio::time::sleep(Duration::from_secs(2)).await; // let the second send be handled too
    assert_eq!(
        rig.effects(id).await,
        vec![effect(0, "execute"), effect(1, "compensate-nothing"), effect(0, "compensate")]
    );

    // b's execute arriving now (late) is refused: nothing applied, and the
    // saga does not move.
    let late = SagaCommand {
        saga_id: id,
        saga_type: "slow".into(),
        step: 1,
        step_name: "b".into(),
        action: Action::Execute,
        attempt: 1,
        reply_to: "unused".into(),
        data: json!({}),
    };
    let mut tx = rig.world.pool.begin().await.unwrap();
    assert_eq!(rig.participant.begin(&mut tx, &late).await.unwrap(), Decision::AlreadyHandled);
    tx.rollback().await.unwrap();
    assert_eq!(rig.orchestrator.status(&rig.world.pool, id).await.unwrap().unwrap().status, SagaStatus::Compensated);
    rig.stop();
}

/// The participant helper without Kafka: duplicates answered from memory,
/// a compensation before its execute leaves a tombstone.
#[tokio::test]
async fn participant_handles_each_command_once() {
    let pool = pool().await;
    let schema = unique("t");
    let config = outbox::OutboxConfig::default().with_schema(&schema).unwrap();
    let outbox = outbox::Outbox::new(config);
    outbox.migrate(&pool).await.unwrap();
    let participant = SagaParticipant::new(outbox);
    let command = |step: i32, action: Action| SagaCommand {
        saga_id: Uuid::nil(),
        saga_type: "s".into(),
        step,
        step_name: format!("step{step}"),
        action,
        attempt: 1,
        reply_to: "replies".into(),
        data: json!({}),
    };
    let replies = || async {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".outbox WHERE topic = 'replies'"))
            .fetch_one(&pool)
            .await
            .unwrap();
        n
    };
    let decide = |c: SagaCommand| {
        let (pool, participant) = (pool.clone(), participant.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            let d = participant.begin(&mut tx, &c).await.unwrap();
            if matches!(d, Decision::Execute | Decision::Compensate { .. }) {
                participant.finish(&mut tx, &c, StepOutcome::succeeded()).await.unwrap();
            }
            tx.commit().await.unwrap();
            d
        }
    };
    // Execute, then the same execute again: answered again, not applied.
    assert_eq!(decide(command(0, Action::Execute)).await, Decision::Execute);
    assert_eq!(decide(command(0, Action::Execute)).await, Decision::AlreadyHandled);
    assert_eq!(replies().await, 2);
    // Its compensation sees that it ran; a second one is answered from memory.
    assert_eq!(decide(command(0, Action::Compensate)).await, Decision::Compensate { executed: true });
    assert_eq!(decide(command(0, Action::Compensate)).await, Decision::AlreadyHandled);
    // A compensation before its execute: nothing to undo, the execute is refused later.
    assert_eq!(decide(command(1, Action::Compensate)).await, Decision::Compensate { executed: false });
    assert_eq!(decide(command(1, Action::Execute)).await, Decision::AlreadyHandled);
    assert_eq!(replies().await, 6, "every command got an answer");
    let refused: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".outbox WHERE topic = 'replies' AND convert_from(payload, 'UTF8')::jsonb->>'outcome' = 'failed'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(refused, 1, "the late execute was answered with a failure");
    // Two deliveries of one new execute at once: exactly one applies it.
    let both = futures::future::join(decide(command(2, Action::Execute)), decide(command(2, Action::Execute))).await;
    let applied = [both.0, both.1].iter().filter(|d| **d == Decision::Execute).count();
    assert_eq!(applied, 1, "{both:?}");
}
