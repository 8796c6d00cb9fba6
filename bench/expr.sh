#!/usr/bin/env bash
# Builds a Release engine and prints the cost of one expression operator
# call, in ns per evaluation, for a set of common operators:
#   bash bench/expr.sh [evaluations] [filter]     (default 2000000 each)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DASPEN_TESTS=OFF \
      -DASPEN_BENCH=ON >/dev/null
cmake --build build-bench -j"$(nproc)" --target aspen_bench_expr >/dev/null
build-bench/bench/aspen_bench_expr "${1:-2000000}" ${2:+"$2"}
