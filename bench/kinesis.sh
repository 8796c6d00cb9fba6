#!/usr/bin/env bash
# Benchmark (not a test) of Kinesis stream processors against kinesalite
# (the emulator the e2e tests use): Kinesis $source -> $match -> Kinesis
# $emit, in events/s, next to what boto3 itself gets from the same emulator
# (the ceiling: kinesalite, a Node.js program, is far slower than the real
# service), with aspen's peak RSS.
#
#   bench/kinesis.sh [--events N] [--shards S]
#
# Builds a Release aspen in build-bench/, starts kinesalite
# (tests/e2e/peers.sh start_kinesalite) and aspen without a backing server,
# writes N JSON events to stream benchIn with boto3's put_records
# (tests/e2e/kinesis/kin.py bench-put), then times:
#   1. boto3 reading them all (GetRecords over every shard);
#   2. aspen's processor reading them all ($source rate), keeping half
#      ($match on k < 50) and emitting those to benchOut ($emit: PutRecords);
#      the clock runs from the first event aspen reads, read from
#      getStreamProcessorStats every 100 ms; the $emit rate is the kept
#      events over the time until the processor has emitted them all and
#      boto3 finds them all in benchOut.
# Everything started is stopped on exit. Timings never fail the run; the
# exit status is non-zero only if something broke.
#
# Options (also as environment variables):
#   --events N   events in benchIn (BENCH_EVENTS, default 100000)
#   --shards S   shards of benchIn and benchOut (BENCH_SHARDS, default 2)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=$ROOT/build-bench

EVENTS=${BENCH_EVENTS:-100000}
SHARDS=${BENCH_SHARDS:-2}
while [[ $# -gt 0 ]]; do
    case $1 in
        --events) EVENTS=$2; shift 2 ;;
        --shards) SHARDS=$2; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "kinesis.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
(( EVENTS % 2 == 0 )) || { echo "kinesis.sh: --events must be even" >&2; exit 2; }

# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/bench/lib.sh"
bench_setup kinesis

KIN=("$PEERS_PYTHON" "$ROOT/tests/e2e/kinesis/kin.py")
now_ms() { date +%s%3N; }

start_kinesalite
"${KIN[@]}" create benchIn "$SHARDS"
"${KIN[@]}" create benchOut "$SHARDS"
log "putting $EVENTS events into benchIn with boto3"
put_rate=$("${KIN[@]}" bench-put benchIn "$EVENTS")

log "raw read with boto3"
t0=$(now_ms)
"${KIN[@]}" read benchIn "$EVENTS" 600 >/dev/null
raw_ms=$(($(now_ms) - t0))
raw_rate=$((EVENTS * 1000 / (raw_ms > 0 ? raw_ms : 1)))

cat >"$ASPEN_RUN_DIR/aspen.json" <<JSON
{ "connections": [
  { "name": "kin", "type": "kinesis", "endpoint": "$KINESIS_ENDPOINT",
    "credentials": { "accessKeyId": "bench", "secretAccessKey": "bench" } } ] }
JSON
start_aspen --config "$ASPEN_RUN_DIR/aspen.json" --port 0 \
    --state-dir "$ASPEN_RUN_DIR/aspen-state"
aspen_pid=$(<"$ASPEN_RUN_DIR/aspen.pid")
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"

cat >"$ASPEN_RUN_DIR/bench_kinesis.js" <<'JS'
const n = Number(process.env.BENCH_EVENTS);
const admin = db.getSiblingDB("admin");
sp.createStreamProcessor("bench", [
  { $source: { connectionName: "kin", stream: "benchIn", config: { initialPosition: "TRIM_HORIZON" } } },
  { $match: { k: { $lt: 50 } } },
  { $project: { _stream_meta: 0 } },
  { $emit: { connectionName: "kin", stream: "benchOut", partitionKey: "$tag" } }]);
sp.bench.start();
const stats = () => {
  const st = admin.runCommand({ getStreamProcessorStats: "bench" }).stats;
  return { inputMessageCount: Number(st.inputMessageCount), outputMessageCount: Number(st.outputMessageCount),
           status: st.status };
};
let s = stats(), t0 = 0, c0 = 0;
const deadline = Date.now() + 900000;
while (s.inputMessageCount < n && Date.now() < deadline) {
  if (!t0 && s.inputMessageCount > 0) { t0 = Date.now(); c0 = s.inputMessageCount; }
  sleep(100);
  s = stats();
}
const t1 = Date.now();
if (s.inputMessageCount < n) throw new Error("only " + s.inputMessageCount + " of " + n + " events read");
while (s.outputMessageCount < n / 2 && Date.now() < deadline) { sleep(100); s = stats(); }
print(JSON.stringify({ ms: t1 - t0, counted: n - c0, emitted: s.outputMessageCount, t0: t0, state: s.status }));
JS
log "running Kinesis \$source -> \$match -> \$emit in aspen"
out=$(BENCH_EVENTS=$EVENTS MONGOSH_TIMEOUT=1200 mongosh_run "$URI" "$ASPEN_RUN_DIR/bench_kinesis.js")
res=$(tail -n 1 <<<"$out")
read -r ms counted emitted t_first < <("$PEERS_PYTHON" -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["ms"], r["counted"], r["emitted"], r["t0"])' "$res")
# The $emit side is done when boto3 finds every kept event in benchOut.
"${KIN[@]}" read benchOut $((EVENTS / 2)) 600 >/dev/null
emit_ms=$(($(now_ms) - t_first))
rss_kb=$(awk '/^VmHWM/ { print $2 }' "/proc/$aspen_pid/status")
aspen_rate=$((counted * 1000 / (ms > 0 ? ms : 1)))
emit_rate=$((EVENTS / 2 * 1000 / (emit_ms > 0 ? emit_ms : 1)))

printf 'aspen Kinesis benchmark  %s\n' "$(date -u +%FT%TZ)"
printf 'host: %s, %s CPUs; aspen %s (Release, pid %s); kinesalite 3.3.3 (in memory), %s shard(s) per stream\n' \
    "$(uname -m)" "$(nproc)" "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')" \
    "$aspen_pid" "$SHARDS"
printf '%-56s %12s\n' "events in benchIn" "$EVENTS"
printf '%-56s %12s\n' "boto3 put_records, events/s" "$put_rate"
printf '%-56s %12s\n' "boto3 get_records (raw read), events/s" "$raw_rate"
printf '%-56s %12s\n' "aspen Kinesis \$source (-> \$match -> \$emit), events/s" "$aspen_rate"
printf '%-56s %12s\n' "aspen Kinesis \$emit (kept events in benchOut), events/s" "$emit_rate"
printf '%-56s %12s\n' "  events emitted to benchOut" "$emitted"
printf '%-56s %12s\n' "aspen \$source / boto3 raw read" "$(awk -v a="$aspen_rate" -v r="$raw_rate" 'BEGIN { printf (r > 0 ? "%.2f" : "n/a"), (r > 0 ? a / r : 0) }')"
printf '%-56s %9s MB\n' "aspen peak RSS (VmHWM)" "$((rss_kb / 1024))"

rc=0
stop_aspen || { log "aspen did not stop cleanly (see $ASPEN_RUN_DIR/aspen.log)"; rc=1; }
stop_kinesalite
exit "$rc"
