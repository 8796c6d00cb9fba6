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
# Exactly-once (options.exactlyOnce): CK_EVENTS inputs produced live into
# a topic feed Kafka -> $match/$project -> $emit and Kafka -> 1 s tumbling
# $group -> $emit, both in Kafka transactions, while aspen is SIGKILLed
# CK_EOS_KILLS times (default 3); a read_committed consumer (Kafka's
# console consumer) must then see each expected result exactly once (a
# read_uncommitted one shows what the aborted transactions held). Then change stream -> $emit (at-least-once):
# SIGKILLed while inserts run, more inserts while aspen is down; every
# insert must reach the topic (duplicates counted and printed).
# CK_ONLY="window eos cs_emit" runs only those parts (default: all).
# Bounded: each wait has a timeout; the whole test takes about 2-4 minutes.
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
  { "name": "kafka1", "type": "kafka", "bootstrapServers": "$KAFKA_BOOTSTRAP" },
  { "name": "kafkalocal", "type": "kafka", "local": true } ] }
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
    kill_aspen || return 1
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
want() { [[ -z ${CK_ONLY:-} || " $CK_ONLY " == *" $1 "* ]]; }
random_pause() { sleep "$(python3 -c "import random; print(round(random.uniform($1, $2), 2))")"; }

if want window; then
    t1=$SECONDS
    must "uninterrupted run (ref) produces every window result" phase ref
    echo "# uninterrupted run took $((SECONDS - t1)) s"
    must "crash run starts" phase start
    for k in $(seq 1 "$CK_KILLS"); do
        random_pause 0.2 1.2
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
fi

# Every message value of TOPIC, one a line, read from the beginning with
# Kafka's console consumer at ISOLATION (read_committed/read_uncommitted)
# until 10 s pass without a message.
consume_all() { # TOPIC ISOLATION OUTFILE
    _peers_kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer \
        --bootstrap-server "$KAFKA_BOOTSTRAP" --topic "$1" --from-beginning \
        --isolation-level "$2" --timeout-ms 10000 </dev/null >"$3" \
        2>>"$ASPEN_RUN_DIR/tools.log" || true
}

# count_results FILE MODE: MODE eos checks each i < CK_EVENTS with
# i % 10 != 7 is in FILE exactly once (twice == 2 i); MODE window checks
# each 1 s window's result is there once, and that they count each such i
# once (n, s); MODE cs N checks each _id < N is there (v == 2 _id) at least
# once and prints the duplicates.
count_results() {
    python3 - "$@" <<'PY'
import json, os, sys
path, mode = sys.argv[1], sys.argv[2]
seen = {}
win_n = win_s = 0
for line in open(path):
    line = line.strip()
    if not line:
        continue
    d = json.loads(line)
    if mode == "window":
        k = json.dumps(d["_id"]["w"])
        win_n += d["n"]
        win_s += d["s"]
    elif mode == "eos":
        k = d["i"]
        assert d["twice"] == 2 * k, line
    else:
        k = d["_id"]
        assert d["v"] == 2 * k, line
    seen[k] = seen.get(k, 0) + 1
if mode == "window":
    n = int(os.environ["CK_EVENTS"])
    kept = [i for i in range(n) if i % 10 != 7]
    dups = sum(c - 1 for c in seen.values() if c > 1)
    print("# %s: %d window results, %d distinct windows of %d, %d duplicates; inputs counted %d of %d, sum %s"
          % (path.rsplit("/", 1)[-1], sum(seen.values()), len(seen), n // 100, dups,
             win_n, len(kept), "ok" if win_s == sum(kept) else "WRONG"))
    sys.exit(0 if len(seen) == n // 100 and dups == 0 and win_n == len(kept)
             and win_s == sum(kept) else 1)
if mode == "eos":
    n = int(os.environ["CK_EVENTS"])
    expected = {i for i in range(n) if i % 10 != 7}
else:
    n = int(sys.argv[3])
    expected = set(range(n))
dups = sum(c - 1 for c in seen.values() if c > 1)
missing = expected - seen.keys()
extra = seen.keys() - expected
print("# %s: %d messages, %d distinct of %d expected, %d missing, %d unexpected, %d duplicates"
      % (path.rsplit("/", 1)[-1], sum(seen.values()), len(seen.keys() & expected), len(expected),
         len(missing), len(extra), dups))
if missing:
    print("# first missing: %s" % sorted(missing)[:10])
ok = not missing and not extra and (dups == 0 or mode != "eos")
sys.exit(0 if ok else 1)
PY
}

if want eos; then
    # A live stream: the inputs arrive in 5 chunks (a console producer
    # each, a few seconds apart), so the kills land while they flow.
    export CK_EOS_IN=ckeosin$$ CK_EOS_OUT=ckeos$$ CK_EOS_WIN_OUT=ckeoswin$$
    feed_eos() {
        local c per=$((CK_EVENTS / 5))
        for c in $(seq 0 4); do
            python3 - "$((c * per))" "$(((c + 1) * per))" <<'PY' | kafka_produce "$CK_EOS_IN" --keyed
import sys
a, b = int(sys.argv[1]), int(sys.argv[2])
base = 1700000000000
for i in range(a, b):
    sys.stdout.write('p%d\t{"i": %d, "t": {"$date": {"$numberLong": "%d"}}}\n'
                     % (i % 8, i, base + i * 10))
PY
        done
        # As in the window phase: one far-future input per key closes every
        # window (the $match drops it after it moved the watermark).
        python3 - "$CK_EVENTS" <<'PY' | kafka_produce "$CK_EOS_IN" --keyed
import sys
t = 1700000000000 + int(sys.argv[1]) * 10 + 3600 * 1000
for k in range(8):
    sys.stdout.write('p%d\t{"i": -1, "t": {"$date": {"$numberLong": "%d"}}}\n' % (k, t))
PY
    }
    # aspen logs an error when no checkpoint on disk matches the id the
    # broker committed with the offsets.
    restored_committed() { ! grep -q 'no checkpoint on disk matches' "$ASPEN_RUN_DIR/aspen.log"; }
    t1=$SECONDS
    check "exactlyOnce is refused where it cannot hold (420)" phase eos_refuse
    must "input topic $CK_EOS_IN (2 partitions)" kafka_create_topic "$CK_EOS_IN" 2
    must "output topic $CK_EOS_OUT (2 partitions)" kafka_create_topic "$CK_EOS_OUT" 2
    must "output topic $CK_EOS_WIN_OUT" kafka_create_topic "$CK_EOS_WIN_OUT" 1
    must "exactly-once Kafka -> \$emit processors (stateless, windowed) start" phase eos_start
    feed_eos 2>>"$ASPEN_RUN_DIR/tools.log" &
    feeder=$!
    for k in $(seq 1 "${CK_EOS_KILLS:-3}"); do
        random_pause 1.0 3.0
        check "exactly-once: SIGKILL $k" crash "eos$k"
        check "exactly-once: aspen restarts after SIGKILL $k" start
        check "exactly-once: the processor resumes from its checkpoint ($k)" resumed_from_checkpoint
        grep -o 'exactly-once: [^"]*' "$ASPEN_RUN_DIR/aspen.log" | sed 's/^/# /' || true
        check "exactly-once: the restored checkpoint is the committed one ($k)" restored_committed
        phase eos_progress || true
    done
    check "the inputs were all produced" wait "$feeder"
    check "exactly-once: every input read, processor stopped (final commit)" phase eos_finish
    consume_all "$CK_EOS_OUT" read_committed "$ASPEN_RUN_DIR/eos-committed.txt"
    check "exactly-once: a read_committed consumer sees every result exactly once" \
        count_results "$ASPEN_RUN_DIR/eos-committed.txt" eos
    consume_all "$CK_EOS_WIN_OUT" read_committed "$ASPEN_RUN_DIR/eoswin-committed.txt"
    check "exactly-once with a window: each window's result exactly once, every input counted once" \
        count_results "$ASPEN_RUN_DIR/eoswin-committed.txt" window
    consume_all "$CK_EOS_OUT" read_uncommitted "$ASPEN_RUN_DIR/eos-uncommitted.txt"
    echo "# read_uncommitted (aborted transactions included): $(wc -l <"$ASPEN_RUN_DIR/eos-uncommitted.txt") messages"
    echo "# exactly-once phase took $((SECONDS - t1)) s"
fi

if want cs_emit; then
    export CK_CS_OUT=ckcse$$
    CSE_N=${CK_CS_EVENTS:-6000}
    t1=$SECONDS
    cse_insert() { CK_PHASE=cse_insert CK_FROM=$1 CK_TO=$2 mongosh_run "$BACKING_URI" "$HERE/js/checkpoint_crash.js"; }
    must "output topic $CK_CS_OUT" kafka_create_topic "$CK_CS_OUT" 1
    must "change stream -> \$emit processor starts" phase cse_start
    half=$((CSE_N / 2))
    # Throttled (a batch of 100 every 100 ms) and the kill comes at a random
    # point after the first batches went in, so it lands mid-stream.
    CK_THROTTLE=100 cse_insert 0 "$half" >"$ASPEN_RUN_DIR/cse-insert.log" 2>&1 &
    ins=$!
    first_batches() {
        local end=$((SECONDS + 60))
        until grep -q 'batch 5 ' "$ASPEN_RUN_DIR/cse-insert.log"; do
            ((SECONDS < end)) || return 1
            sleep 0.1
        done
    }
    check "the first inserts went in" first_batches
    random_pause 0.2 1.5
    check "change stream -> \$emit: SIGKILL while inserts run" crash cse
    check "the inserts made while aspen ran finish" wait "$ins"
    cse_insert_logged() { cse_insert "$@" >>"$ASPEN_RUN_DIR/cse-insert.log" 2>&1; }
    check "inserts while aspen is down" cse_insert_logged "$half" "$CSE_N"
    check "aspen restarts" start
    cse_complete() {
        local end=$((SECONDS + 90))
        while ((SECONDS < end)); do
            consume_all "$CK_CS_OUT" read_uncommitted "$ASPEN_RUN_DIR/cse-out.txt"
            count_results "$ASPEN_RUN_DIR/cse-out.txt" cs "$CSE_N" >/dev/null && break
        done
        count_results "$ASPEN_RUN_DIR/cse-out.txt" cs "$CSE_N"
    }
    check "change stream -> \$emit: every one of $CSE_N inserts emitted (duplicates allowed)" cse_complete
    check "change stream -> \$emit processor stops" phase cse_stop
    echo "# change stream -> \$emit phase took $((SECONDS - t1)) s"
fi

check "aspen stops cleanly, no sanitizer report" stop_aspen
check "Kafka broker stops" stop_kafka
check "backing server stops" stop_backing
echo "# total $((SECONDS - t0)) s"

checks_done
