//! What travels between the orchestrator and the participants: commands and
//! replies, JSON payloads of ordinary outbox events keyed by saga id.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::inbox::{HandlerError, ReceivedEvent};

/// The CloudEvents `type` of every reply.
pub const REPLY_EVENT_TYPE: &str = "saga.reply";

/// Whether a command does a step or undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Do the step.
    Execute,
    /// Undo the step.
    Compensate,
}

impl Action {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Execute => "execute",
            Action::Compensate => "compensate",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "execute" => Some(Action::Execute),
            "compensate" => Some(Action::Compensate),
            _ => None,
        }
    }
}

/// A command from the orchestrator to a participant.
///
/// ```
/// use outbox_core::saga::{Action, SagaCommand};
/// let json = r#"{"saga_id":"0190f5d2-6c6e-7a4e-9b1e-000000000001","saga_type":"order","step":0,
///   "step_name":"reserve","action":"execute","attempt":1,"reply_to":"orders.replies","data":{"sku":"A"}}"#;
/// let command: SagaCommand = serde_json::from_str(json)?;
/// assert_eq!(command.action, Action::Execute);
/// assert_eq!(command.data["sku"], "A");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaCommand {
    /// The saga instance.
    pub saga_id: Uuid,
    /// The saga's type (its definition's name).
    pub saga_type: String,
    /// Index of the step, from 0.
    pub step: i32,
    /// The step's name.
    pub step_name: String,
    /// Do or undo.
    pub action: Action,
    /// 1 for the first send; higher when a compensation is sent again.
    pub attempt: i32,
    /// Where to send the reply.
    pub reply_to: String,
    /// The saga's data as the orchestrator holds it.
    pub data: Value,
}

impl SagaCommand {
    /// Reads a command from a received event; a malformed one is a
    /// permanent failure (dead-lettered, not retried).
    pub fn from_event(event: &ReceivedEvent) -> Result<Self, HandlerError> {
        event.json().map_err(|e| HandlerError::permanent(format!("not a saga command: {e}")))
    }
}

/// How a participant answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyOutcome {
    /// The command took effect (or, for a compensation, the step is undone).
    Succeeded,
    /// The command was refused and had no effect.
    Failed,
}

/// A participant's reply to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaReply {
    /// The saga instance.
    pub saga_id: Uuid,
    /// The step answered.
    pub step: i32,
    /// What was asked.
    pub action: Action,
    /// The answer.
    pub outcome: ReplyOutcome,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Values to merge into the saga's data (an object; others are ignored).
    #[serde(default)]
    pub data: Value,
}

/// What a participant's effect came to, passed to
/// [`SagaParticipant::finish`](super::SagaParticipant::finish).
///
/// ```
/// use outbox_core::saga::StepOutcome;
/// let ok = StepOutcome::succeeded().with_data(serde_json::json!({"payment_id": 42}));
/// let no = StepOutcome::failed("card declined");
/// assert!(ok.is_success() && !no.is_success());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub(crate) outcome: ReplyOutcome,
    pub(crate) reason: Option<String>,
    pub(crate) data: Value,
}

impl StepOutcome {
    /// The step took effect.
    pub fn succeeded() -> Self {
        StepOutcome { outcome: ReplyOutcome::Succeeded, reason: None, data: Value::Null }
    }
    /// The step was refused and had no effect; the saga compensates.
    pub fn failed(reason: impl Into<String>) -> Self {
        StepOutcome { outcome: ReplyOutcome::Failed, reason: Some(reason.into()), data: Value::Null }
    }
    /// Values for the orchestrator to merge into the saga's data.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
    /// Whether the step took effect.
    pub fn is_success(&self) -> bool {
        self.outcome == ReplyOutcome::Succeeded
    }
}
