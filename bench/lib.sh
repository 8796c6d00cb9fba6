# bench/lib.sh - sourced by the benchmark scripts: log(); bench_inmemory and
# bench_callgrind for the in-memory ones; and, for those that need peers,
# bench_setup NAME, which builds a Release aspen in $BUILD and sources
# tests/e2e/peers.sh with its run directory $BUILD/run-NAME (fresh), so the
# script can start the peers it needs. Expects ROOT and BUILD to be set.
# shellcheck shell=bash

log() { printf '[bench] %s\n' "$*" >&2; }

bench_setup() {
    log "building Release aspen in $BUILD"
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DASPEN_TESTS=OFF >/dev/null
    cmake --build "$BUILD" -j"$(nproc)" --target aspen >/dev/null

    export ASPEN_RUN_DIR=$BUILD/run-$1
    export ASPEN_BIN=$BUILD/proxy/aspen
    rm -rf "$ASPEN_RUN_DIR"
    mkdir -p "$ASPEN_RUN_DIR"
    # shellcheck source=SCRIPTDIR/../tests/e2e/peers.sh
    . "$ROOT/tests/e2e/peers.sh"   # installs the EXIT trap that stops them
    peers_reap_stale
}

# bench_callgrind EVENTS BINARY ARGS... - runs an in-memory benchmark under
# valgrind's callgrind, counting only its measured loop (the bench_run
# function), and prints instructions per event after the benchmark's own
# output (whose timings are valgrind's, not the machine's).
bench_callgrind() {
    local events=$1 out
    shift
    out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        --toggle-collect=bench_run "$@" 2>/dev/null |
        sed 's/^/  (under valgrind) /'
    awk -v n="$events" '/^(summary|totals):/ { ir = $2 }
        END { printf "  instructions:  %.0f per event (callgrind, %d events)\n", ir / n, n }' "$out"
    rm -f "$out"
}

# bench_inmemory TARGET EVENTS CALLGRIND_EVENTS [--callgrind] [N [ARGS...]] -
# builds the in-memory benchmark TARGET (Release, in build-bench/) and runs
# it on N events (default EVENTS) and ARGS, or with --callgrind under
# bench_callgrind (default CALLGRIND_EVENTS). Run from the repository root.
bench_inmemory() {
    local target=$1 events=$2 cg_events=$3 callgrind=
    shift 3
    cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DASPEN_TESTS=OFF \
          -DASPEN_BENCH=ON >/dev/null
    cmake --build build-bench -j"$(nproc)" --target "$target" >/dev/null
    if [[ ${1:-} == --callgrind ]]; then
        callgrind=1
        events=$cg_events
        shift
    fi
    if [[ $# -gt 0 ]]; then
        events=$1
        shift
    fi
    if [[ -n $callgrind ]]; then
        bench_callgrind "$events" "build-bench/bench/$target" "$events" "$@"
    else
        "build-bench/bench/$target" "$events" "$@"
    fi
}
