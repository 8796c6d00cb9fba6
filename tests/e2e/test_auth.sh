#!/usr/bin/env bash
# e2e: users and roles through stock mongosh. Users are added with
# `aspen --add-user` (SCRAM keys only in the users file); then mongosh logs in
# with --username/--password --authenticationDatabase admin (SCRAM-SHA-256,
# and SCRAM-SHA-1 with --authenticationMechanism); wrong passwords and unknown
# users get "Authentication failed."; an unauthenticated client can run only
# the handshake commands; readAnyDatabase, atlasAdmin and custom-role users
# get exactly their privileges (code 13 otherwise, with ASP's message for
# stream commands, mongod's for database commands). A
# $external user logs in with its TLS client certificate (MONGODB-X509), and
# the audit log (--audit-log) records logins, failures, connection ends and
# stream-processor management commands with the user and client address.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

STATE=$ASPEN_RUN_DIR/state
CONFIG=$ASPEN_RUN_DIR/aspen.json
LOG=$ASPEN_RUN_DIR/aspen.log
BIN=$(_peers_aspen_bin)
ADMIN_PW='adm1n pass!'
CERTS=$ASPEN_RUN_DIR/certs
CLIENT_PEM=$ASPEN_RUN_DIR/client-combined.pem
SUBJECT='CN=aspen-client,OU=clients,O=aspen'
AUDIT=$ASPEN_RUN_DIR/audit.log
rm -rf "$STATE" "$AUDIT"

cat >"$CONFIG" <<JSON
{ "connections": [ { "name": "atlas", "type": "atlas" } ],
  "security": { "roles": [
    { "role": "spRunner", "actions": ["processStreamProcessor", "sampleStreamProcessor"] },
    { "role": "spProcessOnly", "actions": ["processStreamProcessor"] } ] } }
JSON

add_user() { # add_user NAME PASSWORD ROLES
    "$BIN" --config "$CONFIG" --state-dir "$STATE" --add-user "$1" --password "$2" --roles "$3" >/dev/null
}

add_users() {
    add_user admin "$ADMIN_PW" atlasAdmin &&
        add_user reader readerpw readAnyDatabase &&
        add_user runner runnerpw spRunner &&
        # The password from stdin (kept out of ps).
        printf 'procpw\n' | "$BIN" --config "$CONFIG" --state-dir "$STATE" \
            --add-user proc --password - --roles spProcessOnly >/dev/null &&
        # A MONGODB-X509 user: the client certificate's subject, in $external.
        "$BIN" --config "$CONFIG" --state-dir "$STATE" --add-user "$SUBJECT" --external \
            --roles readAnyDatabase >/dev/null
}

dev_certs() {
    bash "$PEERS_ROOT/certs/gen-dev-certs.sh" "$CERTS" >/dev/null &&
        cat "$CERTS/client.pem" "$CERTS/client-key.pem" >"$CLIENT_PEM"
}

users_file_has_keys_only() {
    local f=$STATE/users.json
    [[ $(stat -c %a "$f") == 600 ]] || { echo "# users.json mode $(stat -c %a "$f")"; return 1; }
    grep -q '"SCRAM-SHA-256"' "$f" && grep -q '"SCRAM-SHA-1"' "$f" &&
        grep -q '"storedKey"' "$f" && grep -q '"serverKey"' "$f" &&
        grep -q '"iterationCount" : 15000' "$f" &&
        ! grep -q -e 'adm1n' -e 'readerpw' -e 'runnerpw' -e 'procpw' "$f"
}

unknown_role_refused() {
    ! "$BIN" --config "$CONFIG" --state-dir "$STATE" --add-user x --password y \
        --roles noSuchRole 2>"$ASPEN_RUN_DIR/add.err" &&
        grep -q "unknown role 'noSuchRole'" "$ASPEN_RUN_DIR/add.err"
}

# --add-user where the users file cannot be written: exit status 2, the
# reason on stderr, and the users file as it was. (That the write itself
# failing keeps the old file is test_wire's atomic-write test.)
add_user_write_fails() {
    local st=$ASPEN_RUN_DIR/state-wf err=$ASPEN_RUN_DIR/wf.err before rc
    rm -rf "$st" && mkdir -p "$st" || return 1
    "$BIN" --state-dir "$st" --add-user one --password onepw --roles readAnyDatabase >/dev/null || return 1
    before=$(sha256sum <"$st/users.json")
    # The users file's folder is a regular file.
    : >"$st/plain"
    printf '{ "security": { "usersFile": "%s/plain/users.json" } }\n' "$st" >"$st/c.json"
    rc=0; "$BIN" --config "$st/c.json" --state-dir "$st" --add-user two --password x \
        --roles readAnyDatabase >/dev/null 2>"$err" || rc=$?
    [[ $rc == 2 ]] && grep -q "^aspen: --add-user two: cannot open $st/plain/users.json.lock: Not a directory" "$err" ||
        { echo "# rc=$rc: $(cat "$err")"; return 1; }
    # Its lock cannot be taken (a folder in its place).
    rm -f "$st/users.json.lock" && mkdir "$st/users.json.lock" || return 1
    rc=0; "$BIN" --state-dir "$st" --add-user two --password x --roles readAnyDatabase >/dev/null 2>"$err" || rc=$?
    [[ $rc == 2 ]] && grep -q "cannot open $st/users.json.lock" "$err" ||
        { echo "# rc=$rc: $(cat "$err")"; return 1; }
    [[ $(sha256sum <"$st/users.json") == "$before" ]] || { echo "# users file changed"; return 1; }
    rmdir "$st/users.json.lock"
    "$BIN" --state-dir "$st" --add-user two --password x --roles readAnyDatabase >/dev/null &&
        grep -q '"two"' "$st/users.json"
}

# TLS allowed (plain clients too), client certificates verified against the
# dev CA, and the audit log on.
start() {
    start_aspen --config "$CONFIG" --bind 127.0.0.1 --port 0 \
        --backend "$BACKING_URI" --state-dir "$STATE" --audit-log "$AUDIT" \
        --tls-mode allowed --tls-cert "$CERTS/server.pem" --tls-key "$CERTS/server-key.pem" \
        --tls-ca "$CERTS/ca.pem"
    URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
}

x509_login() { # x509_login [mongosh args...]
    mongosh_run "$URI" --tls --tlsCAFile "$CERTS/ca.pem" --tlsCertificateKeyFile "$CLIENT_PEM" \
        --authenticationMechanism MONGODB-X509 --authenticationDatabase '$external' "$@"
}

x509_without_cert_fails() {
    local out=$ASPEN_RUN_DIR/x509.out
    if mongosh_run "$URI" --tls --tlsCAFile "$CERTS/ca.pem" \
        --authenticationMechanism MONGODB-X509 --authenticationDatabase '$external' \
        'db.runCommand({ping: 1})' >"$out" 2>&1; then
        echo "# login without a certificate unexpectedly succeeded"; return 1
    fi
    grep -q "MongoServerError: Authentication failed\." "$out" ||
        { sed 's/^/#   /' "$out" | head -20; return 1; }
}

# audit_has DESCRIPTION JQ-FILTER: some line of the audit log matches.
audit_has() {
    local what=$1 filter=$2
    jq -e -s "map(select($filter)) | length > 0" "$AUDIT" >/dev/null ||
        { echo "# audit log has no $what"; return 1; }
}

# After the failed and successful logins and auth_admin.js's processor
# commands above: each event with its user and the client address.
audit_log_events() {
    local from='.src_endpoint.ip == "127.0.0.1" and .src_endpoint.port > 0'
    [[ $(stat -c %a "$AUDIT") == 600 ]] || { echo "# audit log mode $(stat -c %a "$AUDIT")"; return 1; }
    jq -e -s 'length > 0' "$AUDIT" >/dev/null || { echo "# audit log is not JSON lines"; return 1; }
    audit_has "failed login of admin" \
        ".class == \"Authentication\" and .activity == \"Logon\" and .status == \"Failure\" and .actor.user == \"admin\" and .actor.db == \"admin\" and $from" &&
    audit_has "failed login of an unknown user" \
        ".activity == \"Logon\" and .status == \"Failure\" and .actor.user == \"nobody\"" &&
    audit_has "successful SCRAM login of admin" \
        ".class_uid == 3002 and .activity_id == 1 and .status == \"Success\" and .actor.user == \"admin\" and .unmapped.mechanism == \"SCRAM-SHA-256\" and $from" &&
    audit_has "successful MONGODB-X509 login" \
        ".activity == \"Logon\" and .status == \"Success\" and .actor.user == \"$SUBJECT\" and .actor.db == \"\$external\"" &&
    audit_has "createStreamProcessor by admin" \
        ".class == \"API Activity\" and .activity == \"Create\" and .api.operation == \"createStreamProcessor\" and .status == \"Success\" and .actor.user == \"admin\" and .unmapped.processor == \"authproc\" and $from" &&
    audit_has "start, stop and drop by admin" \
        "[.api.operation, .status, .actor.user] == [\"dropStreamProcessor\", \"Success\", \"admin\"]" &&
    audit_has "sp.process by runner" \
        ".api.operation == \"processStreamProcessor\" and .status == \"Success\" and .actor.user == \"runner\" and (.unmapped.processor | startswith(\"__process_\"))" &&
    audit_has "refused createStreamProcessor (code 13)" \
        ".api.operation == \"createStreamProcessor\" and .status == \"Failure\" and .unmapped.code == 13 and .actor.user == \"runner\"" &&
    audit_has "connection end of an authenticated user" \
        ".activity == \"Logoff\" and .api.operation == \"endConnection\" and .actor.user == \"admin\" and $from" &&
    audit_has "logout" ".activity == \"Logoff\" and .api.operation == \"logout\"" &&
    ! grep -q -e 'adm1n pass' -e 'readerpw' -e 'wrongpw' -e 'runnerpw' "$AUDIT"
}

login() { # login USER PASSWORD [mongosh args...]
    local u=$1 p=$2
    shift 2
    mongosh_run "$URI" --username "$u" --password "$p" --authenticationDatabase admin "$@"
}

unauthenticated_only_handshake() {
    mongosh_run "$URI" '
      const a = db.getSiblingDB("admin");
      function run(cmd) {
        try { const r = a.runCommand(cmd); return r; } catch (e) { return {ok: 0, code: e.code, errmsg: e.message}; }
      }
      if (a.runCommand({ping: 1}).ok !== 1) throw new Error("ping refused");
      if (a.runCommand({hello: 1}).ok !== 1) throw new Error("hello refused");
      if (a.runCommand({buildInfo: 1}).ok !== 1) throw new Error("buildInfo refused");
      const st = a.runCommand({connectionStatus: 1});
      if (st.authInfo.authenticatedUsers.length !== 0) throw new Error("not anonymous");
      for (const cmd of [{listDatabases: 1}, {listStreamProcessors: 1}, {find: "x"}]) {
        const r = run(cmd);
        const want = "command " + Object.keys(cmd)[0] + " requires authentication";
        if (r.ok !== 0 || r.code !== 13 || r.errmsg !== want) throw new Error(JSON.stringify(r));
      }'
}

# wrong_login WHAT ARGS...: mongosh must fail with "Authentication failed."
wrong_login() {
    local out=$ASPEN_RUN_DIR/wrong.out
    shift
    if login "$@" 'db.runCommand({ping: 1})' >"$out" 2>&1; then
        echo "# login unexpectedly succeeded"; return 1
    fi
    grep -q "MongoServerError: Authentication failed\." "$out" ||
        { sed 's/^/#   /' "$out" | head -20; return 1; }
}

sha1_login() {
    login admin "$ADMIN_PW" --authenticationMechanism SCRAM-SHA-1 '
      const st = db.getSiblingDB("admin").runCommand({connectionStatus: 1});
      if (st.authInfo.authenticatedUsers[0].user !== "admin") throw new Error(JSON.stringify(st));
      db.getSiblingDB("auth_e2e").docs.findOne();'
}

sha256_explicit_login() {
    login reader readerpw --authenticationMechanism SCRAM-SHA-256 \
        'db.getSiblingDB("auth_e2e").docs.findOne()'
}

failures_logged() {
    # One "Authentication failed" line per failed login, with the client
    # address, and no password anywhere in the log.
    local n
    n=$(grep -c '"msg":"Authentication failed"' "$LOG" || true)
    [[ $n -ge 4 ]] || { echo "# $n failure lines"; return 1; }
    grep '"msg":"Authentication failed"' "$LOG" | grep -q '"remote":"127.0.0.1:' &&
        grep -q '"msg":"Successfully authenticated"' "$LOG" &&
        ! grep -q -e 'adm1n pass' -e 'readerpw' -e 'wrongpw' "$LOG"
}

logout_works() {
    # logout is per connection: with one pooled connection the command after
    # it surely goes on the connection that logged out (the driver may
    # otherwise open a second one, authenticated anew).
    mongosh_run "${URI}?maxPoolSize=1" --username admin --password "$ADMIN_PW" \
        --authenticationDatabase admin '
      const a = db.getSiblingDB("admin");
      if (a.runCommand({logout: 1}).ok !== 1) throw new Error("logout");
      let r;
      try { r = a.runCommand({listDatabases: 1}); } catch (e) { r = {code: e.code}; }
      if (r.code !== 13) throw new Error("still authenticated: " + JSON.stringify(r));'
}

# A user added while aspen runs (with no users yet) turns auth on for the
# next connection, without a restart.
live_add_user() {
    local st=$ASPEN_RUN_DIR/state-live uri rc=0
    rm -rf "$st"
    ASPEN_INSTANCE=live start_aspen --bind 127.0.0.1 --port 0 \
        --backend "$BACKING_URI" --state-dir "$st" || return 1
    uri="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
    mongosh_run "$uri" 'db.getSiblingDB("admin").runCommand({listDatabases: 1})' >/dev/null || rc=1
    "$BIN" --state-dir "$st" --add-user late --password latepw --roles readAnyDatabase >/dev/null || rc=1
    mongosh_run "$uri" '
      let r;
      try { r = db.getSiblingDB("admin").runCommand({listDatabases: 1}); } catch (e) { r = {code: e.code}; }
      if (r.code !== 13) throw new Error("auth is not on: " + JSON.stringify(r));' || rc=1
    mongosh_run "$uri" --username late --password latepw --authenticationDatabase admin \
        'db.getSiblingDB("admin").runCommand({listDatabases: 1})' >/dev/null || rc=1
    ASPEN_INSTANCE=live stop_aspen || rc=1
    return "$rc"
}

must "dev certificates" dev_certs
must "backing server starts" start_backing
must "aspen --add-user writes five users" add_users
check "users file: mode 600, SCRAM keys only, no password" users_file_has_keys_only
check "--add-user refuses an unknown role" unknown_role_refused
check "--add-user where the users file cannot be written: status 2, reason, file kept" add_user_write_fails
must "aspen starts with users (auth on)" start
check "unauthenticated: handshake only, everything else code 13" unauthenticated_only_handshake
check "atlasAdmin (SCRAM-SHA-256, speculative): everything allowed" login admin "$ADMIN_PW" "$HERE/js/auth_admin.js"
check "atlasAdmin with --authenticationMechanism SCRAM-SHA-1" sha1_login
check "readAnyDatabase with --authenticationMechanism SCRAM-SHA-256" sha256_explicit_login
check "readAnyDatabase: reads allowed, writes and sp changes refused" login reader readerpw "$HERE/js/auth_reader.js"
check "custom role processStreamProcessor+sampleStreamProcessor" login runner runnerpw "$HERE/js/auth_runner.js"
check "custom role processStreamProcessor alone: sp.process refused" login proc procpw "$HERE/js/auth_runner.js"
check "wrong password (SCRAM-SHA-256) fails" wrong_login sha256 admin wrongpw
check "wrong password (SCRAM-SHA-1) fails" wrong_login sha1 admin wrongpw --authenticationMechanism SCRAM-SHA-1
check "unknown user fails the same way" wrong_login unknown nobody wrongpw
check "user in the wrong authentication database fails" wrong_login db admin "$ADMIN_PW" --authenticationDatabase test
check "failures logged once each with the address, no secrets" failures_logged
check "logout ends the authentication" logout_works
check "MONGODB-X509 (external user, client certificate): exactly its roles" \
    x509_login "$HERE/js/auth_x509.js"
check "MONGODB-X509 without a client certificate fails" x509_without_cert_fails
check "aspen stops cleanly, no sanitizer report" stop_aspen
check "audit log: logins, failures, connection ends, sp commands, no secrets" audit_log_events
check "a user added while aspen runs turns auth on without a restart" live_add_user
check "backing server stops" stop_backing

checks_done
