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
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DASPEN_TESTS=OFF \
      -DASPEN_BENCH=ON >/dev/null
cmake --build build-bench -j"$(nproc)" --target aspen_bench_window >/dev/null
if [[ ${1:-} == --callgrind ]]; then
    bench_callgrind "${2:-200000}" build-bench/bench/aspen_bench_window "${2:-200000}" "${3:-10000}"
else
    build-bench/bench/aspen_bench_window "${1:-1000000}" "${2:-10000}"
fi
