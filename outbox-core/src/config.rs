//! Where the outbox lives: schema, table names and limits.

use std::fmt;

use crate::error::{Error, Result};

/// Longest table or schema name accepted. PostgreSQL allows 63 bytes; we keep
/// room for the suffixes of derived index and tracking-table names.
const MAX_IDENT_LEN: usize = 48;

/// A checked SQL identifier: lower-case ASCII letters, digits and `_`, not
/// starting with a digit, at most 48 bytes. Only such names are ever put into
/// SQL text, always double-quoted.
///
/// ```
/// use outbox_core::Ident;
/// assert!(Ident::new("orders_outbox").is_ok());
/// assert!(Ident::new("orders; DROP TABLE x").is_err());
/// assert!(Ident::new("Orders").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let reject = |reason| Err(Error::InvalidIdentifier { name: name.clone(), reason });
        let Some(first) = name.chars().next() else {
            return reject("must not be empty");
        };
        if name.len() > MAX_IDENT_LEN {
            return reject("must be at most 48 bytes long");
        }
        if !(first.is_ascii_lowercase() || first == '_') {
            return reject("must start with a lower-case letter or '_'");
        }
        if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return reject("may contain only lower-case ASCII letters, digits and '_'");
        }
        if name.starts_with("pg_") {
            return reject("names starting with 'pg_' are reserved by PostgreSQL");
        }
        Ok(Ident(name))
    }

    /// The bare name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name double-quoted for SQL text.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Default maximum payload: below Kafka's default `message.max.bytes`
/// (1,048,588) with room for key and headers.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 900 * 1024;

/// Default number of slots keys are spread over.
pub const DEFAULT_SLOTS: u16 = 64;

/// Where the outbox tables live and what is accepted into them.
///
/// The defaults put every table in the schema `outbox`:
/// `outbox.outbox`, `outbox.outbox_dead_letter`, `outbox.inbox` and
/// `outbox.inbox_dead_letter`.
///
/// ```
/// use outbox_core::OutboxConfig;
/// let config = OutboxConfig::default().with_schema("billing")?.with_max_payload_bytes(64 * 1024);
/// assert_eq!(config.schema().as_str(), "billing");
/// assert!(OutboxConfig::default().with_outbox_table("bad-name").is_err());
/// # Ok::<(), outbox_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    schema: Ident,
    outbox_table: Ident,
    dead_letter_table: Ident,
    inbox_table: Ident,
    inbox_dead_letter_table: Ident,
    max_payload_bytes: usize,
    source: String,
    slots: u16,
    notify: bool,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        let ident = |s: &str| Ident(s.to_owned());
        OutboxConfig {
            schema: ident("outbox"),
            outbox_table: ident("outbox"),
            dead_letter_table: ident("outbox_dead_letter"),
            inbox_table: ident("inbox"),
            inbox_dead_letter_table: ident("inbox_dead_letter"),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            source: "/outbox".to_owned(),
            slots: DEFAULT_SLOTS,
            notify: false,
        }
    }
}

impl OutboxConfig {
    /// Sets the schema holding all tables (created by the migrations).
    pub fn with_schema(mut self, name: &str) -> Result<Self> {
        self.schema = Ident::new(name)?;
        Ok(self)
    }
    /// Sets the outbox table name.
    pub fn with_outbox_table(mut self, name: &str) -> Result<Self> {
        self.outbox_table = Ident::new(name)?;
        Ok(self)
    }
    /// Sets the outbox dead-letter table name.
    pub fn with_dead_letter_table(mut self, name: &str) -> Result<Self> {
        self.dead_letter_table = Ident::new(name)?;
        Ok(self)
    }
    /// Sets the inbox table name.
    pub fn with_inbox_table(mut self, name: &str) -> Result<Self> {
        self.inbox_table = Ident::new(name)?;
        Ok(self)
    }
    /// Sets the inbox dead-letter table name.
    pub fn with_inbox_dead_letter_table(mut self, name: &str) -> Result<Self> {
        self.inbox_dead_letter_table = Ident::new(name)?;
        Ok(self)
    }
    /// Sets the largest payload accepted by `enqueue`, in bytes.
    pub fn with_max_payload_bytes(mut self, max: usize) -> Self {
        self.max_payload_bytes = max;
        self
    }
    /// Sets the default CloudEvents `source` of messages that do not set one:
    /// a non-empty RFC 3986 URI-reference, such as `/shop/orders`.
    ///
    /// ```
    /// use outbox_core::OutboxConfig;
    /// assert!(OutboxConfig::default().with_source("/shop/orders").is_ok());
    /// assert!(OutboxConfig::default().with_source("").is_err());
    /// assert!(OutboxConfig::default().with_source("shop orders").is_err());
    /// ```
    pub fn with_source(mut self, source: impl Into<String>) -> Result<Self> {
        let source = source.into();
        crate::cloudevents::check_source(&source)?;
        self.source = source;
        Ok(self)
    }

    /// Sets the number of slots keys are spread over (1–4096). Relays divide
    /// the slots among themselves; it is fixed when the outbox is first
    /// migrated and later changes have no effect.
    pub fn with_slots(mut self, slots: u16) -> Result<Self> {
        if !(1..=4096).contains(&slots) {
            return Err(Error::Config(format!("slots must be between 1 and 4096, got {slots}")));
        }
        self.slots = slots;
        Ok(self)
    }

    /// Makes every enqueue statement also send a `NOTIFY` on
    /// [`wakeup_channel`](Self::wakeup_channel), so that relays run with
    /// `--wakeup notify` publish at once instead of at their next poll.
    ///
    /// Off by default: a `NOTIFY` takes a cluster-wide lock at commit and
    /// caps the commit rate of all writers (see the README).
    pub fn with_notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// Whether enqueue sends a wake-up `NOTIFY`.
    pub fn notify(&self) -> bool {
        self.notify
    }

    /// The `LISTEN`/`NOTIFY` channel of this outbox.
    pub fn wakeup_channel(&self) -> String {
        format!("outbox_{}_{}", self.schema, self.outbox_table)
    }

    /// The number of slots used when the outbox is created.
    pub fn slots(&self) -> u16 {
        self.slots
    }

    /// The schema.
    pub fn schema(&self) -> &Ident {
        &self.schema
    }
    /// The outbox table.
    pub fn outbox_table(&self) -> &Ident {
        &self.outbox_table
    }
    /// The outbox dead-letter table.
    pub fn dead_letter_table(&self) -> &Ident {
        &self.dead_letter_table
    }
    /// The inbox table.
    pub fn inbox_table(&self) -> &Ident {
        &self.inbox_table
    }
    /// The inbox dead-letter table.
    pub fn inbox_dead_letter_table(&self) -> &Ident {
        &self.inbox_dead_letter_table
    }
    /// The largest payload accepted, in bytes.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }
    /// The default CloudEvents `source`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `"schema"."table"` for one of the tables.
    pub(crate) fn qualified(&self, table: &Ident) -> String {
        format!("{}.{}", self.schema.quoted(), table.quoted())
    }

    /// `"schema"."table_suffix"` for a table derived from another's name.
    pub(crate) fn qualified_suffix(&self, table: &Ident, suffix: &str) -> String {
        format!("{}.\"{}_{suffix}\"", self.schema.quoted(), table.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        for bad in ["", "1abc", "a-b", "a b", "a\"b", "A", "pg_x", &"x".repeat(49), "é"] {
            assert!(Ident::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "_a", "outbox_2", &"x".repeat(48)] {
            assert!(Ident::new(good).is_ok(), "{good:?} rejected");
        }
    }
}
