#!/usr/bin/env bash
# shellcheck disable=SC2016 # JavaScript in single quotes, on purpose
# e2e: aspen's relay logging in to a backing deployment that requires TLS
# and SCRAM. The deployment is a second aspen ("back": --tls-mode required,
# access control on, one atlasAdmin user) in front of the backing server;
# its SCRAM and TLS are the ones drivers are tested against. The aspen under
# test ("front") forwards to it:
#  1. TLS with tlsCAFile (the certificate's name checked), SCRAM-SHA-256
#     negotiated through saslSupportedMechs: CRUD and a multi-batch cursor
#     through the relay, several pooled connections each logged in;
#  2. authMechanism=SCRAM-SHA-1;
#  3. a wrong password: forwarded commands fail with HostUnreachable saying
#     aspen cannot log in, and aspen keeps answering its own commands;
#  4. a CA that did not sign the backend's certificate: HostUnreachable with
#     the TLS verification failure;
#  5. a client certificate (tlsCertificateKeyFile) is presented: the
#     backend, which checks certificates that clients offer, takes one
#     from its CA and refuses one from another;
#  6. the same deployment through the mongoc lanes (--backend-forwarding
#     lanes), which serve the logins the relay does not implement.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

BIN=$(_peers_aspen_bin)
CERTS=$ASPEN_RUN_DIR/certs
OTHER=$ASPEN_RUN_DIR/other-certs
BACK_STATE=$ASPEN_RUN_DIR/back-state
rm -rf "$BACK_STATE"

setup() {
    bash "$PEERS_ROOT/certs/gen-dev-certs.sh" "$CERTS" >/dev/null &&
        bash "$PEERS_ROOT/certs/gen-dev-certs.sh" "$OTHER" >/dev/null &&
        cat "$CERTS/client.pem" "$CERTS/client-key.pem" >"$CERTS/client-combined.pem" &&
        cat "$OTHER/client.pem" "$OTHER/client-key.pem" >"$OTHER/client-combined.pem" &&
        "$BIN" --state-dir "$BACK_STATE" --add-user app --password 'app s3cret' \
            --roles atlasAdmin >/dev/null
}

start_back() {
    ASPEN_INSTANCE=back start_aspen --bind 127.0.0.1 --port 0 --backend "$BACKING_URI" \
        --state-dir "$BACK_STATE" --tls-mode required \
        --tls-cert "$CERTS/server.pem" --tls-key "$CERTS/server-key.pem" \
        --tls-ca "$CERTS/ca.pem" &&
        BACK_PORT=$ASPEN_LISTEN_PORT
}

# front NAME URI [MODE]: (re)start the aspen under test on URI.
front() {
    local name=$1 uri=$2 mode=${3:-relay}
    ASPEN_INSTANCE=front-$name start_aspen --bind 127.0.0.1 --port 0 --backend "$uri" \
        --backend-forwarding "$mode" --state-dir "$ASPEN_RUN_DIR/front-$name" &&
        FRONT_URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
}

back_uri() { # back_uri USER:PASS OPTIONS
    printf 'mongodb://%s@localhost:%s/?tls=true&tlsCAFile=%s%s' "$1" "$BACK_PORT" "$2" "${3:-}"
}

crud_works() {
    mongosh_run "$FRONT_URI" '
      const t = db.getSiblingDB("aspen_e2e_bauth").c;
      try { t.drop(); } catch (e) { /* mongo-java-server: ns not found */ }
      const docs = []; for (let i = 0; i < 300; i++) docs.push({_id: i, g: i % 3});
      if (t.insertMany(docs).insertedIds[299] !== 299) throw new Error("insertMany");
      let n = 0; t.find({}).batchSize(50).forEach(() => n++);   // getMores
      if (n !== 300) throw new Error("find saw " + n);
      if (t.countDocuments({g: 1}) !== 100) throw new Error("count");
      if (t.updateOne({_id: 1}, {$set: {u: 1}}).modifiedCount !== 1) throw new Error("update");
      print("crud ok");'
}

# logged_in MECH: the back aspen logged a successful, non-speculative login
# of "app" with MECH (the relay does not use speculative authentication).
logged_in() {
    grep '"Successfully authenticated"' "$ASPEN_RUN_DIR/back.log" |
        grep "\"mechanism\" *: *\"$1\"" | grep -q '"principalName" *: *"app"'
}

stop_inst() { ASPEN_INSTANCE=$1 stop_aspen; }

fails_with_login_error() {
    mongosh_run "$FRONT_URI" '
      if (db.runCommand({ping: 1}).ok !== 1) throw new Error("ping");
      let err = null;
      try { db.getSiblingDB("x").runCommand({find: "y"}); } catch (e) { err = e; }
      const r = err ? {code: err.code, errmsg: err.message}
                    : db.getSiblingDB("x").runCommand({find: "y"});
      print(EJSON.stringify(r));
      if (r.code !== 6) throw new Error("want HostUnreachable, got " + EJSON.stringify(r));
      if (!/'"$1"'/.test(r.errmsg)) throw new Error("unclear: " + r.errmsg);
      print("clear error ok");'
}

must "backing server starts" start_backing
must "certificates and the backend user" setup
must "the TLS + SCRAM backend (a second aspen) starts" start_back

must "front: relay to TLS + SCRAM (negotiated) starts" \
    front sha256 "$(back_uri 'app:app%20s3cret' "$CERTS/ca.pem")"
check "relay: CRUD and cursors through TLS + SCRAM-SHA-256" crud_works
check "the relay logged in with SCRAM-SHA-256" logged_in SCRAM-SHA-256
check "front (sha256) stops cleanly, no sanitizer report" stop_inst front-sha256

must "front: relay with authMechanism=SCRAM-SHA-1 starts" \
    front sha1 "$(back_uri 'app:app%20s3cret' "$CERTS/ca.pem" '&authMechanism=SCRAM-SHA-1')"
check "relay: CRUD and cursors through TLS + SCRAM-SHA-1" crud_works
check "the relay logged in with SCRAM-SHA-1" logged_in SCRAM-SHA-1

must "front: relay with a wrong password starts" \
    front badpw "$(back_uri 'app:wrong' "$CERTS/ca.pem")"
check "wrong password: HostUnreachable saying aspen cannot log in" \
    fails_with_login_error "cannot log in as 'app'"

must "front: relay trusting another CA starts" \
    front badca "$(back_uri 'app:app%20s3cret' "$OTHER/ca.pem")"
check "untrusted backend certificate: HostUnreachable with the TLS failure" \
    fails_with_login_error "certificate verify"

must "front: relay with a client certificate from the backend's CA starts" \
    front cert "$(back_uri 'app:app%20s3cret' "$CERTS/ca.pem" "&tlsCertificateKeyFile=$CERTS/client-combined.pem")"
check "relay: CRUD with a client certificate the backend accepts" crud_works
must "front: relay with a client certificate from another CA starts" \
    front badcert "$(back_uri 'app:app%20s3cret' "$CERTS/ca.pem" "&tlsCertificateKeyFile=$OTHER/client-combined.pem")"
check "a client certificate the backend refuses: HostUnreachable with the TLS failure" \
    fails_with_login_error "TLS"

must "front: lanes (mongoc) to the same backend starts" \
    front lanes "$(back_uri 'app:app%20s3cret' "$CERTS/ca.pem")" lanes
check "lanes: CRUD and cursors through TLS + SCRAM" crud_works

for n in sha1 badpw badca cert badcert lanes; do
    check "front ($n) stops cleanly, no sanitizer report" stop_inst "front-$n"
done
check "the backend aspen stops cleanly" stop_inst back
check "backing server stops" stop_backing

checks_done
