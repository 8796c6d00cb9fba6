#!/usr/bin/env bash
# Sets up and runs aspen on this machine, in one command:
#   bash scripts/run-aspen.sh [aspen flags...]
# 1. installs the build dependencies and mongosh (scripts/install-deps.sh);
# 2. builds a Release aspen into build-release/;
# 3. unless you pass --backend or set ASPEN_BACKEND, starts the bundled
#    in-memory MongoDB-compatible server (mongo-java-server) on 127.0.0.1:27018
#    as the backing deployment (a one-member replica set, --replset rs0, so
#    drivers get retryable writes and transactions through aspen), and
#    registers it as the connection "atlas";
# 4. runs aspen on 127.0.0.1:27017 (override with --port) until Ctrl+C.
# Then, in another terminal:  .deps/node/node_modules/.bin/mongosh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

bash scripts/install-deps.sh
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DASPEN_TESTS=OFF >/dev/null
cmake --build build-release -j"$(nproc)" --target aspen >/dev/null

args=("$@")
have_backend=0
for a in "${args[@]}"; do
    [[ $a == --backend || $a == --backend=* ]] && have_backend=1
done

BACKING_PID=
cleanup() { [[ -n $BACKING_PID ]] && kill "$BACKING_PID" 2>/dev/null || true; }
trap cleanup EXIT

if [[ $have_backend -eq 0 ]]; then
    backend=${ASPEN_BACKEND:-}
    if [[ -z $backend ]]; then
        echo "run-aspen: starting the bundled backing server on 127.0.0.1:27018"
        java -jar .deps/aspen-backing-server.jar --host 127.0.0.1 --port 27018 \
            --replset rs0 > build-release/backing.log 2>&1 &
        BACKING_PID=$!
        for _ in $(seq 100); do
            grep -q LISTENING build-release/backing.log 2>/dev/null && break
            sleep 0.1
        done
        backend=mongodb://127.0.0.1:27018
    fi
    args+=(--backend "$backend")
fi

config=build-release/aspen-dev.json
cat > "$config" <<JSON
{ "net": { "bindIp": "127.0.0.1", "port": 27017 },
  "stateDir": "$ROOT/aspen-state",
  "connections": [ { "name": "atlas", "type": "atlas" } ] }
JSON
echo "run-aspen: aspen on 127.0.0.1 (config $config); Ctrl+C to stop"
build-release/proxy/aspen --config "$config" "${args[@]}" &
ASPEN_PID=$!
trap 'kill -INT $ASPEN_PID 2>/dev/null; wait $ASPEN_PID; cleanup' INT TERM
wait $ASPEN_PID
