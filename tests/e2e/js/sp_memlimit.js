// e2e: a processor whose window state passes aspen's state limit (aspen runs
// with --memory-limit-bytes 200000) fails with 418's "Worker out of memory",
// lets its state go, and can be started again; a processor under the limit
// in the same aspen keeps running.
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
const admin = db.getSiblingDB("admin");
const pad = "x".repeat(1000);
const base = new Date("2026-01-01T00:00:00Z").getTime();
function pipeline(n, coll) {
  const docs = [];
  for (let i = 0; i < n; i++) docs.push({ i, t: new Date(base + i), pad });
  return [
    { $source: { documents: docs, timeField: "$t" } },
    { $tumblingWindow: { interval: { size: 1, unit: "hour" },
      pipeline: [{ $group: { _id: null, all: { $push: "$$ROOT" } } }] } },
    { $merge: { into: { connectionName: "atlas", db: "sp_memlimit", coll } } },
  ];
}
function entry(name) {
  const r = admin.runCommand({ listStreamProcessors: 1 });
  assert(r.ok === 1, "listStreamProcessors");
  return r.streamProcessors.find((p) => p.name === name);
}
function waitState(name, want) {
  const deadline = Date.now() + 60000;
  let e;
  while (Date.now() < deadline) {
    e = entry(name);
    if (e && e.state === want) return e;
    sleep(250);
  }
  throw new Error(`${name} not ${want} within 60 s: ${JSON.stringify(e)}`);
}

// ~400 KB of window state against a 200,000-byte limit.
sp.createStreamProcessor("big", pipeline(400, "big"));
// ~20 KB: under it.
sp.createStreamProcessor("small", pipeline(20, "small"));
assert(sp.small.start().ok === 1, "small starts");
assert(sp.big.start().ok === 1, "big starts");

let e = waitState("big", "FAILED");
assert(/^Worker out of memory: /.test(e.errorMsg), "errorMsg: " + e.errorMsg);
const m = /stateSize (\d+) bytes\) reached its limit of 200000 bytes \(tier SP10; aspen's streams\.memoryLimitBytes\)/.exec(e.errorMsg);
assert(m && Number(m[1]) >= 200000 && Number(m[1]) < 210000, "the numbers in: " + e.errorMsg);
let st = sp.big.stats();
assert(st.ok === 1 && st.state === "FAILED", "stats of the failed processor: " + JSON.stringify(st));
assert(st.stats.status === "error", "status error: " + st.stats.status);
assert(st.stats.error === e.errorMsg, "stats error: " + st.stats.error);
assert(Number(st.stats.stateSize) === 0, "the state was let go: " + st.stats.stateSize);

// The processor under the limit keeps running, its window held.
sleep(1000);
e = entry("small");
assert(e.state === "STARTED" && !e.errorMsg, "small still STARTED: " + JSON.stringify(e));
st = sp.small.stats();
assert(st.stats.status === "running", "small running");
const small = Number(st.stats.stateSize);
assert(small > 20000 && small < 200000, "small's stateSize " + small);

// A failed processor starts again (from its checkpoint) and fails the same way.
assert(sp.big.start().ok === 1, "big starts again");
e = waitState("big", "FAILED");
assert(/^Worker out of memory: /.test(e.errorMsg), "fails again: " + e.errorMsg);

sp.big.drop();
sp.small.stop();
assert(entry("small").state === "STOPPED", "small stops");
sp.small.drop();
print("memory limit: big FAILED with Worker out of memory, small kept running");
