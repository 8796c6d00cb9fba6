#!/usr/bin/env bash
# Builds a Release engine and prints the stateless pipeline throughput:
#   bash bench/engine.sh [events]              (default 1000000)
#   bash bench/engine.sh --callgrind [events]  (default 100000) instructions
#       per event of the measured loop under valgrind's callgrind, a figure
#       that does not depend on the machine's load
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/bench/lib.sh"
bench_inmemory aspen_bench_engine 1000000 100000 "$@"
