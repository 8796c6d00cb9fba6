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
# a running Kafka -> $merge processor, with nothing lost or doubled; a
# $source reading two topics into a window keeps a watermark per topic's
# partition (the topic produced first makes none of the other's late).
# Faults: a document larger than its topic's max.message.bytes goes to the
# DLQ and is counted while the documents batched with it are delivered; a
# $source topic and an $emit topic deleted under running processors fail
# them with a clear error (and the $emit one, restarted once its topic is
# back, emits exactly what it could not deliver); wrong SASL credentials
# fail the start with "authentication failed", right ones work.
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
  { "name": "kafkaNoCreate", "type": "kafka", "bootstrapServers": "$KAFKA_BOOTSTRAP",
    "config": { "allow.auto.create.topics": false } },
  { "name": "kafkaSaslOk", "type": "kafka", "bootstrapServers": "$KAFKA_SASL_BOOTSTRAP",
    "security": { "protocol": "SASL_PLAINTEXT", "mechanism": "PLAIN",
                  "username": "$KAFKA_SASL_USER", "password": "$KAFKA_SASL_PASSWORD" } },
  { "name": "kafkaBadAuth", "type": "kafka", "bootstrapServers": "$KAFKA_SASL_BOOTSTRAP",
    "security": { "protocol": "SASL_PLAINTEXT", "mechanism": "PLAIN",
                  "username": "$KAFKA_SASL_USER", "password": "not-the-password" } },
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

# ids N...: {"_id": N} lines
ids() { printf '{"_id": %d}\n' "$@"; }

tiny_topic() {
    kafka_create_topic tinyTopic 1 --config max.message.bytes=1024 2>>"$ASPEN_RUN_DIR/tools.log"
}

# Kafka's console consumer reads the 29 small documents from tinyTopic and
# not the oversized one.
tiny_topic_has_the_rest() {
    local out n
    out=$(kafka_consume tinyTopic 29 2>>"$ASPEN_RUN_DIR/tools.log") || return 1
    n=$(grep -c '"_id"' <<<"$out")
    [[ $n -eq 29 ]] && ! grep -q '"_id" : 2,' <<<"$out" ||
        { echo "# tinyTopic holds $n documents: ${out:0:300}"; return 1; }
}

doomed_topics() {
    kafka_create_topic doomedIn && kafka_create_topic doomedOut && kafka_create_topic feedIn &&
        ids 1 2 3 | kafka_produce doomedIn && ids 1 2 3 | kafka_produce feedIn
} 2>>"$ASPEN_RUN_DIR/tools.log"

recreate_doomed_out() { kafka_create_topic doomedOut 2>>"$ASPEN_RUN_DIR/tools.log"; }

delete_topics() {
    kafka_delete_topic doomedIn && kafka_delete_topic doomedOut && ids 4 5 6 | kafka_produce feedIn
} 2>>"$ASPEN_RUN_DIR/tools.log"

# two_topics: partition 0 of topics twoA and twoB each get 30 messages 200 ms
# apart in event time (5 per 1 s window) and one an hour later that closes
# them all; twoA is produced first, so a consumer may read it before twoB.
two_topics() {
    local topic
    for topic in twoA twoB; do
        kafka_create_topic "$topic" 1 &&
            seq 0 30 | awk -v topic="$topic" '{
                t = $1 < 30 ? sprintf("00:%02d.%03d", $1 * 200 / 1000, $1 * 200 % 1000) : "00:00.000"
                printf "{\"topic\": \"%s\", \"i\": %d, \"t\": {\"$date\": \"2024-05-01T0%d:%sZ\"}}\n",
                    topic, $1, $1 < 30 ? 0 : 1, t }' |
            kafka_produce "$topic" || return 1
    done
} 2>>"$ASPEN_RUN_DIR/tools.log"

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
check "topics twoA, twoB: 31 timestamped messages each, twoA's first" two_topics
check "a two-topic \$source -> \$tumblingWindow: a watermark per topic, none late" \
    phase two_topics
check "zero-setup broker (\"local\": true): documents -> \$emit -> sp.process" phase local
check "topic tinyTopic with max.message.bytes=1024" tiny_topic
check "\$emit: the oversized document to the DLQ and counted, the rest delivered" phase too_large
check "Kafka's console consumer reads the 29 others from tinyTopic" tiny_topic_has_the_rest
check "topics doomedIn, doomedOut, feedIn with 3 messages each" doomed_topics
check "Kafka \$source and \$emit processors on them running" phase delete_begin
check "doomedIn and doomedOut deleted, 3 more messages to feedIn" delete_topics
check "both processors FAILED with a clear error in listings and stats" phase delete_check
check "doomedOut created again" recreate_doomed_out
check "the \$emit processor restarted emits exactly the undelivered 3" phase delete_resume
check "SASL: right credentials work, wrong ones fail with 'authentication failed'" phase sasl
check "topic restartIn: the first 100 messages" produce_range 0 100
check "a Kafka -> \$merge processor is running" phase restart_begin
check "broker killed and restarted, messages before, during and after" broker_restart
check "every message merged exactly once, the processor still running" \
    phase restart_check
check "aspen stops cleanly, no sanitizer report" stop_aspen
check "Kafka broker stops" stop_kafka
check "backing server stops" stop_backing

checks_done
