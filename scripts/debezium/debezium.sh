# shellcheck shell=bash
# Debezium's PostgreSQL connector with its Outbox Event Router in a standalone Kafka
# Connect worker, from Maven Central's jars, run with `java` (see
# scripts/debezium/README.md). Sourced by ./scripts/bench after scripts/services.sh.
#
#   install_debezium                    resolve Connect's and Debezium's jars (once)
#   debezium_start DIR NAME SCHEMA URL  start a worker with one connector for
#                                       SCHEMA.outbox of the database at URL; prints its pid
#   debezium_wait PORT NAME             wait until the connector's task runs
#   debezium_stop PID                   stop the worker (SIGTERM, then SIGKILL)

DEBEZIUM_VERSION=3.6.1.Final
CONNECT_VERSION=4.3.1 # the Kafka Debezium 3.6.1 is built against (see connect-pom.xml)
DEBEZIUM_HOME="${DEBEZIUM_HOME:-$OUTBOX_STATE_DIR/debezium-$DEBEZIUM_VERSION}"
_DEBEZIUM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONNECT_HEAP="${CONNECT_HEAP:--Xms256m -Xmx1g}"
CONNECT_JVM_OPTS="${CONNECT_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1 -XX:CICompilerCount=2 -Djava.awt.headless=true}"
DEBEZIUM_REST_PORT="${DEBEZIUM_REST_PORT:-8083}"

_debezium_log() { printf '[debezium] %s\n' "$*" >&2; }

# _mvn_copy POM OUTPUT: the POM's runtime dependencies into OUTPUT.
_mvn_copy() {
  mvn -B -Dmaven.repo.local="$OUTBOX_STATE_DIR/m2" -f "$1" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$2" 2>&1 | tee -a "$OUTBOX_STATE_DIR/debezium-install.log" \
    | grep --line-buffered -E '^\[(ERROR|INFO)\] (Downloaded|BUILD|ERROR)' >&2
  return "${PIPESTATUS[0]}"
}

install_debezium() {
  [[ -f "$DEBEZIUM_HOME/.complete" ]] && return 0
  install_kafka || return 1 # Java and Maven
  _debezium_log "resolving Kafka Connect $CONNECT_VERSION and Debezium $DEBEZIUM_VERSION from Maven Central into $DEBEZIUM_HOME (once; 43 MB of jars, about 10 s)"
  rm -rf "$DEBEZIUM_HOME.tmp" "$OUTBOX_STATE_DIR/debezium-install.log"
  _mvn_copy "$_DEBEZIUM_DIR/connect-pom.xml" "$DEBEZIUM_HOME.tmp/connect" &&
    _mvn_copy "$_DEBEZIUM_DIR/plugin-pom.xml" "$DEBEZIUM_HOME.tmp/plugins/debezium-connector-postgres" ||
    { tail -20 "$OUTBOX_STATE_DIR/debezium-install.log" >&2; return 1; }
  rm -rf "$DEBEZIUM_HOME" && mv "$DEBEZIUM_HOME.tmp" "$DEBEZIUM_HOME" && touch "$DEBEZIUM_HOME/.complete"
}

# debezium_start DIR NAME SCHEMA DATABASE_URL
# DATABASE_URL is postgres://user[:password]@host[:port]/dbname; NAME names the
# connector, its replication slot, its publication and its offsets (kept in DIR:
# a worker started again on DIR resumes where it stopped).
debezium_start() {
  local dir=$1 name=$2 schema=$3 url=$4
  local rest="${url#*://}" user password="" host port=5432 db
  local auth="${rest%@*}" hostpart="${rest##*@}"
  user="${auth%%:*}"; [[ "$auth" == *:* ]] && password="${auth#*:}"
  host="${hostpart%%/*}"; db="${hostpart#*/}"; db="${db%%\?*}"
  [[ "$host" == *:* ]] && { port="${host##*:}"; host="${host%:*}"; }
  mkdir -p "$dir"
  local brokers="${KAFKA_BROKERS:-127.0.0.1:9092}" sub
  sub="s|@BROKERS@|$brokers|g; s|@REST_PORT@|$DEBEZIUM_REST_PORT|g; s|@PLUGINS@|$DEBEZIUM_HOME/plugins|g; s|@DIR@|$dir|g"
  sed -e "$sub" "$_DEBEZIUM_DIR/worker.properties" >"$dir/worker.properties"
  sed -e "s|@NAME@|$name|g; s|@SCHEMA@|$schema|g; s|@DB_HOST@|$host|g; s|@DB_PORT@|$port|g; s|@DB_USER@|$user|g; s|@DB_NAME@|$db|g" \
    -e "s|@DB_PASSWORD@|${password//|/\\|}|g" "$_DEBEZIUM_DIR/connector.properties" >"$dir/connector.properties"
  chmod 600 "$dir/connector.properties" # it holds the database password
  java $CONNECT_HEAP $CONNECT_JVM_OPTS -Dlog4j2.configurationFile="$_DEBEZIUM_DIR/log4j2.xml" \
    -cp "$DEBEZIUM_HOME/connect/*" org.apache.kafka.connect.cli.ConnectStandalone \
    "$dir/worker.properties" "$dir/connector.properties" >>"$dir/connect.log" 2>&1 &
  echo $!
}

# debezium_wait PORT NAME: until the connector's task reports RUNNING (up to 120 s).
debezium_wait() {
  local port=$1 name=$2 i status
  for i in $(seq 1 240); do
    status=$(curl -fsS "http://127.0.0.1:$port/connectors/$name/status" 2>/dev/null) &&
      [[ "$status" == *'"tasks":[{"id":0,"state":"RUNNING"'* ]] && return 0
    [[ "$status" == *'"state":"FAILED"'* ]] && { _debezium_log "connector $name failed: $status"; return 1; }
    sleep 0.5
  done
  _debezium_log "connector $name did not start on port $port"; return 1
}

debezium_stop() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
}
