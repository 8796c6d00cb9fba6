#!/usr/bin/env bash
# Builds a Release engine and prints windowed-aggregation throughput:
#   bash bench/window.sh [events] [keys]     (defaults 1000000 10000)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DASPEN_TESTS=OFF \
      -DASPEN_BENCH=ON >/dev/null
cmake --build build-bench -j"$(nproc)" --target aspen_bench_window >/dev/null
build-bench/bench/aspen_bench_window "${1:-1000000}" "${2:-10000}"
