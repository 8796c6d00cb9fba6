#!/usr/bin/env bash
# Builds a Release engine and prints the cost of a Kafka message's JSON
# (decode + encode), aspen's fast path next to libbson's reader and writer:
#   bash bench/json.sh [messages]               (default 1000000)
#   bash bench/json.sh --callgrind [messages]   (default 100000) instructions
#       per message of aspen's loop (bench_run) under callgrind
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/bench/lib.sh"
bench_inmemory aspen_bench_json 1000000 100000 "$@"
