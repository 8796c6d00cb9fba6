#!/usr/bin/env bash
# The one test command (CI runs it through .ci/run):
#   1. scripts/install-deps.sh                  (skip with SKIP_INSTALL=1)
#   2. build/      RelWithDebInfo build, then ctest
#   3. build-asan/ -DASPEN_SANITIZE=address,undefined, then ctest
#   4. every tests/e2e/test_*.sh against build-asan/proxy/aspen
#   5. the pytest e2e run (tests/e2e/run-pytest.sh) against the same binary
# Each ctest run, each e2e script and the pytest run counts once in the last
# line, "N passed, M failed"; the exit status is non-zero if any failed.
#
# ONLY=<regex> runs just the steps whose name matches: ctest:build,
# ctest:build-asan, e2e:test_foundation_mongosh, pytest:e2e, ... (builds are
# done only when a selected step needs them).
# Logs of the e2e runs stay in build-asan/run/<step>/.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

ONLY=${ONLY:-}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
E2E_TIMEOUT=${E2E_TIMEOUT:-900}
SAN_ENV=(ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1}"
         UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}")

PASSED=0
FAILED=0
RESULTS=()

banner() { printf '\n==== %s ====\n' "$*"; }

record() { # record NAME STATUS
    if [[ $2 -eq 0 ]]; then
        PASSED=$((PASSED + 1))
        RESULTS+=("PASS  $1")
    else
        FAILED=$((FAILED + 1))
        RESULTS+=("FAIL  $1 (status $2)")
    fi
}

finish() {
    banner "summary"
    local r
    for r in "${RESULTS[@]}"; do echo "$r"; done
    echo "$PASSED passed, $FAILED failed"
    [[ $FAILED -eq 0 && $PASSED -gt 0 ]]
    exit $?
}

selected() { [[ -z $ONLY || $1 =~ $ONLY ]]; }

# The steps, in order.
E2E_SCRIPTS=()
for f in tests/e2e/test_*.sh; do
    [[ -e $f ]] && E2E_SCRIPTS+=("$f")
done
STEPS=(ctest:build ctest:build-asan)
for f in "${E2E_SCRIPTS[@]}"; do STEPS+=("e2e:$(basename "$f" .sh)"); done
STEPS+=(pytest:e2e)

want_build=0
want_asan=0
n_selected=0
for s in "${STEPS[@]}"; do
    selected "$s" || continue
    n_selected=$((n_selected + 1))
    case $s in
        ctest:build) want_build=1 ;;
        *) want_asan=1 ;;
    esac
done
if [[ $n_selected -eq 0 ]]; then
    echo "run-tests: ONLY='$ONLY' matches no step; steps are: ${STEPS[*]}" >&2
    exit 2
fi

# --- 1. dependencies --------------------------------------------------------
if [[ ${SKIP_INSTALL:-0} != 1 ]]; then
    banner "install-deps"
    if ! bash scripts/install-deps.sh; then
        record install-deps 1
        finish
    fi
fi

# --- 2./3. builds and ctest -------------------------------------------------
build() { # build DIR CMAKE-ARGS...
    local dir=$1
    shift
    banner "build $dir"
    cmake -S . -B "$dir" "$@" && cmake --build "$dir" -j "$JOBS"
}

run_ctest() { # run_ctest DIR [ENV...]
    local dir=$1
    shift
    banner "ctest $dir"
    # No tests at all is a failure, not a pass.
    (cd "$dir" && env "$@" ctest --output-on-failure --no-tests=error -j "$JOBS")
}

build_ok=1
asan_ok=1
if [[ $want_build -eq 1 ]]; then
    build build -DCMAKE_BUILD_TYPE=RelWithDebInfo || build_ok=0
fi
if [[ $want_asan -eq 1 ]]; then
    build build-asan -DCMAKE_BUILD_TYPE=Debug -DASPEN_SANITIZE=address,undefined || asan_ok=0
fi

if selected ctest:build; then
    if [[ $build_ok -eq 1 ]]; then
        run_ctest build; record ctest:build $?
    else
        record "ctest:build (build failed)" 1
    fi
fi
if selected ctest:build-asan; then
    if [[ $asan_ok -eq 1 ]]; then
        run_ctest build-asan "${SAN_ENV[@]}"; record ctest:build-asan $?
    else
        record "ctest:build-asan (build failed)" 1
    fi
fi

# --- 4./5. e2e against the ASan build ---------------------------------------
ASPEN_BIN=$ROOT/build-asan/proxy/aspen

run_e2e() { # run_e2e STEP CMD...
    local step=$1 run_dir
    shift
    run_dir=$ROOT/build-asan/run/${step//:/-}
    rm -rf "$run_dir"
    mkdir -p "$run_dir"
    banner "$step"
    local rc=0
    env ASPEN_BIN="$ASPEN_BIN" ASPEN_RUN_DIR="$run_dir" "${SAN_ENV[@]}" \
        timeout -k 10 "$E2E_TIMEOUT" "$@" || rc=$?
    [[ $rc -ne 124 ]] || echo "run-tests: $step timed out after $E2E_TIMEOUT s"
    reap "$run_dir"
    record "$step" "$rc"
}

# reap RUN_DIR: stop whatever a killed test left running (its pid files).
reap() {
    (
        export ASPEN_RUN_DIR=$1
        # shellcheck source=tests/e2e/peers.sh
        . tests/e2e/peers.sh
        trap - EXIT
        peers_reap_stale
    )
}

for f in "${E2E_SCRIPTS[@]}"; do
    step=e2e:$(basename "$f" .sh)
    selected "$step" || continue
    if [[ $asan_ok -eq 1 ]]; then
        run_e2e "$step" bash "$f"
    else
        record "$step (build-asan failed)" 1
    fi
done

if selected pytest:e2e; then
    if [[ $asan_ok -eq 1 ]]; then
        run_e2e pytest:e2e bash tests/e2e/run-pytest.sh
    else
        record "pytest:e2e (build-asan failed)" 1
    fi
fi

finish
