-- Work partitioned by key: each key maps to one of {slots} slots (fixed per
-- outbox at this migration). Each slot is leased to at most one live relay.
ALTER TABLE {outbox}
    ADD COLUMN IF NOT EXISTS slot integer NOT NULL
    GENERATED ALWAYS AS (((hashtextextended(coalesce(key, id::text), 0) & 2147483647) % {slots})::integer) STORED;

CREATE INDEX IF NOT EXISTS "{outbox_name}_slot_seq_idx" ON {outbox} (slot, seq);

-- Relay instances and their heartbeats.
CREATE TABLE IF NOT EXISTS {relays} (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- One row per slot: its owner, the lease's expiry, and an epoch bumped at
-- every change of owner. Marks carry the epoch they claimed under, so a relay
-- that lost a slot (paused past its lease) can never mark that slot's rows.
CREATE TABLE IF NOT EXISTS {leases} (
    slot        integer     PRIMARY KEY,
    owner       uuid,
    epoch       bigint      NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    acquired_at timestamptz
);

INSERT INTO {leases} (slot) SELECT s FROM generate_series(0, {slots} - 1) AS s ON CONFLICT DO NOTHING;
