#!/usr/bin/env bash
# e2e: stream processors through stock mongosh against aspen and a real
# backing server: the named-processor lifecycle (create, list, start, sample,
# stats, stop, modify, drop), ASP's errors, definitions surviving a SIGKILL of
# aspen, sp.process on sample_stream_solar interrupted with Ctrl+C, and a
# processor past aspen's state limit failing with 418 Worker out of memory.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

STATE=$ASPEN_RUN_DIR/state
CONFIG=$ASPEN_RUN_DIR/aspen.json
rm -rf "$STATE"

start() {
    start_aspen --config "$CONFIG" --bind 127.0.0.1 --port 0 \
        --backend "$BACKING_URI" --state-dir "$STATE"
    URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
}

kill_aspen_hard() {
    local pid
    pid=$(<"$ASPEN_RUN_DIR/aspen.pid")
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    rm -f "$ASPEN_RUN_DIR/aspen.pid"
    _peers_forget aspen
    check_aspen_log aspen
}

# sp.process on the solar sample: the real helper, interrupted with SIGINT
# once documents have been printed. mongosh then drops the ephemeral
# processor; aspen must not keep it.
sp_process_solar() {
    local outf=$ASPEN_RUN_DIR/sp_process.out pid i
    : >"$outf"
    HOME=$ASPEN_RUN_DIR/home "$PEERS_MONGOSH" --quiet --norc "$URI" \
        --eval 'sp.process([{$source: {connectionName: "sample_stream_solar"}}, {$project: {device_id: 1, group_id: 1, obs: 1}}])' \
        >"$outf" 2>&1 &
    pid=$!
    for i in $(seq 60); do
        [[ $(grep -c "device_id" "$outf") -ge 3 ]] && break
        sleep 0.5
    done
    kill -INT "$pid" 2>/dev/null || true
    for i in $(seq 20); do _peers_alive "$pid" || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [[ $(grep -c "device_id" "$outf") -lt 3 ]] || ! grep -q "_stream_meta" "$outf" ||
       ! grep -q "type: 'generated'" "$outf"; then
        echo "# sp.process output:"; sed 's/^/#   /' "$outf" | head -40
        return 1
    fi
    # The ephemeral processor is gone once the shell went away.
    mongosh_run "$URI" '
      const s = db.getSiblingDB("admin").runCommand({serverStatus: 1});
      if (s.ok !== 1) throw new Error("serverStatus failed");'
}

no_ephemeral_left() {
    sleep 1
    grep -q "stream processor dropped" "$ASPEN_RUN_DIR/aspen.log" ||
        grep -q "dropping it" "$ASPEN_RUN_DIR/aspen.log"
}

cat >"$CONFIG" <<JSON
{ "connections": [ { "name": "atlas", "type": "atlas" } ] }
JSON

must "backing server starts" start_backing
must "aspen starts" start
check "lifecycle, sampling, stats, \$merge, errors" mongosh_run "$URI" "$HERE/js/sp_lifecycle.js"
check "sp.process(sample_stream_solar) prints documents until Ctrl+C" sp_process_solar
check "the interrupted sp.process processor was dropped" no_ephemeral_left
must "aspen killed with SIGKILL (no sanitizer report)" kill_aspen_hard
must "aspen restarts on the same state directory" start
check "definitions and running state survived the kill" mongosh_run "$URI" "$HERE/js/sp_lifecycle_after_restart.js"
check "aspen stops cleanly, no sanitizer report" stop_aspen
# A small state limit (streams.memoryLimitBytes): 418 "Worker out of memory".
must "aspen starts with --memory-limit-bytes 200000" start_aspen --config "$CONFIG" \
    --bind 127.0.0.1 --port 0 --backend "$BACKING_URI" \
    --state-dir "$ASPEN_RUN_DIR/state-memlimit" --memory-limit-bytes 200000
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
check "a processor past the state limit fails with Worker out of memory, another keeps running" \
    mongosh_run "$URI" "$HERE/js/sp_memlimit.js"
check "aspen (memory limit) stops cleanly, no sanitizer report" stop_aspen
check "backing server stops" stop_backing

checks_done
