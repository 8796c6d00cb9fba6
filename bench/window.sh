#!/usr/bin/env bash
# Builds a Release engine and prints windowed-aggregation throughput:
#   bash bench/window.sh [events] [keys]     (defaults 1000000 10000)
#   bash bench/window.sh --callgrind [events] [keys]  (default 200000 events)
#       instructions per event of the measured loop under callgrind
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/bench/lib.sh"
bench_inmemory aspen_bench_window 1000000 200000 "$@"
