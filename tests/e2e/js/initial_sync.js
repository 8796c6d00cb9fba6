// e2e: change-stream initialSync against the backing server
// (test_initial_sync.sh), with stock mongosh. IS_MODE says which step:
//  run    seed isdb.src (IS_N documents {_id: i, v: 0}), create and start
//         `isync` (initialSync -> $addFields with the phase from
//         {$meta: "stream.source.initialSync.phase"} and a $function that
//         takes ~2 ms a document, so the copy lasts a few seconds -> $merge
//         into isdb.dst), then, while it copies: 200 inserts and 100
//         updates; waits (bounded) until stats show the initialSync phase
//         with documents copied and a checkpoint taken since, then exits
//         (the shell SIGKILLs aspen).
//  down   (against the backing server, aspen down) 100 more inserts and
//         100 more updates.
//  check  after the restart: every document in isdb.dst exactly once with
//         its latest state, untouched ones copied by the initial sync,
//         stats in the changeStream phase, a new insert arriving through
//         the change stream, an empty DLQ.
//  after  after a second restart (graceful, past the copy): verbose stats'
//         targetStats and operatorStats[0].initialSync as before it (the
//         checkpoint's sourceFigures), a new event counted on top.
//  old    after a third restart, from that checkpoint without its
//         sourceFigures (as aspen wrote them before they were kept): the
//         processor runs, an insert arrives, targetStats is absent; then
//         ASP's refusals (tier limit, a window after initialSync).
const mode = process.env.IS_MODE;
const N = parseInt(process.env.IS_N || "3000");
const src = db.getSiblingDB("isdb").src, dst = db.getSiblingDB("isdb").dst;
const dlq = db.getSiblingDB("isdb").dlq;
function waitFor(what, pred, secs, last) {
  for (let i = 0; i < secs * 10; i++) {
    if (pred()) return;
    sleep(100);
  }
  throw new Error("timed out waiting for " + what + (last ? ": " + last() : ""));
}
function check(cond, msg) { if (!cond) throw new Error(msg); }
function num(v) { return v !== null && typeof v === "object" && v._bsontype === "Long" ? v.toNumber() : NaN; }
function verboseOp0() { return sp.isync.stats({ options: { verbose: true } }).stats.operatorStats[0]; }
const slow = { $function: { body: "function() { var t = Date.now(); while (Date.now() - t < 2) {} return 1; }",
                            args: [], lang: "js" } };

if (mode === "run") {
  src.deleteMany({}); dst.deleteMany({}); dlq.deleteMany({});
  for (let b = 0; b < N; b += 1000) {
    src.insertMany(Array.from({ length: Math.min(1000, N - b) }, (_, i) => ({ _id: b + i, v: 0 })));
  }
  sp.createStreamProcessor("isync", [
    { $source: { connectionName: "atlas", db: "isdb", coll: "src", initialSync: { enable: true },
                 config: { fullDocument: "updateLookup", fullDocumentOnly: true } } },
    { $addFields: { phase: { $meta: "stream.source.initialSync.phase" }, slow: slow } },
    { $merge: { into: { connectionName: "atlas", db: "isdb", coll: "dst" } } }
  ], { dlq: { connectionName: "atlas", db: "isdb", coll: "dlq" } });
  sp.isync.start();
  // While the copy runs: new documents and changed ones.
  src.insertMany(Array.from({ length: 200 }, (_, i) => ({ _id: 100000 + i, v: 0 })));
  src.updateMany({ _id: { $lt: 100 } }, { $set: { v: 1 } });
  let st;
  waitFor("the initialSync phase with a checkpoint", () => {
    st = sp.isync.stats().stats;
    return st.initialSync && st.initialSync.phase === "initialSync" &&
      st.initialSync.documentsSynced >= 300 && st.lastCheckpointTime instanceof Date &&
      st.lastCheckpointTime.getTime() > Date.now() - 2000 && st.initialSync.documentsSynced < N - 500;
  }, 60);
  print("SYNCING " + EJSON.stringify(st.initialSync));
  check(st.initialSync.collection === "src" && st.initialSync.collectionsTotal === 1, "stats.initialSync: " + EJSON.stringify(st.initialSync));
  check(st.changeStreamState === undefined, "no changeStreamState while copying");
  // Verbose: the one target, its estimate (taken before the writes) and
  // its progress; the operator's sums.
  const op = verboseOp0(), t = op.targetStats;
  print("targetStats " + EJSON.stringify(t));
  check(op.name === "ChangeStreamConsumerOperator" && t.length === 1 && t[0].db === "isdb" && t[0].coll === "src" &&
        t[0].initialSync.status === "in_progress" && num(t[0].initialSync.estimatedDocs) === N &&
        num(t[0].initialSync.copiedDocs) > 0 && num(t[0].initialSync.copiedDocs) < N &&
        num(t[0].inputMessageCount) === num(t[0].initialSync.copiedDocs) && t[0].inputMessageSize > 0,
        "targetStats while copying: " + EJSON.stringify(t));
  check(num(op.initialSync.estimatedDocs) === N && num(op.initialSync.copiedDocs) === num(t[0].initialSync.copiedDocs),
        "operatorStats[0].initialSync: " + EJSON.stringify(op.initialSync));
} else if (mode === "down") {
  src.insertMany(Array.from({ length: 100 }, (_, i) => ({ _id: 200000 + i, v: 0 })));
  src.updateMany({ _id: { $gte: N - 100, $lt: N } }, { $set: { v: 2 } });
  print("DOWN OK");
} else if (mode === "check") {
  const total = N + 300;
  function latest(id) { return id < 100 ? 1 : (id >= N - 100 && id < N) ? 2 : 0; }
  waitFor("every document with its latest state", () => {
    if (dst.countDocuments() !== total) return false;
    return dst.countDocuments({ $or: [{ _id: { $lt: 100 }, v: { $ne: 1 } },
                                      { _id: { $gte: N - 100, $lt: N }, v: { $ne: 2 } }] }) === 0;
  }, 120);
  const docs = dst.find().toArray();
  const ids = new Set(docs.map(d => d._id));
  check(ids.size === total && docs.length === total, "documents in dst: " + docs.length);
  for (const d of docs) {
    check(d.v === latest(d._id), "document " + d._id + " has v " + d.v);
    check(d.phase === "initialSync" || d.phase === "changeStream", "document " + d._id + " phase " + d.phase);
  }
  check(docs.filter(d => d._id >= 100 && d._id < N - 100).every(d => d.phase === "initialSync"),
        "untouched documents came from the initial sync");
  let st;
  waitFor("the changeStream phase", () => { st = sp.isync.stats().stats; return st.initialSync && st.initialSync.phase === "changeStream"; }, 30);
  check(st.changeStreamState !== undefined, "changeStreamState after the sync");
  src.insertOne({ _id: 300000, v: 7 });
  waitFor("a new insert through the change stream", () => dst.findOne({ _id: 300000 }) !== null, 30);
  check(dst.findOne({ _id: 300000 }).phase === "changeStream", "the new insert's phase");
  // The figures across the restart: the estimate and the copy's count
  // come from the checkpoint (a copy counted from 0 after the restart
  // would be short of N + 300); every change event since the sync began
  // (200 + 100 + 100 + 100 + 1) is a message of the collection.
  let op;
  waitFor("the figures of every event", () => {
    op = verboseOp0();
    return num(op.targetStats[0].inputMessageCount) === total + 501;
  }, 30, () => EJSON.stringify(op));
  const t = op.targetStats;
  print("targetStats " + EJSON.stringify(t));
  check(t.length === 1 && t[0].initialSync.status === "completed" && num(t[0].initialSync.estimatedDocs) === N &&
        num(t[0].initialSync.copiedDocs) === total, "targetStats after the restart: " + EJSON.stringify(t));
  check(num(op.initialSync.estimatedDocs) === N && num(op.initialSync.copiedDocs) === total,
        "operatorStats[0].initialSync: " + EJSON.stringify(op.initialSync));
  check(dlq.countDocuments() === 0, "DLQ entries: " + EJSON.stringify(dlq.find().toArray()));
  print("CHECK OK");
} else if (mode === "after") {
  // Restarted again, past the copy: the checkpoint holds the change
  // stream's resume token and, beside it, the sync's figures, so verbose
  // stats show the same targetStats and sums as before the restart.
  const total = N + 300;
  let st, op;
  waitFor("the changeStream phase after the second restart", () => {
    st = sp.isync.stats().stats;
    return st.status === "running" && st.initialSync && st.initialSync.phase === "changeStream";
  }, 30, () => EJSON.stringify(st));
  waitFor("targetStats after the second restart", () => {
    op = verboseOp0();
    return op.targetStats !== undefined;
  }, 30, () => EJSON.stringify(op));
  const t = op.targetStats;
  print("targetStats " + EJSON.stringify(t) + " initialSync " + EJSON.stringify(op.initialSync));
  check(t.length === 1 && t[0].db === "isdb" && t[0].coll === "src" && t[0].initialSync.status === "completed" &&
        num(t[0].initialSync.estimatedDocs) === N && num(t[0].initialSync.copiedDocs) === total &&
        num(t[0].inputMessageCount) === total + 501 && t[0].inputMessageSize > 0,
        "targetStats after a restart past the copy: " + EJSON.stringify(t));
  check(num(op.initialSync.estimatedDocs) === N && num(op.initialSync.copiedDocs) === total,
        "operatorStats[0].initialSync after a restart past the copy: " + EJSON.stringify(op.initialSync));
  // A change event after it counts on top of the restored figures.
  src.insertOne({ _id: 300001, v: 8 });
  waitFor("the event counted in targetStats", () => {
    op = verboseOp0();
    return num(op.targetStats[0].inputMessageCount) === total + 502;
  }, 30, () => EJSON.stringify(op));
  print("AFTER OK");
} else if (mode === "old") {
  // Restarted from a checkpoint as an earlier aspen wrote it (the shell
  // took sourceFigures out of it): it still loads, the change stream goes
  // on from its token, and targetStats is absent, as it was then.
  let st, op;
  waitFor("the changeStream phase after a restart from an old checkpoint", () => {
    st = sp.isync.stats().stats;
    return st.status === "running" && st.initialSync && st.initialSync.phase === "changeStream";
  }, 30, () => EJSON.stringify(st));
  src.insertOne({ _id: 300002, v: 9 });
  waitFor("an insert through the change stream", () => dst.findOne({ _id: 300002 }) !== null, 30);
  op = verboseOp0();
  print("operatorStats[0] " + EJSON.stringify(op));
  check(op.targetStats === undefined && op.initialSync === undefined,
        "no figures from a checkpoint without them: " + EJSON.stringify(op));
  check(dlq.countDocuments() === 0, "DLQ entries: " + EJSON.stringify(dlq.find().toArray()));
  sp.isync.stop();
  sp.isync.drop();
  print("OLD OK");

  // ASP's rules: SP2 syncs one collection; no window after initialSync.
  db.getSiblingDB("isdb").other.insertOne({ _id: 1 });
  sp.createStreamProcessor("istier", [
    { $source: { connectionName: "atlas", db: "isdb", coll: ["src", "other"], initialSync: { enable: true } } },
    { $merge: { into: { connectionName: "atlas", db: "isdb", coll: "dst2" } } }
  ]);
  let msg = "";
  try { sp.istier.start({ tier: "SP2" }); } catch (e) { msg = e.message; }
  print("tier: " + msg);
  check(/initial sync copies 2 collections, more than the 1 tier SP2 allows: use tier SP10/.test(msg), "tier refusal: " + msg);
  sp.istier.drop();
  msg = "";
  try {
    sp.createStreamProcessor("iswin", [
      { $source: { connectionName: "atlas", db: "isdb", coll: "src", initialSync: { enable: true } } },
      { $tumblingWindow: { interval: { size: 1, unit: "second" }, pipeline: [{ $group: { _id: null, n: { $sum: 1 } } }] } },
      { $merge: { into: { connectionName: "atlas", db: "isdb", coll: "dst3" } } }
    ]);
  } catch (e) { msg = e.message; }
  print("window: " + msg);
  check(/window stage cannot follow a \$source with initialSync/.test(msg), "window refusal: " + msg);
  print("RULES OK");
} else {
  throw new Error("IS_MODE?");
}
