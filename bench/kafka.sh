#!/usr/bin/env bash
# Benchmark (not a test) of a Kafka stream processor through a real broker:
# Kafka $source -> $match -> Kafka $emit, in events/s, next to the raw
# consume rate of Kafka's own consumer on the same topic (the ceiling), with
# aspen's peak RSS.
#
#   bench/kafka.sh [--events N] [--partitions P]
#
# Builds a Release aspen in build-bench/ (-DASPEN_TESTS=OFF), starts a
# single-node Apache Kafka (tests/e2e/peers.sh start_kafka, a fresh one in
# build-bench/run-kafka) and aspen without a backing server, writes N JSON
# events to topic benchIn with Kafka's console producer, and times:
#   1. ConsumerPerformance (Kafka's Java consumer) and kcat (librdkafka's
#      client, installed from Debian if missing) reading all N events;
#   2. aspen's processor reading them all, keeping half ($match on k < 50)
#      and emitting those to benchOut; the clock runs from the first event
#      aspen reads (so the consumer-group join is not counted) to the last,
#      read from getStreamProcessorStats every 100 ms.
# Everything started is stopped on exit. Timings never fail the run; the
# exit status is non-zero only if something broke.
#
# Options (also as environment variables):
#   --events N       events in the topic (BENCH_EVENTS, default 1000000)
#   --partitions P   partitions of benchIn (BENCH_PARTITIONS, default 1)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=$ROOT/build-bench

EVENTS=${BENCH_EVENTS:-1000000}
PARTITIONS=${BENCH_PARTITIONS:-1}
while [[ $# -gt 0 ]]; do
    case $1 in
        --events) EVENTS=$2; shift 2 ;;
        --partitions) PARTITIONS=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "kafka.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/bench/lib.sh"
bench_setup kafka

start_kafka
kafka_create_topic benchIn "$PARTITIONS"
kafka_create_topic benchOut 1

now_ms() { date +%s%3N; }

log "producing $EVENTS events to benchIn"
t0=$(now_ms)
awk -v n="$EVENTS" 'BEGIN {
    for (i = 0; i < n; i++)
        printf "{\"_id\": %d, \"k\": %d, \"v\": %.1f, \"tag\": \"sensor-%d\", \"ok\": true}\n",
               i, i % 100, i * 0.5, i % 1000
}' | kafka_produce benchIn --producer-property linger.ms=20 \
        --producer-property batch.size=262144 --batch-size 2000 \
        2>>"$ASPEN_RUN_DIR/tools.log"
produce_ms=$(($(now_ms) - t0))

log "raw consume with Kafka's ConsumerPerformance"
perf=$(_peers_kafka_tool org.apache.kafka.tools.ConsumerPerformance \
    --bootstrap-server "$KAFKA_BOOTSTRAP" --topic benchIn --messages "$EVENTS" \
    --timeout 60000 2>>"$ASPEN_RUN_DIR/tools.log" </dev/null | tail -n 1)
# start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg,
# nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
raw_rate=$(awk -F', *' '{ printf "%.0f", $10 }' <<<"$perf")

# kcat (librdkafka's command-line client, from Debian) is the other ceiling:
# the same client library aspen uses, consuming without any processing.
if ! command -v kcat >/dev/null 2>&1; then
    log "installing kcat (Debian package) for the raw consume ceiling"
    (apt-get install -y -qq kcat >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq kcat >/dev/null 2>&1; }) || true
fi
kcat_rate=n/a
if command -v kcat >/dev/null 2>&1; then
    log "raw consume with kcat"
    t0=$(now_ms)
    kcat -C -b "$KAFKA_BOOTSTRAP" -t benchIn -o beginning -e -q -c "$EVENTS" >/dev/null 2>>"$ASPEN_RUN_DIR/tools.log" || true
    kcat_ms=$(($(now_ms) - t0))
    [[ $kcat_ms -gt 0 ]] && kcat_rate=$((EVENTS * 1000 / kcat_ms))
fi

cat >"$ASPEN_RUN_DIR/aspen.json" <<JSON
{ "connections": [
  { "name": "kafka1", "type": "kafka", "bootstrapServers": "$KAFKA_BOOTSTRAP" } ] }
JSON
start_aspen --config "$ASPEN_RUN_DIR/aspen.json" --port 0 \
    --state-dir "$ASPEN_RUN_DIR/aspen-state"
aspen_pid=$(<"$ASPEN_RUN_DIR/aspen.pid")
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"

cat >"$ASPEN_RUN_DIR/bench_kafka.js" <<'JS'
const n = Number(process.env.BENCH_EVENTS);
const admin = db.getSiblingDB("admin");
sp.createStreamProcessor("bench", [
  { $source: { connectionName: "kafka1", topic: "benchIn",
               config: { auto_offset_reset: "earliest" } } },
  { $match: { k: { $lt: 50 } } },
  { $emit: { connectionName: "kafka1", topic: "benchOut" } }]);
sp.bench.start();
const stats = () => {
  const st = admin.runCommand({ getStreamProcessorStats: "bench" }).stats;
  return { inputMessageCount: Number(st.inputMessageCount), outputMessageCount: Number(st.outputMessageCount),
           dlqMessageCount: Number(st.dlqMessageCount), status: st.status };
};
let s = stats(), t0 = 0, c0 = 0;
const deadline = Date.now() + 600000;
while (s.inputMessageCount < n && Date.now() < deadline) {
  if (!t0 && s.inputMessageCount > 0) { t0 = Date.now(); c0 = s.inputMessageCount; }
  sleep(100);
  s = stats();
}
const t1 = Date.now();
if (s.inputMessageCount < n) throw new Error("only " + s.inputMessageCount + " of " + n + " events read");
// The $emit side: wait until every kept event has been handed to Kafka.
while (s.outputMessageCount < n / 2 && Date.now() < deadline) { sleep(100); s = stats(); }
const t2 = Date.now();
print(JSON.stringify({ read: s.inputMessageCount, emitted: s.outputMessageCount,
                       dlq: s.dlqMessageCount, ms: t1 - t0, counted: n - c0,
                       emitMs: t2 - t0, state: s.status }));
sp.bench.stop();
JS
log "running Kafka \$source -> \$match -> \$emit in aspen"
out=$(BENCH_EVENTS=$EVENTS MONGOSH_TIMEOUT=900 mongosh_run "$URI" "$ASPEN_RUN_DIR/bench_kafka.js")
res=$(tail -n 1 <<<"$out")
rss_kb=$(awk '/^VmHWM/ { print $2 }' "/proc/$aspen_pid/status")
read -r ms counted emitted < <("$PEERS_PYTHON" -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["ms"], r["counted"], r["emitted"])' "$res")
aspen_rate=$((counted * 1000 / (ms > 0 ? ms : 1)))

printf 'aspen Kafka benchmark  %s\n' "$(date -u +%FT%TZ)"
printf 'host: %s, %s CPUs; aspen %s (Release, pid %s); broker: Apache Kafka (KRaft, 1 node), benchIn with %s partition(s)\n' \
    "$(uname -m)" "$(nproc)" "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')" \
    "$aspen_pid" "$PARTITIONS"
printf '%-52s %12s\n' "events in benchIn" "$EVENTS"
printf '%-52s %12s\n' "console producer, events/s" "$((EVENTS * 1000 / (produce_ms > 0 ? produce_ms : 1)))"
printf '%-52s %12s\n' "Kafka ConsumerPerformance (raw consume), events/s" "$raw_rate"
printf '%-52s %12s\n' "kcat (raw consume, librdkafka), events/s" "$kcat_rate"
printf '%-52s %12s\n' "aspen \$source -> \$match -> \$emit, events/s" "$aspen_rate"
printf '%-52s %12s\n' "  events emitted to benchOut" "$emitted"
printf '%-52s %12s\n' "aspen / raw consume" "$(awk -v a="$aspen_rate" -v r="$raw_rate" 'BEGIN { printf (r > 0 ? "%.2f" : "n/a"), (r > 0 ? a / r : 0) }')"
printf '%-52s %12s\n' "aspen / kcat" "$(awk -v a="$aspen_rate" -v r="$kcat_rate" 'BEGIN { printf (r > 0 ? "%.2f" : "n/a"), (r > 0 ? a / r : 0) }')"
printf '%-52s %9s MB\n' "aspen peak RSS (VmHWM)" "$((rss_kb / 1024))"

rc=0
stop_aspen || { log "aspen did not stop cleanly (see $ASPEN_RUN_DIR/aspen.log)"; rc=1; }
stop_kafka || true
exit "$rc"
