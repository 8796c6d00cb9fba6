#!/usr/bin/env bash
# shellcheck disable=SC2016 # JavaScript in single quotes, on purpose
# e2e: aspen while its backing deployment goes away and comes back.
#  1. a forwarded find works;
#  2. the backing server is killed (SIGKILL): a forwarded find fails with a
#     clear server error (HostUnreachable or another network code, never one
#     of the codes that make drivers mark the server Unknown), and aspen keeps
#     answering ping, on the open connection and on new ones;
#  3. the backing server restarts on the same port: forwarded commands work
#     again (retried for up to 15 s) without restarting aspen.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

find_works() {
    mongosh_run "$URI" '
      const t = db.getSiblingDB("aspen_e2e_down");
      const r = t.runCommand({find: "x", filter: {}});
      if (r.ok !== 1 || !r.cursor) throw new Error("find failed: " + EJSON.stringify(r));
      print("find ok");'
}

# With the backend gone: each find fails with a MongoServerError whose code
# is a network-class one; ping on the same connection still works.
find_fails_cleanly() {
    mongosh_run "$URI" '
      // Codes that make drivers mark the server Unknown / clear the pool,
      // or re-authenticate (see mongosh-sp-contract.md §2.1).
      const SDAM = [91, 189, 10107, 11600, 11602, 13435, 13436, 10058, 391];
      // What a proxy may say when its backend is unreachable.
      const NETWORK = [6 /* HostUnreachable */, 7 /* HostNotFound */, 89 /* NetworkTimeout */,
                       9001 /* SocketException */, 202 /* NetworkInterfaceExceededTimeLimit */];
      const t = db.getSiblingDB("aspen_e2e_down");
      for (let attempt = 1; attempt <= 2; attempt++) {
        let err = null;
        try {
          const r = t.runCommand({find: "x", filter: {}});
          throw new Error("find succeeded with the backend down: " + EJSON.stringify(r));
        } catch (e) {
          if (/succeeded with the backend down/.test(e.message)) throw e;
          err = e;
        }
        print(`attempt ${attempt}: ${err.name} code=${err.code} codeName=${err.codeName}: ${err.message}`);
        if (err.name !== "MongoServerError")
          throw new Error("want a MongoServerError (an ok:0 reply), got " + err.name + ": " + err.message);
        if (typeof err.code !== "number") throw new Error("error has no numeric code");
        if (SDAM.includes(err.code)) throw new Error("error code " + err.code + " is an SDAM state-change code");
        if (!NETWORK.includes(err.code)) throw new Error("error code " + err.code + " is not a network error code");
        if (typeof err.codeName !== "string" || err.codeName === "") throw new Error("error has no codeName");
        if (!err.message) throw new Error("error has no errmsg");
        const p = db.runCommand({ping: 1});
        if (p.ok !== 1) throw new Error("ping failed after the backend error: " + EJSON.stringify(p));
      }
      print("backend-down errors ok");'
}

ping_works() {
    mongosh_run "$URI" 'if (db.runCommand({ping: 1}).ok !== 1) throw new Error("ping failed"); print("ping ok")'
}

# After the restart: retry the find for up to 15 s (aspen reconnects on its
# own schedule); the first success passes.
find_recovers() {
    mongosh_run "$URI" '
      const t = db.getSiblingDB("aspen_e2e_down");
      const deadline = Date.now() + 15000;
      let last = null, tries = 0;
      for (;;) {
        tries++;
        try {
          const r = t.runCommand({find: "x", filter: {}});
          if (r.ok === 1) break;
          last = new Error(EJSON.stringify(r));
        } catch (e) {
          last = e;
        }
        if (Date.now() > deadline) throw new Error("find still failing after 15 s: " + last);
        sleep(250);
      }
      const ins = t.x.insertOne({back: true});
      if (!ins.acknowledged) throw new Error("insert after recovery failed");
      if (t.x.countDocuments({back: true}) !== 1) throw new Error("count after recovery wrong");
      print(`recovered after ${tries} tries`);'
}

aspen_alive() {
    _peers_alive "$(<"$ASPEN_RUN_DIR/aspen.pid")"
}

must "backing server starts" start_backing
BPORT=$BACKING_PORT
must "aspen starts" start_aspen --bind 127.0.0.1 --port 0 --backend "$BACKING_URI" \
    --state-dir "$ASPEN_RUN_DIR/state"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"

check "forwarded find works with the backend up" find_works
must "backing server killed" kill_backing
check "find with the backend down: clear non-SDAM error; ping still answered" find_fails_cleanly
check "new connections still get ping while the backend is down" ping_works
check "aspen still running" aspen_alive
must "backing server restarts on the same port" start_backing "$BPORT"
check "forwarded commands work again without restarting aspen" find_recovers
check "aspen stops cleanly, no sanitizer report" stop_aspen
check "backing server stops" stop_backing

checks_done
