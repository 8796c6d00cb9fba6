#!/usr/bin/env bash
# e2e (issue 22) with the Node.js driver (the one mongosh bundles): aspen in
# front of the backing server as a one-member replica set (BACKING_ARGS
# --replset rs0), reached through a TCP relay that can cut a reply
# (tests/e2e/tcp_relay.py), and a second aspen with --load-balanced true.
# js/drivers_node.js checks: the mongos topology the driver sees, a retried
# write after a cut (same txnNumber, executed once), a transaction over
# several commands and a getMore committed, one aborted, a commit retried
# after a cut, sp commands, a healthy streamed hello, and loadBalanced=true
# (CRUD, getMore, transaction, sp commands; refused without the option).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

BACKING_ARGS="--replset rs0" start_backing "$(free_port)"
relay_port=$(free_port)
start_relay "$relay_port" "$BACKING_PORT"
start_aspen --bind 127.0.0.1 --port 0 --backend "mongodb://127.0.0.1:$relay_port/" \
    --state-dir "$ASPEN_RUN_DIR/state-drivers-node"
txn_port=$ASPEN_LISTEN_PORT
ASPEN_INSTANCE=aspen-lb start_aspen --bind 127.0.0.1 --port 0 --backend "$BACKING_URI" \
    --load-balanced true --state-dir "$ASPEN_RUN_DIR/state-drivers-node-lb"
lb_port=$ASPEN_LISTEN_PORT

rc=0
timeout -k 5 180 node "$HERE/js/drivers_node.js" "$txn_port" "$lb_port" "$ASPEN_RUN_DIR/relay.pid" || rc=1
stop_aspen || rc=1
ASPEN_INSTANCE=aspen-lb stop_aspen || rc=1
stop_relay || true
stop_backing || rc=1
exit "$rc"
