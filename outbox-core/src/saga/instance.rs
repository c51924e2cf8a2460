//! What the orchestrator persists about each saga: its state and history,
//! as the query API returns them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
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
