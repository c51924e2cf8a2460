//! W3C trace context (`traceparent`) carried from writer to consumer.
//!
//! With the `opentelemetry` feature, [`Message`](crate::Message) captures the
//! trace context of the current `tracing` span (through
//! `tracing-opentelemetry`), and the consumer runtime makes each handler span
//! a child of it, so one trace covers the writer's transaction, the relay and
//! the consumer's handler. Without the feature, set it with
//! [`Message::with_traceparent`](crate::Message::with_traceparent) and read it
//! from [`ReceivedEvent::traceparent`](crate::ReceivedEvent::traceparent).

/// `true` for a well-formed version-00 `traceparent`:
/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, ids not all zero.
///
/// ```
/// use outbox_core::trace::is_valid_traceparent;
/// assert!(is_valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
/// assert!(!is_valid_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
/// ```
pub fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && nonzero(parts[1])
        && hex(parts[2], 16)
        && nonzero(parts[2])
        && hex(parts[3], 2)
}

/// The `traceparent` of the current span, when one is being traced.
#[cfg(feature = "opentelemetry")]
pub fn current_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// The `traceparent` of the current span: always `None` without the
/// `opentelemetry` feature.
#[cfg(not(feature = "opentelemetry"))]
pub fn current_traceparent() -> Option<String> {
    None
}

/// Makes `span` a child of the remote context in `traceparent`.
#[cfg(feature = "opentelemetry")]
pub(crate) fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if !is_valid_traceparent(traceparent) {
        return;
    }
    let parts: Vec<&str> = traceparent.split('-').collect();
    let (Ok(trace_id), Ok(span_id), Ok(flags)) =
        (TraceId::from_hex(parts[1]), SpanId::from_hex(parts[2]), u8::from_str_radix(parts[3], 16))
    else {
        return;
    };
    let sc = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, TraceState::default());
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
}

/// Without the `opentelemetry` feature the parent is only recorded as a field.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn set_remote_parent(_span: &tracing::Span, _traceparent: &str) {}
