// e2e: $function's limits through a real processor (test_function.sh).
// FN_MODE=limits: documents -> $addFields with a $function that loops
// forever on x == -1 and allocates without end on x == -2 -> $merge, DLQ
// in the backing server; the two runaway documents reach the DLQ with the
// time and the memory limit as their reasons, the others reach the target,
// and the processor stays STARTED throughout.
// FN_MODE=spin: a processor whose function never returns is stopped (the
// shell bounds this mongosh run well below the 60 s time limit), and a
// second one is left spinning for aspen's SIGTERM.
const mode = process.env.FN_MODE;
const db2 = db.getSiblingDB("fn");
function waitFor(what, pred, secs) {
  for (let i = 0; i < secs * 10; i++) {
    if (pred()) return;
    sleep(100);
  }
  throw new Error("timed out waiting for " + what);
}
const spin = { $function: { body: "function(x) { if (x === -1) { while (true) {} }" +
                                  " if (x === -2) { var a = [], s = 'x'; for (;;) { s = s + s; a.push(s); } }" +
                                  " return Math.sqrt(x); }",
                            args: ["$x"], lang: "js" } };
if (mode === "limits") {
  db2.out.deleteMany({}); db2.dlq.deleteMany({});
  sp.createStreamProcessor("fnlimits", [
    { $source: { documents: [ { _id: 1, x: 4 }, { _id: 2, x: -1 }, { _id: 3, x: 9 }, { _id: 4, x: -2 }, { _id: 5, x: 16 } ] } },
    { $addFields: { r: spin } },
    { $merge: { into: { connectionName: "atlas", db: "fn", coll: "out" } } }
  ], { dlq: { connectionName: "atlas", db: "fn", coll: "dlq" } });
  sp.fnlimits.start();
  waitFor("3 outputs and 2 DLQ entries", () => db2.out.countDocuments() === 3 && db2.dlq.countDocuments() === 2, 60);
  const out = db2.out.find().sort({ _id: 1 }).toArray().map(d => [d._id, d.r]);
  if (JSON.stringify(out) !== JSON.stringify([[1, 2], [3, 3], [5, 4]])) throw new Error("outputs: " + JSON.stringify(out));
  const dlq = db2.dlq.find().sort({ "doc._id": 1 }).toArray();
  const reasons = dlq.map(e => e.errInfo.reason);
  print("DLQ reasons: " + JSON.stringify(reasons));
  if (dlq[0].doc._id !== 2 || !/time limit of 300 ms/.test(reasons[0])) throw new Error("no time-limit DLQ entry for _id 2");
  if (dlq[1].doc._id !== 4 || !/memory limit/.test(reasons[1])) throw new Error("no memory-limit DLQ entry for _id 4");
  const st = sp.fnlimits.stats();
  if (st.state !== "STARTED") throw new Error("state " + st.state);
  sp.fnlimits.stop();
  sp.fnlimits.drop();
  print("LIMITS OK");
} else if (mode === "spin") {
  const forever = { $function: { body: "function() { while (true) {} }", args: [], lang: "js" } };
  for (const name of ["fnspin", "fnspin2"]) {
    sp.createStreamProcessor(name, [
      { $source: { documents: [ { _id: 1 } ] } },
      { $addFields: { r: forever } },
      { $merge: { into: { connectionName: "atlas", db: "fn", coll: "spin" } } }
    ]);
    sp[name].start();
    // Its one document enters the function right after the start (the
    // input counters are published between batches, which a function that
    // never returns never ends: nothing to wait on but a short pause).
    waitFor(name + " started", () => sp[name].stats().state === "STARTED", 30);
    sleep(500);
  }
  sp.fnspin.stop();
  const st = sp.fnspin.stats();
  if (st.state !== "STOPPED") throw new Error("state after stop: " + st.state);
  sp.fnspin.drop();
  print("SPIN OK");
} else {
  throw new Error("FN_MODE?");
}
