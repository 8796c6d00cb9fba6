// e2e (test_auth.sh): a user whose custom role grants only
// processStreamProcessor and sampleStreamProcessor can run sp.process's
// commands (dropping the ephemeral "__process_" processor included) but not
// create, start or drop others; a role with processStreamProcessor
// alone is refused sp.process for the missing sampleStreamProcessor.
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
// mongosh throws on {ok: 0}; turn the throw back into the reply's fields.
function run(d, cmd) {
  // (assign before returning: mongosh does not await a returned call inside try)
  try { const r = d.runCommand(cmd); return r; } catch (e) {
    return { ok: 0, code: e.code, codeName: e.codeName, errmsg: e.message };
  }
}
const admin = db.getSiblingDB("admin");
const ws = "<stream processing workspace>";
function refused(res, action) {
  assert(res.ok === 0 && res.code === 13 && res.codeName === "Unauthorized" &&
         res.errmsg === `not authorized: missing privilege for action ${action} on resource ${ws}`,
         `want ${action} refused, got ${JSON.stringify(res)}`);
}
const who = admin.runCommand({ connectionStatus: 1 }).authInfo.authenticatedUsers[0].user;
const pipeline = [{ $source: { documents: [{ a: 1 }, { a: 2 }] } }];
if (who === "runner") {
  const r = run(admin, { processStreamProcessor: pipeline });
  assert(r.ok === 1 && r.name, "processStreamProcessor allowed: " + JSON.stringify(r));
  const m = run(admin, { getMoreSampleStreamProcessor: r.name, cursorId: r.cursorId });
  assert(m.ok === 1, "getMoreSample allowed: " + JSON.stringify(m));
  refused(run(admin, { createStreamProcessor: "x", pipeline }), "createStreamProcessor");
  refused(run(admin, { startStreamProcessor: "x" }), "startStreamProcessor");
  refused(run(admin, { dropStreamProcessor: "x" }), "dropStreamProcessor");
  // Only its own: an ephemeral-looking name it did not start is refused.
  refused(run(admin, { dropStreamProcessor: "__process_000000000000000000000000" }),
          "dropStreamProcessor");
  // ... but it may drop sp.process's ephemeral processor, as mongosh does
  // when the sample loop ends or the user presses Ctrl+C.
  const d = run(admin, { dropStreamProcessor: r.name });
  assert(d.ok === 1, "dropping its own ephemeral processor: " + JSON.stringify(d));
  refused(run(admin, { listStreamProcessors: 1 }), "listStreamProcessors");
  const f = run(db.getSiblingDB("auth_e2e"), { find: "docs" });
  assert(f.code === 13 && /^not authorized on auth_e2e to execute command \{ find: "docs", .*\}$/.test(f.errmsg),
         "find refused: " + JSON.stringify(f));
} else {
  refused(run(admin, { processStreamProcessor: pipeline }), "sampleStreamProcessor");
}
print("auth_runner: ok");
