//! Reading a PostgreSQL connection URL without ever echoing its password.
//!
//! sqlx parses URLs by RFC 3986, where a raw `/`, `?`, `#` or `@` in the
//! password ends the authority: the URL then fails with a message that
//! callers tend to print whole, or parses into a host made of the password.
//! And sqlx logs the *value* of a query parameter it does not know
//! (`?pasword=…`, a typo) at warn level. [`pg_connect_options`] takes the
//! user information up to the last `@` instead, encodes what would break
//! the URL, refuses unknown parameters by name, and reports every error with
//! the URL redacted ([`redact_url`]).

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::error::{Error, Result};
use crate::secrets::redact_url;

/// Query parameters sqlx's PostgreSQL driver understands (anything else is
/// a typo: sqlx would ignore it, and log its value).
const KNOWN_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Parses a `postgres://user:password@host:port/database?param=value` URL.
///
/// A password may be pasted unencoded: everything between the first `:`
/// after the user and the *last* `@` is the password, `/ ? # @ :` and spaces
/// included (a `%` still starts an escape, as in libpq: write `%25` for a
/// literal one; an `@` inside a query value must be written `%40`). Errors
/// ([`Error::InvalidDatabaseUrl`]) show the URL with its password masked
/// and never a parameter's value.
///
/// ```
/// use outbox_core::pg_connect_options;
/// let options = pg_connect_options("postgres://app:S3c/ret@db.internal:6432/orders")?;
/// assert_eq!((options.get_host(), options.get_port()), ("db.internal", 6432));
/// assert_eq!(options.get_database(), Some("orders"));
///
/// let error = pg_connect_options("postgres://app:S3cret@db/orders?pasword=S3cret").unwrap_err();
/// assert!(error.to_string().contains("pasword") && !error.to_string().contains("S3cret"));
/// # Ok::<(), outbox_core::Error>(())
/// ```
pub fn pg_connect_options(url: &str) -> Result<PgConnectOptions> {
    let invalid = |reason: String| Error::InvalidDatabaseUrl { url: redact_url(url), reason };
    let Some((scheme, rest)) = url.trim().split_once("://") else {
        return Err(invalid("expected postgres://user:password@host:port/database".into()));
    };
    if !matches!(scheme, "postgres" | "postgresql") {
        return Err(invalid(format!("the scheme must be postgres:// or postgresql://, not {scheme}://")));
    }
    let (user_info, location) = match rest.rsplit_once('@') {
        Some((user_info, location)) => (Some(user_info), location),
        None => (None, rest),
    };
    let query = location.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or_default());
    for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if !KNOWN_PARAMETERS.contains(&key) && !key.starts_with("options[") {
            return Err(invalid(format!(
                "unknown parameter {key:?} (known: {}, options[…])",
                KNOWN_PARAMETERS.join(", ")
            )));
        }
    }
    let user_info = user_info.map(|info| match info.split_once(':') {
        Some((user, password)) => format!("{}:{}@", encode(user), encode(password)),
        None => format!("{}@", encode(info)),
    });
    let normalised = format!("{scheme}://{}{location}", user_info.unwrap_or_default());
    normalised.parse::<PgConnectOptions>().map_err(|e| invalid(without_password(&e.to_string(), url)))
}

/// Whether `options` reach another machine without requiring TLS
/// (credentials and events would cross the network in the clear).
///
/// ```
/// use outbox_core::{database_unencrypted, pg_connect_options};
/// assert!(database_unencrypted(&pg_connect_options("postgres://app:pw@db.internal/orders")?));
/// assert!(!database_unencrypted(&pg_connect_options("postgres://app:pw@db.internal/orders?sslmode=verify-full")?));
/// assert!(!database_unencrypted(&pg_connect_options("postgres://app:pw@127.0.0.1/orders")?));
/// # Ok::<(), outbox_core::Error>(())
/// ```
pub fn database_unencrypted(options: &PgConnectOptions) -> bool {
    let host = options.get_host();
    let local = options.get_socket().is_some()
        || host.starts_with('/')
        || host == "localhost"
        || host.starts_with("127.")
        || host == "::1"
        || host == "[::1]";
    let required = matches!(options.get_ssl_mode(), PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull);
    !local && !required
}

/// Percent-encodes what may not stand raw in a URL's user information,
/// leaving `%` alone (an escape the user already wrote).
fn encode(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        if c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=%".contains(c) {
            out.push(c);
        } else {
            let mut bytes = [0u8; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// sqlx's message with anything of the URL's user information masked (its
/// messages do not echo the password today; this keeps it so).
fn without_password(message: &str, url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.rsplit_once('@').and_then(|(info, _)| info.split_once(':')) {
        Some((_, password)) if !password.is_empty() => message.replace(password, "***"),
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unencoded_passwords_are_read_whole() {
        for password in ["S3c/retPw", "a?b#c", "p@ss@word", "x:y:z", "sp ace", "ümlaut🔑"] {
            let url = format!("postgres://app:{password}@127.0.0.1:5432/db?sslmode=disable");
            let options = pg_connect_options(&url).unwrap();
            assert_eq!((options.get_host(), options.get_port()), ("127.0.0.1", 5432), "{url}");
            assert_eq!((options.get_username(), options.get_database()), ("app", Some("db")), "{url}");
        }
        // An escape the user wrote stays one.
        assert!(pg_connect_options("postgres://app:p%2Fw@h/db").is_ok());
    }

    #[test]
    fn errors_name_the_problem_and_never_the_password() {
        let cases = [
            ("postgres://app:S3cretPw@h/db?pasword=S3cretPw", "pasword"),
            ("mysql://app:S3cretPw@h/db", "scheme"),
            ("app:S3cretPw@h/db", "expected postgres://"),
            ("postgres://app:S3cretPw@h:99999/db", "port"),
            ("postgres://app:S3cretPw@h/db?sslmode=S3cretPw", "ssl_mode"),
        ];
        for (url, expected) in cases {
            let shown = pg_connect_options(url).unwrap_err().to_string();
            assert!(shown.contains(expected) && !shown.contains("S3cretPw"), "{url}: {shown}");
        }
    }

    #[test]
    fn remote_plain_connections_are_recognised() {
        let unencrypted = |url: &str| database_unencrypted(&pg_connect_options(url).unwrap());
        assert!(unencrypted("postgres://app@10.0.0.5/orders?sslmode=prefer"));
        assert!(unencrypted("postgres://app:S3c/ret@db.internal/orders"));
        assert!(!unencrypted("postgres://postgres@localhost/orders"));
        assert!(!unencrypted("postgres://postgres@[::1]:5432/orders"));
        assert!(!unencrypted("postgres://app@db/orders?host=/run/postgresql"));
    }
}
