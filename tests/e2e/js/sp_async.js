// e2e: starts that wait on an unreachable Kafka cluster do not hold up
// other clients. Run by test_sp_lifecycle_async.sh, one mongosh per role
// (ASYNC_ROLE), several at once against the same aspen:
//
//   slowStarter  creates "slow" (a Kafka $source on a closed port) and
//                starts it: the start's reply comes only after the metadata
//                wait (10 s) and is 419; then "slow" is FAILED with errorMsg.
//   bystander    while "slow" is PROVISIONING: lists it, reads its stats,
//                checks the state file says STARTED (never PROVISIONING), is
//                refused start and modify, and creates and starts a
//                `documents` processor, sees its output, stops and drops it.
//   abortee      starts "slow2" twice; each start ends with 11601 when
//   aborter      stops it, then drops it, while it is PROVISIONING. (Which
//                of the two shells notes its reply first is not fixed.)
//
// Each role appends a line to the shared file ASYNC_MARK right after each
// step, so the test script checks the order in which replies arrived
// (never timings). Throws (mongosh exits non-zero) on any mismatch.
const fs = require("fs");
const MARK = process.env.ASYNC_MARK;
// One file per processor: <stateDir>/processors/<id>.json.
const PROCS_DIR = process.env.ASYNC_STATE_DIR + "/processors";
function savedProcessor(name) {
  for (const f of fs.readdirSync(PROCS_DIR)) {
    if (!f.endsWith(".json")) continue;
    const p = JSON.parse(fs.readFileSync(PROCS_DIR + "/" + f, "utf8"));
    if (p.name === name) return p;
  }
  return undefined;
}
const ROLE = process.env.ASYNC_ROLE;
const admin = db.getSiblingDB("admin");

function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
function note(line) { fs.appendFileSync(MARK, line + "\n"); }
function marks() { return fs.existsSync(MARK) ? fs.readFileSync(MARK, "utf8").split("\n") : []; }
// What `fn` gave, as one line: "ok", or "<code> <codeName> <message>" for
// the error it threw (mongosh's runCommand throws on ok: 0 too).
function outcome(fn) {
  try { fn(); return "ok"; } catch (e) { return `${e.code} ${e.codeName} ${e.message}`; }
}
function expectOutcome(what, fn, re) {
  const got = outcome(fn);
  assert(re.test(got), `${what}: got "${got}", want ${re}`);
  return got;
}
// Waits (bounded by iterations, not by a deadline) for `cond` to hold.
function waitFor(what, cond) {
  for (let i = 0; i < 1200; i++) {
    const v = cond();
    if (v) return v;
    sleep(100);
  }
  throw new Error("gave up waiting for " + what);
}
function waitMark(line) { waitFor(`mark "${line}"`, () => marks().includes(line)); }
// A listing entry as a plain object (mongosh's entries refer to the client,
// which JSON cannot print).
function entry(name) {
  const p = sp.listStreamProcessors().find(x => x.name === name);
  return p ? { name: p.name, state: p.state, errorMsg: p.errorMsg } : undefined;
}
function waitProvisioning(name) {
  return waitFor(`${name} PROVISIONING`, () => {
    const p = entry(name);
    return p && p.state === "PROVISIONING" ? p : null;
  });
}
function tryStart(name) { return outcome(() => admin.runCommand({ startStreamProcessor: name })); }

const unreachable = [{ $source: { connectionName: "kafkaDown", topic: "nowhere" } },
                     { $merge: { into: { connectionName: "atlas", db: "async_e2e", coll: "out" } } }];

if (ROLE === "slowStarter") {
  waitMark("bystander ready"); // both shells are up before the slow start
  sp.createStreamProcessor("slow", unreachable);
  note("slowStarter start sent");
  const res = tryStart("slow");
  note("slowStarter start replied: " + res);
  assert(/^419 StreamProcessorKafkaConnectionError /.test(res), "start fails with 419: " + res);
  const p = entry("slow");
  assert(p && p.state === "FAILED", "slow is FAILED: " + JSON.stringify(p));
  assert(/Kafka connection error on connection 'kafkaDown'/.test(p.errorMsg),
         "errorMsg says why: " + p.errorMsg);
  const st = sp.slow.stats();
  assert(st.state === "FAILED" && st.stats.status === "error" && /kafkaDown/.test(st.stats.error),
         "stats say FAILED with the error: " + EJSON.stringify(st.stats));
  assert(sp.slow.drop().ok === 1, "drop slow");
} else if (ROLE === "bystander") {
  note("bystander ready");
  const p = waitProvisioning("slow");
  note("bystander list: slow PROVISIONING");
  assert(p.errorMsg === "", "no error while provisioning");
  const st = sp.slow.stats();
  assert(st.ok === 1 && st.state === "PROVISIONING" && st.stats.status === "provisioning",
         "stats while provisioning: " + EJSON.stringify(st.stats));
  note("bystander stats: PROVISIONING");
  const saved = savedProcessor("slow");
  assert(saved && saved.state === "STARTED", "the state file says STARTED: " + JSON.stringify(saved));
  expectOutcome("start while PROVISIONING", () => sp.slow.start(),
                /^20 IllegalOperation .*already started.*PROVISIONING/);
  expectOutcome("modify while PROVISIONING", () => sp.slow.modify(unreachable),
                /^20 IllegalOperation .*must be stopped/);
  note("bystander start and modify refused");
  const quick = [{ $source: { documents: [{ n: 1 }, { n: 2 }, { n: 3 }] } },
                 { $merge: { into: { connectionName: "atlas", db: "async_e2e", coll: "quick" } } }];
  sp.createStreamProcessor("quick", quick);
  note("bystander create quick");
  assert(sp.quick.start().ok === 1, "start quick");
  note("bystander start quick");
  assert(entry("quick").state === "STARTED", "quick STARTED once its start replied");
  waitFor("quick's output", () => db.getSiblingDB("async_e2e").quick.countDocuments({}) === 3);
  assert(sp.quick.stop().ok === 1, "stop quick");
  assert(sp.quick.drop().ok === 1, "drop quick");
  note("bystander stop quick");
  // Still provisioning: everything above ran while the slow start waited.
  assert(entry("slow").state === "PROVISIONING", "slow still PROVISIONING");
  note("bystander done");
} else if (ROLE === "abortee") {
  waitMark("aborter ready");
  sp.createStreamProcessor("slow2", unreachable);
  let res = tryStart("slow2");
  note("abortee first start replied: " + res);
  assert(/^11601 Interrupted stream processor 'slow2' was stopped before it finished starting/.test(res),
         "a stop ends the start: " + res);
  waitMark("aborter saw slow2 STOPPED");
  res = tryStart("slow2");
  note("abortee second start replied: " + res);
  assert(/^11601 Interrupted stream processor 'slow2' was dropped before it finished starting/.test(res),
         "a drop ends the start: " + res);
} else if (ROLE === "aborter") {
  note("aborter ready");
  waitProvisioning("slow2");
  assert(sp.slow2.stop().ok === 1, "stop during PROVISIONING");
  note("aborter stopped slow2");
  waitMark("abortee first start replied: " +
           "11601 Interrupted stream processor 'slow2' was stopped before it finished starting");
  const p = entry("slow2");
  assert(p.state === "STOPPED" && p.errorMsg === "", "STOPPED, no error: " + JSON.stringify(p));
  note("aborter saw slow2 STOPPED");
  waitProvisioning("slow2");
  assert(sp.slow2.drop().ok === 1, "drop during PROVISIONING");
  note("aborter dropped slow2");
  assert(!entry("slow2"), "slow2 is gone");
  expectOutcome("stats of the dropped one", () => sp.slow2.stats(),
                /^415 StreamProcessorDoesNotExist /);
} else {
  throw new Error("unknown ASYNC_ROLE " + ROLE);
}
print(ROLE + " ok");
