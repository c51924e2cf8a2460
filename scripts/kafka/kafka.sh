# shellcheck shell=bash
# Apache Kafka from Maven Central's jars, run with `java`: sourced by
# scripts/services.sh (see scripts/kafka/README.md).
#
#   install_kafka                 resolve the broker's jars into $KAFKA_LIBS (once)
#   kafka_node_start DIR PORT CONTROLLER_PORT [NODE_ID VOTERS]
#                                 format DIR (when new) and start a KRaft node in the
#                                 background; prints its pid
#   kafka_wait HOST PORT          wait until the broker answers

KAFKA_VERSION=4.4.0
KAFKA_HOME="${KAFKA_HOME:-$OUTBOX_STATE_DIR/kafka-$KAFKA_VERSION}"
export KAFKA_LIBS="${KAFKA_LIBS:-$KAFKA_HOME/libs}"
_KAFKA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# A small heap and few GC threads: two cores are shared with PostgreSQL,
# the relays and the tests.
KAFKA_HEAP="${KAFKA_HEAP:--Xms256m -Xmx512m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1 -XX:CICompilerCount=2 -Djava.awt.headless=true}"

_kafka_log() { printf '[kafka] %s\n' "$*" >&2; }

install_kafka() {
  [[ -f "$KAFKA_LIBS/.complete" ]] && return 0
  if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
    _kafka_log "installing Java 17 and Maven (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null || return 1
  fi
  _kafka_log "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIBS (once; 44 MB of jars, about 15 s)"
  rm -rf "$KAFKA_LIBS.tmp"
  # Maven's own lines (each artifact as it arrives) are the progress.
  mvn -B -Dmaven.repo.local="$OUTBOX_STATE_DIR/m2" -Dkafka.version="$KAFKA_VERSION" \
    -f "$_KAFKA_DIR/pom.xml" dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIBS.tmp" \
    2>&1 | tee "$OUTBOX_STATE_DIR/kafka-install.log" | grep --line-buffered -E '^\[(ERROR|INFO)\] (Downloaded|BUILD|Copying|ERROR)' >&2
  [[ ${PIPESTATUS[0]} == 0 ]] || { tail -20 "$OUTBOX_STATE_DIR/kafka-install.log" >&2; return 1; }
  rm -rf "$KAFKA_LIBS" && mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS" && touch "$KAFKA_LIBS/.complete"
}

# A cluster id: 16 random bytes in URL-safe base64 without padding, not
# starting with '-' (it would read as an option).
_kafka_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    [[ "$id" != -* ]] && { echo "$id"; return; }
  done
}

# kafka_node_start DIR PORT CONTROLLER_PORT [NODE_ID VOTERS CLUSTER_ID]
# Without VOTERS: a single combined node. With them ("1@127.0.0.1:p1,2@…"),
# one node of a cluster whose nodes all get the same CLUSTER_ID.
kafka_node_start() {
  local dir=$1 port=$2 cport=$3 node=${4:-1} voters=${5:-} cluster=${6:-}
  mkdir -p "$dir/data"
  local quorum="controller.quorum.bootstrap.servers=127.0.0.1:$cport" format=(--standalone)
  if [[ -n "$voters" ]]; then quorum="controller.quorum.voters=$voters"; format=(); fi
  sed -e "s|@NODE@|$node|g; s|@PORT@|$port|g; s|@CPORT@|$cport|g; s|@DATA@|$dir/data|g; s|@QUORUM@|$quorum|g" \
    "$_KAFKA_DIR/server.properties" >"$dir/server.properties"
  local java=(java $KAFKA_HEAP $KAFKA_JVM_OPTS -Dlog4j2.configurationFile="$_KAFKA_DIR/log4j2.xml" -cp "$KAFKA_LIBS/*")
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    "${java[@]}" kafka.tools.StorageTool format -t "${cluster:-$(_kafka_cluster_id)}" -c "$dir/server.properties" \
      "${format[@]}" >"$dir/format.log" 2>&1 || { tail -5 "$dir/format.log" >&2; return 1; }
  fi
  "${java[@]}" kafka.Kafka "$dir/server.properties" >>"$dir/server.log" 2>&1 &
  echo $!
}

kafka_wait() {
  local host=$1 port=$2 i
  for i in $(seq 1 240); do
    timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null && return 0
    sleep 0.5
  done
  _kafka_log "Kafka did not come up on $host:$port"; return 1
}
