#!/usr/bin/env bash
# e2e: checkpoints and crash safety against a real Kafka broker and backing
# server. A topic of CK_EVENTS inputs (default 100000, two partitions, event
# times 10 ms apart, then one far-future input per key that closes
# every window) feeds Kafka -> 1 s tumbling $group -> $merge twice: once
# without interruption ("ref"), once while aspen is SIGKILLed CK_KILLS times
# (default 3) at random points and restarted ("crash"). Checks: after each
# restart the processor resumes from its checkpoint; at the end ck.out is
# identical to ck.ref, every input is counted exactly once, and the DLQ holds
# nothing (replays of inputs from before a checkpoint do not reach it).
# Then a change stream -> $merge processor is SIGKILLed between two batches
# of inserts and must merge both (the second made while aspen was down), and
# modify() with resumeFromCheckpoint true refuses ASP's list of changes.
# Bounded: each wait has a timeout; the whole test takes about 1-2 minutes.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

export CK_EVENTS=${CK_EVENTS:-100000}
CK_KILLS=${CK_KILLS:-3}
# A topic of its own each run: the broker's data directory may outlive one.
export CK_TOPIC=ckin$$
(( CK_EVENTS % 100 == 0 )) || { echo "CK_EVENTS must be a multiple of 100"; exit 2; }
CONFIG=$ASPEN_RUN_DIR/aspen-ckpt.json
STATE=$ASPEN_RUN_DIR/state-ckpt
rm -rf "$STATE"

write_config() {
    cat >"$CONFIG" <<JSON
{ "streams": { "checkpointIntervalMs": 200 },
  "connections": [
  { "name": "atlas", "type": "atlas" },
  { "name": "kafka1", "type": "kafka", "bootstrapServers": "$KAFKA_BOOTSTRAP" } ] }
JSON
}

# Eight keys spread the inputs over both partitions; event time t rises by
# 10 ms an input, so each partition's event times rise too and nothing is
# late. The far-future input goes out under every key, so every partition's
# watermark passes the last real window.
seed() {
    kafka_create_topic "$CK_TOPIC" 2 2>>"$ASPEN_RUN_DIR/tools.log" || return 1
    python3 - "$CK_EVENTS" <<'PY' | kafka_produce "$CK_TOPIC" --keyed 2>>"$ASPEN_RUN_DIR/tools.log"
import sys
n = int(sys.argv[1])
base = 1700000000000
out = sys.stdout
for i in range(n):
    out.write('p%d\t{"i": %d, "g": %d, "t": {"$date": {"$numberLong": "%d"}}}\n'
              % (i % 8, i, i % 20, base + i * 10))
for k in range(8):
    out.write('p%d\t{"i": -1, "g": -1, "t": {"$date": {"$numberLong": "%d"}}}\n'
              % (k, base + n * 10 + 3600 * 1000))
PY
}

phase() { CK_PHASE=$1 mongosh_run "$URI" "$HERE/js/checkpoint_crash.js"; }

start() {
    start_aspen --config "$CONFIG" --bind 127.0.0.1 --port "$PORT" \
        --backend "$BACKING_URI" --state-dir "$STATE" || return 1
    URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
}

# SIGKILL aspen (no final checkpoint, no flush), keeping its log.
crash() {
    local pidfile=$ASPEN_RUN_DIR/aspen.pid pid
    pid=$(<"$pidfile")
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    _peers_forget aspen
    check_aspen_log || return 1
    cp "$ASPEN_RUN_DIR/aspen.log" "$ASPEN_RUN_DIR/aspen-crash-$1.log"
}

resumed_from_checkpoint() {
    grep -q 'resuming from the .* checkpoint' "$ASPEN_RUN_DIR/aspen.log" ||
        { echo "# no 'resuming from ... checkpoint' line in the log"; return 1; }
    grep -o 'resuming from the [^"]*' "$ASPEN_RUN_DIR/aspen.log" | sed 's/^/# /'
}

t0=$SECONDS
must "backing server starts" start_backing
must "Kafka broker starts" start_kafka
must "topic $CK_TOPIC (2 partitions) seeded with $CK_EVENTS inputs" seed
echo "# seeded in $((SECONDS - t0)) s"
write_config
PORT=$(free_port)
must "aspen starts" start
t1=$SECONDS
must "uninterrupted run (ref) produces every window result" phase ref
echo "# uninterrupted run took $((SECONDS - t1)) s"
must "crash run starts" phase start
for k in $(seq 1 "$CK_KILLS"); do
    sleep "$(python3 -c 'import random; print(round(random.uniform(0.2, 1.2), 2))')"
    check "SIGKILL $k" crash "$k"
    check "aspen restarts after SIGKILL $k" start
    check "the processor resumes from its checkpoint ($k)" resumed_from_checkpoint
    phase progress || true
done
check "crash run: identical results, each input once, empty DLQ" phase compare
cs_insert() { CK_PHASE=cs_insert CK_FROM=$1 CK_TO=$2 mongosh_run "$BACKING_URI" "$HERE/js/checkpoint_crash.js"; }
cs_check() { CK_PHASE=cs_check CK_TO=$1 mongosh_run "$URI" "$HERE/js/checkpoint_crash.js"; }
check "change stream -> \$merge processor starts" phase cs_start
check "1000 inserts while it runs" cs_insert 0 1000
sleep 1
check "SIGKILL during the change stream" crash cs
check "1000 inserts while aspen is down" cs_insert 1000 2000
check "aspen restarts" start
check "the change stream resumes from the checkpoint's token: all 2000 merged" cs_check 2000
check "modify() refuses, with ASP's messages, what needs resumeFromCheckpoint: false" phase modify
check "aspen stops cleanly, no sanitizer report" stop_aspen
check "Kafka broker stops" stop_kafka
check "backing server stops" stop_backing
echo "# total $((SECONDS - t0)) s"

checks_done
