// e2e (test_auth.sh): a MONGODB-X509 user (its name is the TLS client
// certificate's subject, in $external, role readAnyDatabase) logged in by
// stock mongosh with --authenticationMechanism MONGODB-X509 gets exactly its
// roles: reads and the read-only stream actions, code 13 for the rest.
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
function run(d, cmd) {
  try { const r = d.runCommand(cmd); return r; } catch (e) {
    return { ok: 0, code: e.code, codeName: e.codeName, errmsg: e.message };
  }
}
const admin = db.getSiblingDB("admin");
const subject = "CN=aspen-client,OU=clients,O=aspen";
const st = admin.runCommand({ connectionStatus: 1 });
assert(JSON.stringify(st.authInfo.authenticatedUsers) === JSON.stringify([{ user: subject, db: "$external" }]),
       "authenticatedUsers: " + JSON.stringify(st.authInfo.authenticatedUsers));
assert(JSON.stringify(st.authInfo.authenticatedUserRoles) === JSON.stringify([{ role: "readAnyDatabase", db: "admin" }]),
       "authenticatedUserRoles: " + JSON.stringify(st.authInfo.authenticatedUserRoles));
assert(run(admin, { listStreamProcessors: 1 }).ok === 1, "listStreamProcessors allowed");
assert(run(db.getSiblingDB("auth_e2e"), { find: "docs" }).ok === 1, "find allowed");
const c = run(admin, { createStreamProcessor: "x509proc", pipeline: [{ $source: { documents: [] } }] });
assert(c.code === 13 && c.errmsg === "not authorized: missing privilege for action createStreamProcessor on resource <stream processing workspace>",
       "createStreamProcessor refused: " + JSON.stringify(c));
const i = run(db.getSiblingDB("auth_e2e"), { insert: "docs", documents: [{ _id: 99 }] });
assert(i.code === 13 && /^not authorized on auth_e2e to execute command \{ insert: "docs", documents: \[ \{ _id: 99 \} \], .*\}$/.test(i.errmsg),
       "insert refused: " + JSON.stringify(i));
// The authenticate command itself (what drivers send when speculative
// authentication is off), and a user name that is not the certificate's.
const ext = db.getSiblingDB("$external");
const a = run(ext, { authenticate: 1, mechanism: "MONGODB-X509" });
assert(a.ok === 1 && a.user === subject && a.dbname === "$external", "authenticate: " + JSON.stringify(a));
const b = run(ext, { authenticate: 1, mechanism: "MONGODB-X509", user: "CN=someone-else" });
assert(b.ok === 0 && b.code === 18 && b.errmsg === "Authentication failed.", "wrong user: " + JSON.stringify(b));
print("auth_x509: ok");
