//! Keeping secrets out of logs, `Debug` output and error messages.
//!
//! Connection URLs may carry a password and librdkafka settings may carry
//! SASL or TLS key passwords. The rule this module enforces: a configuration
//! *value* that could be a secret never reaches an error, a log line or a
//! `Debug` string. Names of settings are shown; values are not, unless the
//! name is known to hold something harmless.
//!
//! * [`redact_url`] shows a connection URL's scheme, user, host, port and
//!   database, whatever characters a pasted (unencoded) password holds.
//! * [`redact_urls_in`] does the same for every URL inside a text (a
//!   command-line error that echoes a mistyped argument).
//! * [`Settings`] is the `Debug` of librdkafka settings; [`kafka_config_error`]
//!   turns librdkafka's configuration errors, which echo the rejected value,
//!   into errors that name only the setting.

use std::fmt;

use crate::error::Error;

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

/// A connection URL with any password replaced by `***`, and the query
/// string and fragment (which may carry `password=` or key material) dropped.
///
/// Users paste passwords unencoded, so the URL is not parsed by the rules of
/// RFC 3986 (where the first `/`, `?` or `#` ends the authority): the user
/// information is taken to end at the *last* `@`, so a password holding `/`,
/// `?`, `#`, `:` or `@` is masked whole. Without any `@`, a port that is not a
/// number is masked too (`postgres://app:pw` with the host forgotten).
///
/// ```
/// use outbox_core::secrets::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/orders?sslmode=require"), "postgres://app:***@db:5432/orders");
/// assert_eq!(redact_url("postgres://app:S3c/ret@127.0.0.1:5432/db"), "postgres://app:***@127.0.0.1:5432/db");
/// assert_eq!(redact_url("postgres://db/orders"), "postgres://db/orders");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparseable url>".to_owned();
    };
    let (user, host_and_path) = match rest.rsplit_once('@') {
        Some((user_info, after)) => {
            let shown = match user_info.split_once(':') {
                Some((user, _)) => format!("{user}:***@"),
                None => format!("{user_info}@"),
            };
            (shown, after)
        }
        None => (String::new(), rest),
    };
    let end = host_and_path.find(['/', '?', '#']).unwrap_or(host_and_path.len());
    let (host, path) = host_and_path.split_at(end);
    // A port that is not a number could be a password whose `@host` was
    // forgotten, and what follows it the rest of that password.
    let port_at = if host.starts_with('[') { host.find("]:").map(|i| i + 1) } else { host.rfind(':') };
    if let Some(i) = port_at.filter(|&i| !host[i + 1..].bytes().all(|b| b.is_ascii_digit())) {
        return format!("{scheme}://{user}{}:***", &host[..i]);
    }
    let path = path.split(['?', '#']).next().unwrap_or_default();
    format!("{scheme}://{user}{host}{path}")
}

/// `text` with every `scheme://…` URL in it passed through [`redact_url`]
/// (a URL ends at white space or a quote).
///
/// ```
/// use outbox_core::secrets::redact_urls_in;
/// let shown = redact_urls_in("error: unrecognized subcommand 'postgres://app:pw@db/orders'");
/// assert_eq!(shown, "error: unrecognized subcommand 'postgres://app:***@db/orders'");
/// ```
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + rest[i..].chars().next().map_or(1, char::len_utf8));
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '`'))
            .map_or(rest.len(), |e| at + e);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A command-line parser's message (clap echoes a rejected argument) with
/// every argument that holds a URL replaced by its [`redact_url`] form, then
/// any other URL in it masked by [`redact_urls_in`].
///
/// ```
/// use outbox_core::secrets::redact_args_in;
/// let args = ["outbox-relay", "postgres://app:pass word@db/orders"];
/// let message = "error: unrecognized subcommand 'postgres://app:pass word@db/orders'";
/// assert_eq!(redact_args_in(message, args), "error: unrecognized subcommand 'postgres://app:***@db/orders'");
/// ```
pub fn redact_args_in<I, A>(message: &str, args: I) -> String
where
    I: IntoIterator<Item = A>,
    A: AsRef<str>,
{
    let mut text = message.to_owned();
    for arg in args {
        let arg = arg.as_ref();
        if let Some(at) = arg.find("://") {
            // `--database-url=postgres://…` redacts from the scheme on.
            let start = arg[..at].rfind('=').map_or(0, |i| i + 1);
            let redacted = format!("{}{}", &arg[..start], redact_url(&arg[start..]));
            text = text.replace(arg, &redacted);
        }
    }
    redact_urls_in(&text)
}

/// [`redact_args_in`] with this process's own arguments: for a command-line
/// parser's error message before it is printed.
pub fn redact_own_args_in(message: &str) -> String {
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    redact_args_in(message, &args)
}

/// A librdkafka configuration error as a crate error that names the setting
/// and never its value: librdkafka echoes a rejected value in its message
/// (and rdkafka's `Display` appends it), and a value is often a secret, or a
/// secret given under a mistyped name (`sasl.pasword=…`).
///
/// Other errors pass through as [`Error::Kafka`].
pub(crate) fn kafka_config_error(error: rdkafka::error::KafkaError) -> Error {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaConfRes;
    match error {
        KafkaError::ClientConfig(res, desc, key, value) => {
            // librdkafka's own description quotes the value, trimmed or
            // otherwise changed: no masking of it can be trusted, so it is
            // not shown at all.
            let _ = (desc, value);
            let reason = match res {
                RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN => "no such librdkafka configuration property",
                RDKafkaConfRes::RD_KAFKA_CONF_INVALID => {
                    "librdkafka refused its value (not shown; librdkafka's CONFIGURATION.md lists what it accepts)"
                }
                _ => "librdkafka refused it",
            }
            .to_owned();
            Error::KafkaConfig { key, reason }
        }
        other => Error::Kafka(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_values_never_reach_the_error() {
        for (key, value) in
            [("sasl.pasword", "S3cret-typo"), ("security.protocol", "S3cret-proto"), ("linger.ms", "S3cret-ms")]
        {
            let error = rdkafka::ClientConfig::new()
                .set(key, value)
                .create::<rdkafka::producer::BaseProducer>()
                .map(drop)
                .map_err(kafka_config_error)
                .expect_err(key);
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains("S3cret"), "{shown}");
            assert!(shown.contains(key), "{shown}");
        }
    }

    #[test]
    fn passwords_of_any_shape_are_masked() {
        for password in ["p@w", "S3c/ret", "a?b#c", "x:y:z", "sp ace", "pw?password=pw2", "ümlaut🔑"] {
            for url in [
                format!("postgres://app:{password}@h:5432/d"),
                format!("postgres://app:{password}@h/d?sslmode=require"),
                format!("postgres://app:{password}"),
                format!("postgres://app:{password}/d"),
            ] {
                let shown = redact_url(&url);
                assert!(!shown.contains(password), "{url} -> {shown}");
                assert!(shown.starts_with("postgres://app:"), "{url} -> {shown}");
            }
        }
        assert!(!redact_url("postgres://u:pw@h/d?password=pw2").contains("pw2"));
        assert_eq!(redact_url("postgres://u@[::1]:5432/d"), "postgres://u@[::1]:5432/d");
        assert_eq!(redact_url("postgres://[::1]:x/d"), "postgres://[::1]:***");
        assert_eq!(redact_url("postgres://app:abcdefgh/ijklmnop"), "postgres://app:***");
    }

    #[test]
    fn urls_inside_text_are_masked() {
        let text = "bad 'mysql://root:r00t@db/x' and \"postgres://a:b/c@h/d\" then ok";
        let shown = redact_urls_in(text);
        assert_eq!(shown, "bad 'mysql://root:***@db/x' and \"postgres://a:***@h/d\" then ok");
        assert_eq!(redact_urls_in("no url here"), "no url here");
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
