#!/usr/bin/env bash
# e2e: the foundation through aspen with the real mongosh 2.12, in plain TCP
# and with TLS required (dev certificates). A backing mongo-java-server
# serves the forwarded commands. Prints TAP-style "ok N - ..." lines and
# exits non-zero if any check fails (or aspen reports a sanitizer error).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

JS=$HERE/js/foundation.js
CERTS=$ASPEN_RUN_DIR/certs

# --quiet --eval ping: stdout is exactly 1, stderr empty.
quiet_ping() {
    local out err
    out=$ASPEN_RUN_DIR/quiet.out err=$ASPEN_RUN_DIR/quiet.err
    mongosh_run "$1" 'db.runCommand({ping: 1}).ok' >"$out" 2>"$err" || return 1
    [[ $(<"$out") == 1 ]] || { echo "# stdout: $(<"$out")"; return 1; }
    [[ ! -s $err ]] || { echo "# stderr:"; sed 's/^/#   /' "$err"; return 1; }
}

# mongosh without --quiet on --eval: no line of its output mentions a
# warning or an error.
loud_ping() {
    local out=$ASPEN_RUN_DIR/loud.out
    mongosh_raw --norc "$1" --eval 'db.runCommand({ping: 1})' >"$out" 2>&1 || {
        sed 's/^/#   /' "$out"; return 1; }
    grep -q 'ok: 1' "$out" || { sed 's/^/#   /' "$out"; return 1; }
    if grep -Eiq 'warning|error' "$out"; then sed 's/^/#   /' "$out"; return 1; fi
}

# The interactive start-up (statements piped on stdin, so mongosh prints its
# greeting): "Using MongoDB:" shows a version, and nothing the server causes
# is reported. (Node < 24 makes mongosh print its own "Deprecation warnings"
# block: that one is about the client and is not looked at.)
greeting() {
    local out=$ASPEN_RUN_DIR/greeting.out
    echo 'db.runCommand({ping: 1}).ok' |
        HOME=$ASPEN_RUN_DIR/mongosh-home MONGOSH_FORCE_DISABLE_TELEMETRY_FOR_TESTING=1 \
        timeout -k 5 120 "$PEERS_MONGOSH" --norc "$@" >"$out" 2>&1 || {
        sed 's/^/#   /' "$out"; return 1; }
    local bad=0
    grep -Eq '^Using MongoDB:[[:space:]]+[0-9]' "$out" || bad=1
    grep -Eq '> 1$' "$out" || bad=1
    if grep -Ei 'error|startup warnings|failed to respond|non-genuine|automation|undefined' "$out" |
        grep -v 'Deprecation warnings'; then
        bad=1
    fi
    [[ $bad -eq 0 ]] || sed 's/^/#   /' "$out"
    return "$bad"
}

# TLS required: a plain client must not get an answer.
plain_refused() {
    local out=$ASPEN_RUN_DIR/refused.out
    if mongosh_run "mongodb://127.0.0.1:$1/?serverSelectionTimeoutMS=3000" \
        'db.runCommand({ping: 1})' >"$out" 2>&1; then
        echo "# a plain client was answered on a tls-mode=required port"
        return 1
    fi
    grep -Eq 'MongoServerSelectionError|MongoNetworkError|ECONNRESET|closed' "$out" || {
        sed 's/^/#   /' "$out"; return 1; }
}

tls_client_cert_ping() {
    cat "$CERTS/client.pem" "$CERTS/client-key.pem" >"$ASPEN_RUN_DIR/client-combined.pem"
    mongosh_run "mongodb://127.0.0.1:$1/" --tls --tlsCAFile "$CERTS/ca.pem" \
        --tlsCertificateKeyFile "$ASPEN_RUN_DIR/client-combined.pem" \
        'if (db.runCommand({ping: 1}).ok !== 1) throw new Error("ping failed")'
}

dev_certs() { bash "$PEERS_ROOT/certs/gen-dev-certs.sh" "$CERTS" >/dev/null; }
must "dev certificates" dev_certs
must "backing server starts" start_backing

must "aspen starts (plain)" start_aspen --bind 127.0.0.1 --port 0 \
    --backend "$BACKING_URI" --state-dir "$ASPEN_RUN_DIR/state-plain"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
check "foundation.js over plain TCP" mongosh_run "$URI" "$JS"
check "mongosh --quiet ping: clean stdout, empty stderr" quiet_ping "$URI"
check "mongosh --eval ping without --quiet: no warning or error" loud_ping "$URI"
check "mongosh interactive greeting: version shown, no server warnings" greeting "$URI"
check "aspen (plain) stops cleanly, no sanitizer report" stop_aspen

export ASPEN_INSTANCE=aspen-tls
must "aspen starts (tls-mode required) and listens" start_aspen --bind 127.0.0.1 \
    --port 0 --backend "$BACKING_URI" --state-dir "$ASPEN_RUN_DIR/state-tls" \
    --tls-mode required --tls-cert "$CERTS/server.pem" --tls-key "$CERTS/server-key.pem" \
    --tls-ca "$CERTS/ca.pem"
TLS_PORT=$ASPEN_LISTEN_PORT
TLS_URI="mongodb://127.0.0.1:$TLS_PORT/"
check "foundation.js over TLS (--tls --tlsCAFile)" \
    mongosh_run "$TLS_URI" --tls --tlsCAFile "$CERTS/ca.pem" "$JS"
check "TLS with a client certificate: ping" tls_client_cert_ping "$TLS_PORT"
check "TLS required: a plain client gets no answer" plain_refused "$TLS_PORT"
check "aspen (tls) stops cleanly, no sanitizer report" stop_aspen
unset ASPEN_INSTANCE

check "backing server stops" stop_backing

checks_done
