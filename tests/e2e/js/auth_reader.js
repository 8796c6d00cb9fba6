// e2e (test_auth.sh): a readAnyDatabase user may read and use the read-only
// stream actions; everything else is refused with code 13: stream commands
// with ASP's message naming the missing action, database commands with
// mongod's ("not authorized on <db> to execute command { ... }"). Run after
// auth_admin.js (it reads its data).
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
function expectUnauthorized(fn, message) {
  try { fn(); } catch (e) {
    assert(e.code === 13, `want code 13, got ${e.code} (${e.message})`);
    assert(e.codeName === "Unauthorized", `want codeName Unauthorized, got ${e.codeName}`);
    assert(message instanceof RegExp ? message.test(e.message) : e.message === message,
           `message ${JSON.stringify(e.message)} is not ${message}`);
    return;
  }
  throw new Error("expected Unauthorized: " + message);
}
// mongosh throws on {ok: 0}; turn the throw back into the reply's fields.
function run(d, cmd) {
  // (assign before returning: mongosh does not await a returned call inside try)
  try { const r = d.runCommand(cmd); return r; } catch (e) {
    return { ok: 0, code: e.code, codeName: e.codeName, errmsg: e.message };
  }
}
const admin = db.getSiblingDB("admin");
const st = run(admin, { connectionStatus: 1 });
assert(JSON.stringify(st.authInfo.authenticatedUserRoles) === JSON.stringify([{ role: "readAnyDatabase", db: "admin" }]),
       "roles: " + JSON.stringify(st.authInfo.authenticatedUserRoles));

const t = db.getSiblingDB("auth_e2e");
assert(t.docs.find().toArray().length === 2, "reader finds the documents");
assert(Array.isArray(sp.listStreamProcessors()), "reader lists processors");
assert(sp.listConnections().some(c => c.name === "sample_stream_solar"), "reader lists connections");

const ws = "<stream processing workspace>";
expectUnauthorized(() => sp.createStreamProcessor("nope", [
  { $source: { connectionName: "sample_stream_solar" } },
  { $merge: { into: { connectionName: "atlas", db: "auth_e2e", coll: "x" } } },
]), `not authorized: missing privilege for action createStreamProcessor on resource ${ws}`);
expectUnauthorized(() => t.docs.insertOne({ _id: 3 }),
  /^not authorized on auth_e2e to execute command \{ insert: "docs", documents: \[ \{ _id: 3 \} \], .*\$db: "auth_e2e" \}$/);
expectUnauthorized(() => t.docs.deleteOne({ _id: 1 }),
  /^not authorized on auth_e2e to execute command \{ delete: "docs", deletes: \[ \{ q: \{ _id: 1 \}, limit: 1 \} \], .*\}$/);
const r = run(admin, { processStreamProcessor: [{ $source: { documents: [{ a: 1 }] } }] });
assert(r.ok === 0 && r.code === 13 &&
       r.errmsg === `not authorized: missing privilege for action processStreamProcessor on resource ${ws}`,
       "processStreamProcessor refused: " + JSON.stringify(r));
const d = run(admin, { dropStreamProcessor: "whatever" });
assert(d.code === 13 && /action dropStreamProcessor/.test(d.errmsg), "drop refused: " + JSON.stringify(d));
assert(t.docs.countDocuments() === 2, "nothing was written");
print("auth_reader: ok");
