#!/usr/bin/env bash
# e2e: Kafka $source and $emit against a real Apache Kafka broker (KRaft,
# one node, from Maven Central), through stock mongosh, with a real backing
# server: connections listed without secrets, ASP's option errors, a missing
# topic failing with 419, dailySales -> $match -> $merge with the bad line in
# the DLQ, stop/start resuming from committed offsets (no gap, no
# duplicate), and documents -> $emit (topic expression, key, headers) read
# back by a Kafka $source and by Kafka's own console consumer; the broker
# aspen hosts for a "local": true connection, written by $emit and read back
# through sp.process's wire commands; a broker killed and restarted under
# a running Kafka -> $merge processor, with nothing lost or doubled.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

CONFIG=$ASPEN_RUN_DIR/aspen.json
STATE=$ASPEN_RUN_DIR/state
rm -rf "$STATE"

timed_start_kafka() {
    local t0=$SECONDS
    start_kafka || return 1
    echo "# Kafka broker started in $((SECONDS - t0)) s"
}

write_config() {
    cat >"$CONFIG" <<JSON
{ "connections": [
  { "name": "atlas", "type": "atlas" },
  { "name": "kafka1", "type": "kafka", "bootstrapServers": "$KAFKA_BOOTSTRAP",
    "config": { "socket.timeout.ms": 10000 } },
  { "name": "localKafka", "type": "kafka", "local": true },
  { "name": "kafkaSasl", "type": "kafka", "bootstrapServers": "127.0.0.1:1",
    "security": { "protocol": "SASL_PLAINTEXT", "mechanism": "SCRAM-SHA-256",
                  "username": "alice", "password": "hunter2" } } ] }
JSON
}

seed_sales() {
    printf '%s\n' \
        $'k1\t{"item": "apple", "amount": 12, "day": {"$date": "2024-05-01T00:00:00Z"}}' \
        $'k2\t{"item": "pear", "amount": 3}' \
        $'k3\tthis is not json' \
        $'k4\t{"item": "plum", "amount": {"$numberLong": "40"}}' \
        $'k5\t{"item": "fig", "amount": 10.5}' |
        kafka_produce dailySales --keyed 2>>"$ASPEN_RUN_DIR/tools.log"
}

more_sales() {
    printf '%s\n' $'k6\t{"item": "kiwi", "amount": 11}' $'k7\t{"item": "lime", "amount": 99}' |
        kafka_produce dailySales --keyed 2>>"$ASPEN_RUN_DIR/tools.log"
}

phase() { KT_PHASE=$1 mongosh_run "$URI" "$HERE/test_kafka.js"; }

# produce_range FROM TO [ARGS...]: {"_id": i, "n": i} for FROM <= i < TO to
# topic restartIn; ARGS go to Kafka's console producer.
produce_range() {
    local from=$1 to=$2
    shift 2
    seq "$from" $((to - 1)) | awk '{ printf "{\"_id\": %d, \"n\": %d}\n", $1, $1 }' |
        kafka_produce restartIn "$@" 2>>"$ASPEN_RUN_DIR/tools.log"
}

RESTART_N=900
export KT_RESTART_N=$RESTART_N
# broker_restart: with the survivor processor reading restartIn, SIGKILL the
# broker, produce while it is down (the producer waits for it), start it
# again on the same port with its data, and produce once more.
broker_restart() {
    local bg
    produce_range 100 300 || return 1
    kill_kafka || return 1
    produce_range 300 600 --producer-property max.block.ms=180000 \
        --producer-property delivery.timeout.ms=180000 &
    bg=$!
    timed_start_kafka || { wait "$bg"; return 1; }
    wait "$bg" || return 1
    produce_range 600 "$RESTART_N"
}

console_consumer_sees_emit() {
    local out
    out=$(kafka_consume roundrt 2 --headers 2>>"$ASPEN_RUN_DIR/tools.log") || return 1
    grep -q 'who:one' <<<"$out" && grep -q '"n" : "two"' <<<"$out" ||
        { echo "# console consumer printed: $out"; return 1; }
}

must "backing server starts" start_backing
must "Kafka broker starts" timed_start_kafka
must "topic dailySales seeded with Kafka's console producer" seed_sales
write_config
must "aspen starts" start_aspen --config "$CONFIG" --bind 127.0.0.1 --port 0 \
    --backend "$BACKING_URI" --state-dir "$STATE"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
check "listing, option errors, missing topic, dailySales -> \$merge + DLQ" phase read
check "two more sales produced while stopped" more_sales
check "restart resumes from the committed offsets" phase resume
check "listing 15.4: \$validate -> \$emit, invalid to the DLQ; latest vs earliest" phase validate
check "documents -> \$emit -> Kafka \$source round trip" phase emit
check "Kafka's console consumer reads what \$emit wrote" console_consumer_sees_emit
check "zero-setup broker (\"local\": true): documents -> \$emit -> sp.process" phase local
check "topic restartIn: the first 100 messages" produce_range 0 100
check "a Kafka -> \$merge processor is running" phase restart_begin
check "broker killed and restarted, messages before, during and after" broker_restart
check "every message merged exactly once, the processor still running" \
    phase restart_check
check "aspen stops cleanly, no sanitizer report" stop_aspen
check "Kafka broker stops" stop_kafka
check "backing server stops" stop_backing

checks_done
