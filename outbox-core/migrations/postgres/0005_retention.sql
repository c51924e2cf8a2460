-- Retention: with a retention period, published rows move here (instead of
-- being deleted) and stay replayable until they are older than the period.
CREATE TABLE IF NOT EXISTS {published} (
    seq          bigint      PRIMARY KEY,
    id           uuid        NOT NULL,
    topic        text        NOT NULL,
    key          text,
    event_type   text        NOT NULL,
    source       text        NOT NULL,
    content_type text,
    payload      bytea       NOT NULL,
    headers      jsonb       NOT NULL,
    traceparent  text,
    tracestate   text,
    occurred_at  timestamptz NOT NULL,
    created_at   timestamptz NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS "{outbox_name}_published_at_idx" ON {published} (published_at);
CREATE INDEX IF NOT EXISTS "{outbox_name}_published_id_idx" ON {published} (id);
