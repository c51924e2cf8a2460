-- Quarantine: a dead-lettered event whose key is quarantined holds back every
-- later event of that key until an operator retries or discards it.
ALTER TABLE {dead_letter} ADD COLUMN IF NOT EXISTS quarantined boolean NOT NULL DEFAULT false;

CREATE INDEX IF NOT EXISTS "{dead_letter_name}_quarantined_idx" ON {dead_letter} (key) WHERE quarantined;
