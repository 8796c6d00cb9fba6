#!/usr/bin/env bash
# e2e: a start that waits on its processor's peers does not hold up other
# clients' sp commands. A Kafka connection whose bootstrap server is a closed
# port makes a start wait out the metadata timeout (10 s) and fail with 419.
# Through stock mongosh, several shells at once (js/sp_async.js, one role
# each), ordered by a shared marker file, never by timings:
#   - while client A's start of such a processor waits, client B lists it
#     (PROVISIONING), reads its stats, is refused start and modify, and
#     creates, starts and stops a `documents` processor: all of B's replies
#     come before A's, which is then 419 with the processor FAILED and its
#     errorMsg set;
#   - a stop, then a drop, of a PROVISIONING processor end its pending
#     start with an error (11601), and the processor is STOPPED, then gone;
#   - an sp.process on the unreachable source whose shell is killed while it
#     starts: the ephemeral processor goes, aspen carries on;
#   - aspen stopped with a start still pending exits cleanly (no sanitizer or
#     leak report), the waiting client getting an error or a closed socket.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

STATE=$ASPEN_RUN_DIR/state
CONFIG=$ASPEN_RUN_DIR/aspen.json
MARK=$ASPEN_RUN_DIR/order.log
rm -rf "$STATE" "$MARK"
CLOSED_PORT=$(free_port)

cat >"$CONFIG" <<JSON
{ "connections": [
  { "name": "atlas", "type": "atlas" },
  { "name": "kafkaDown", "type": "kafka", "bootstrapServers": "127.0.0.1:$CLOSED_PORT" } ] }
JSON

start() {
    start_aspen --config "$CONFIG" --bind 127.0.0.1 --port 0 \
        --backend "$BACKING_URI" --state-dir "$STATE"
    URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
}

# roles NAME...: runs js/sp_async.js once per NAME (ASYNC_ROLE), all at
# once, output to NAME.out; fails (printing its output) if one fails.
roles() {
    local name pids=() rc=0 i=0 st
    for name in "$@"; do
        ASYNC_ROLE=$name ASYNC_MARK=$MARK ASYNC_STATE_DIR=$STATE \
            mongosh_run "$URI" "$HERE/js/sp_async.js" >"$ASPEN_RUN_DIR/$name.out" 2>&1 &
        pids+=($!)
    done
    for name in "$@"; do
        st=0
        wait "${pids[i]}" || st=$?
        i=$((i + 1))
        [[ $st -eq 0 ]] && continue
        rc=1
        echo "# $name exited with $st:"; sed 's/^/#   /' "$ASPEN_RUN_DIR/$name.out" | tail -20
    done
    return "$rc"
}

# line_of TEXT: the line number of the first line of $MARK starting TEXT.
line_of() { grep -n -m1 -F -- "$1" "$MARK" | cut -d: -f1; }

# before A B: the mark starting A comes before the one starting B.
before() {
    local a b
    a=$(line_of "$1"); b=$(line_of "$2")
    if [[ -z $a || -z $b || $a -ge $b ]]; then
        echo "# want \"$1\" (line ${a:-none}) before \"$2\" (line ${b:-none}) in:"
        sed 's/^/#   /' "$MARK"
        return 1
    fi
}

slow_start_does_not_block() {
    roles bystander slowStarter || return 1
    # Every reply B got came before A's start replied.
    local m
    for m in "bystander list: slow PROVISIONING" "bystander stats: PROVISIONING" \
             "bystander start and modify refused" "bystander create quick" \
             "bystander start quick" "bystander stop quick" "bystander done"; do
        before "slowStarter start sent" "$m" || return 1
        before "$m" "slowStarter start replied: 419 " || return 1
    done
}

stop_and_drop_end_the_start() {
    roles aborter abortee || return 1
    # The stop ended the first start; the drop, the second.
    before "abortee first start replied: 11601" "aborter dropped slow2" &&
        before "aborter stopped slow2" "abortee second start replied: 11601"
}

# wait_log PATTERN: up to 60 s for aspen's log to have a line matching it.
wait_log() {
    local i
    for i in $(seq 600); do
        grep -Eq -- "$1" "$ASPEN_RUN_DIR/aspen.log" && return 0
        sleep 0.1
    done
    echo "# aspen.log has no line matching $1"
    return 1
}

# sp.process on the unreachable source, its shell killed while the start
# waits: aspen ends the start (the processor goes) and serves on.
sp_process_killed_while_starting() {
    local outf=$ASPEN_RUN_DIR/sp_process.out pid name
    HOME=$ASPEN_RUN_DIR/home MONGOSH_FORCE_DISABLE_TELEMETRY_FOR_TESTING=1 \
        "$PEERS_MONGOSH" --quiet --norc "$URI" \
        --eval 'sp.process([{$source: {connectionName: "kafkaDown", topic: "nowhere"}}])' \
        >"$outf" 2>&1 &
    pid=$!
    wait_log '"processor": *"__process_[0-9a-f]{24}".*"to": *"PROVISIONING"' ||
        { kill -KILL "$pid"; wait "$pid" || true; return 1; }
    name=$(grep -E '"to": *"PROVISIONING"' "$ASPEN_RUN_DIR/aspen.log" |
        grep -Eo '__process_[0-9a-f]{24}' | tail -n 1)
    [[ -n $name ]] || { echo "# no __process_ name in aspen.log"; kill -KILL "$pid"; return 1; }
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    wait_log "$name.*the connection that started it closed" || return 1
    # Gone, and aspen answers sp commands as before.
    mongosh_run "$URI" "(() => {
      let code = 0;
      try { db.getSiblingDB('admin').runCommand({getStreamProcessor: '$name'}); } catch (e) { code = e.code; }
      if (code !== 415) throw new Error('$name is still there (code ' + code + ')');
      if (!Array.isArray(sp.listStreamProcessors())) throw new Error('no listing');
    })()"
}

# aspen stopped while a start is pending: the waiting shell gets an error
# or a closed connection, and aspen exits 0 with no sanitizer report
# (stop_aspen checks both).
shutdown_with_start_pending() {
    local outf=$ASPEN_RUN_DIR/shutdown.out pid rc=0
    mongosh_run "$URI" "sp.createStreamProcessor('slow3', $(printf '%s' \
        '[{$source: {connectionName: "kafkaDown", topic: "nowhere"}}, {$merge: {into: {connectionName: "atlas", db: "async_e2e", coll: "out"}}}]'))" ||
        return 1
    mongosh_run "$URI" "sp.slow3.start()" >"$outf" 2>&1 &
    pid=$!
    wait_log '"processor": *"slow3".*"to": *"PROVISIONING"' || { wait "$pid" || true; return 1; }
    stop_aspen || rc=1
    wait "$pid" 2>/dev/null && { echo "# the pending start succeeded?"; cat "$outf"; rc=1; }
    return "$rc"
}

must "backing server starts" start_backing
must "aspen starts" start
check "a slow start (PROVISIONING) does not hold up another client's sp commands" slow_start_does_not_block
check "stop and drop during PROVISIONING end the pending start with an error" stop_and_drop_end_the_start
check "sp.process whose shell dies while it starts is dropped; aspen serves on" sp_process_killed_while_starting
check "aspen stops cleanly with a start pending (no sanitizer or leak report)" shutdown_with_start_pending
check "backing server stops" stop_backing

checks_done
