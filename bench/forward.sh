#!/usr/bin/env bash
# Benchmark (not a test) of aspen's forwarding path: the same workloads run
# against the backing server directly, through a plain TCP relay (socat, the
# reference: one more hop and nothing else) and through aspen, side by side.
#
#   bench/forward.sh [--ops N] [--warmup N] [--threads T] [--lanes L]
#                    [--forwarding relay|lanes]
#
# Builds a Release aspen in build-bench/ (-DASPEN_TESTS=OFF) and
# bench/forward_bench.c next to it, starts the backing server
# (.deps/aspen-backing-server.jar, see scripts/install-deps.sh), socat and
# aspen on free ports, runs the benchmark and prints its table: ops/s,
# p50/p99 per target for 1 and T client threads, aspen's CPU time and
# context switches per op, and a summary of aspen against the relay (issue
# 19's targets). Without socat (scripts/install-deps.sh installs it) the
# relay is tests/e2e/tcp_relay.py, which is slower than socat: the header
# says which. Everything started is stopped on exit (tests/e2e/peers.sh's
# EXIT trap). Timings never fail the run; the exit status is non-zero only
# if something broke.
#
# Options (also as environment variables):
#   --ops N       measured operations per row (BENCH_OPS, default 20000)
#   --warmup N    global warm-up operations per workload and target
#                 (BENCH_WARMUP, default 10000)
#   --threads T   the concurrent row's thread count (BENCH_THREADS, default 4)
#   --lanes L     aspen --backend-lanes (BENCH_LANES, default: aspen's own)
#   --forwarding M  aspen --backend-forwarding (BENCH_FORWARDING, default
#                 relay; lanes measures the mongoc lanes instead)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=$ROOT/build-bench

OPS=${BENCH_OPS:-20000}
WARMUP=${BENCH_WARMUP:-10000}
THREADS=${BENCH_THREADS:-4}
LANES=${BENCH_LANES:-}
FORWARDING=${BENCH_FORWARDING:-relay}
while [[ $# -gt 0 ]]; do
    case $1 in
        --ops) OPS=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --lanes) LANES=$2; shift 2 ;;
        --forwarding) FORWARDING=$2; shift 2 ;;
        -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "forward.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

log() { printf '[bench] %s\n' "$*" >&2; }

# --- build ----------------------------------------------------------------
log "building Release aspen in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DASPEN_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j2 --target aspen >/dev/null
mkdir -p "$BUILD/bench"
BENCH_BIN=$BUILD/bench/forward_bench
if [[ ! -x $BENCH_BIN || $ROOT/bench/forward_bench.c -nt $BENCH_BIN ]]; then
    log "building $BENCH_BIN"
    # shellcheck disable=SC2046 # pkg-config output is a list of words
    gcc -std=gnu11 -O2 -Wall -Wextra -o "$BENCH_BIN" "$ROOT/bench/forward_bench.c" \
        $(pkg-config --cflags --libs libmongoc-1.0) -lpthread
fi

# --- peers ----------------------------------------------------------------
export ASPEN_RUN_DIR=$BUILD/run
export ASPEN_BIN=$BUILD/proxy/aspen
# shellcheck source=SCRIPTDIR/../tests/e2e/peers.sh
. "$ROOT/tests/e2e/peers.sh"   # installs the EXIT trap that stops them
peers_reap_stale

start_backing "$(free_port)"

# The reference: a plain TCP relay to the same backing server.
relay_port=$(free_port)
if command -v socat >/dev/null 2>&1; then
    relay_kind="socat $(socat -V 2>/dev/null | sed -n 's/^socat version \([^ ]*\).*/\1/p' | head -n 1)"
    socat "TCP-LISTEN:$relay_port,bind=127.0.0.1,reuseaddr,fork,nodelay" \
        "TCP:127.0.0.1:$BACKING_PORT,nodelay" </dev/null >"$ASPEN_RUN_DIR/relay.log" 2>&1 &
    relay_pid=$!
    peers_on_exit "kill $relay_pid 2>/dev/null"
    for _ in $(seq 50); do
        "$PEERS_PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1', $relay_port), 1)" \
            2>/dev/null && break
        sleep 0.1
    done
else
    relay_kind="tests/e2e/tcp_relay.py (socat not installed: run scripts/install-deps.sh)"
    start_relay "$relay_port" "$BACKING_PORT"
    relay_pid=$(<"$ASPEN_RUN_DIR/relay.pid")
fi

aspen_port=$(free_port)
aspen_args=(--port "$aspen_port" --backend "$BACKING_URI"
            --backend-forwarding "$FORWARDING"
            --state-dir "$ASPEN_RUN_DIR/aspen-state")
[[ -z $LANES ]] || aspen_args+=(--backend-lanes "$LANES")
start_aspen "${aspen_args[@]}"
aspen_pid=$(<"$ASPEN_RUN_DIR/aspen.pid")

printf 'aspen forwarding benchmark  %s\n' "$(date -u +%FT%TZ)"
printf 'host: %s, %s CPUs; aspen %s (Release, pid %s, forwarding %s%s); backing: mongo-java-server (pid %s)\n' \
    "$(uname -m)" "$(nproc)" "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')" \
    "$aspen_pid" "$FORWARDING" "${LANES:+, $LANES lanes}" "$(<"$ASPEN_RUN_DIR/backing.pid")"
printf 'direct: %s   relay: %s on port %s (pid %s)   aspen: mongodb://127.0.0.1:%s\n\n' \
    "$BACKING_URI" "$relay_kind" "$relay_port" "$relay_pid" "$ASPEN_LISTEN_PORT"

# In the background, so the EXIT trap can stop it too if we are killed.
"$BENCH_BIN" --direct "$BACKING_URI/?directConnection=true" \
    --relay "mongodb://127.0.0.1:$relay_port/?directConnection=true" \
    --aspen "mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/?directConnection=true" \
    --ops "$OPS" --warmup "$WARMUP" --threads "$THREADS" --aspen-pid "$aspen_pid" &
bench_pid=$!
peers_on_exit "kill $bench_pid 2>/dev/null"
rc=0
wait "$bench_pid" || rc=$?

stop_aspen || { log "aspen did not stop cleanly (see $ASPEN_RUN_DIR/aspen.log)"; rc=1; }
stop_backing || true
exit "$rc"
