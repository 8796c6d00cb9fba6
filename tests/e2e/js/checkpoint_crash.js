// e2e: checkpoints and crash safety (test_checkpoint_crash.sh drives it by
// phase, CK_PHASE): Kafka -> 1 s tumbling $group -> $merge, run once without
// interruption ("ref") and once with aspen SIGKILLed and restarted several
// times ("crash"); both must leave the same documents, with every input
// counted exactly once in the window results.
const phase = process.env.CK_PHASE;
const N = Number(process.env.CK_EVENTS);
const ck = db.getSiblingDB("ck");
const WINDOWS = N / 100;   // 100 inputs a second of event time
const EXPECTED = WINDOWS * 20; // 20 groups per window

// stats() in mongosh 2.x: the reply, with the numbers under `stats`.
function stats(name) { const r = sp[name].stats(); return r.stats || r; }
function assert(c, msg) { if (!c) { throw new Error("assertion failed: " + msg); } }
function waitFor(what, fn, ms) {
  const end = Date.now() + (ms || 180000);
  while (Date.now() < end) { if (fn()) { return; } sleep(250); }
  throw new Error("timed out waiting for " + what);
}

function pipeline(coll) {
  return [
    { $source: { connectionName: "kafka1", topic: process.env.CK_TOPIC, timeField: "$t",
                 config: { auto_offset_reset: "earliest", keyFormat: "string" } } },
    { $tumblingWindow: { interval: { size: 1, unit: "second" }, allowedLateness: 0,
        pipeline: [{ $group: { _id: { g: "$g", w: { $meta: "stream.window.start" } },
                               n: { $sum: 1 }, s: { $sum: "$i" },
                               lo: { $min: "$i" }, hi: { $max: "$i" } } }] } },
    { $merge: { into: { connectionName: "atlas", db: "ck", coll: coll } } }];
}
const dlq = (coll) => ({ dlq: { connectionName: "atlas", db: "ck", coll: coll } });

if (phase === "ref") {
  sp.createStreamProcessor("ref", pipeline("ref"), dlq("refdlq"));
  sp.ref.start();
  waitFor(EXPECTED + " window results in ck.ref", () => ck.ref.countDocuments() === EXPECTED);
  sp.ref.stop();
  const st = stats("ref");
  assert(st.lastCheckpointTime instanceof Date, "stats() has lastCheckpointTime: " + EJSON.stringify(st));
  print("ref: " + ck.ref.countDocuments() + " results, inputs " + st.inputMessageCount);
}

if (phase === "start") {
  sp.createStreamProcessor("crash", pipeline("out"), dlq("outdlq"));
  sp.crash.start();
  print("crash: started");
}

if (phase === "progress") {
  const st = stats("crash");
  print("crash: state " + st.status + ", inputs " + st.inputMessageCount + ", results " +
        ck.out.countDocuments() + " (" + ck.out.countDocuments({ n: { $ne: 5 } }) + " incomplete)");
}

if (phase === "compare") {
  waitFor(EXPECTED + " window results in ck.out", () => ck.out.countDocuments() === EXPECTED);
  sleep(1000);
  const proj = { _stream_meta: 0 };
  const ref = ck.ref.find({}, proj).sort({ "_id.w": 1, "_id.g": 1 }).toArray();
  const out = ck.out.find({}, proj).sort({ "_id.w": 1, "_id.g": 1 }).toArray();
  assert(ref.length === EXPECTED && out.length === EXPECTED,
         "counts: ref " + ref.length + ", out " + out.length + ", expected " + EXPECTED);
  let inputs = 0;
  for (let k = 0; k < ref.length; k++) {
    const a = EJSON.stringify(ref[k], { relaxed: false });
    const b = EJSON.stringify(out[k], { relaxed: false });
    assert(a === b, "result " + k + " differs: ref " + a + " vs crash " + b);
    inputs += out[k].n;
    // Each group of each window: exactly its 5 inputs, none twice.
    assert(out[k].n === 5 && out[k].hi - out[k].lo === 80, "window group complete: " + b);
  }
  assert(inputs === N, "every input counted once: " + inputs + " of " + N);
  assert(ck.outdlq.countDocuments() === 0,
         "no DLQ entries from replays: " + EJSON.stringify(ck.outdlq.findOne()));
  const st = stats("crash");
  assert(st.lastCheckpointTime instanceof Date, "stats() has lastCheckpointTime");
  sp.crash.stop();
  print("compare: " + out.length + " results identical to the uninterrupted run; " + inputs +
        " inputs, each counted once");
}

if (phase === "modify") {
  // modify() with resumeFromCheckpoint true (the default) refuses changes a
  // replay from the checkpoint cannot honour (ASP's messages, spec §8.1).
  const src = { $source: { documents: [{ x: 1 }] } };
  const win = (extra, inner) => ({ $tumblingWindow: Object.assign(
    { interval: { size: 10, unit: "second" }, pipeline: inner || [{ $group: { _id: null, n: { $sum: 1 } } }] },
    extra || {}) });
  const sink = { $merge: { into: { connectionName: "atlas", db: "ck", coll: "mod" } } };
  sp.createStreamProcessor("mod", [src, win(), sink]);
  sp.mod.start();
  sp.mod.stop();
  function refused(pl, re) {
    let msg = null;
    try {
      sp.mod.modify(pl);
    } catch (e) {
      msg = e.message;
    }
    assert(msg !== null && re.test(msg), "expected " + re + ", got " + msg);
  }
  refused([{ $source: { documents: [{ x: 2 }] } }, win(), sink],
          /resumeFromCheckpoint must be false to modify a stream processor's \$source stage/);
  refused([src, win({ interval: { size: 20, unit: "second" } }), sink],
          /resumeFromCheckpoint must be false to change a window stage's interval/);
  refused([src, win({ allowedLateness: { size: 1, unit: "second" } }), sink],
          /resumeFromCheckpoint must be false to change a window stage's allowedLateness/);
  refused([src, sink], /resumeFromCheckpoint must be false to remove a window from a stream processor/);
  refused([src, { $hoppingWindow: { interval: { size: 10, unit: "second" }, hopSize: { size: 5, unit: "second" },
                                    pipeline: [{ $group: { _id: null, n: { $sum: 1 } } }] } }, sink],
          /resumeFromCheckpoint must be false to change a stream processor's window type/);
  refused([src, win({}, [{ $match: { x: 1 } }]), sink],
          /resumeFromCheckpoint must be false to modify a processor that has a window without a blocking stage/);
  // Allowed: a stage after the window; and anything with resumeFromCheckpoint false.
  sp.mod.modify([src, win(), { $addFields: { y: 1 } }, sink]);
  sp.mod.modify([{ $source: { documents: [{ x: 3 }] } }, win({ interval: { size: 20, unit: "second" } }), sink],
                { resumeFromCheckpoint: false });
  sp.mod.drop();
  print("modify rules ok");
}

// Change stream -> $merge across a SIGKILL: inserts made while aspen is
// down are read after the restart from the checkpoint's resume token.
if (phase === "cs_start") {
  sp.createStreamProcessor("csp", [
    { $source: { connectionName: "atlas", db: "ck", coll: "src",
                 config: { fullDocument: "updateLookup", fullDocumentOnly: true } } },
    { $merge: { into: { connectionName: "atlas", db: "ck", coll: "csout" } } }]);
  sp.csp.start();
  print("csp: started");
}
if (phase === "cs_insert") {
  // Run against the backing server directly (aspen may be down).
  const from = Number(process.env.CK_FROM), to = Number(process.env.CK_TO);
  const docs = [];
  for (let i = from; i < to; i++) { docs.push({ _id: i, v: i * 2 }); }
  ck.src.insertMany(docs);
  print("inserted " + (to - from));
}
if (phase === "cs_check") {
  const total = Number(process.env.CK_TO);
  waitFor(total + " documents in ck.csout", () => ck.csout.countDocuments() === total, 60000);
  for (const d of ck.csout.find().toArray()) {
    assert(d.v === d._id * 2, "document intact: " + EJSON.stringify(d));
  }
  sp.csp.stop();
  print("cs: all " + total + " inserts reached ck.csout, including those made while aspen was down");
}
