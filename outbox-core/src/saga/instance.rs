//! What the orchestrator persists about each saga: its state and history,
//! as the query API returns them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use super::wire::Action;

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Doing its steps.
    Running,
    /// A step failed or ran out of time: undoing the completed steps.
    Compensating,
    /// Every step succeeded (terminal).
    Completed,
    /// Every step that took effect was undone (terminal).
    Compensated,
    /// A compensation was refused: needs an operator (terminal).
    Failed,
}

impl SagaStatus {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::Failed => "failed",
        }
    }
    /// Whether the saga will not move again.
    pub fn is_terminal(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed)
    }
    /// Every status, in lifecycle order.
    pub const ALL: [SagaStatus; 5] = [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::Failed,
    ];
    pub(crate) fn parse(s: &str) -> Option<Self> {
        SagaStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl std::fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A saga instance as persisted by the orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SagaInstance {
    /// Its id (chosen by whoever started it, e.g. the order id).
    pub id: Uuid,
    /// Its type (the definition's name).
    pub saga_type: String,
    /// Where it stands.
    pub status: SagaStatus,
    /// The step being done or undone (the last one, once terminal).
    pub step: i32,
    /// How many times the current command has been sent.
    pub attempt: i32,
    /// The saga's data: what it was started with, merged with reply data.
    pub data: Value,
    /// When the current command times out, while not terminal.
    pub deadline: Option<DateTime<Utc>>,
    /// Why it compensated or failed.
    pub reason: Option<String>,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// When it last moved.
    pub updated_at: DateTime<Utc>,
}

impl SagaInstance {
    pub(crate) fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        let status: String = row.try_get("status")?;
        Ok(SagaInstance {
            id: row.try_get("id")?,
            saga_type: row.try_get("saga_type")?,
            status: SagaStatus::parse(&status)
                .ok_or_else(|| sqlx::Error::Decode(format!("unknown saga status {status:?}").into()))?,
            step: row.try_get("step")?,
            attempt: row.try_get("attempt")?,
            data: row.try_get("data")?,
            deadline: row.try_get("deadline")?,
            reason: row.try_get("reason")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// One command or compensation a saga sent, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// Position in the saga's history, from 1.
    pub seq: i32,
    /// The step's index.
    pub step: i32,
    /// The step's name.
    pub step_name: String,
    /// Do or undo.
    pub action: Action,
    /// Which send of this command it was.
    pub attempt: i32,
    /// `succeeded`, `failed`, `timed_out`, or `None` while waiting.
    pub outcome: Option<String>,
    /// The participant's reason, if it gave one.
    pub reason: Option<String>,
    /// When the command was sent (committed).
    pub sent_at: DateTime<Utc>,
    /// When its reply or deadline was processed.
    pub finished_at: Option<DateTime<Utc>>,
}

impl StepRecord {
    pub(crate) fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        let action: String = row.try_get("action")?;
        Ok(StepRecord {
            seq: row.try_get("seq")?,
            step: row.try_get("step")?,
            step_name: row.try_get("step_name")?,
            action: Action::parse(&action)
                .ok_or_else(|| sqlx::Error::Decode(format!("unknown saga action {action:?}").into()))?,
            attempt: row.try_get("attempt")?,
            outcome: row.try_get("outcome")?,
            reason: row.try_get("reason")?,
            sent_at: row.try_get("sent_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }
}
