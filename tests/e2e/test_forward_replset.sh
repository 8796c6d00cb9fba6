#!/usr/bin/env bash
# e2e: aspen's relay in front of a replica set (a multi-host URI: mongoc's
# monitor discovers the set, the relay picks the primary from its view).
# The set is tests/e2e/fake_rs.py, two scripted members in front of the
# backing server (mongo-java-server has no replica sets); the client side is
# tests/e2e/replset_client.py: commands go to the primary, after a failover
# they reach the new primary by themselves (the old primary's
# NotWritablePrimary passed through meanwhile), and getMore / killCursors go
# to the member the cursor lives on.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

start_fake_rs() {
    local log=$ASPEN_RUN_DIR/fake_rs.log line
    "$PEERS_PYTHON" "$HERE/fake_rs.py" "$BACKING_PORT" >"$log" 2>&1 </dev/null &
    echo $! >"$ASPEN_RUN_DIR/fake_rs.pid"
    _PEERS_STARTED+=(fake_rs)
    for _ in $(seq 100); do
        line=$(grep -m1 '^MEMBERS ' "$log" 2>/dev/null || true)
        if [[ -n $line ]]; then
            read -r _ M1 M2 _ CTL <<<"$line"
            return 0
        fi
        sleep 0.1
    done
    cat "$log" >&2
    return 1
}

run_client() {
    timeout -k 5 120 "$PEERS_PYTHON" "$HERE/replset_client.py" "$ASPEN_LISTEN_PORT" "$CTL" |
        sed 's/^/# [client] /'
    return "${PIPESTATUS[0]}"
}

must "backing server starts" start_backing
must "the scripted replica set starts" start_fake_rs
URI="mongodb://127.0.0.1:$M1,127.0.0.1:$M2/?replicaSet=rs0&heartbeatFrequencyMS=500&serverSelectionTimeoutMS=15000"
must "aspen starts with the replica-set URI" start_aspen --bind 127.0.0.1 --port 0 \
    --backend "$URI" --state-dir "$ASPEN_RUN_DIR/state"
check "relay in front of a replica set: primary, failover, cursor routing" run_client
check "aspen logged the topology it forwards to" \
    grep -q '"backend topology ReplicaSetWithPrimary: forwarding to 127.0.0.1:'"$M2"'"' \
    "$ASPEN_RUN_DIR/aspen.log"
check "aspen stops cleanly, no sanitizer report" stop_aspen
check "the replica set stops" _peers_stop fake_rs
check "backing server stops" stop_backing

checks_done
