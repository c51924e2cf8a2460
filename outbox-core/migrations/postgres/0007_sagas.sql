-- Saga orchestration (outbox_core::saga).

-- One row per saga instance, owned by the orchestrator. Every change to it
-- commits together with the commands it sends (outbox) and the reply it
-- consumed (inbox).
CREATE TABLE IF NOT EXISTS {saga} (
    id          uuid        PRIMARY KEY,
    saga_type   text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('running', 'compensating', 'completed', 'compensated', 'failed')),
    step        integer     NOT NULL,
    attempt     integer     NOT NULL DEFAULT 1,
    data        jsonb       NOT NULL,
    deadline    timestamptz,
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The deadline sweep looks only at sagas that are still moving.
CREATE INDEX IF NOT EXISTS "{saga_name}_deadline_idx" ON {saga} (deadline) WHERE status IN ('running', 'compensating');
CREATE INDEX IF NOT EXISTS "{saga_name}_status_idx" ON {saga} (saga_type, status);
-- Retention deletes finished sagas oldest first.
CREATE INDEX IF NOT EXISTS "{saga_name}_finished_idx" ON {saga} (updated_at) WHERE status IN ('completed', 'compensated');

-- What each saga did: one row per command or compensation sent, completed
-- with its outcome when the reply (or the deadline) arrives.
CREATE TABLE IF NOT EXISTS {saga_history} (
    saga_id     uuid        NOT NULL REFERENCES {saga} (id) ON DELETE CASCADE,
    seq         integer     NOT NULL,
    step        integer     NOT NULL,
    step_name   text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('execute', 'compensate')),
    attempt     integer     NOT NULL,
    outcome     text        CHECK (outcome IN ('succeeded', 'failed', 'timed_out')),
    reason      text,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (saga_id, seq)
);

-- A participant's memory of the commands it handled, keyed by what the
-- command means (saga, step, action) rather than by event id: a command sent
-- again after a deadline is recognised, answered with the same outcome and
-- not applied twice; an execute that arrives after its compensation is
-- refused.
CREATE TABLE IF NOT EXISTS {saga_commands} (
    saga_id     uuid        NOT NULL,
    step        integer     NOT NULL,
    action      text        NOT NULL CHECK (action IN ('execute', 'compensate')),
    outcome     text        CHECK (outcome IN ('succeeded', 'failed', 'refused')),
    reason      text,
    data        jsonb,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, step, action)
);
CREATE INDEX IF NOT EXISTS "{saga_commands_name}_handled_at_idx" ON {saga_commands} (handled_at);
