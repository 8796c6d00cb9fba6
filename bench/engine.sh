#!/usr/bin/env bash
# Builds a Release engine and prints the stateless pipeline throughput:
#   bash bench/engine.sh [events]       (default 1000000)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DASPEN_TESTS=OFF \
      -DASPEN_BENCH=ON >/dev/null
cmake --build build-bench -j"$(nproc)" --target aspen_bench_engine >/dev/null
build-bench/bench/aspen_bench_engine "${1:-1000000}"
