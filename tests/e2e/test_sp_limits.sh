#!/usr/bin/env bash
# e2e: the engine's hardening against hostile sp input (issue 20 items 1, 2,
# 11, 14; tests/e2e/sp_limits.py holds the client side). Strings that are
# not UTF-8 are refused and never reach the state or a reply; processor
# names follow aspen's rules; one expression growing a value without bound
# fails its document (DLQ), not aspen; a processor in the middle of a long
# evaluation is dropped at once, other commands answer meanwhile, and
# SIGTERM stops aspen while one computes; a wrong-shaped processors.json
# stops aspen with a message, untouched; what was saved survives restarts.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

PYTHON=$PEERS_DEPS/venv/bin/python
STATE=$ASPEN_RUN_DIR/state
CONFIG=$ASPEN_RUN_DIR/aspen.json
LOG=$ASPEN_RUN_DIR/aspen.log
rm -rf "$STATE"
# An atlas connection for $merge; nothing here starts a processor that
# would use it.
cat >"$CONFIG" <<'JSON'
{ "connections": [ { "name": "atlas", "type": "atlas", "uri": "mongodb://127.0.0.1:9/" } ] }
JSON

start() { start_aspen --config "$CONFIG" --bind 127.0.0.1 --port 0 --state-dir "$STATE"; }

# scenario NAME: runs sp_limits.py NAME; its TAP lines count as checks.
scenario() {
    local out rc=0 line
    out=$(timeout -k 5 600 "$PYTHON" "$HERE/sp_limits.py" --port "$ASPEN_LISTEN_PORT" "$@") || rc=$?
    while IFS= read -r line; do
        case $line in
            "ok "*) check "${line#ok * - }" true ;;
            "not ok "*) echo "# $line"; check "${line#not ok * - }" false ;;
            *) echo "$line" ;;
        esac
    done <<<"$out"
    [[ $rc -eq 0 ]] || { echo "# sp_limits.py $1 exited $rc"; check "sp_limits.py $1 ran" false; }
}

must "aspen starts" start
scenario utf8
scenario names
scenario grow
# The long evaluation: dropped and listed around (sp_limits.py), then one
# left computing while aspen gets SIGTERM: stop_aspen fails if aspen is not
# gone within 10 s.
READY=$ASPEN_RUN_DIR/slow.ready
rm -f "$READY"
timeout -k 5 600 "$PYTHON" "$HERE/sp_limits.py" --port "$ASPEN_LISTEN_PORT" \
    --ready-file "$READY" --hold 300 slow >"$ASPEN_RUN_DIR/slow.out" 2>&1 &
SLOW_PID=$!
peers_on_exit "kill $SLOW_PID 2>/dev/null"
for _ in $(seq 600); do [[ -f $READY ]] && break; _peers_alive "$SLOW_PID" || break; sleep 0.2; done
while IFS= read -r line; do
    case $line in
        "ok "*) check "${line#ok * - }" true ;;
        "not ok "*) echo "# $line"; check "${line#not ok * - }" false ;;
    esac
done <"$ASPEN_RUN_DIR/slow.out"
check "the slow scenario got as far as SIGTERM" test -f "$READY"
check "aspen stops on SIGTERM while a processor computes" stop_aspen
kill "$SLOW_PID" 2>/dev/null || true
wait "$SLOW_PID" 2>/dev/null || true
check "the drop and SIGTERM interrupted the evaluations (not the step limit)" \
    test "$(grep -c 'the stop interrupted an expression evaluation' "$LOG")" -ge 2

# What was saved is still there, each processor in its own file.
must "aspen starts again" start
check "the good processor survived the restart" \
    mongosh_run "mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/" '
      const names = sp.listStreamProcessors().map(p => p.name);
      if (JSON.stringify(names) !== JSON.stringify(["good"])) throw new Error(JSON.stringify(names));'
check "one file per processor" test "$(find "$STATE/processors" -name '*.json' | wc -l)" -eq 1
check "aspen stops" stop_aspen

# A wrong-shaped processors.json (an older aspen's single file) stops aspen
# with a message naming it; the file is left as it was.
BAD=$ASPEN_RUN_DIR/state-bad
rm -rf "$BAD"
mkdir -p "$BAD"
printf '{"processors": 5}' >"$BAD/processors.json"
cp "$BAD/processors.json" "$ASPEN_RUN_DIR/processors.json.orig"
refused() {
    local bin rc=0
    bin=$(_peers_aspen_bin)
    timeout -k 5 60 "$bin" --bind 127.0.0.1 --port 0 --state-dir "$BAD" >"$ASPEN_RUN_DIR/bad.log" 2>&1 || rc=$?
    [[ $rc -ne 0 && $rc -ne 124 ]] &&
        grep -q "processors.json is not a state file aspen can read: 'processors' must be an array" "$ASPEN_RUN_DIR/bad.log" &&
        ! grep -Eq -- "$PEERS_SANITIZER_RE" "$ASPEN_RUN_DIR/bad.log"
}
check "aspen refuses to start on {\"processors\": 5}" refused
check "... and leaves the file as it was" cmp -s "$BAD/processors.json" "$ASPEN_RUN_DIR/processors.json.orig"

checks_done
