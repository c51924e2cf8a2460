-- The outbox: rows written in the application's transaction, drained by the relay.
-- Placeholders ({schema}, {outbox}, {outbox_name}, ...) are replaced with
-- checked, quoted identifiers by outbox-core's migrator.
CREATE TABLE IF NOT EXISTS {outbox} (
    seq             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              uuid        NOT NULL,
    topic           text        NOT NULL,
    key             text,
    event_type      text        NOT NULL,
    source          text        NOT NULL,
    content_type    text,
    payload         bytea       NOT NULL,
    headers         jsonb       NOT NULL DEFAULT '{}',
    traceparent     text,
    tracestate      text,
    occurred_at     timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error      text,
    CONSTRAINT "{outbox_name}_id_key" UNIQUE (id)
);

-- Rows backing off after a failed delivery: small, and what the claim query
-- consults to hold back later events of the same key.
CREATE INDEX IF NOT EXISTS "{outbox_name}_backoff_idx"
    ON {outbox} (key, seq) WHERE next_attempt_at IS NOT NULL;

-- Events that failed for good, kept with their error until an operator acts.
CREATE TABLE IF NOT EXISTS {dead_letter} (
    seq              bigint      PRIMARY KEY,
    id               uuid        NOT NULL UNIQUE,
    topic            text        NOT NULL,
    key              text,
    event_type       text        NOT NULL,
    source           text        NOT NULL,
    content_type     text,
    payload          bytea       NOT NULL,
    headers          jsonb       NOT NULL,
    traceparent      text,
    tracestate       text,
    occurred_at      timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    attempts         integer     NOT NULL,
    error            text        NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now()
);
