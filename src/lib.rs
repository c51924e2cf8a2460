#![doc = include_str!("../README.md")]
//!
//! This facade re-exports [`outbox_core`]; see its documentation.

pub use outbox_core::*;
