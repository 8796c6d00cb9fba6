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
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DASPEN_TESTS=OFF \
      -DASPEN_BENCH=ON >/dev/null
cmake --build build-bench -j"$(nproc)" --target aspen_bench_engine >/dev/null
if [[ ${1:-} == --callgrind ]]; then
    bench_callgrind "${2:-100000}" build-bench/bench/aspen_bench_engine "${2:-100000}"
else
    build-bench/bench/aspen_bench_engine "${1:-1000000}"
fi
