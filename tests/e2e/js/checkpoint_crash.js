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

// Exactly-once $emit (options.exactlyOnce, an aspen extension): Kafka ->
// stateless stages -> $emit in Kafka transactions committed with the
// source offsets. The shell script SIGKILLs aspen while it runs, then reads
// the output topic with a read_committed consumer.
function eosPipeline(out) {
  return [
    { $source: { connectionName: "kafka1", topic: process.env.CK_EOS_IN,
                 config: { auto_offset_reset: "earliest", keyFormat: "string" } } },
    { $match: { $expr: { $and: [{ $gte: ["$i", 0] }, { $ne: [{ $mod: ["$i", 10] }, 7] }] } } },
    { $project: { i: 1, twice: { $multiply: ["$i", 2] } } },
    { $emit: { connectionName: "kafka1", topic: out,
               config: { key: "$i", keyFormat: "long" } } }];
}
// The same input through a 1 s tumbling window (event time: the inputs' t,
// 100 a second), also exactly-once: each window's result once.
function eosWinPipeline(out) {
  const p = eosPipeline(out);
  p[0].$source.timeField = "$t";
  p[2] = { $tumblingWindow: { interval: { size: 1, unit: "second" }, allowedLateness: 0,
    pipeline: [{ $group: { _id: { w: { $meta: "stream.window.start" } },
                           n: { $sum: 1 }, s: { $sum: "$i" } } }] } };
  p[3].$emit.config = { key: "$n", keyFormat: "long" };
  return p;
}
if (phase === "eos_refuse") {
  // Refused where transactions cannot hold, with a 420 error naming why.
  function eosRefused(pl, opts, re) {
    let err = null;
    try {
      sp.createStreamProcessor("eosbad", pl, opts);
    } catch (e) {
      err = e;
    }
    assert(err !== null && err.code === 420 && re.test(err.message),
           "expected 420 " + re + ", got " + (err && (err.code + " " + err.message)));
    assert(!sp.listStreamProcessors().some((p) => p.name === "eosbad"), "not created");
  }
  const emit = { $emit: { connectionName: "kafka1", topic: "x" } };
  eosRefused([{ $source: { documents: [{ a: 1 }] } }, emit], { exactlyOnce: true },
          /exactlyOnce: needs a Kafka \$source.*a documents \$source/);
  eosRefused([{ $source: { connectionName: "atlas", db: "ck", coll: "src" } }, emit], { exactlyOnce: true },
          /exactlyOnce: needs a Kafka \$source.*a change stream \$source/);
  eosRefused([eosPipeline("x")[0], { $merge: { into: { connectionName: "atlas", db: "ck", coll: "m" } } }],
          { exactlyOnce: true }, /exactlyOnce: needs \$emit to Kafka as the sink/);
  eosRefused([{ $source: { connectionName: "kafkalocal", topic: "t" } },
           { $emit: { connectionName: "kafkalocal", topic: "x" } }], { exactlyOnce: true },
          /exactlyOnce: connection 'kafkalocal' is aspen's local broker/);
  eosRefused([eosPipeline("x")[0], { $emit: { connectionName: "kafkalocal", topic: "x" } }],
          { exactlyOnce: true }, /connection 'kafkalocal' is aspen's local broker/);
  eosRefused(eosPipeline("x"), { exactlyOnce: 1 }, /options.exactlyOnce must be a boolean/);
  // $emit itself takes no such option: ASP's own fields only.
  let err = null;
  try {
    sp.createStreamProcessor("eosbad", [eosPipeline("x")[0],
      { $emit: { connectionName: "kafka1", topic: "x", exactlyOnce: true } }]);
  } catch (e) {
    err = e;
  }
  assert(err && /\$emit.exactlyOnce' is an unknown field/.test(err.message), "$emit.exactlyOnce refused: " + err);
  // modify() checks it too, and exactlyOnce: false turns it off.
  sp.createStreamProcessor("eosmod", [{ $source: { documents: [{ a: 1 }] } }, emit]);
  err = null;
  try {
    sp.eosmod.modify({ exactlyOnce: true });
  } catch (e) {
    err = e;
  }
  assert(err && err.code === 420 && /needs a Kafka \$source/.test(err.message), "modify refused: " + err);
  sp.eosmod.drop();
  print("exactlyOnce refusals ok");
}
if (phase === "eos_start") {
  sp.createStreamProcessor("eos", eosPipeline(process.env.CK_EOS_OUT), { exactlyOnce: true });
  sp.eos.start();
  sp.createStreamProcessor("eoswin", eosWinPipeline(process.env.CK_EOS_WIN_OUT), { exactlyOnce: true });
  sp.eoswin.start();
  print("eos, eoswin: started");
}
if (phase === "eos_progress") {
  for (const name of ["eos", "eoswin"]) {
    const st = stats(name);
    print(name + ": state " + st.status + ", inputs " + st.inputMessageCount + ", outputs " + st.outputMessageCount);
  }
}
if (phase === "eos_finish") {
  // Every input read (the 8 closing inputs too), then stop: the final commit.
  for (const name of ["eos", "eoswin"]) {
    waitFor((N + 8) + " inputs read by " + name, () => {
      const st = stats(name);
      assert(st.status !== "error" && st.status !== "failed", name + " failed: " + EJSON.stringify(st));
      return st.inputMessageCount >= N + 8;
    });
    sp[name].stop();
    const st = stats(name);
    print(name + ": stopped after " + st.inputMessageCount + " inputs, " + st.outputMessageCount + " outputs");
  }
}

// Change stream -> $emit (at-least-once) across a SIGKILL.
if (phase === "cse_start") {
  sp.createStreamProcessor("cse", [
    { $source: { connectionName: "atlas", db: "ck", coll: "src2",
                 config: { fullDocument: "updateLookup", fullDocumentOnly: true } } },
    { $emit: { connectionName: "kafka1", topic: process.env.CK_CS_OUT } }]);
  sp.cse.start();
  print("cse: started");
}
if (phase === "cse_insert") {
  // Against the backing server directly, in batches of 100 so that a kill
  // lands in the middle.
  const from = Number(process.env.CK_FROM), to = Number(process.env.CK_TO);
  for (let b = from; b < to; b += 100) {
    const docs = [];
    for (let i = b; i < Math.min(b + 100, to); i++) { docs.push({ _id: i, v: i * 2 }); }
    db.getSiblingDB("ck").src2.insertMany(docs);
    print("batch " + ((b - from) / 100 + 1) + " in");
    if (process.env.CK_THROTTLE) { sleep(Number(process.env.CK_THROTTLE)); }
  }
  print("cse: inserted " + (to - from));
}
if (phase === "cse_stop") {
  sp.cse.stop();
  const st = stats("cse");
  print("cse: stopped after " + st.inputMessageCount + " inputs, " + st.outputMessageCount + " outputs");
}
