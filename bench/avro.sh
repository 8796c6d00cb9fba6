#!/usr/bin/env bash
# Benchmark (not a test) of Avro through a Schema Registry: Kafka $source ->
# $match -> Kafka $emit on the same events, once as JSON and once as Avro
# (decode with the writer's schema from the registry, encode with a given
# schema registered under avroOut-value), in events/s, side by side.
#
#   bench/avro.sh [--events N]
#
# Builds a Release aspen in build-bench/, starts a single-node Apache Kafka
# and Apicurio Registry (tests/e2e/peers.sh), writes N events to jsonIn and
# avroIn with confluent-kafka + fastavro (bench/avro_produce.py), then runs
# each processor alone and times it from the first event it reads to the
# last (getStreamProcessorStats every 100 ms), as bench/kafka.sh does, and
# counts aspen's CPU time (user + system, /proc/PID/stat) over each run per
# event read: on a shared, busy machine the CPU per event is the steadier
# of the two.
# Timings never fail the run; the exit status is non-zero only if something
# broke.
#
# Options (also as environment variables):
#   --events N   events per topic (BENCH_EVENTS, default 300000)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=$ROOT/build-bench

EVENTS=${BENCH_EVENTS:-300000}
while [[ $# -gt 0 ]]; do
    case $1 in
        --events) EVENTS=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "avro.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/bench/lib.sh"
bench_setup avro

start_kafka
start_registry
for t in jsonIn avroIn jsonOut avroOut; do kafka_create_topic "$t" 1; done

log "producing $EVENTS events to jsonIn and avroIn"
schema=$("$PEERS_PYTHON" "$ROOT/bench/avro_produce.py" "$KAFKA_BOOTSTRAP" "$REGISTRY_URL" "$EVENTS" | tail -n 1)

cat >"$ASPEN_RUN_DIR/aspen.json" <<JSON
{ "connections": [
  { "name": "kafka1", "type": "kafka", "bootstrapServers": "$KAFKA_BOOTSTRAP" },
  { "name": "registry", "type": "schemaRegistry", "schemaRegistryUrls": ["$REGISTRY_URL"] } ] }
JSON
start_aspen --config "$ASPEN_RUN_DIR/aspen.json" --port 0 \
    --state-dir "$ASPEN_RUN_DIR/aspen-state"
aspen_pid=$(<"$ASPEN_RUN_DIR/aspen.pid")
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"

cat >"$ASPEN_RUN_DIR/bench_avro.js" <<'JS'
const n = Number(process.env.BENCH_EVENTS);
const avro = process.env.BENCH_FORMAT === "avro";
const schema = JSON.parse(process.env.BENCH_SCHEMA);
const name = avro ? "benchAvro" : "benchJson";
const admin = db.getSiblingDB("admin");
const src = { connectionName: "kafka1", topic: avro ? "avroIn" : "jsonIn",
              config: { auto_offset_reset: "earliest" } };
const emit = { connectionName: "kafka1", topic: avro ? "avroOut" : "jsonOut" };
if (avro) {
  src.schemaRegistry = { connectionName: "registry" };
  emit.schemaRegistry = { connectionName: "registry", valueSchema: { type: "avro", schema } };
}
sp.createStreamProcessor(name, [{ $source: src }, { $match: { k: { $lt: 50 } } }, { $emit: emit }]);
sp[name].start();
const stats = () => {
  const st = admin.runCommand({ getStreamProcessorStats: name }).stats;
  return { read: Number(st.inputMessageCount), emitted: Number(st.outputMessageCount),
           dlq: Number(st.dlqMessageCount) };
};
let s = stats(), t0 = 0, c0 = 0;
const deadline = Date.now() + 600000;
while (s.read < n && Date.now() < deadline) {
  if (!t0 && s.read > 0) { t0 = Date.now(); c0 = s.read; }
  sleep(100);
  s = stats();
}
const t1 = Date.now();
if (s.read < n) throw new Error("only " + s.read + " of " + n + " events read");
while (s.emitted < n / 2 && Date.now() < deadline) { sleep(100); s = stats(); }
print(JSON.stringify({ ms: t1 - t0, counted: n - c0, emitted: s.emitted, dlq: s.dlq }));
sp[name].stop();
JS

cpu_ticks() { # aspen's user + system CPU time so far, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$aspen_pid/stat"
}
run() { # run json|avro: prints "events/s emitted dlq cpu-µs/event"
    local out res c0 c1
    c0=$(cpu_ticks)
    out=$(BENCH_FORMAT=$1 BENCH_EVENTS=$EVENTS BENCH_SCHEMA=$schema MONGOSH_TIMEOUT=900 \
        mongosh_run "$URI" "$ASPEN_RUN_DIR/bench_avro.js")
    c1=$(cpu_ticks)
    res=$(tail -n 1 <<<"$out")
    "$PEERS_PYTHON" -c 'import json,sys; r=json.loads(sys.argv[1]); n=int(sys.argv[2]); cpu_us=int(sys.argv[3])*1e6/int(sys.argv[4]); print(r["counted"]*1000//max(r["ms"],1), r["emitted"], r["dlq"], "%.1f" % (cpu_us/n))' \
        "$res" "$EVENTS" "$((c1 - c0))" "$(getconf CLK_TCK)"
}
log "running JSON \$source -> \$match -> \$emit"
read -r json_rate json_emitted json_dlq json_cpu < <(run json)
log "running Avro \$source -> \$match -> Avro \$emit"
read -r avro_rate avro_emitted avro_dlq avro_cpu < <(run avro)
rss_kb=$(awk '/^VmHWM/ { print $2 }' "/proc/$aspen_pid/status")

printf 'aspen Avro benchmark  %s\n' "$(date -u +%FT%TZ)"
printf 'load average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'host: %s, %s CPUs; aspen %s (Release); Apache Kafka (KRaft, 1 node), Apicurio Registry\n' \
    "$(uname -m)" "$(nproc)" "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
printf '%-52s %12s\n' "events per topic" "$EVENTS"
printf '%-52s %12s\n' "JSON \$source -> \$match -> \$emit, events/s" "$json_rate"
printf '%-52s %12s\n' "Avro \$source -> \$match -> Avro \$emit, events/s" "$avro_rate"
printf '%-52s %12s\n' "Avro / JSON" "$(awk -v a="$avro_rate" -v j="$json_rate" 'BEGIN { printf (j > 0 ? "%.2f" : "n/a"), (j > 0 ? a / j : 0) }')"
printf '%-52s %12s\n' "aspen CPU per event read, µs (JSON, Avro)" "$json_cpu, $avro_cpu"
printf '%-52s %12s\n' "  emitted (JSON, Avro)" "$json_emitted, $avro_emitted"
printf '%-52s %12s\n' "  DLQ (JSON, Avro)" "$json_dlq, $avro_dlq"
printf '%-52s %9s MB\n' "aspen peak RSS (VmHWM)" "$((rss_kb / 1024))"

rc=0
stop_aspen || { log "aspen did not stop cleanly (see $ASPEN_RUN_DIR/aspen.log)"; rc=1; }
stop_registry || true
stop_kafka || true
exit "$rc"
