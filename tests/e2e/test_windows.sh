#!/usr/bin/env bash
# e2e: event-time windows through stock mongosh: listing 15.6's hopping
# window, late data to the DLQ, idle timeouts on the virtual clock, inner
# $sort/$limit/$group, session windows, ASP's refusals, and listing 15.6.6 on
# the live solar sample.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

must "aspen starts" start_aspen --bind 127.0.0.1 --port 0 --state-dir "$ASPEN_RUN_DIR/state-windows"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
check "windows: deterministic cases" mongosh_run "$URI" "$HERE/js/windows.js"
check "listing 15.6.6 on sample_stream_solar" mongosh_run "$URI" "$HERE/js/windows_solar.js"
check "aspen stops cleanly, no sanitizer report" stop_aspen

checks_done
