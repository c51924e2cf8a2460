//! PostgreSQL statements of the consume side (inbox).

use crate::config::OutboxConfig;

/// Statements of the consume side.
#[derive(Debug)]
pub(crate) struct InboxSql {
    pub(crate) insert: String,
    pub(crate) insert_many: String,
    pub(crate) dead_letter: String,
    pub(crate) cleanup: String,
}

impl InboxSql {
    pub(crate) fn new(config: &OutboxConfig) -> Self {
        let inbox = config.qualified(config.inbox_table());
        let dlq = config.qualified(config.inbox_dead_letter_table());
        InboxSql {
            insert: format!(
                "INSERT INTO {inbox} (consumer_group, event_id, topic) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            ),
            // Ids in a fixed order, so two consumers inserting overlapping
            // batches (during a rebalance) wait on each other instead of
            // deadlocking; duplicates within the batch are skipped.
            insert_many: format!(
                "INSERT INTO {inbox} (consumer_group, event_id, topic) \
                 SELECT $1, e.id, e.topic FROM UNNEST($2::uuid[], $3::text[]) AS e(id, topic) ORDER BY e.id \
                 ON CONFLICT DO NOTHING RETURNING event_id"
            ),
            dead_letter: format!(
                "INSERT INTO {dlq} (consumer_group, event_id, topic, kafka_partition, kafka_offset, key, payload, \
                 headers, error, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ),
            // Batched so a large cleanup never holds long locks.
            cleanup: format!(
                "DELETE FROM {inbox} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {inbox} \
                 WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2))"
            ),
        }
    }
}
