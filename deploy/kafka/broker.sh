#!/usr/bin/env bash
# The local Apache Kafka broker for development, tests and CI: a single KRaft node on 127.0.0.1, from the
# jars that deploy/kafka/pom.xml pins (Maven Central; no Docker, no other download).
#
#   deploy/kafka/broker.sh fetch     download the pinned jars (once; start does it too)
#   deploy/kafka/broker.sh start     format storage if new, start, wait until it serves requests
#   deploy/kafka/broker.sh stop      stop it cleanly (SIGTERM, then wait)
#   deploy/kafka/broker.sh status    running or not, and where
#   deploy/kafka/broker.sh reset     stop and delete its data
#
# Settings (environment): TIERGATE_KAFKA_PORT (19092), TIERGATE_KAFKA_CONTROLLER_PORT (19093),
# TIERGATE_KAFKA_RUN (deploy/kafka/run: data, logs, pid), TIERGATE_KAFKA_HEAP (512m),
# TIERGATE_KAFKA_EXTRA (a file of extra server.properties lines, e.g. a second, secured listener).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
port="${TIERGATE_KAFKA_PORT:-19092}"
controller_port="${TIERGATE_KAFKA_CONTROLLER_PORT:-19093}"
run="${TIERGATE_KAFKA_RUN:-$here/run}"
heap="${TIERGATE_KAFKA_HEAP:-512m}"
jars="$here/target/jars"
pidfile="$run/broker.pid"
log="$run/broker.log"

fetch() {
    if [ -f "$jars/.complete" ]; then return; fi
    command -v mvn >/dev/null || { echo "broker.sh: Maven (mvn) is needed to fetch the Kafka jars" >&2; exit 1; }
    echo "broker.sh: fetching the pinned Kafka jars from Maven Central…" >&2
    mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies >&2
    touch "$jars/.complete"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

java_cmd() { java "-Xmx$heap" -Xms128m -XX:+UseG1GC -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$run/log4j2.properties" -cp "$jars/*" "$@"; }

write_config() {
    mkdir -p "$run/data"
    cat > "$run/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$run/data
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.session.timeout.ms=6000
group.consumer.min.session.timeout.ms=2000
group.min.session.timeout.ms=2000
log.cleaner.backoff.ms=1000
log.retention.check.interval.ms=5000
EOF
    if [ -n "${TIERGATE_KAFKA_EXTRA:-}" ]; then cat "$TIERGATE_KAFKA_EXTRA" >> "$run/server.properties"; fi
    cat > "$run/log4j2.properties" <<EOF
rootLogger.level=WARN
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
logger.server.name=kafka.server.KafkaRaftServer
logger.server.level=INFO
EOF
}

wait_ready() {
    local deadline=$((SECONDS + ${1:-90}))
    while [ $SECONDS -lt $deadline ]; do
        if ! running; then echo "broker.sh: the broker exited; see $log" >&2; tail -20 "$log" >&2 || true; exit 1; fi
        if grep -q "Kafka Server started" "$log" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "broker.sh: Kafka $(ls "$jars" | sed -n 's/^kafka_2.13-\(.*\)\.jar$/\1/p') ready on 127.0.0.1:$port" >&2
            return
        fi
        sleep 0.2
    done
    echo "broker.sh: the broker did not become ready in time; see $log" >&2
    exit 1
}

start() {
    if running; then echo "broker.sh: already running (pid $(cat "$pidfile")) on 127.0.0.1:$port" >&2; return; fi
    fetch
    write_config
    if [ ! -f "$run/data/meta.properties" ]; then
        java_cmd kafka.tools.StorageTool format --ignore-formatted -t "$(java_cmd kafka.tools.StorageTool random-uuid)" \
            -c "$run/server.properties" >/dev/null
    fi
    : > "$log"
    nohup java "-Xmx$heap" -Xms128m -XX:+UseG1GC -Djava.awt.headless=true \
        "-Dlog4j2.configurationFile=$run/log4j2.properties" -cp "$jars/*" \
        kafka.Kafka "$run/server.properties" > "$run/broker.out" 2>&1 &
    echo $! > "$pidfile"
    wait_ready 90
}

stop() {
    if ! running; then rm -f "$pidfile"; return; fi
    local pid; pid="$(cat "$pidfile")"
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return; }; sleep 0.2; done
    echo "broker.sh: the broker did not stop in 30 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

case "${1:-}" in
    fetch) fetch ;;
    start) start ;;
    stop) stop ;;
    status) if running; then echo "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else echo "stopped"; exit 3; fi ;;
    reset) stop; rm -rf "$run" ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
