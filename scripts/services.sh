# shellcheck shell=bash
# Sourced by scripts/test, scripts/demo and .ci/run.
#
# Makes sure PostgreSQL, Apache Kafka and Redis answer, starting (and, if
# needed, installing) local ones when they do not, and exports DATABASE_URL,
# KAFKA_BROKERS and REDIS_URL for what runs next. Whatever it starts is
# stopped by `services_stop` (registered on EXIT by the caller).
#
#   DATABASE_URL   PostgreSQL to use   (default postgres://postgres@127.0.0.1:5432/outbox_test)
#   KAFKA_BROKERS  Kafka brokers       (default 127.0.0.1:9092; see scripts/kafka/README.md)
#   REDIS_URL      Redis (flash sale)  (default redis://127.0.0.1:6379)
#   MYSQL_URL      MySQL or MariaDB    (default mysql://root@127.0.0.1:3306/outbox_test;
#                  started only by `start_mariadb`, for the tests that name it)

OUTBOX_STATE_DIR="${OUTBOX_STATE_DIR:-$HOME/.cache/outbox}"
mkdir -p "$OUTBOX_STATE_DIR"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/outbox_test}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export MYSQL_URL="${MYSQL_URL:-mysql://root@127.0.0.1:3306/outbox_test}"
_SERVICES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/kafka/kafka.sh
source "$_SERVICES_DIR/kafka/kafka.sh"
_STARTED_PG_DIR=""
_STARTED_KAFKA_PID=""
_STARTED_REDIS_PID=""
_STARTED_MARIADB_PID=""

log() { printf '[services] %s\n' "$*" >&2; }

# host and port of a postgres URL (postgres://user:pw@host:port/db?x)
_pg_host() { local a="${DATABASE_URL#*://}"; a="${a%%/*}"; a="${a##*@}"; echo "${a%%:*}"; }
_pg_port() { local a="${DATABASE_URL#*://}"; a="${a%%/*}"; a="${a##*@}"; [[ "$a" == *:* ]] && echo "${a##*:}" || echo 5432; }

# true if host:port accepts TCP connections
answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

_wait_port() {
  local host=$1 port=$2 what=$3 i
  for i in $(seq 1 120); do answers "$host" "$port" && return 0; sleep 0.5; done
  log "$what did not come up on $host:$port"; return 1
}

_is_local() { [[ "$1" == 127.* || "$1" == localhost || "$1" == ::1 ]]; }

_pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin /usr/local/bin /usr/bin; do
    [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] && { echo "$d"; return 0; }
  done
  return 1
}

start_postgres() {
  local host port bindir dir
  host=$(_pg_host); port=$(_pg_port)
  if answers "$host" "$port"; then log "PostgreSQL answers at $host:$port"; return 0; fi
  _is_local "$host" || { log "PostgreSQL at $host:$port does not answer and is not local"; return 1; }
  if ! bindir=$(_pg_bindir); then
    log "installing PostgreSQL (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || return 1
    bindir=$(_pg_bindir) || { log "PostgreSQL binaries not found after install"; return 1; }
  fi
  # initdb refuses to run as root: as root, run the private cluster as
  # postgres, in a directory that user can reach ($HOME is often 0700).
  local as=() root="$OUTBOX_STATE_DIR"
  if [[ $(id -u) == 0 ]]; then as=(runuser -u postgres --); root="${OUTBOX_PG_ROOT:-/var/tmp/outbox}"; fi
  dir="$root/pg-$port"
  id -u postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" postgres
  if [[ ! -f "$dir/PG_VERSION" ]]; then
    rm -rf "$dir"; mkdir -p "$dir"; [[ $(id -u) == 0 ]] && chown postgres "$dir"
    "${as[@]}" "$bindir/initdb" -D "$dir" -U postgres --auth=trust >/dev/null || return 1
  fi
  mkdir -p /tmp/outbox-pg-sock && { [[ $(id -u) == 0 ]] && chown postgres /tmp/outbox-pg-sock || true; }
  log "starting a private PostgreSQL on port $port ($dir)"
  "${as[@]}" "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
    -o "-p $port -k /tmp/outbox-pg-sock -c listen_addresses=127.0.0.1 -c max_connections=300 $(_pg_settings)" start >/dev/null || return 1
  _STARTED_PG_DIR="$dir"; _PG_AS=("${as[@]}"); _PG_BINDIR="$bindir"
  _wait_port 127.0.0.1 "$port" PostgreSQL
}

# Durability off for tests (OUTBOX_PG_DURABLE=1 keeps PostgreSQL's
# production defaults instead: fsync, synchronous_commit and
# full_page_writes on). Logical decoding is on either way, for the
# Debezium peer and the logical-decoding relay.
_pg_settings() {
  local s="-c wal_level=logical -c max_replication_slots=16 -c max_wal_senders=16"
  [[ "${OUTBOX_PG_DURABLE:-0}" == 1 ]] && echo "$s -c fsync=on -c synchronous_commit=on -c full_page_writes=on" \
    || echo "$s -c fsync=off"
}

start_kafka() {
  local first="${KAFKA_BROKERS%%,*}" host port dir
  host="${first%:*}"; port="${first##*:}"
  if answers "$host" "$port"; then log "Kafka answers at $host:$port"; return 0; fi
  _is_local "$host" || { log "Kafka at $host:$port does not answer and is not local"; return 1; }
  install_kafka || return 1
  # A fresh log directory each time: nothing of an earlier run's topics.
  dir="$OUTBOX_STATE_DIR/kafka-$port"
  rm -rf "$dir"
  log "starting Apache Kafka $KAFKA_VERSION on $host:$port (KRaft, one node, log in $dir; about 10 s)"
  _STARTED_KAFKA_PID=$(kafka_node_start "$dir" "$port" $((port + 1))) || return 1
  kafka_wait "$host" "$port" || { tail -20 "$dir/server.log" >&2; return 1; }
}

# host and port of a redis URL (redis://[user:pw@]host[:port][/db])
_redis_host() { local a="${REDIS_URL#*://}"; a="${a%%/*}"; a="${a##*@}"; echo "${a%%:*}"; }
_redis_port() { local a="${REDIS_URL#*://}"; a="${a%%/*}"; a="${a##*@}"; [[ "$a" == *:* ]] && echo "${a##*:}" || echo 6379; }

start_redis() {
  local host port
  host=$(_redis_host); port=$(_redis_port)
  if answers "$host" "$port"; then log "Redis answers at $host:$port"; return 0; fi
  _is_local "$host" || { log "Redis at $host:$port does not answer and is not local"; return 1; }
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing Redis (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null || return 1
  fi
  log "starting a private Redis on $host:$port"
  redis-server --port "$port" --bind "$host" --save "" --appendonly no \
    >"$OUTBOX_STATE_DIR/redis-$port.log" 2>&1 &
  _STARTED_REDIS_PID=$!
  _wait_port "$host" "$port" Redis
}

# host and port of a mysql URL (mysql://[user:pw@]host[:port][/db])
_mysql_host() { local a="${MYSQL_URL#*://}"; a="${a%%/*}"; a="${a##*@}"; echo "${a%%:*}"; }
_mysql_port() { local a="${MYSQL_URL#*://}"; a="${a%%/*}"; a="${a##*@}"; [[ "$a" == *:* ]] && echo "${a##*:}" || echo 3306; }

# Durability off for tests (no flush of InnoDB's log at each commit, no
# doublewrite); OUTBOX_MARIADB_DURABLE=1 keeps MariaDB's production defaults.
_mariadb_settings() {
  [[ "${OUTBOX_MARIADB_DURABLE:-0}" == 1 ]] && return 0
  echo "--innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --sync-binlog=0"
}

# A private MariaDB (Debian's 10.11) when MYSQL_URL does not answer: its own
# data directory, bound to 127.0.0.1, root without a password (like the
# private PostgreSQL's trust authentication), the URL's database created.
start_mariadb() {
  local host port dir as=() user=()
  host=$(_mysql_host); port=$(_mysql_port)
  if answers "$host" "$port"; then log "MySQL/MariaDB answers at $host:$port"; return 0; fi
  _is_local "$host" || { log "MySQL/MariaDB at $host:$port does not answer and is not local"; return 1; }
  if [[ ! -x /usr/sbin/mariadbd ]]; then
    log "installing MariaDB (apt-get, about 15 s)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null || return 1
    # Where the package's own service started (no policy-rc.d), stop it:
    # the tests use a private server with known credentials.
    if answers "$host" "$port"; then service mariadb stop >/dev/null 2>&1 || true; fi
  fi
  local root="$OUTBOX_STATE_DIR"
  if [[ $(id -u) == 0 ]]; then root="${OUTBOX_PG_ROOT:-/var/tmp/outbox}"; user=(--user=mysql); as=(runuser -u mysql --); fi
  dir="$root/mariadb-$port"
  if [[ ! -d "$dir/data/mysql" ]]; then
    rm -rf "$dir"; mkdir -p "$dir/data"; [[ $(id -u) == 0 ]] && chown -R mysql "$dir"
    "${as[@]}" mariadb-install-db --no-defaults --datadir="$dir/data" --auth-root-authentication-method=normal \
      --skip-test-db >"$dir/install.log" 2>&1 || { tail -5 "$dir/install.log" >&2; return 1; }
  fi
  log "starting a private MariaDB on port $port ($dir)"
  # shellcheck disable=SC2046
  /usr/sbin/mariadbd --no-defaults "${user[@]}" --datadir="$dir/data" --port="$port" --bind-address=127.0.0.1 \
    --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" --log-error="$dir/server.log" \
    --skip-name-resolve --innodb-buffer-pool-size=256M --max-connections=300 --max-allowed-packet=64M \
    $(_mariadb_settings) >/dev/null 2>&1 &
  _STARTED_MARIADB_PID=$!
  _wait_port 127.0.0.1 "$port" MariaDB || { tail -20 "$dir/server.log" >&2; return 1; }
  # root may connect over TCP from 127.0.0.1 (skip-name-resolve: "localhost"
  # matches only the socket); then the URL's database.
  local db="${MYSQL_URL##*/}"; db="${db%%\?*}"
  mariadb --no-defaults -S "$dir/mysqld.sock" -u root -e \
    "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; CREATE DATABASE IF NOT EXISTS \`$db\`" \
    || { log "could not set up the private MariaDB"; return 1; }
}

services_start() {
  start_postgres || { log "could not start PostgreSQL"; return 1; }
  start_kafka || { log "could not start Kafka"; return 1; }
  start_redis || { log "could not start Redis"; return 1; }
  install_kafka || return 1   # tests run private brokers of their own
}

# Every step may fail (a process already gone): the callers run under
# `set -e`, and what follows must still be stopped.
services_stop() {
  if [[ -n "$_STARTED_MARIADB_PID" ]]; then
    kill "$_STARTED_MARIADB_PID" 2>/dev/null || true
    wait "$_STARTED_MARIADB_PID" 2>/dev/null || true
    log "stopped MariaDB"
  fi
  if [[ -n "$_STARTED_REDIS_PID" ]]; then
    kill "$_STARTED_REDIS_PID" 2>/dev/null || true
    wait "$_STARTED_REDIS_PID" 2>/dev/null || true
    log "stopped Redis"
  fi
  if [[ -n "$_STARTED_KAFKA_PID" ]]; then
    # A controlled shutdown takes a few seconds; SIGKILL after 30.
    kill "$_STARTED_KAFKA_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 60); do kill -0 "$_STARTED_KAFKA_PID" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$_STARTED_KAFKA_PID" 2>/dev/null || true
    log "stopped Kafka"
  fi
  if [[ -n "$_STARTED_PG_DIR" ]]; then
    "${_PG_AS[@]}" "$_PG_BINDIR/pg_ctl" -D "$_STARTED_PG_DIR" -m fast stop >/dev/null 2>&1 || true
    log "stopped the private PostgreSQL"
  fi
}

# The official CloudEvents SDK for Python in a virtual environment outside
# the clone (installed once), for the conformance test: exports
# OUTBOX_CLOUDEVENTS_PYTHON unless it is set already.
CLOUDEVENTS_SDK_VERSION=2.2.0
ensure_cloudevents_sdk() {
  [[ -n "${OUTBOX_CLOUDEVENTS_PYTHON:-}" ]] && return 0
  local venv="$OUTBOX_STATE_DIR/venv-cloudevents-$CLOUDEVENTS_SDK_VERSION"
  if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import cloudevents.core.bindings.kafka' 2>/dev/null; then
    log "installing the CloudEvents SDK for Python $CLOUDEVENTS_SDK_VERSION (pip, once) into $venv"
    command -v python3 >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv" || return 1
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check "cloudevents==$CLOUDEVENTS_SDK_VERSION" || return 1
  fi
  export OUTBOX_CLOUDEVENTS_PYTHON="$venv/bin/python"
}

# psql, installed when missing.
ensure_psql() {
  command -v psql >/dev/null 2>&1 && return 0
  log "installing the PostgreSQL client (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
}

# Creates the database named in DATABASE_URL when it does not exist.
ensure_database() {
  ensure_psql || return 1
  local db="${DATABASE_URL##*/}"; db="${db%%\?*}"
  local admin="${DATABASE_URL%/*}/postgres"
  if ! psql "$admin" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    psql "$admin" -qc "CREATE DATABASE \"$db\"" >/dev/null && log "created database $db"
  fi
}

# GET http://127.0.0.1:PORT/PATH without curl; prints the body.
http_get() {
  local port=$1 path=$2
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
  sed '1,/^\r$/d' <&3
  exec 3<&-
}
