//! The relay loop: claim → send → await confirmation → mark, with retries,
//! several batches in flight at once.

#[cfg(test)]
mod behaviour;
mod config;
mod outage;
mod pipeline;
mod settling;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::publish::{Delivery, Publisher};
use crate::store::{DeadLetter, Fence, OutboxEvent, OutboxStore, RelayId, RetryLater};

pub use config::{PoisonPolicy, RelayConfig};
use pipeline::{InFlight, Pipeline};
use settling::Settling;

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows confirmed by the broker and marked.
    pub published: usize,
    /// Rows that failed and will be retried.
    pub retried: usize,
    /// Rows moved to the dead-letter table.
    pub dead_lettered: usize,
    /// Rows held back behind an earlier failed row of their key.
    pub held: usize,
}

/// Drains an outbox through a publisher.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> anyhow::Result<()> {
/// use outbox_core::{KafkaPublisher, KafkaPublisherConfig, OutboxConfig, PgStore, Relay, RelayConfig};
/// let store = PgStore::new(pool, &OutboxConfig::default());
/// let publisher = KafkaPublisher::new(KafkaPublisherConfig::new("localhost:9092"))?;
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// Relay::new(store, publisher, RelayConfig::default())?.run(shutdown).await?;
/// # Ok(()) }
/// ```
pub struct Relay<S, P> {
    id: RelayId,
    waker: Arc<tokio::sync::Notify>,
    store: Arc<S>,
    publisher: Arc<P>,
    config: Arc<RelayConfig>,
}

impl<S: OutboxStore, P: Publisher> Relay<S, P> {
    /// A relay over `store` and `publisher`.
    pub fn new(store: S, publisher: P, config: RelayConfig) -> Result<Self> {
        config.validate()?;
        Ok(Relay {
            id: uuid::Uuid::now_v7(),
            waker: Arc::default(),
            store: Arc::new(store),
            publisher: Arc::new(publisher),
            config: Arc::new(config),
        })
    }

    /// Notifying this ends an idle pause at once (see
    /// [`listen_for_wakeups`](crate::listen_for_wakeups)).
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.waker)
    }

    /// This instance's id (a new one per process).
    pub fn id(&self) -> RelayId {
        self.id
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The publisher.
    pub fn publisher(&self) -> &Arc<P> {
        &self.publisher
    }

    /// Runs until `shutdown` is cancelled, then finishes the batches in
    /// flight (within [`RelayConfig::shutdown_grace`]), releases its slots
    /// and returns.
    ///
    /// Any number of relays may run on one outbox: they divide the slots
    /// among themselves (see [`crate::lease`]).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let heartbeats = CancellationToken::new();
        // Be visible as live before the first rebalance, so it assigns slots.
        if let Err(e) = self.store.heartbeat(self.id, &self.config.name, self.config.lease_timeout).await {
            tracing::warn!(error = %e, "first heartbeat failed");
        }
        let heartbeat = tokio::spawn(heartbeat_loop(
            Arc::clone(&self.store),
            self.id,
            Arc::clone(&self.config),
            heartbeats.clone(),
        ));
        let outages = tokio::spawn(outage::watch(
            Arc::clone(&self.store),
            Arc::clone(&self.publisher),
            self.config.outage_report_interval,
            heartbeats.clone(),
        ));
        tracing::info!(relay = %self.id, name = %self.config.name, "relay joined");
        let mut pipeline = Pipeline::default();
        let mut settling = Settling::default();
        let mut claims = ClaimSchedule::default();
        let mut last_rebalance: Option<Instant> = None;
        let mut owned: Vec<i32> = Vec::new();
        let mut last_purge = Instant::now();
        while !shutdown.is_cancelled() {
            if !self.config.retention.is_zero() && last_purge.elapsed() >= self.config.purge_interval {
                last_purge = Instant::now();
                self.purge().await;
            }
            if last_rebalance.is_none_or(|t| t.elapsed() >= self.config.rebalance_interval) {
                // Slots change hands only with nothing in flight.
                if !self.settle_all(&mut pipeline, &mut settling, &shutdown).await {
                    break;
                }
                match self.rebalance(&mut owned).await {
                    Ok(()) => last_rebalance = Some(Instant::now()),
                    Err(e) => tracing::warn!(error = %e, "rebalance failed"),
                }
            }
            if owned.is_empty() {
                let idle = self.config.rebalance_interval.min(self.config.poll_interval * 10);
                tokio::select! {
                    _ = pause(&shutdown, idle) => {}
                    _ = self.waker.notified() => {}
                }
                continue;
            }
            // Settle every batch already confirmed, oldest first.
            let mut stopped = false;
            while let Some((batch, outcomes)) = pipeline.ready() {
                if self
                    .finish_and_claim(&mut pipeline, &mut settling, batch, outcomes, &shutdown, &mut claims)
                    .await
                    .is_err()
                {
                    stopped = true;
                    break;
                }
            }
            if stopped {
                break;
            }
            let room = pipeline.len() < self.config.pipeline_depth;
            if room && claims.due() {
                let claimed = self.claim(&skip(&pipeline, &settling)).await;
                if self.claimed(&mut pipeline, claimed, &mut claims).await {
                    continue;
                }
            }
            // Wait for the oldest batch's confirmations, the next claim, or a
            // wake-up from a writer.
            let next_claim = claims.next;
            tokio::select! {
                (batch, outcomes) = pipeline.next_confirmed() => {
                    if self
                        .finish_and_claim(&mut pipeline, &mut settling, batch, outcomes, &shutdown, &mut claims)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                recorded = settling.next_done(), if !settling.is_empty() => {
                    if recorded.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(next_claim.into()), if room => {}
                _ = self.waker.notified() => claims.next = Instant::now(),
                _ = shutdown.cancelled() => {}
            }
        }
        self.shut_down(&mut pipeline, &mut settling).await;
        heartbeats.cancel();
        let _ = heartbeat.await;
        let _ = outages.await;
        match self.store.leave(self.id).await {
            Ok(()) => tracing::info!("relay stopped; slots released"),
            Err(e) => tracing::warn!(error = %e, "relay stopped; could not release slots (they expire)"),
        }
        metrics::gauge!("outbox_slots_owned").set(0.0);
        Ok(())
    }

    /// Claims up to a batch of events, skipping `skip` (rows in flight or
    /// being marked), and records how long the claim took.
    async fn claim(&self, skip: &[i64]) -> Result<Vec<OutboxEvent>> {
        let started = Instant::now();
        let claimed = self.store.claim(self.id, self.config.batch_size, skip).await;
        metrics::histogram!("outbox_claim_duration_seconds").record(started.elapsed().as_secs_f64());
        claimed
    }

    /// Records a claim's result: sends what it found and schedules the next
    /// claim. True if it found events (claim again at once).
    async fn claimed(
        &self,
        pipeline: &mut Pipeline,
        claimed: Result<Vec<OutboxEvent>>,
        claims: &mut ClaimSchedule,
    ) -> bool {
        match claimed {
            Ok(events) => {
                claims.after_claim(events.len(), &self.config, Instant::now());
                if events.is_empty() {
                    return false;
                }
                self.send(pipeline, events).await;
                true
            }
            Err(e) => {
                claims.error_streak += 1;
                let delay = self.config.retry_delay(i32::try_from(claims.error_streak).unwrap_or(i32::MAX));
                let delay = delay.min(Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in = ?delay, "claiming events failed");
                claims.next = Instant::now() + delay;
                false
            }
        }
    }

    /// Settles a confirmed batch. When every event of it was delivered, its
    /// rows are deleted in the background while the next batch is claimed
    /// (skipping them) and sent: neither that claim nor the next send waits
    /// for the database to commit the deletion. A batch with a failed or
    /// held event is settled first, so that the claim sees the backoff or
    /// quarantine that holds back the rest of its key.
    async fn finish_and_claim(
        &self,
        pipeline: &mut Pipeline,
        settling: &mut Settling,
        batch: InFlight,
        outcomes: Vec<Delivery>,
        shutdown: &CancellationToken,
        claims: &mut ClaimSchedule,
    ) -> Result<()> {
        if !(batch.holds_nothing() && outcomes.iter().all(|o| *o == Delivery::Delivered)) {
            return self.finish(pipeline, batch, outcomes, shutdown).await.map(drop);
        }
        if !settling.has_room() {
            settling.next_done().await?;
        }
        let sorted = self.sort(&batch, outcomes);
        pipeline.release(&batch);
        let seqs = batch.events.iter().map(|e| e.seq).collect();
        let recorder = self.recorder();
        let shutdown = shutdown.clone();
        settling.push(seqs, async move { recorder.record(&shutdown, sorted).await });
        if pipeline.len() < self.config.pipeline_depth && claims.due() {
            let claimed = self.claim(&skip(pipeline, settling)).await;
            self.claimed(pipeline, claimed, claims).await;
        }
        Ok(())
    }

    /// Hands a claimed batch to the publisher and puts it in flight.
    async fn send(&self, pipeline: &mut Pipeline, events: Vec<OutboxEvent>) {
        let holds = pipeline.holds();
        let sent_at = Instant::now();
        let sending = self.publisher.send(&events, &holds).await;
        pipeline.push(events, sending, sent_at);
        metrics::gauge!("outbox_batches_in_flight").set(pipeline.len() as f64);
    }

    /// Waits for every batch in flight and settles it; `false` if shutdown
    /// came first (what is left is settled by [`Self::shut_down`]).
    async fn settle_all(&self, pipeline: &mut Pipeline, settling: &mut Settling, shutdown: &CancellationToken) -> bool {
        while !pipeline.is_empty() || !settling.is_empty() {
            tokio::select! {
                (batch, outcomes) = pipeline.next_confirmed() => {
                    if self.finish(pipeline, batch, outcomes, shutdown).await.is_err() {
                        return false;
                    }
                }
                recorded = settling.next_done(), if !settling.is_empty() => {
                    if recorded.is_err() {
                        return false;
                    }
                }
                _ = shutdown.cancelled() => return false,
            }
        }
        true
    }

    /// On shutdown: waits up to the grace period for the batches in flight
    /// and records what was confirmed; the rest stays pending.
    async fn shut_down(&self, pipeline: &mut Pipeline, settling: &mut Settling) {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;
        // Already cancelled: each batch gets one attempt at being recorded.
        let stopped = CancellationToken::new();
        stopped.cancel();
        while !pipeline.is_empty() || !settling.is_empty() {
            tokio::select! {
                (batch, outcomes) = pipeline.next_confirmed() => {
                    // A failure to record costs duplicates, never losses.
                    let _ = self.finish(pipeline, batch, outcomes, &stopped).await;
                }
                _ = settling.next_done(), if !settling.is_empty() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let left: usize = pipeline.seqs().len();
                    tracing::warn!(in_flight = left, "shutdown grace expired: unconfirmed events stay pending");
                    return;
                }
            }
        }
    }

    /// Deletes retained events past the retention period, in batches.
    async fn purge(&self) {
        const BATCH: i64 = 5000;
        loop {
            match self.store.purge_published(self.config.retention, BATCH).await {
                Ok(n) => {
                    metrics::counter!("outbox_purged_total").increment(n);
                    if n < BATCH as u64 {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging retained events failed");
                    return;
                }
            }
        }
    }

    /// Re-divides slots among live relays and records what changed.
    async fn rebalance(&self, owned: &mut Vec<i32>) -> Result<()> {
        let r = self.store.rebalance(self.id, self.config.lease_timeout).await?;
        if !r.acquired.is_empty() || !r.released.is_empty() {
            metrics::counter!("outbox_rebalances_total").increment(1);
            metrics::counter!("outbox_lease_takeovers_total").increment(r.taken_over.len() as u64);
            tracing::info!(
                live_relays = r.live_relays,
                owned = r.owned.len(),
                acquired = ?r.acquired,
                taken_over = ?r.taken_over,
                released = ?r.released,
                "slots rebalanced"
            );
        }
        for slot in owned.iter().filter(|s| !r.owned.contains(s)) {
            metrics::gauge!("outbox_slot_owned", "slot" => slot.to_string()).set(0.0);
        }
        for slot in &r.owned {
            metrics::gauge!("outbox_slot_owned", "slot" => slot.to_string()).set(1.0);
        }
        metrics::gauge!("outbox_slots_owned").set(r.owned.len() as f64);
        metrics::gauge!("outbox_live_relays").set(r.live_relays as f64);
        *owned = r.owned;
        Ok(())
    }

    /// Claims, publishes and settles one batch, with nothing else in flight.
    pub async fn run_once(&self, shutdown: &CancellationToken) -> Result<BatchReport> {
        let events = self.claim(&[]).await?;
        if events.is_empty() {
            return Ok(BatchReport::default());
        }
        let mut pipeline = Pipeline::default();
        self.send(&mut pipeline, events).await;
        let grace = self.config.shutdown_grace;
        tokio::select! {
            (batch, outcomes) = pipeline.next_confirmed() => self.finish(&mut pipeline, batch, outcomes, shutdown).await,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("shutdown grace expired: unconfirmed events stay pending");
                Ok(BatchReport::default())
            }
        }
    }

    /// Sorts a confirmed batch's outcomes, records them, and lifts the
    /// batch's holds on later batches.
    async fn finish(
        &self,
        pipeline: &mut Pipeline,
        batch: InFlight,
        outcomes: Vec<Delivery>,
        shutdown: &CancellationToken,
    ) -> Result<BatchReport> {
        let sorted = self.sort(&batch, outcomes);
        let recorded = self.recorder().record(shutdown, sorted).await;
        pipeline.release(&batch);
        metrics::gauge!("outbox_batches_in_flight").set(pipeline.len() as f64);
        recorded
    }

    /// Sorts a confirmed batch's outcomes into what to record.
    fn sort(&self, batch: &InFlight, outcomes: Vec<Delivery>) -> Outcomes {
        metrics::histogram!("outbox_batch_publish_duration_seconds").record(batch.sent_at.elapsed().as_secs_f64());
        let confirmed_at = chrono::Utc::now();
        let events = &batch.events;
        let mut sorted = Outcomes {
            report: BatchReport { claimed: events.len(), ..Default::default() },
            delivered: Vec::new(),
            retries: Vec::new(),
            dead: Vec::new(),
        };
        let mut failed_keys: HashSet<&str> = HashSet::new();
        let commit_to_confirm = metrics::histogram!("outbox_commit_to_confirm_seconds");
        for (event, outcome) in events.iter().zip(outcomes) {
            match outcome {
                Delivery::Delivered => {
                    if event.key.as_deref().is_some_and(|k| failed_keys.contains(k)) {
                        metrics::counter!("outbox_order_gaps_total").increment(1);
                        tracing::error!(id = %event.id, key = ?event.key, "event confirmed after an earlier event of its key failed");
                    }
                    sorted.delivered.push(event.fence());
                    let waited = (confirmed_at - event.created_at).to_std().unwrap_or_default();
                    commit_to_confirm.record(waited.as_secs_f64());
                }
                Delivery::Retry(error) => {
                    if let Some(k) = &event.key {
                        failed_keys.insert(k);
                    }
                    let retry_after = self.config.retry_delay(event.attempts);
                    tracing::warn!(id = %event.id, topic = %event.topic, attempts = event.attempts + 1, %error, ?retry_after, "delivery failed, will retry");
                    sorted.retries.push(RetryLater { fence: event.fence(), error, retry_after });
                }
                Delivery::Permanent(error) => {
                    if let Some(k) = &event.key {
                        failed_keys.insert(k);
                    }
                    tracing::error!(id = %event.id, topic = %event.topic, %error, "delivery failed permanently: dead-lettering");
                    sorted.dead.push(DeadLetter { fence: event.fence(), error });
                }
                Delivery::Held => sorted.report.held += 1,
            }
        }
        sorted.report.published = sorted.delivered.len();
        sorted.report.retried = sorted.retries.len();
        sorted.report.dead_lettered = sorted.dead.len();
        sorted
    }

    /// What records batch outcomes, detached from the loop (it may run in
    /// the background while the loop goes on).
    fn recorder(&self) -> Recorder<S> {
        Recorder { store: Arc::clone(&self.store), id: self.id, config: Arc::clone(&self.config) }
    }
}

/// A confirmed batch's outcomes, sorted.
struct Outcomes {
    report: BatchReport,
    delivered: Vec<Fence>,
    retries: Vec<RetryLater>,
    dead: Vec<DeadLetter>,
}

/// Records batch outcomes in the store.
struct Recorder<S> {
    store: Arc<S>,
    id: RelayId,
    config: Arc<RelayConfig>,
}

impl<S: OutboxStore> Recorder<S> {
    /// Records one batch's outcomes, fenced by the lease epochs its rows
    /// were claimed under, and counts them.
    async fn record(&self, shutdown: &CancellationToken, sorted: Outcomes) -> Result<BatchReport> {
        crate::failpoint::hit("relay-after-publish");
        self.settle(shutdown, &sorted.delivered, &sorted.retries, &sorted.dead).await?;
        metrics::counter!("outbox_events_published_total").increment(sorted.delivered.len() as u64);
        metrics::counter!("outbox_delivery_failures_total")
            .increment((sorted.retries.len() + sorted.dead.len()) as u64);
        metrics::counter!("outbox_dead_lettered_total").increment(sorted.dead.len() as u64);
        tracing::debug!(report = ?sorted.report, "batch settled");
        Ok(sorted.report)
    }

    /// Records the batch's outcome, fenced by the lease epochs the rows were
    /// claimed under. Retried until it succeeds or the relay shuts down:
    /// forgetting a confirmation costs a duplicate, never a loss.
    async fn settle(
        &self,
        shutdown: &CancellationToken,
        delivered: &[Fence],
        retries: &[RetryLater],
        dead: &[DeadLetter],
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let result = async {
                let marked = self.store.mark_published(self.id, delivered, !self.config.retention.is_zero()).await?;
                let quarantine = self.config.poison_policy == PoisonPolicy::QuarantineKey;
                let dead_lettered = self.store.dead_letter(self.id, dead, quarantine).await?;
                let rescheduled = self.store.retry_later(self.id, retries).await?;
                Ok::<_, crate::Error>(marked + dead_lettered + rescheduled)
            }
            .await;
            metrics::histogram!("outbox_settle_duration_seconds").record(started.elapsed().as_secs_f64());
            match result {
                Ok(settled) => {
                    let expected = (delivered.len() + dead.len() + retries.len()) as u64;
                    if settled < expected {
                        // The slot changed owner meanwhile (this relay was
                        // paused past its lease): the new owner publishes
                        // these rows again; duplicates, never losses.
                        metrics::counter!("outbox_fenced_rows_total").increment(expected - settled);
                        tracing::warn!(
                            fenced = expected - settled,
                            "left alone rows of slots this relay no longer owns"
                        );
                    }
                    return Ok(());
                }
                Err(e) if shutdown.is_cancelled() => return Err(e),
                Err(e) => {
                    attempt += 1;
                    let delay = self.config.retry_delay(attempt).min(Duration::from_secs(5));
                    tracing::warn!(error = %e, retry_in = ?delay, "could not record batch outcome, retrying");
                    pause(shutdown, delay).await;
                }
            }
        }
    }
}

/// When the relay claims next, how many claims in a row failed, and when a
/// claim last found events.
struct ClaimSchedule {
    next: Instant,
    error_streak: u32,
    last_found: Option<Instant>,
}

impl Default for ClaimSchedule {
    fn default() -> Self {
        ClaimSchedule { next: Instant::now(), error_streak: 0, last_found: None }
    }
}

impl ClaimSchedule {
    fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// Schedules the next claim after one that found `found` events at
    /// `now`: at once after a full batch, soon (the busy interval) while
    /// events flow, at the poll interval once the outbox has been empty
    /// for a poll interval. A gap between two commits is not idleness:
    /// waiting the whole poll interval there set the tail of commit →
    /// confirmation (p99 13.4 against 9.9 ms at 1,000 events/s, S3).
    fn after_claim(&mut self, found: usize, config: &RelayConfig, now: Instant) {
        self.error_streak = 0;
        let busy = config.busy_poll_interval.min(config.poll_interval);
        if found == 0 {
            let flowing = self.last_found.is_some_and(|t| now.duration_since(t) < config.poll_interval);
            self.next = now + if flowing { busy } else { config.poll_interval };
            return;
        }
        self.last_found = Some(now);
        if found < config.batch_size {
            self.next = now + busy;
        }
    }
}

/// Keeps this relay's heartbeat and leases fresh, independently of batches
/// (a batch may wait on the broker for a long time).
async fn heartbeat_loop<S: OutboxStore>(store: Arc<S>, id: RelayId, config: Arc<RelayConfig>, stop: CancellationToken) {
    let every = config.lease_timeout / 3;
    loop {
        if let Err(e) = store.heartbeat(id, &config.name, config.lease_timeout).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The rows a claim must skip: those in flight and those being settled.
fn skip(pipeline: &Pipeline, settling: &Settling) -> Vec<i64> {
    let mut rows = pipeline.seqs();
    rows.extend(settling.seqs());
    rows
}

async fn pause(shutdown: &CancellationToken, duration: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_stay_busy_through_short_gaps_then_fall_back_to_the_poll_interval() {
        let config = RelayConfig::default(); // poll 10 ms, busy 2 ms, batch 1000
        let (poll, busy) = (config.poll_interval, config.busy_poll_interval);
        let t0 = Instant::now();
        let mut s = ClaimSchedule { next: t0, error_streak: 3, last_found: None };
        // Idle from the start: the poll interval.
        s.after_claim(0, &config, t0);
        assert_eq!((s.next, s.error_streak), (t0 + poll, 0));
        // A full batch: claim again at once (the schedule is left due).
        s.next = t0;
        s.after_claim(config.batch_size, &config, t0);
        assert_eq!(s.next, t0);
        // A partial batch: the busy interval.
        s.after_claim(5, &config, t0);
        assert_eq!(s.next, t0 + busy);
        // Empty soon after events: still busy.
        let t1 = t0 + busy;
        s.after_claim(0, &config, t1);
        assert_eq!(s.next, t1 + busy);
        // Empty a poll interval after the last events: idle again.
        let t2 = t0 + poll;
        s.after_claim(0, &config, t2);
        assert_eq!(s.next, t2 + poll);
    }
}
