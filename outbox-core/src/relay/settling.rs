//! Batches confirmed by the broker whose outcome is being recorded in the
//! database while the relay claims and sends the next ones.
//!
//! Only batches whose every event was delivered are recorded this way: a
//! failed or held event changes what the next claim may take (its key backs
//! off or is quarantined), so such a batch is recorded before the next claim.
//! Until a batch's rows are deleted they are still in the outbox, and every
//! claim skips them.

use std::future::Future;

use tokio::task::JoinSet;

use super::BatchReport;
use crate::error::Result;

/// Most batches recorded in the background at once (each holds a database
/// connection while it runs).
pub(super) const MAX_SETTLING: usize = 2;

/// The batches being recorded, each in a task of its own (so that it goes
/// on while the relay awaits something else), with the sequence numbers of
/// their rows.
#[derive(Default)]
pub(super) struct Settling {
    running: JoinSet<Result<BatchReport>>,
    /// Each running task's rows.
    rows: Vec<(tokio::task::Id, Vec<i64>)>,
}

impl Settling {
    pub(super) fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Room for another batch.
    pub(super) fn has_room(&self) -> bool {
        self.running.len() < MAX_SETTLING
    }

    /// Sequence numbers of every row being recorded (a claim must skip them).
    pub(super) fn seqs(&self) -> impl Iterator<Item = i64> + '_ {
        self.rows.iter().flat_map(|(_, seqs)| seqs.iter().copied())
    }

    /// Starts recording a batch of rows `seqs`.
    pub(super) fn push(
        &mut self,
        seqs: Vec<i64>,
        recording: impl Future<Output = Result<BatchReport>> + Send + 'static,
    ) {
        let task = self.running.spawn(recording).id();
        self.rows.push((task, seqs));
    }

    /// Waits until a batch is recorded and forgets its rows (pending forever
    /// when nothing is being recorded). Cancel-safe.
    pub(super) async fn next_done(&mut self) -> Result<BatchReport> {
        let Some(joined) = self.running.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (task, result) = match joined {
            Ok((task, result)) => (task, result),
            // A recording task that panicked left its rows pending: no
            // longer skipped, they are claimed and published again
            // (duplicates, never losses).
            Err(e) => {
                tracing::error!(error = %e, "recording a batch's outcome panicked: its events will be published again");
                (e.id(), Ok(BatchReport::default()))
            }
        };
        self.rows.retain(|(t, _)| *t != task);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn forgets_the_rows_of_a_batch_once_it_is_recorded() {
        let mut settling = Settling::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        settling.push(vec![1, 2], async move { Ok(BatchReport { published: 2, ..Default::default() }) });
        settling.push(vec![3], async move {
            let _ = rx.await;
            Ok(BatchReport { published: 1, ..Default::default() })
        });
        assert!(!settling.has_room());
        let mut all: Vec<i64> = settling.seqs().collect();
        all.sort_unstable();
        assert_eq!(all, [1, 2, 3]);
        assert_eq!(settling.next_done().await.map(|r| r.published).ok(), Some(2));
        assert_eq!(settling.seqs().collect::<Vec<_>>(), [3]);
        assert!(settling.next_done().now_or_never().is_none(), "the second batch is still being recorded");
        let _ = tx.send(());
        assert_eq!(settling.next_done().await.map(|r| r.published).ok(), Some(1));
        assert!(settling.is_empty() && settling.seqs().next().is_none());
    }
}
