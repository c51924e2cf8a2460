-- Least-privilege grants for an outbox (rendered by `outbox-relay grants`
-- with checked, quoted identifiers). The tables belong to the role that ran
-- the migrations; this script gives the other roles only what they use.
-- Run it as that owner (or a superuser) after `outbox-relay migrate`.

-- The application (write side): may only add events to the outbox.
-- (Identity columns need no sequence privilege.)
GRANT USAGE ON SCHEMA {schema} TO {app_role};
GRANT INSERT ON {outbox} TO {app_role};

-- The relay: reads, marks and deletes events, dead-letters them, keeps its
-- leases and heartbeats, and checks the schema version. INSERT on the outbox
-- is for `outbox-relay dead-letters retry`, which puts events back. No DDL.
GRANT USAGE ON SCHEMA {schema} TO {relay_role};
GRANT SELECT, INSERT, UPDATE, DELETE ON {outbox}, {dead_letter}, {published}, {leases}, {relays} TO {relay_role};
GRANT SELECT ON {migrations} TO {relay_role};

-- An idempotent consumer (inbox side): records what it applied and what it
-- gave up on. Its handlers' own tables need their own grants.
GRANT USAGE ON SCHEMA {schema} TO {consumer_role};
GRANT SELECT, INSERT, DELETE ON {inbox} TO {consumer_role};
GRANT SELECT, INSERT, UPDATE, DELETE ON {inbox_dead_letter} TO {consumer_role};

-- Sagas (outbox_core::saga). Starting a saga writes its instance and first
-- command in the application's transaction; the orchestrator's reply
-- consumer and the participants run as the consumer role, and send their
-- commands and replies through the outbox.
GRANT SELECT, INSERT ON {saga}, {saga_history} TO {app_role};
GRANT INSERT ON {outbox} TO {consumer_role};
GRANT SELECT, INSERT, UPDATE, DELETE ON {saga}, {saga_history}, {saga_commands} TO {consumer_role};
