//! What CloudEvents 1.0 and its Kafka protocol binding require of the
//! attributes the relay emits, checked when an event is enqueued so that a
//! non-conformant event is refused with a typed error and never written.
//!
//! The relay publishes every event in binary mode: `ce_specversion`,
//! `ce_id`, `ce_source`, `ce_type` and `ce_time` headers, `content-type` for
//! `datacontenttype`, and the record key, which the binding maps to the
//! `partitionkey` extension. The rules, from the specification's type system:
//!
//! * `String`: no control characters (U+0000–U+001F, U+007F–U+009F) and no
//!   Unicode noncharacters (U+FDD0–U+FDEF, U+xFFFE, U+xFFFF).
//! * `URI-reference` (`source`): non-empty, RFC 3986 (a space or a raw
//!   non-ASCII character is not allowed; percent-encode them).
//! * `Timestamp` (`time`): RFC 3339, whose years have four digits; year 0000
//!   is refused too, as consumers' date types (Python's, .NET's) start at 1.
//! * `datacontenttype`: an RFC 2046 media type, `type/subtype` with optional
//!   `; name=value` parameters.
//! * Headers whose lower-cased name starts with `ce_` are CloudEvents
//!   attributes to any reader that lower-cases names (the SDKs do), so an
//!   application may not set them in any case, nor `content-type`,
//!   `traceparent` or `tracestate`.

use chrono::{DateTime, Datelike, Utc};
use iri_string::types::UriReferenceStr;

use crate::error::ValidationError;

/// Header names the outbox writes itself (compared without regard to case),
/// besides every name starting with `ce_`.
pub(crate) const OWN_HEADERS: &[&str] = &["content-type", "traceparent", "tracestate"];

/// Whether an application header named `name` would be read as a CloudEvents
/// attribute or clash with a header the outbox writes.
pub(crate) fn is_reserved_header(name: &str) -> bool {
    let lower = name.to_lowercase();
    lower.starts_with("ce_") || OWN_HEADERS.contains(&lower.as_str())
}

/// A CloudEvents `String` attribute: no control characters, no noncharacters.
pub(crate) fn check_string(field: &'static str, value: &str) -> Result<(), ValidationError> {
    let bad = |reason| Err(ValidationError::InvalidAttribute { field, reason });
    if value.contains('\0') {
        return Err(ValidationError::NulCharacter { field });
    }
    if value.chars().any(char::is_control) {
        return bad("contains a control character (U+0000-U+001F or U+007F-U+009F)");
    }
    if value.chars().any(is_noncharacter) {
        return bad("contains a Unicode noncharacter");
    }
    Ok(())
}

fn is_noncharacter(c: char) -> bool {
    let c = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&c) || c & 0xFFFE == 0xFFFE
}

/// The `source` attribute: a non-empty URI-reference.
pub(crate) fn check_source(source: &str) -> Result<(), ValidationError> {
    let bad = |reason| Err(ValidationError::InvalidSource { value: source.to_owned(), reason });
    if source.is_empty() {
        return bad("must not be empty");
    }
    if UriReferenceStr::new(source).is_err() {
        return bad("is not an RFC 3986 URI-reference (percent-encode spaces and non-ASCII characters)");
    }
    Ok(())
}

/// The `time` attribute: representable in RFC 3339 (a four-digit year) and
/// by consumers' date types (years 1–9999).
pub(crate) fn check_time(time: &DateTime<Utc>) -> Result<(), ValidationError> {
    if (1..=9999).contains(&time.year()) {
        Ok(())
    } else {
        Err(ValidationError::InvalidTime { time: time.to_string() })
    }
}

/// `content-type` (`datacontenttype`): an RFC 2046 media type.
pub(crate) fn check_media_type(value: &str) -> Result<(), ValidationError> {
    let bad = |reason| Err(ValidationError::InvalidContentType { content_type: value.to_owned(), reason });
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    match essence.split_once('/') {
        Some((kind, sub)) if is_token(kind) && is_token(sub) => {}
        _ => return bad("expected type/subtype, e.g. application/json"),
    }
    for parameter in parts {
        match parameter.trim().split_once('=') {
            Some((name, v)) if is_token(name) && (is_token(v) || is_quoted(v)) => {}
            _ => return bad("a parameter is not name=value"),
        }
    }
    Ok(())
}

/// RFC 9110 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 9110 `quoted-string` (printable ASCII inside, escapes allowed).
fn is_quoted(s: &str) -> bool {
    s.len() >= 2
        && s.starts_with('"')
        && s.ends_with('"')
        && s[1..s.len() - 1].bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_must_be_uri_references() {
        for good in [
            "/outbox",
            "https://shop.example/orders",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "orders",
            "/a%20b",
        ] {
            assert_eq!(check_source(good), Ok(()), "{good}");
        }
        for bad in ["", "with space", "/ümlaut", "a\nb", "http://[bad"] {
            assert!(matches!(check_source(bad), Err(ValidationError::InvalidSource { .. })), "{bad}");
        }
    }

    #[test]
    fn times_must_have_four_digit_years() {
        let at = |y| chrono::NaiveDate::from_ymd_opt(y, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
        assert_eq!(check_time(&at(9999)), Ok(()));
        assert_eq!(check_time(&at(1)), Ok(()));
        assert!(check_time(&at(0)).is_err());
        assert!(check_time(&at(10_000)).is_err());
        assert!(check_time(&at(-1)).is_err());
    }

    #[test]
    fn strings_refuse_control_and_noncharacters() {
        assert_eq!(check_string("type", "order.placed"), Ok(()));
        assert_eq!(check_string("type", "commande.passée 漢字"), Ok(()));
        for bad in ["a\u{1}b", "tab\there", "c1\u{85}", "del\u{7f}", "non\u{fdd0}", "non\u{fffe}", "non\u{1fffF}"] {
            assert!(check_string("type", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn media_types_follow_rfc_2046() {
        for good in ["application/json", "text/plain; charset=utf-8", "application/cloudevents+json", "a/b;q=\"x y\""] {
            assert_eq!(check_media_type(good), Ok(()), "{good}");
        }
        for bad in ["", "json", "application/", "/json", "text/plain; charset", "a b/c"] {
            assert!(check_media_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reserved_headers_are_matched_whatever_the_case() {
        for name in ["ce_id", "CE_ID", "CE_SUBJECT", "Ce_Tenant", "Content-Type", "TRACEPARENT", "tracestate"] {
            assert!(is_reserved_header(name), "{name}");
        }
        for name in ["tenant", "x-ce_id", "cex"] {
            assert!(!is_reserved_header(name), "{name}");
        }
    }
}
