-- The inbox: one row per (consumer group, event id) applied, written in the
-- same transaction as the handler's effect.
CREATE TABLE IF NOT EXISTS {inbox} (
    consumer_group text        NOT NULL,
    event_id       uuid        NOT NULL,
    topic          text        NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);

CREATE INDEX IF NOT EXISTS "{inbox_name}_processed_at_idx" ON {inbox} (processed_at);

-- Messages a handler could not apply after all attempts (or could not parse).
CREATE TABLE IF NOT EXISTS {inbox_dead_letter} (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group   text        NOT NULL,
    event_id         uuid,
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    key              bytea,
    payload          bytea,
    headers          jsonb       NOT NULL,
    error            text        NOT NULL,
    attempts         integer     NOT NULL,
    failed_at        timestamptz NOT NULL DEFAULT now()
);
