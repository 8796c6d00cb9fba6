#!/usr/bin/env bash
# shellcheck disable=SC2016 # JavaScript in single quotes, on purpose
# e2e: aspen against hostile clients (issue 9), bounded in time. One aspen
# with tight limits (net.maxConnections 500, net.outputHighWaterMarkBytes
# 1 MiB, net.idleTimeoutSecs 3, tls.mode allowed) faces, one after another
# (tests/e2e/hostile/hostile.py): a frame trickled a byte at a time, idle
# half-open connections, a frame announcing 2 GB, 2000 connections at once
# and 2000 opened and dropped, pipelined requests never read, clients that
# reset mid-reply, and TLS/plaintext garbage. Throughout, pymongo pings
# every 100 ms (inside hostile.py) and a mongosh session pings every 500 ms;
# both must get every answer. aspen's log must show each limit's refusal
# with the client address, and no sanitizer report (stop_aspen).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

CERTS=$ASPEN_RUN_DIR/certs
CONFIG=$ASPEN_RUN_DIR/hostile.json
LOG=$ASPEN_RUN_DIR/aspen.log
bash "$PEERS_ROOT/certs/gen-dev-certs.sh" "$CERTS" >/dev/null

# 2000 client sockets against net.maxConnections 500; with a low descriptor
# limit, fewer of both (aspen needs its own descriptors for what it accepts).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FLOOD=2000
MAXCONN=500
if [[ $(ulimit -n) -lt 2600 ]]; then
    FLOOD=$(( ($(ulimit -n) - 100) * 2 / 3 ))
    MAXCONN=$(( FLOOD / 4 ))
fi
cat >"$CONFIG" <<JSON
{ "net": { "bindIp": "127.0.0.1", "port": 0, "maxConnections": $MAXCONN,
           "outputHighWaterMarkBytes": 1048576, "idleTimeoutSecs": 3 },
  "tls": { "mode": "allowed", "certificateFile": "$CERTS/server.pem",
           "keyFile": "$CERTS/server-key.pem" },
  "stateDir": "$ASPEN_RUN_DIR/state" }
JSON

must "aspen starts with tight limits" start_aspen --config "$CONFIG"
PORT=$ASPEN_LISTEN_PORT
PID=$(<"$ASPEN_RUN_DIR/aspen.pid")
URI="mongodb://127.0.0.1:$PORT/?directConnection=true&heartbeatFrequencyMS=1000"

# The well-behaved mongosh session, alongside everything below.
MONGOSH_OUT=$ASPEN_RUN_DIR/mongosh-alongside.out
export HOSTILE_DONE=$ASPEN_RUN_DIR/hostile.done
rm -f "$HOSTILE_DONE"
MONGOSH_TIMEOUT=300 mongosh_run "$URI" '
  let n = 0;
  while (!require("fs").existsSync(process.env.HOSTILE_DONE)) {
    const r = db.adminCommand({ping: 1});
    if (r.ok !== 1) throw new Error("ping failed: " + EJSON.stringify(r));
    n++;
    sleep(500);
  }
  print("mongosh pings answered: " + n);' >"$MONGOSH_OUT" 2>&1 &
MONGOSH_PID=$!
peers_on_exit "touch '$HOSTILE_DONE'; kill $MONGOSH_PID 2>/dev/null"
# Let mongosh connect before the storm (up to 30 s).
for _ in $(seq 1 300); do
    grep -q '"Connection accepted"' "$LOG" && break
    kill -0 "$MONGOSH_PID" 2>/dev/null || break
    sleep 0.1
done
sleep 2

rc=0
timeout -k 5 240 "$PEERS_PYTHON" "$HERE/hostile/hostile.py" --port "$PORT" --pid "$PID" \
    --idle-timeout 3 --max-connections "$MAXCONN" --flood "$FLOOD" | sed "s/^/    /" || rc=$?
check "hostile clients: every scenario passed (hostile.py status $rc)" test "$rc" -eq 0

touch "$HOSTILE_DONE"
mongosh_rc=0
wait "$MONGOSH_PID" || mongosh_rc=$?
sed 's/^/# mongosh: /' "$MONGOSH_OUT"
check "mongosh pinged alongside without a failure" \
    eval "[[ $mongosh_rc -eq 0 ]] && grep -q 'mongosh pings answered' '$MONGOSH_OUT'"
check "aspen still answers a fresh mongosh" mongosh_run "$URI" \
    'const r = db.adminCommand({ping: 1}); if (r.ok !== 1) throw new Error(EJSON.stringify(r));'

# Each limit's refusal is in the log with the client's address.
# (No grep -q at the end of the pipe: with pipefail its early exit fails it.)
logged() { grep -E "$1" "$LOG" | grep -E '127\.0\.0\.1:[0-9]+' >/dev/null; }
check "log: refused connections (net.maxConnections) name the client" \
    logged 'refusing connection from .*net.maxConnections'
check "log: reads paused at net.outputHighWaterMarkBytes name the client" \
    logged 'pausing reads from .*net.outputHighWaterMarkBytes'
check "log: idle connections closed (net.idleTimeoutSecs) name the client" \
    logged 'closing idle connection from .*net.idleTimeoutSecs'
check "log: the 2 GB frame was refused for its length" \
    grep -q 'invalid message length 2147483647' "$LOG"

check "aspen stops cleanly, no sanitizer report" stop_aspen
checks_done
