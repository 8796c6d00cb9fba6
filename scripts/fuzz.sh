#!/usr/bin/env bash
# Builds aspen's libFuzzer targets with clang (-fsanitize=fuzzer,address,
# undefined) in build-fuzz/ and runs each for a while, from a working corpus
# seeded with the committed one (tests/fuzz/corpus/<target>/) and the
# dictionary tests/fuzz/aspen.dict.
#
#   scripts/fuzz.sh [TARGET...]      targets: frame pipeline expr config kafka scram
#                                    command ejson (default: all)
#   scripts/fuzz.sh --help           this text
#
# Needs clang and its libFuzzer runtime (Debian: libclang-rt-<major>-dev),
# both installed by scripts/install-deps.sh.
#
# Environment:
#   FUZZ_SECONDS  how long each target runs (default 60)
#   FUZZ_JOBS     parallel fuzzing processes per target (default 1)
#   FUZZ_WORK     working corpora and crash files (default build-fuzz/work)
#   FUZZ_ARGS     extra libFuzzer flags
#
# For each target it prints the final execs/s, coverage (cov: edges, ft:
# features) and corpus size, from libFuzzer's last status line. A crash, leak
# or timeout leaves its input in $FUZZ_WORK/<target>/artifacts/: minimise it
# (fuzz_<target> -minimize_crash=1 -runs=10000 FILE), fix the bug, and commit
# the input to tests/fuzz/corpus/<target>/ so the replay ctest keeps it fixed.
# New corpus entries worth keeping can be merged back with
#   build-fuzz/tests/fuzz/fuzz_<target> -merge=1 tests/fuzz/corpus/<target> \
#       $FUZZ_WORK/<target>/corpus
# (keep the committed corpus small: a few KB per target).
# Exit status: 0 when no target crashed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

ALL=(frame pipeline expr config kafka scram command ejson)
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    # The comment block at the top of this file is the usage.
    sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit 0
fi
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL[@]}")
for t in "${TARGETS[@]}"; do
    [[ " ${ALL[*]} " == *" $t "* ]] ||
        { echo "fuzz.sh: unknown target '$t' (targets: ${ALL[*]})" >&2; exit 2; }
done
SECONDS_EACH=${FUZZ_SECONDS:-60}
JOBS=${FUZZ_JOBS:-1}
WORK=${FUZZ_WORK:-$ROOT/build-fuzz/work}
CC_FUZZ=${CC_FUZZ:-clang}

command -v "$CC_FUZZ" >/dev/null || { echo "fuzz.sh: $CC_FUZZ not found (apt-get install clang)" >&2; exit 2; }
# -fsanitize=fuzzer links clang's libFuzzer runtime, a package of its own on
# Debian (libclang-rt-<major>-dev; scripts/install-deps.sh installs it).
# Without it the link fails late with "cannot find ...libclang_rt.fuzzer":
# say what is missing before building.
FUZZ_RT=$("$CC_FUZZ" -print-runtime-dir)/libclang_rt.fuzzer-$(uname -m).a
[[ -f $FUZZ_RT ]] || {
    major=$("$CC_FUZZ" -dumpversion | cut -d. -f1)
    echo "fuzz.sh: libFuzzer runtime $FUZZ_RT not found: run scripts/install-deps.sh" \
        "(or apt-get install libclang-rt-$major-dev)" >&2
    exit 2
}

echo "==== build build-fuzz ($CC_FUZZ)"
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER="$CC_FUZZ" -DCMAKE_BUILD_TYPE=Debug \
    -DASPEN_TESTS=OFF -DASPEN_FUZZ=ON -DASPEN_SANITIZE=address,undefined >/dev/null || exit 2
build_targets=()
for t in "${TARGETS[@]}"; do build_targets+=(--target "fuzz_$t"); done
cmake --build build-fuzz -j "$(nproc)" "${build_targets[@]}" || exit 2

export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

failed=0
summary=()
for t in "${TARGETS[@]}"; do
    bin=build-fuzz/tests/fuzz/fuzz_$t
    dir=$WORK/$t
    mkdir -p "$dir/corpus" "$dir/artifacts"
    log=$dir/fuzz.log
    # With jobs, libFuzzer writes each worker's output to fuzz-N.log in the
    # current directory; the summary then reads worker 0's.
    par=()
    [[ $JOBS -le 1 ]] || par=(-jobs="$JOBS" -workers="$JOBS")
    # An input's time limit. fuzz_command's sp commands may legitimately
    # wait on bounded peer timeouts (a Kafka metadata request up to 10 s,
    # then a clear error; a consumer close up to 5 s), so it gets 30 s; it
    # logs every command slower than 2 s ("slow command") to its log.
    limit=10
    [[ $t != command ]] || limit=30
    echo "==== fuzz_$t for ${SECONDS_EACH}s (log: $log)"
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    "$bin" "$dir/corpus" "tests/fuzz/corpus/$t" \
        -dict=tests/fuzz/aspen.dict -max_total_time="$SECONDS_EACH" \
        -max_len=65536 -timeout="$limit" -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$dir/artifacts/" ${par[@]+"${par[@]}"} \
        ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    # The last status line: "#N  DONE/pulse  cov: C ft: F corp: K/S ... exec/s: E ..."
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    runs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$last")
    eps=$(sed -nE 's/.* exec\/s: ([0-9]+).*/\1/p' <<<"$last")
    artifacts=$(find "$dir/artifacts" -type f | wc -l)
    status=ok
    if [[ $rc -ne 0 || $artifacts -gt 0 ]]; then
        status="FAILED (status $rc, $artifacts artifact(s) in $dir/artifacts)"
        failed=1
        grep -E -m1 -A12 'ERROR: |runtime error:|==[0-9]+==' "$log" | head -n 20
    fi
    summary+=("$(printf '%-9s runs %-10s exec/s %-7s cov %-6s ft %-7s corpus %-12s %s' \
        "$t" "${runs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$status")")
done

echo "==== summary (${SECONDS_EACH}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
