#!/usr/bin/env bash
# e2e: event-time windows through stock mongosh: listing 15.6's hopping
# window, late data to the DLQ, idle timeouts on the virtual clock, inner
# $sort/$limit/$group, session windows, ASP's refusals, and listing 15.6.6 on
# the live solar sample.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

N=0
FAILED=0
check() {
    local name=$1
    shift
    N=$((N + 1))
    if "$@"; then echo "ok $N - $name"; else echo "not ok $N - $name"; FAILED=$((FAILED + 1)); fi
}
must() {
    local before=$FAILED
    check "$@"
    [[ $FAILED -eq $before ]] || { echo "# stopping: '$1' failed"; echo "1..$N"; exit 1; }
}

must "aspen starts" start_aspen --bind 127.0.0.1 --port 0 --state-dir "$ASPEN_RUN_DIR/state-windows"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
check "windows: deterministic cases" mongosh_run "$URI" "$HERE/js/windows.js"
check "listing 15.6.6 on sample_stream_solar" mongosh_run "$URI" "$HERE/js/windows_solar.js"
check "aspen stops cleanly, no sanitizer report" stop_aspen

echo "1..$N"
if [[ $FAILED -ne 0 ]]; then
    echo "# $FAILED of $N checks failed (logs in $ASPEN_RUN_DIR)"
    exit 1
fi
echo "# all $N checks passed"
