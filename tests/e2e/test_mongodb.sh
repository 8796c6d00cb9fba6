#!/usr/bin/env bash
# e2e: MongoDB connections (issue 6) through stock mongosh against aspen and
# the backing server (mongo-java-server with its oplog): change-stream
# $source, $lookup/$cachedLookup, $merge modes and dynamic targets, $emit to
# time-series collections (created with their options, documents routed by
# a coll expression, refused ones in the DLQ with the server's error), the
# DLQ collection, validation, and a connection to a server that is not there.
# Then resuming: a change-stream processor stopped and started while
# documents are inserted misses and repeats none; a network outage between
# aspen and the server (a relay cut and restored) is survived with nothing
# lost, without spinning; a restarted (in-memory) server no longer has the
# resume token, which fails the processor with a clear error.
# The checks themselves are in js/mongodb.js (PHASE=... for the resume ones).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

STATE=$ASPEN_RUN_DIR/state-mongodb
CONFIG=$ASPEN_RUN_DIR/aspen-mongodb.json
rm -rf "$STATE"

must "backing server starts" start_backing
RELAY_PORT=$(free_port)
must "relay to the backing server starts" start_relay "$RELAY_PORT" "$BACKING_PORT"
# "down": a port nothing listens on (the discard port), found unreachable fast.
cat >"$CONFIG" <<JSON
{ "connections": [
    { "name": "atlas", "type": "atlas" },
    { "name": "down", "type": "atlas",
      "uri": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=1000" },
    { "name": "flaky", "type": "atlas",
      "uri": "mongodb://127.0.0.1:$RELAY_PORT/?serverSelectionTimeoutMS=2000" } ] }
JSON
must "aspen starts" start_aspen --config "$CONFIG" --bind 127.0.0.1 --port 0 \
    --backend "$BACKING_URI" --state-dir "$STATE"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
# The jar must have the time-series collections js/mongodb.js uses: an older
# one would fail its checks with less clear messages.
jar_has() { [[ $(unzip -l "$PEERS_JAR") == *"$1"* ]]; }
main_checks() {
    jar_has 'aspen/TimeSeriesCollections' ||
        { echo "# $PEERS_JAR predates tests/e2e/mongo-java-server (no time-series collections): run scripts/install-deps.sh"; return 1; }
    mongosh_run "$URI" "$HERE/js/mongodb.js"
}
check "change streams, \$lookup, \$merge, \$emit to time-series collections, DLQ, validation" main_checks

phase() { PHASE=$1 mongosh_run "$URI" "$HERE/js/mongodb.js"; }

# Stop/start while a feeder inserts, directly into the backing server.
stop_start() {
    local feeder rc=0
    phase ss_setup || return 1
    PHASE=ss_feed mongosh_run "$URI" "$HERE/js/mongodb.js" &
    feeder=$!
    phase ss_bounce || rc=1
    wait "$feeder" || rc=1
    [[ $rc -eq 0 ]] && phase ss_check
}
check "stop/start while inserting: every event once" stop_start

# CPU seconds aspen used so far (user + system).
aspen_cpu() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' \
        "/proc/$(<"$ASPEN_RUN_DIR/aspen.pid")/stat"
}
network_outage() {
    local t0 c0 c1 secs
    phase net_setup || return 1
    t0=$(date +%s.%N)
    c0=$(aspen_cpu)
    stop_relay || return 1
    phase net_down || return 1
    c1=$(aspen_cpu)
    secs=$(echo "$(date +%s.%N) - $t0" | bc)
    echo "# network down ${secs}s: aspen used $(echo "$c1 - $c0" | bc)s of CPU"
    # A source spinning on the dead connection would use about all of it.
    [[ $(echo "($c1 - $c0) < $secs / 2" | bc) -eq 1 ]] || { echo "# aspen spun"; return 1; }
    grep -q 'change stream on mdb_resume.net_src .* was interrupted' "$ASPEN_RUN_DIR/aspen.log" ||
        { echo "# the outage was not noticed"; return 1; }
    start_relay "$RELAY_PORT" "$BACKING_PORT" || return 1
    phase net_up || return 1
    grep -q 'resumed the change stream on mdb_resume.net_src' "$ASPEN_RUN_DIR/aspen.log"
}
check "network outage: resumed with the token, every event once, no spinning" network_outage

# The backing server restarted: its in-memory oplog is gone.
server_restart() {
    # An older jar resumes from any token: say so instead of timing out.
    jar_has 'BackingServer$HistoryCheckingBackend' ||
        { echo "# $PEERS_JAR predates tests/e2e/mongo-java-server: run scripts/install-deps.sh"; return 1; }
    phase lost_setup || return 1
    kill_backing || return 1
    sleep 2
    start_backing "$BACKING_PORT" || return 1
    phase lost_after
}
check "restarted server without the resume token: FAILED with 425, restart from now" server_restart
check "aspen stops cleanly, no sanitizer report" stop_aspen
check "relay stops" stop_relay
check "backing server stops" stop_backing

checks_done
