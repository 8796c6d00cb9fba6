#!/usr/bin/env bash
# e2e: MongoDB connections (issue 6) through stock mongosh against aspen and
# the backing server (mongo-java-server with its oplog): change-stream
# $source, $lookup/$cachedLookup, $merge modes and dynamic targets, the DLQ
# collection, validation, and a connection to a server that is not there.
# The checks themselves are in js/mongodb.js.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

STATE=$ASPEN_RUN_DIR/state-mongodb
CONFIG=$ASPEN_RUN_DIR/aspen-mongodb.json
rm -rf "$STATE"

must "backing server starts" start_backing
# "down": a port nothing listens on (the discard port), found unreachable fast.
cat >"$CONFIG" <<JSON
{ "connections": [
    { "name": "atlas", "type": "atlas" },
    { "name": "down", "type": "atlas",
      "uri": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=1000" } ] }
JSON
must "aspen starts" start_aspen --config "$CONFIG" --bind 127.0.0.1 --port 0 \
    --backend "$BACKING_URI" --state-dir "$STATE"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
check "change streams, \$lookup, \$merge, DLQ, validation" mongosh_run "$URI" "$HERE/js/mongodb.js"
check "aspen stops cleanly, no sanitizer report" stop_aspen
check "backing server stops" stop_backing

checks_done
