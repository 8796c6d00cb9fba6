#!/usr/bin/env bash
# e2e: what getStreamProcessorStats shows (issue 17), through stock mongosh
# against aspen with the backing server and the broker aspen hosts: verbose
# stats of a Kafka -> window -> $merge processor and of a change stream ->
# $merge one, every field checked against what was sent (js/stats.js);
# tiers and autoscaling on create, start and modify, in listings and stats,
# and the tiers' parallelism and Kafka partition limits (js/tiers.js).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

CONFIG=$ASPEN_RUN_DIR/aspen-stats.json
STATE=$ASPEN_RUN_DIR/state-stats
rm -rf "$STATE"
cat >"$CONFIG" <<JSON
{ "connections": [
  { "name": "atlas", "type": "atlas" },
  { "name": "localKafka", "type": "kafka", "local": true } ] }
JSON

must "backing server starts" start_backing
must "aspen starts" start_aspen --config "$CONFIG" --bind 127.0.0.1 --port 0 \
    --backend "$BACKING_URI" --state-dir "$STATE"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
check "verbose stats: Kafka -> window -> \$merge, change stream -> \$merge" \
    mongosh_run "$URI" "$HERE/js/stats.js"
check "tiers and autoscaling: listings, stats, limits" \
    mongosh_run "$URI" "$HERE/js/tiers.js"
check "aspen stops cleanly, no sanitizer report" stop_aspen

checks_done
