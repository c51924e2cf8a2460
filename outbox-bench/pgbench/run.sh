#!/usr/bin/env bash
# Write-path cost without any Rust client: the same business transaction
# (one order row) alone, with a second order row, with a 256-byte row, and
# with one outbox row, through pgbench (16 clients, prepared statements).
# Shows what one more statement costs on this machine, next to what the
# outbox row costs. Usage: outbox-bench/pgbench/run.sh [seconds] [rounds]
set -euo pipefail
cd "$(dirname "$0")"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/outbox_bench}"
relay="${OUTBOX_RELAY:-${CARGO_TARGET_DIR:-$HOME/.cache/outbox/target}/release/outbox-relay}"
psql -qX "$DATABASE_URL" -c "DROP SCHEMA IF EXISTS wp CASCADE" >/dev/null 2>&1
"$relay" migrate --schema wp >/dev/null 2>&1
psql -qX "$DATABASE_URL" >/dev/null <<'SQL'
CREATE TABLE wp.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer text NOT NULL,
    amount bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE wp.wide (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer text NOT NULL, payload bytea NOT NULL);
SQL
for round in $(seq "${2:-2}"); do
  for t in plain second wide outbox; do
    tps=$(pgbench -n -M prepared -c16 -j2 -T "${1:-6}" -f "$t.sql" "$DATABASE_URL" 2>/dev/null | awk '/^tps/ {print $3}')
    echo "round $round $t tps=$tps"
  done
done
