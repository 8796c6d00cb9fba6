#!/usr/bin/env bash
# Runs the pytest e2e tests (tests/e2e/test_*.py) against real peers: one
# backing server, one aspen without TLS, one with --tls-mode required (both
# forwarding through the relay) and one forwarding through the mongoc lanes.
# Sets ASPEN_PORT, ASPEN_TLS_PORT, ASPEN_LANES_PORT and ASPEN_CA_FILE for the
# tests (and exports ASPEN_RUN_DIR, where their logs are). Fails if
# pytest fails (or collects nothing) or either aspen exits badly or logs a
# sanitizer report. Extra arguments go to pytest (e.g. -k ping).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

PYTHON=$PEERS_DEPS/venv/bin/python
[[ -x $PYTHON ]] || { echo "run-pytest: missing $PYTHON: run scripts/install-deps.sh" >&2; exit 1; }
CERTS=$ASPEN_RUN_DIR/certs

bash "$PEERS_ROOT/certs/gen-dev-certs.sh" "$CERTS" >/dev/null
start_backing 0
start_aspen --bind 127.0.0.1 --port 0 --backend "$BACKING_URI" \
    --state-dir "$ASPEN_RUN_DIR/state-plain"
ASPEN_PORT=$ASPEN_LISTEN_PORT
ASPEN_INSTANCE=aspen-tls start_aspen --bind 127.0.0.1 --port 0 --backend "$BACKING_URI" \
    --state-dir "$ASPEN_RUN_DIR/state-tls" --tls-mode required \
    --tls-cert "$CERTS/server.pem" --tls-key "$CERTS/server-key.pem" --tls-ca "$CERTS/ca.pem"
ASPEN_TLS_PORT=$ASPEN_LISTEN_PORT
ASPEN_INSTANCE=aspen-lanes start_aspen --bind 127.0.0.1 --port 0 --backend "$BACKING_URI" \
    --state-dir "$ASPEN_RUN_DIR/state-lanes" --backend-forwarding lanes
ASPEN_LANES_PORT=$ASPEN_LISTEN_PORT
ASPEN_CA_FILE=$CERTS/ca.pem
export ASPEN_PORT ASPEN_TLS_PORT ASPEN_LANES_PORT ASPEN_CA_FILE

rc=0
# No cache folder in the source tree; exit 5 (nothing collected) is a failure.
(cd "$PEERS_ROOT" && PYTHONDONTWRITEBYTECODE=1 timeout -k 10 "${PYTEST_TIMEOUT:-600}" "$PYTHON" -m pytest \
    -p no:cacheprovider -v -rfE "$HERE" "$@") || rc=$?

stop_aspen || rc=1
ASPEN_INSTANCE=aspen-tls stop_aspen || rc=1
ASPEN_INSTANCE=aspen-lanes stop_aspen || rc=1
stop_backing || rc=1
exit "$rc"
