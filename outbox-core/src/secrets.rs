//! Keeping secrets out of logs, `Debug` output and error messages.
//!
//! Connection URLs may carry a password and librdkafka settings may carry
//! SASL or TLS key passwords; whatever prints a configuration goes through
//! these helpers.

use std::fmt;

/// Substrings of librdkafka setting names whose values are secret.
const SECRET_KEY_PARTS: &[&str] = &["password", "secret", "token", "jaas", "credential", ".pem", "oauthbearer.config"];

/// Whether the value of the librdkafka setting `key` must never be shown.
///
/// ```
/// use outbox_core::secrets::is_secret_setting;
/// assert!(is_secret_setting("sasl.password"));
/// assert!(is_secret_setting("ssl.key.password"));
/// assert!(is_secret_setting("ssl.key.pem"));
/// assert!(!is_secret_setting("linger.ms"));
/// ```
pub fn is_secret_setting(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|part| key.contains(part))
}

/// `Debug` for librdkafka settings: every key, secret values as `***`.
///
/// ```
/// use outbox_core::secrets::Settings;
/// let settings = vec![("sasl.password".to_owned(), "hunter2".to_owned()), ("linger.ms".to_owned(), "2".to_owned())];
/// let shown = format!("{:?}", Settings(&settings));
/// assert!(shown.contains("linger.ms") && shown.contains("***") && !shown.contains("hunter2"));
/// ```
pub struct Settings<'a>(pub &'a [(String, String)]);

impl fmt::Debug for Settings<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, if is_secret_setting(k) { "***" } else { v.as_str() })))
            .finish()
    }
}

/// A connection URL with any password replaced by `***` and the query
/// string (which may carry `password=` or key material) dropped.
///
/// ```
/// use outbox_core::secrets::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/orders?sslmode=require"), "postgres://app:***@db:5432/orders");
/// assert_eq!(redact_url("postgres://db/orders"), "postgres://db/orders");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparseable url>".to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{user}:***@{host}")
        }
        None => authority.to_owned(),
    };
    let path = path.split('?').next().unwrap_or_default();
    format!("{scheme}://{authority}{path}")
}

/// A librdkafka configuration error with a secret value masked (librdkafka
/// echoes a rejected value, and rdkafka prints it).
pub(crate) fn scrub_kafka_error(error: rdkafka::error::KafkaError) -> rdkafka::error::KafkaError {
    use rdkafka::error::KafkaError;
    match error {
        KafkaError::ClientConfig(res, desc, key, value) if is_secret_setting(&key) => {
            let desc = if value.is_empty() { desc } else { desc.replace(&value, "***") };
            KafkaError::ClientConfig(res, desc, key, "***".to_owned())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_secret_values_are_masked_in_errors() {
        let error = rdkafka::ClientConfig::new()
            .set("sasl.password", "hunter2")
            .set("ssl.key.password", "hunter3")
            .set("sasl.mechanisms", "hunter4")
            .create::<rdkafka::producer::BaseProducer>()
            .map(|_| ())
            .map_err(scrub_kafka_error);
        // librdkafka accepts any password, so the one rejected here is the
        // mechanism: not a secret, shown as is.
        if let Err(e) = error {
            let shown = e.to_string();
            assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
        }
        let forged = rdkafka::error::KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2\" for configuration property \"sasl.password\"".into(),
            "sasl.password".into(),
            "hunter2".into(),
        );
        assert!(!scrub_kafka_error(forged).to_string().contains("hunter2"));
    }

    #[test]
    fn passwords_with_at_signs_do_not_leak() {
        assert!(!redact_url("postgres://u:p@w@h/d").contains("p@w"));
        assert!(!redact_url("postgres://u:pw@h/d?password=pw2").contains("pw2"));
    }

    #[test]
    fn secret_settings_are_recognised_whatever_the_case() {
        for key in ["sasl.password", "SASL.PASSWORD", "ssl.keystore.password", "sasl.oauthbearer.client.secret"] {
            assert!(is_secret_setting(key), "{key}");
        }
        for key in ["bootstrap.servers", "security.protocol", "sasl.mechanisms", "sasl.username"] {
            assert!(!is_secret_setting(key), "{key}");
        }
    }
}
