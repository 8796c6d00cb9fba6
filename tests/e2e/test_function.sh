#!/usr/bin/env bash
# e2e: the $function expression's limits with stock mongosh against the
# backing server (js/function.js):
#  1. aspen with streams.functionTimeLimitMillis 300 and
#     functionMemoryLimitBytes 16 MB: a function that loops forever and one
#     that allocates without end each fail their document to the DLQ, with
#     the limit as the reason, and the processor carries on;
#  2. aspen with the default limits (60 s): a processor whose function
#     never returns stops at once (the mongosh run is bounded to 30 s), and
#     aspen's SIGTERM with another one spinning is prompt (stop_aspen
#     allows 10 s), with no sanitizer report.
# The data-driven cases (tests/cases/pipeline/function.json) run in
# test_pipeline_cases.sh.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

JS=$HERE/js/function.js
rm -rf "$ASPEN_RUN_DIR/state-function" "$ASPEN_RUN_DIR/state-function2"
must "backing server starts" start_backing "$(free_port)"

CONFIG=$ASPEN_RUN_DIR/function.conf.json
cat >"$CONFIG" <<'JSON'
{ "streams": { "functionTimeLimitMillis": 300, "functionMemoryLimitBytes": 16777216 },
  "connections": [ { "name": "atlas", "type": "atlas" } ] }
JSON
run_js() { # run_js MODE WANT: mongosh runs js/function.js, WANT in its output
    local out=$ASPEN_RUN_DIR/function-$1.out rc=0
    FN_MODE=$1 MONGOSH_TIMEOUT=${3:-120} mongosh_run "$URI" "$JS" >"$out" 2>&1 || rc=$?
    sed 's/^/# /' "$out"
    [[ $rc -eq 0 ]] && grep -q "$2" "$out"
}

must "aspen starts (300 ms, 16 MB limits)" start_aspen --config "$CONFIG" --port 0 \
    --backend "$BACKING_URI" --state-dir "$ASPEN_RUN_DIR/state-function"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/admin?serverSelectionTimeoutMS=5000"
check "a runaway loop and a runaway allocation go to the DLQ; the processor carries on" run_js limits "LIMITS OK"
check "aspen stops cleanly" stop_aspen

cat >"$CONFIG" <<'JSON'
{ "connections": [ { "name": "atlas", "type": "atlas" } ] }
JSON
must "aspen starts (default limits)" start_aspen --config "$CONFIG" --port 0 \
    --backend "$BACKING_URI" --state-dir "$ASPEN_RUN_DIR/state-function2"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/admin?serverSelectionTimeoutMS=5000"
check "a processor inside a never-ending function stops at once" run_js spin "SPIN OK" 30
check "SIGTERM with a function spinning is prompt, no sanitizer report" stop_aspen
checks_done
