#!/usr/bin/env bash
# e2e: change-stream initialSync against the backing server with stock
# mongosh (js/initial_sync.js): a collection with existing documents is
# copied as insert events, inserts and updates arrive during the copy,
# aspen is SIGKILLed in the middle of the copy (after a checkpoint),
# more writes land while it is down, and after the restart the copy
# resumes where its checkpoint was (aspen's log says so) and the change
# stream continues from where the copy began: every document is in the
# $merge target exactly once with its latest state, the phases show in
# stats and in each document's {$meta: "stream.source.initialSync.phase"},
# the DLQ is empty; verbose stats' targetStats show the collection's
# figures, its copiedDocs kept across the restart; after a second restart,
# past the copy, targetStats and operatorStats[0].initialSync are still
# there with the same figures (kept in the checkpoint); a third restart from
# that checkpoint without them (as earlier aspens wrote it) still loads,
# without targetStats. Then ASP's refusals: a
# tier's collection limit, a window after initialSync. Then
# js/initial_sync_multi.js: ASP's multi-collection replication example
# into a second backing server (the `dest` connection), and a sync failing
# when its source server dies (targetStats "failed").
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

JS=$HERE/js/initial_sync.js
STATE=$ASPEN_RUN_DIR/state-initial-sync
rm -rf "$STATE"
must "backing server starts" start_backing "$(free_port)"
# The second cluster: another backing server, named `dest` for peers.sh.
DEST_PORT=$(free_port)
export DEST_URI=mongodb://127.0.0.1:$DEST_PORT
must "the destination server starts" _peers_start_logged dest "^LISTENING $DEST_PORT\$" 30 \
    java -XX:+UseSerialGC -Xmx512m -jar "$PEERS_JAR" --host 127.0.0.1 --port "$DEST_PORT"
CONFIG=$ASPEN_RUN_DIR/initial-sync.conf.json
cat >"$CONFIG" <<JSON
{ "streams": { "checkpointIntervalMs": 200 },
  "connections": [ { "name": "atlas", "type": "atlas" },
                   { "name": "dest", "type": "atlas", "uri": "$DEST_URI" } ] }
JSON
start() {
    start_aspen --config "$CONFIG" --port 0 --backend "$BACKING_URI" --state-dir "$STATE" &&
        URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/admin?serverSelectionTimeoutMS=5000"
}
run_js() { # run_js URI MODE WANT
    local out=$ASPEN_RUN_DIR/initial-sync-$2.out rc=0
    IS_MODE=$2 mongosh_run "$1" "$JS" >"$out" 2>&1 || rc=$?
    sed 's/^/# /' "$out"
    [[ $rc -eq 0 ]] && grep -q "$3" "$out"
}
strip_source_figures() { # every checkpoint file of $STATE without position.sourceFigures
    "$PEERS_PYTHON" - "$STATE"/checkpoints/*/{current,previous} <<'EOF'
import struct, sys
import bson
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
stripped = 0
for path in sys.argv[1:]:
    try:
        raw = open(path, "rb").read()
    except FileNotFoundError:
        continue
    magic, version, n, crc = struct.unpack("<8sIII", raw[:20])
    body = raw[20:20 + n]
    assert magic == b"ASPNCKPT" and crc32c(body) == crc, path
    doc = bson.decode(body)
    if "sourceFigures" in doc.get("position", {}):
        del doc["position"]["sourceFigures"]
        body = bson.encode(doc)
        open(path, "wb").write(struct.pack("<8sIII", magic, version, len(body), crc32c(body)) + body)
        stripped += 1
print("stripped sourceFigures from %d checkpoint(s)" % stripped)
sys.exit(0 if stripped else 1)
EOF
}
resumed_copy() { # the restarted processor resumed the copy, not from 0
    grep -E '"resuming the initial sync of 1 collection\(s\) of isdb \(at collection 0, [1-9][0-9]* document' \
        "$ASPEN_RUN_DIR/aspen.log" >/dev/null
}

must "aspen starts" start
check "the copy runs with writes arriving; stats show the initialSync phase" run_js "$URI" run SYNCING
check "SIGKILL in the middle of the copy" kill_aspen
check "writes while aspen is down" run_js "$BACKING_URI/admin" down "DOWN OK"
must "aspen restarts" start
check "every document once with its latest state, the changeStream phase after" run_js "$URI" check "CHECK OK"
check "the restart resumed the copy from its checkpoint" resumed_copy
check "aspen stops past the copy (its checkpoint taken)" stop_aspen
must "aspen starts again" start
check "targetStats and the initialSync sums kept across a restart past the copy" run_js "$URI" after "AFTER OK"
check "aspen stops again" stop_aspen
check "the checkpoints as an earlier aspen wrote them (sourceFigures taken out)" strip_source_figures
must "aspen starts from them" start
check "a checkpoint without sourceFigures loads: the stream goes on, no targetStats" run_js "$URI" old "OLD OK"
check "ASP's refusals: the tier's collection limit, a window after initialSync" grep -q "RULES OK" "$ASPEN_RUN_DIR/initial-sync-old.out"
run_multi() { # run_multi MODE WANT
    local out=$ASPEN_RUN_DIR/initial-sync-$1.out rc=0
    ISM_MODE=$1 MONGOSH_TIMEOUT=400 mongosh_run "$URI" "$HERE/js/initial_sync_multi.js" >"$out" 2>&1 || rc=$?
    sed 's/^/# /' "$out"
    [[ $rc -eq 0 ]] && grep -q "$2" "$out"
}
check "ASP's multi-collection example: replicated, list order, targetStats" run_multi multi "MULTI OK"
check "a sync under way when its source server dies" run_multi fail "FAIL READY"
check "the source server dies" _peers_stop dest
check "the processor failed, targetStats: failed then pending" run_multi failed "FAILED OK"
check "aspen stops cleanly" stop_aspen
checks_done
