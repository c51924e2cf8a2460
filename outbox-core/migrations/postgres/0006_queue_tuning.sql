-- The outbox is a queue: rows arrive at the tail and leave at the head.
-- The claim walks the primary key in sequence order, so the (slot, seq)
-- index only cost every write an extra index insert: drop it.
DROP INDEX IF EXISTS {schema}."{outbox_name}_slot_seq_idx";

-- Vacuum and analyze after a fixed number of changed rows rather than a
-- fraction of a (usually tiny) table, so dead rows at the head of the queue
-- are cleared and statistics follow a sudden backlog.
ALTER TABLE {outbox} SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);
