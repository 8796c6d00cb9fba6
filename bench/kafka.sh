#!/usr/bin/env bash
# Benchmark (not a test) of a Kafka stream processor through a real broker:
# Kafka $source -> $match -> Kafka $emit, in events/s and CPU time per
# event, next to the raw consume rate of Kafka's own consumer and of kcat on
# the same topic (the ceilings), for each partition count in one run (a
# topic each), with aspen's peak RSS.
#
#   bench/kafka.sh [--events N] [--partitions "P ..."] [--tier SPn]
#
# Builds a Release aspen in build-bench/ (-DASPEN_TESTS=OFF), starts a
# single-node Apache Kafka (tests/e2e/peers.sh start_kafka, a fresh one in
# build-bench/run-kafka) and aspen without a backing server; for each
# partition count P writes N JSON events to topic benchIn-P with Kafka's
# console producer, and times:
#   1. ConsumerPerformance (Kafka's Java consumer) and kcat (librdkafka's
#      client, installed from Debian if missing) reading all N events, with
#      kcat's CPU time (user + system) per event;
#   2. kcat producing the events aspen keeps (half of them) to benchProd-P
#      (kcat -P, librdkafka's producer with its default settings, delivery
#      reports waited for), with its CPU time per event produced: with the
#      consume figure, what the same client library costs for the Kafka
#      work aspen does, with no JSON and no pipeline;
#   3. aspen's processor reading them all, keeping half ($match on k < 50)
#      and emitting those to benchOut-P; the clock runs from the first
#      event aspen reads (so the consumer-group join is not counted) to the
#      last, read from getStreamProcessorStats every 100 ms; aspen's CPU
#      time per event is its process's CPU time over the processor's whole
#      run (from /proc), divided by N, a figure the machine's load moves
#      less than the rates;
#   4. the same processor with a $match that keeps nothing (consume and
#      decode only, nothing produced): the figure that separates aspen's
#      producing from the rest.
# During kcat's and aspen's runs the broker's own CPU time per event is
# printed too (it shares the host's CPUs with them).
# Everything started is stopped on exit. Timings never fail the run; the
# exit status is non-zero only if something broke.
#
# Options (also as environment variables):
#   --events N       events in the topic (BENCH_EVENTS, default 1000000;
#                    20000 with --callgrind)
#   --partitions "P ..."  partition counts, one topic each (BENCH_PARTITIONS,
#                         default "1 4")
#   --tier SPn       the processor's tier (BENCH_TIER, default: none, so
#                    ASP's default SP10, one vCPU): on a tier with more
#                    vCPUs (SP30: 2, SP50: 8) the partitions are spread
#                    over that many worker threads (at most the partitions
#                    and the host's CPUs; README "Engine hot paths")
#   --callgrind      also count instructions, which the machine's load does
#                    not move: aspen runs under valgrind's callgrind, which
#                    counts its processor thread (proc_main: poll, decode,
#                    pipeline, encode, produce; with --tier, its workers'
#                    threads too; not librdkafka's own threads), and kcat too (a second run: all its threads,
#                    its binary has no symbols to pick its loop by); each
#                    row then adds instructions per event (aspen's rates are
#                    valgrind's then, not the machine's)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=$ROOT/build-bench

EVENTS=${BENCH_EVENTS:-}
PARTITIONS=${BENCH_PARTITIONS:-1 4}
CALLGRIND=
TIER=${BENCH_TIER:-}
while [[ $# -gt 0 ]]; do
    case $1 in
        --events) EVENTS=$2; shift 2 ;;
        --partitions) PARTITIONS=$2; shift 2 ;;
        --callgrind) CALLGRIND=1; shift ;;
        --tier) TIER=$2; shift 2 ;;
        -h|--help) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "kafka.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [[ -z $EVENTS ]]; then
    EVENTS=$([[ -n $CALLGRIND ]] && echo 20000 || echo 1000000)
fi

# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/bench/lib.sh"
bench_setup kafka

# Instructions per event from callgrind output files (their totals summed).
cg_per_event() {
    awk -v n="$1" '/^summary:/ { ir += $2 }
        END { printf (ir > 0 ? "%.0f" : "n/a"), ir / n }' "${@:2}"
}
if [[ -n $CALLGRIND ]]; then
    # aspen under callgrind, counting only inside proc_main (the processor
    # thread) and worker_main (its workers, runtime/workers.c, on a tier
    # with several vCPUs), a profile dumped each time a processor's thread
    # ends (after its workers).
    cat >"$ASPEN_RUN_DIR/aspen-callgrind" <<SH
#!/usr/bin/env bash
exec valgrind --tool=callgrind --toggle-collect=proc_main --toggle-collect=worker_main \\
    --dump-after=proc_main \\
    --callgrind-out-file="$ASPEN_RUN_DIR/aspen.cg.%p" "$ASPEN_BIN" "\$@"
SH
    chmod +x "$ASPEN_RUN_DIR/aspen-callgrind"
    export ASPEN_BIN=$ASPEN_RUN_DIR/aspen-callgrind
fi

start_kafka
kafka_pid=$(<"$ASPEN_RUN_DIR/kafka.pid")
now_ms() { date +%s%3N; }
# CPU time (user + system) of a process so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
# The broker's CPU time per event (of $1) since cpu_ticks gave $2, in us.
broker_us() {
    awk -v t=$(($(cpu_ticks "$kafka_pid") - $2)) -v hz="$HZ" -v n="$1" \
        'BEGIN { printf "%.2f", t * 1e6 / hz / n }'
}

# kcat (librdkafka's command-line client, from Debian) is the other ceiling:
# the same client library aspen uses, consuming without any processing.
if ! command -v kcat >/dev/null 2>&1; then
    log "installing kcat (Debian package) for the raw consume ceiling"
    (apt-get install -y -qq kcat >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq kcat >/dev/null 2>&1; }) || true
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
const drop = process.env.BENCH_DROP === "1";
const name = "bench" + process.env.BENCH_P + (drop ? "drop" : "");
const admin = db.getSiblingDB("admin");
sp.createStreamProcessor(name, [
  { $source: { connectionName: "kafka1", topic: "benchIn-" + process.env.BENCH_P,
               config: { auto_offset_reset: "earliest" } } },
  { $match: { k: { $lt: drop ? -1 : 50 } } },
  { $emit: { connectionName: "kafka1", topic: "benchOut-" + process.env.BENCH_P } }],
  process.env.BENCH_TIER ? { tier: process.env.BENCH_TIER } : {});
sp[name].start();
const stats = () => {
  const st = admin.runCommand({ getStreamProcessorStats: name }).stats;
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
while (!drop && s.outputMessageCount < n / 2 && Date.now() < deadline) { sleep(100); s = stats(); }
const t2 = Date.now();
print(JSON.stringify({ read: s.inputMessageCount, emitted: s.outputMessageCount,
                       dlq: s.dlqMessageCount, ms: t1 - t0, counted: n - c0,
                       emitMs: t2 - t0, state: s.status }));
sp[name].stop();
sp[name].drop();
JS

ratio() { awk -v a="$1" -v r="$2" 'BEGIN { printf (r > 0 ? "%.2f" : "n/a"), (r > 0 ? a / r : 0) }'; }

# Runs the processor over benchIn-$P (BENCH_DROP=$1: a $match keeping
# nothing) and sets run_rate, run_us, run_ir, run_emitted and run_broker_us
# (the broker's CPU time per event read meanwhile).
run_aspen() {
    local c0 c1 b0 out res ms counted cg_before cg_new=
    run_ir=n/a
    b0=$(cpu_ticks "$kafka_pid")
    c0=$(cpu_ticks "$aspen_pid")
    cg_before=$(ls "$ASPEN_RUN_DIR"/aspen.cg.* 2>/dev/null || true)
    out=$(BENCH_EVENTS=$EVENTS BENCH_P=$P BENCH_TIER=$TIER BENCH_DROP=$1 MONGOSH_TIMEOUT=900 \
        mongosh_run "$URI" "$ASPEN_RUN_DIR/bench_kafka.js")
    c1=$(cpu_ticks "$aspen_pid")
    run_broker_us=$(broker_us "$EVENTS" "$b0")
    res=$(tail -n 1 <<<"$out")
    read -r ms counted run_emitted < <("$PEERS_PYTHON" -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["ms"], r["counted"], r["emitted"])' "$res")
    run_rate=$((counted * 1000 / (ms > 0 ? ms : 1)))
    run_us=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="$EVENTS" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
    if [[ -n $CALLGRIND ]]; then
        # The processor's thread ended with its drop: its profile is the
        # dump that appeared since (wait up to 10 s for valgrind to write it).
        for _ in $(seq 100); do
            cg_new=$(comm -13 <(printf '%s\n' "$cg_before") \
                <(ls "$ASPEN_RUN_DIR"/aspen.cg.* 2>/dev/null || true))
            [[ -n $cg_new ]] && break
            sleep 0.1
        done
        # shellcheck disable=SC2086 # one file name a line, no spaces
        [[ -n $cg_new ]] && run_ir=$(cg_per_event "$EVENTS" $cg_new)
    fi
}

# The benchmark's events, one JSON a line; with $1 = 1 only those the
# $match keeps (k < 50), for kcat -P.
gen_events() {
    awk -v n="$EVENTS" -v kept="$1" 'BEGIN {
        for (i = 0; i < n; i++)
            if (!kept || i % 100 < 50)
                printf "{\"_id\": %d, \"k\": %d, \"v\": %.1f, \"tag\": \"sensor-%d\", \"ok\": true}\n",
                       i, i % 100, i * 0.5, i % 1000
    }'
}
gen_events 1 >"$ASPEN_RUN_DIR/kept.json"

rows=()
for P in $PARTITIONS; do
    kafka_create_topic "benchIn-$P" "$P"
    kafka_create_topic "benchOut-$P" 1
    kafka_create_topic "benchProd-$P" 1
    log "producing $EVENTS events to benchIn-$P ($P partitions)"
    t0=$(now_ms)
    gen_events 0 | kafka_produce "benchIn-$P" --producer-property linger.ms=20 \
            --producer-property batch.size=262144 --batch-size 2000 \
            2>>"$ASPEN_RUN_DIR/tools.log"
    produce_ms=$(($(now_ms) - t0))

    log "raw consume with Kafka's ConsumerPerformance"
    perf=$(_peers_kafka_tool org.apache.kafka.tools.ConsumerPerformance \
        --bootstrap-server "$KAFKA_BOOTSTRAP" --topic "benchIn-$P" --messages "$EVENTS" \
        --timeout 60000 2>>"$ASPEN_RUN_DIR/tools.log" </dev/null | tail -n 1)
    # start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg,
    # nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
    raw_rate=$(awk -F', *' '{ printf "%.0f", $10 }' <<<"$perf")

    kcat_rate=n/a kcat_us=n/a kcat_ir=n/a kprod_rate=n/a kprod_us=n/a kprod_ir=n/a
    kcat_bus=n/a kprod_bus=n/a
    kept=$(wc -l <"$ASPEN_RUN_DIR/kept.json")
    if command -v kcat >/dev/null 2>&1; then
        log "raw consume with kcat"
        b0=$(cpu_ticks "$kafka_pid")
        t0=$(now_ms)
        TIMEFORMAT='%U %S'
        kcat_cpu=$({ time kcat -C -b "$KAFKA_BOOTSTRAP" -t "benchIn-$P" -o beginning -e -q \
            -c "$EVENTS" >/dev/null 2>>"$ASPEN_RUN_DIR/tools.log"; } 2>&1) || true
        kcat_ms=$(($(now_ms) - t0))
        kcat_bus=$(broker_us "$EVENTS" "$b0")
        log "produce-only with kcat -P ($kept events, those aspen keeps)"
        t0=$(now_ms)
        kprod_cpu=$({ time kcat -P -b "$KAFKA_BOOTSTRAP" -t "benchProd-$P" -q \
            -l "$ASPEN_RUN_DIR/kept.json" 2>>"$ASPEN_RUN_DIR/tools.log"; } 2>&1) || true
        kprod_ms=$(($(now_ms) - t0))
        kprod_bus=$(broker_us "$EVENTS" "$b0") # consume + produce, per event read
        if [[ -n $CALLGRIND ]]; then
            # kcat is stripped (no main to toggle on): all its threads.
            rm -f "$ASPEN_RUN_DIR"/kcat.cg.*
            valgrind --tool=callgrind \
                --callgrind-out-file="$ASPEN_RUN_DIR/kcat.cg.%p" \
                kcat -C -b "$KAFKA_BOOTSTRAP" -t "benchIn-$P" -o beginning -e -q \
                -c "$EVENTS" >/dev/null 2>>"$ASPEN_RUN_DIR/tools.log" || true
            kcat_ir=$(cg_per_event "$EVENTS" "$ASPEN_RUN_DIR"/kcat.cg.*)
            rm -f "$ASPEN_RUN_DIR"/kcat.cg.*
            valgrind --tool=callgrind \
                --callgrind-out-file="$ASPEN_RUN_DIR/kcat.cg.%p" \
                kcat -P -b "$KAFKA_BOOTSTRAP" -t "benchProd-$P" -q \
                -l "$ASPEN_RUN_DIR/kept.json" 2>>"$ASPEN_RUN_DIR/tools.log" || true
            # per event read (as aspen's figure), not per event produced
            kprod_ir=$(cg_per_event "$EVENTS" "$ASPEN_RUN_DIR"/kcat.cg.*)
        fi
        [[ $kcat_ms -gt 0 ]] && kcat_rate=$((EVENTS * 1000 / kcat_ms))
        [[ $kprod_ms -gt 0 ]] && kprod_rate=$((kept * 1000 / kprod_ms))
        kcat_us=$(awk -v n="$EVENTS" '{ printf "%.2f", ($1 + $2) * 1e6 / n }' <<<"$kcat_cpu")
        kprod_us=$(awk -v n="$kept" '{ printf "%.2f", ($1 + $2) * 1e6 / n }' <<<"$kprod_cpu")
    fi

    log "running Kafka \$source -> \$match -> \$emit in aspen ($P partitions)"
    run_aspen 0
    aspen_rate=$run_rate aspen_us=$run_us aspen_ir=$run_ir emitted=$run_emitted
    aspen_bus=$run_broker_us
    log "running Kafka \$source -> \$match (keeping nothing) in aspen ($P partitions)"
    run_aspen 1
    rows+=("$(printf '%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s' "$P" \
        "$((EVENTS * 1000 / (produce_ms > 0 ? produce_ms : 1)))" "$raw_rate" \
        "$kcat_rate" "$kcat_us" "$aspen_rate" "$aspen_us" "$emitted" \
        "$(ratio "$aspen_rate" "$raw_rate")" "$(ratio "$aspen_rate" "$kcat_rate")" \
        "$kcat_ir" "$aspen_ir" "$kept" "$kprod_rate" "$kprod_us" "$kprod_ir" \
        "$run_rate" "$run_us" "$run_ir" "$(ratio "$run_rate" "$kcat_rate")" \
        "$kcat_bus" "$kprod_bus" "$aspen_bus" "$run_broker_us")")
done
rss_kb=$(awk '/^VmHWM/ { print $2 }' "/proc/$aspen_pid/status")

printf 'aspen Kafka benchmark  %s\n' "$(date -u +%FT%TZ)"
printf 'host: %s, %s CPUs; aspen %s (Release, pid %s%s); broker: Apache Kafka (KRaft, 1 node); %s events per topic; tier %s\n' \
    "$(uname -m)" "$(nproc)" "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')" \
    "$aspen_pid" "${CALLGRIND:+, under callgrind}" "$EVENTS" "${TIER:-default}"
for row in "${rows[@]}"; do
    IFS='|' read -r P prod raw kr kus ar aus em r1 r2 kir air kept kpr kpus kpir dr dus dir dr2 kbus kpbus abus dbus <<<"$row"
    printf -- '--- benchIn-%s: %s partition(s)\n' "$P" "$P"
    printf '%-52s %12s\n' "console producer, events/s" "$prod"
    printf '%-52s %12s\n' "Kafka ConsumerPerformance (raw consume), events/s" "$raw"
    printf '%-52s %12s\n' "kcat (raw consume, librdkafka), events/s" "$kr"
    printf '%-52s %12s\n' "  kcat CPU time per event, us" "$kus"
    printf '%-52s %12s\n' "  broker CPU time per event meanwhile, us" "$kbus"
    [[ -z $CALLGRIND ]] || printf '%-52s %12s\n' "  kcat (all threads), instructions per event" "$kir"
    printf '%-52s %12s\n' "kcat -P (produce only, $kept events), events/s" "$kpr"
    printf '%-52s %12s\n' "  kcat -P CPU time per event produced, us" "$kpus"
    printf '%-52s %12s\n' "  broker CPU per event read, consume + produce, us" "$kpbus"
    [[ -z $CALLGRIND ]] || printf '%-52s %12s\n' "  kcat -P (all threads), instr per event read" "$kpir"
    printf '%-52s %12s\n' "  kcat consume + produce CPU per event read, us" \
        "$(awk -v c="$kus" -v p="$kpus" -v k="$kept" -v n="$EVENTS" \
            'BEGIN { printf (c + 0 > 0 ? "%.2f" : "n/a"), c + p * k / n }')"
    printf '%-52s %12s\n' "aspen \$source -> \$match -> \$emit, events/s" "$ar"
    printf '%-52s %12s\n' "  aspen CPU time per event, us" "$aus"
    printf '%-52s %12s\n' "  broker CPU time per event meanwhile, us" "$abus"
    [[ -z $CALLGRIND ]] || printf '%-52s %12s\n' "  aspen processor (+ workers), instr per event" "$air"
    printf '%-52s %12s\n' "  events emitted to benchOut-$P" "$em"
    printf '%-52s %12s\n' "aspen / raw consume" "$r1"
    printf '%-52s %12s\n' "aspen / kcat" "$r2"
    printf '%-52s %12s\n' "aspen, \$match keeping nothing, events/s" "$dr"
    printf '%-52s %12s\n' "  its CPU time per event, us" "$dus"
    printf '%-52s %12s\n' "  broker CPU time per event meanwhile, us" "$dbus"
    [[ -z $CALLGRIND ]] || printf '%-52s %12s\n' "  its processor (+ workers), instr per event" "$dir"
    printf '%-52s %12s\n' "  its rate / kcat" "$dr2"
done
printf '%-52s %9s MB\n' "aspen peak RSS (VmHWM)" "$((rss_kb / 1024))"

rc=0
stop_aspen || { log "aspen did not stop cleanly (see $ASPEN_RUN_DIR/aspen.log)"; rc=1; }
stop_kafka || true
exit "$rc"
