// e2e (test_auth.sh): an atlasAdmin user logged in with SCRAM through stock
// mongosh can do everything: forwarded reads and writes, every sp command.
// Throws (so mongosh exits non-zero) on the first mismatch.
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
const admin = db.getSiblingDB("admin");

const st = admin.runCommand({ connectionStatus: 1, showPrivileges: true });
assert(st.ok === 1, "connectionStatus ok");
assert(JSON.stringify(st.authInfo.authenticatedUsers) === JSON.stringify([{ user: "admin", db: "admin" }]),
       "authenticatedUsers: " + JSON.stringify(st.authInfo.authenticatedUsers));
assert(JSON.stringify(st.authInfo.authenticatedUserRoles) === JSON.stringify([{ role: "atlasAdmin", db: "admin" }]),
       "authenticatedUserRoles: " + JSON.stringify(st.authInfo.authenticatedUserRoles));
assert(st.authInfo.authenticatedUserPrivileges.length > 0, "privileges shown");

// Forwarded commands run on the backend with aspen's own credentials.
const t = db.getSiblingDB("auth_e2e");
try { t.docs.drop(); } catch (e) { if (!/ns not found/.test(e.message)) throw e; }
t.docs.insertMany([{ _id: 1, v: "a" }, { _id: 2, v: "b" }]);
assert(t.docs.countDocuments() === 2, "admin inserted two documents");
t.docs.updateOne({ _id: 1 }, { $set: { v: "A" } });
assert(t.docs.findOne({ _id: 1 }).v === "A", "admin updated");
assert(admin.runCommand({ listDatabases: 1 }).ok === 1, "listDatabases");

// Every stream command.
assert(sp.listConnections().some(c => c.name === "atlas"), "listConnections");
sp.createStreamProcessor("authproc", [
  { $source: { connectionName: "sample_stream_solar" } },
  { $merge: { into: { connectionName: "atlas", db: "auth_e2e", coll: "solar" } } },
]);
assert(sp.listStreamProcessors().some(p => p.name === "authproc"), "created processor listed");
sp.authproc.start();
assert(admin.runCommand({ getStreamProcessorStats: "authproc" }).ok === 1, "stats");
const s = admin.runCommand({ startSampleStreamProcessor: "authproc" });
assert(s.ok === 1, "startSample: " + JSON.stringify(s));
assert(admin.runCommand({ getMoreSampleStreamProcessor: "authproc", cursorId: s.cursorId }).ok === 1, "getMoreSample");
sp.authproc.stop();
sp.authproc.drop();
assert(!sp.listStreamProcessors().some(p => p.name === "authproc"), "dropped");
print("auth_admin: ok");
