#!/usr/bin/env bash
# e2e: the backing server stops and restarts under a steady forwarded load
# (tests/e2e/forward_load.py: pymongo threads inserting with acknowledged
# writes, each insert's outcome recorded). Checked for both ways aspen
# forwards: the relay (default) and the mongoc lanes (--backend-forwarding
# lanes):
#  - nothing is acknowledged while the backend is down, and the errors are
#    HostUnreachable naming the backing deployment;
#  - every insert acknowledged after the kill is in the (restarted, hence
#    emptied: the backing server is in-memory) collection, and nothing else;
#  - forwarding resumes by itself.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

# run_load MODE: one aspen in MODE, the load script as a coprocess, the
# backing server killed and restarted when it says so. Prints the load
# script's TAP lines (renumbered by check) and fails if any failed.
run_load() {
    local mode=$1 line rc=0 bport=$BACKING_PORT
    ASPEN_INSTANCE=aspen-$mode start_aspen --bind 127.0.0.1 --port 0 \
        --backend "$BACKING_URI" --backend-forwarding "$mode" \
        --state-dir "$ASPEN_RUN_DIR/state-$mode" || return 1
    local uri="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/?directConnection=true"
    coproc LOAD { timeout -k 5 300 "$PEERS_PYTHON" "$HERE/forward_load.py" "$uri" \
        --threads 4 --min-down-failures "$2" 2>"$ASPEN_RUN_DIR/load-$mode.err"; }
    local in=${LOAD[0]} out=${LOAD[1]} pid=$LOAD_PID
    while IFS= read -r -t 180 line <&"$in"; do
        case $line in
            READY)
                kill_backing || { echo "# kill_backing failed"; rc=1; }
                echo DOWN >&"$out" ;;
            RESTART)
                start_backing "$bport" || { echo "# the backing server did not restart"; rc=1; }
                echo UP >&"$out" ;;
            *) echo "# [$mode] $line" ;;
        esac
    done
    wait "$pid" || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "# [$mode] load script failed (status $rc); stderr:"
        sed 's/^/#   /' "$ASPEN_RUN_DIR/load-$mode.err" | tail -n 20
    fi
    ASPEN_INSTANCE=aspen-$mode stop_aspen || rc=1
    return "$rc"
}

must "backing server starts" start_backing
check "relay: no false acknowledgement across a backend restart; clear errors; resumes" \
    run_load relay 10
check "lanes: no false acknowledgement across a backend restart; clear errors; resumes" \
    run_load lanes 2
check "backing server stops" stop_backing

checks_done
