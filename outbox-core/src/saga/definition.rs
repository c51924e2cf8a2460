//! What a saga is: ordered steps, each a command to a participant with the
//! command that undoes it and how long to wait for the answer.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::message::validate_topic;

/// One step of a saga: a command sent to a participant's topic, the command
/// that undoes it, and how long to wait for the participant's reply.
///
/// ```
/// use std::time::Duration;
/// use outbox_core::saga::SagaStep;
/// let reserve = SagaStep::new("reserve-stock", "inventory.commands", "inventory.reserve")
///     .compensate_with("inventory.release")
///     .deadline(Duration::from_secs(5));
/// assert_eq!(reserve.name(), "reserve-stock");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaStep {
    pub(crate) name: String,
    pub(crate) topic: String,
    pub(crate) command: String,
    pub(crate) compensation: Option<String>,
    pub(crate) deadline: Duration,
}

impl SagaStep {
    /// A step named `name` that sends a `command`-typed event to `topic`.
    /// Without [`compensate_with`](Self::compensate_with) it has nothing to
    /// undo; the default deadline is 30 seconds.
    pub fn new(name: impl Into<String>, topic: impl Into<String>, command: impl Into<String>) -> Self {
        SagaStep {
            name: name.into(),
            topic: topic.into(),
            command: command.into(),
            compensation: None,
            deadline: Duration::from_secs(30),
        }
    }
    /// The event type of the command that undoes this step (sent to the same topic).
    pub fn compensate_with(mut self, command: impl Into<String>) -> Self {
        self.compensation = Some(command.into());
        self
    }
    /// How long to wait for the participant's reply. A step past its deadline
    /// counts as failed, and may still have taken effect: it is compensated
    /// too. A compensation past its deadline is sent again.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The participant's command topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// A saga: a name, the topic participants reply to, and ordered steps.
///
/// ```
/// use outbox_core::saga::{SagaDefinition, SagaStep};
/// let order = SagaDefinition::new("place-order", "orders.saga-replies")
///     .step(SagaStep::new("reserve", "inventory.commands", "inventory.reserve").compensate_with("inventory.release"))
///     .step(SagaStep::new("charge", "payments.commands", "payments.charge").compensate_with("payments.refund"));
/// assert!(order.validate().is_ok());
/// assert!(SagaDefinition::new("empty", "replies").validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaDefinition {
    pub(crate) name: String,
    pub(crate) reply_topic: String,
    pub(crate) steps: Vec<SagaStep>,
}

impl SagaDefinition {
    /// A saga named `name` whose participants reply on `reply_topic`.
    pub fn new(name: impl Into<String>, reply_topic: impl Into<String>) -> Self {
        SagaDefinition { name: name.into(), reply_topic: reply_topic.into(), steps: Vec::new() }
    }
    /// Appends a step.
    pub fn step(mut self, step: SagaStep) -> Self {
        self.steps.push(step);
        self
    }
    /// The saga's name (its type).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The topic participants reply on; the orchestrator consumes it.
    pub fn reply_topic(&self) -> &str {
        &self.reply_topic
    }
    /// The steps, in order.
    pub fn steps(&self) -> &[SagaStep] {
        &self.steps
    }

    /// Checks names, topics and deadlines.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("saga {:?}: {m}", self.name)));
        if self.name.trim().is_empty() {
            return bad("the saga name must not be empty".into());
        }
        if self.steps.is_empty() {
            return bad("a saga needs at least one step".into());
        }
        if self.steps.len() > 1000 {
            return bad("a saga may have at most 1000 steps".into());
        }
        validate_topic(&self.reply_topic).map_err(|e| Error::Config(format!("saga {:?}: {e}", self.name)))?;
        for (i, s) in self.steps.iter().enumerate() {
            validate_topic(&s.topic)
                .map_err(|e| Error::Config(format!("saga {:?} step {}: {e}", self.name, s.name)))?;
            if s.name.trim().is_empty() || s.command.trim().is_empty() {
                return bad(format!("step {i} needs a name and a command type"));
            }
            if s.compensation.as_deref().is_some_and(|c| c.trim().is_empty()) {
                return bad(format!("step {:?} has an empty compensation type", s.name));
            }
            if s.deadline.is_zero() {
                return bad(format!("step {:?} has a zero deadline", s.name));
            }
            if self.steps[..i].iter().any(|o| o.name == s.name) {
                return bad(format!("two steps are named {:?}", s.name));
            }
        }
        Ok(())
    }

    /// The step to compensate next when compensation starts at or below
    /// `from`: the latest step at or before it that has a compensation.
    pub(crate) fn compensation_at_or_before(&self, from: i32) -> Option<usize> {
        let from = usize::try_from(from).ok()?;
        (0..=from.min(self.steps.len().saturating_sub(1))).rev().find(|&i| self.steps[i].compensation.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensation_skips_steps_without_one() {
        let saga = SagaDefinition::new("s", "r")
            .step(SagaStep::new("a", "t", "a").compensate_with("undo-a"))
            .step(SagaStep::new("b", "t", "b"))
            .step(SagaStep::new("c", "t", "c").compensate_with("undo-c"));
        assert_eq!(saga.compensation_at_or_before(2), Some(2));
        assert_eq!(saga.compensation_at_or_before(1), Some(0));
        assert_eq!(saga.compensation_at_or_before(0), Some(0));
        assert_eq!(saga.compensation_at_or_before(-1), None);
        let none = SagaDefinition::new("s", "r").step(SagaStep::new("b", "t", "b"));
        assert_eq!(none.compensation_at_or_before(0), None);
    }

    #[test]
    fn invalid_definitions_are_refused() {
        let ok = SagaStep::new("a", "t", "a");
        assert!(SagaDefinition::new("s", "bad topic").step(ok.clone()).validate().is_err());
        assert!(SagaDefinition::new("s", "r").step(ok.clone()).step(ok.clone()).validate().is_err());
        assert!(SagaDefinition::new("s", "r").step(ok.clone().deadline(Duration::ZERO)).validate().is_err());
        assert!(SagaDefinition::new("s", "r").step(ok.compensate_with(" ")).validate().is_err());
    }
}
