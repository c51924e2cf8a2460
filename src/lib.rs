//! `outbox`: the transactional outbox, relay and idempotent inbox.
//!
//! This facade re-exports [`outbox_core`]; see its documentation.

pub use outbox_core::*;
