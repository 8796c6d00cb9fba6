// e2e: multi-collection initialSync (test_initial_sync.sh), with stock
// mongosh against aspen; DEST_URI is a second backing server, the
// `dest` connection. ISM_MODE says which step:
//  multi  ASP's "Replicate a database to another cluster" example (names
//         changed): appdb.orders and appdb.customers with existing
//         documents, inserts/updates/deletes during and after the copy;
//         the destination ends equal to the sources, document for
//         document; the collections are copied in list order (verbose
//         stats' targetStats statuses, checked at every poll); every
//         targetStats field and operatorStats[0].initialSync checked with
//         values.
//  fail   a sync whose source server dies in the middle of the copy: the
//         processor fails and targetStats shows that collection "failed",
//         the next one still "pending" (the shell kills the server).
const mode = process.env.ISM_MODE;
const NO = 8000, NC = 3000;
const app = db.getSiblingDB("appdb");
// Not in "failed": that server is gone by then.
const destDb = mode === "failed" ? null : new Mongo(process.env.DEST_URI).getDB("appdb");
function waitFor(what, pred, secs, last) {
  const end = Date.now() + secs * 1000;
  while (Date.now() < end) {
    if (pred()) return;
    sleep(50);
  }
  throw new Error("timed out waiting for " + what + (last ? ": " + last() : ""));
}
function check(cond, msg) { if (!cond) throw new Error(msg); }
function isLong(v) { return v !== null && typeof v === "object" && v._bsontype === "Long"; }
function num(v) { return isLong(v) ? v.toNumber() : v; }
function op0(name) { return sp[name].stats({ options: { verbose: true } }).stats.operatorStats[0]; }
function statuses(ts) { return ts.map(t => t.initialSync.status).join(","); }

// ASP's example as written, only the connection names and the processor's
// name changed: dynamic namespace routing, $cond in whenMatched and
// whenNotMatched.
function example(name, fullDocument) {
  return sp.createStreamProcessor(name, [
    { $source: {
        connectionName: "atlas",
        db: "appdb",
        coll: ["orders", "customers"],
        config: { fullDocument: fullDocument },
        initialSync: { enable: true }
    } },
    { $replaceRoot: {
        newRoot: {
          $cond: {
            if:   { $eq: [{ $meta: "stream.source.operationType" }, "delete"] },
            then: { $meta: "stream.source.documentKey" },
            else: "$fullDocument"
          }
        }
    } },
    { $merge: {
        into: {
          connectionName: "dest",
          db:   { $meta: "stream.source.ns.db" },
          coll: { $meta: "stream.source.ns.coll" }
        },
        on: "_id",
        whenMatched: { $cond: {
            if:   { $eq: [{ $meta: "stream.source.operationType" }, "delete"] },
            then: "delete",
            else: "replace"
        } },
        whenNotMatched: { $cond: {
            if:   { $eq: [{ $meta: "stream.source.operationType" }, "delete"] },
            then: "discard",
            else: "insert"
        } }
    } }
  ], { dlq: { connectionName: "atlas", db: "appdb", coll: "dlq" } });
}

if (mode === "multi") {
  for (const d of [app, destDb]) { d.orders.deleteMany({}); d.customers.deleteMany({}); }
  app.dlq.deleteMany({});
  for (let b = 0; b < NO; b += 1000) {
    app.orders.insertMany(Array.from({ length: 1000 }, (_, i) => ({ _id: b + i, item: "o" + (b + i), qty: (b + i) % 7 })));
  }
  for (let b = 0; b < NC; b += 1000) {
    app.customers.insertMany(Array.from({ length: 1000 }, (_, i) => ({ _id: b + i, name: "c" + (b + i) })));
  }
  // The example exactly, fullDocument "required" included, is accepted.
  // It runs below with "updateLookup": the bundled test server has no
  // change-stream post-images (no collMod changeStreamPreAndPostImages),
  // so its update events would carry no fullDocument under "required";
  // on a collection with post-images both give the sink the same state.
  example("replicate_required", "required");
  sp.replicate_required.drop();
  example("replicate", "updateLookup");
  sp.replicate.start();

  // The estimates are taken when the sync is planned, before start returns.
  let ts = op0("replicate").targetStats;
  print("first: " + EJSON.stringify(ts));
  const firstStatuses = statuses(ts);
  check(ts.length === 2 && ts[0].db === "appdb" && ts[0].coll === "orders" &&
        ts[1].db === "appdb" && ts[1].coll === "customers", "targets: " + EJSON.stringify(ts));
  check(isLong(ts[0].initialSync.estimatedDocs) && num(ts[0].initialSync.estimatedDocs) === NO &&
        num(ts[1].initialSync.estimatedDocs) === NC, "estimatedDocs: " + EJSON.stringify(ts));

  // Writes during the copy (events: orders 200, customers 100).
  app.orders.insertMany(Array.from({ length: 100 }, (_, i) => ({ _id: 100000 + i, item: "new", qty: 1 })));
  app.orders.updateMany({ _id: { $lt: 50 } }, { $set: { qty: -1 } });
  app.orders.deleteMany({ _id: { $gte: 100, $lt: 150 } });
  app.customers.insertMany(Array.from({ length: 50 }, (_, i) => ({ _id: 100000 + i, name: "new" })));
  app.customers.updateMany({ _id: { $lt: 30 } }, { $set: { name: "u" } });
  app.customers.deleteMany({ _id: { $gte: 100, $lt: 120 } });
  ts = op0("replicate").targetStats;
  // Written before customers' copy began: it copies exactly what is there.
  const customersExact = ts[1].initialSync.status === "pending";
  print("after the writes: " + statuses(ts) + (customersExact ? " (customers not started)" : ""));

  // List order, at every poll (the two above included): customers starts
  // once orders completed.
  const seen = new Set();
  const inOrder = ["in_progress,pending", "completed,pending", "completed,in_progress", "completed,completed"];
  for (const s of [firstStatuses, statuses(ts)]) {
    check(inOrder.includes(s), "statuses out of list order: " + s);
    seen.add(s);
  }
  waitFor("both collections synced", () => {
    const t = op0("replicate").targetStats;
    const s = statuses(t);
    seen.add(s);
    check(inOrder.includes(s), "statuses out of list order: " + s);
    check(t[1].initialSync.status !== "pending" || num(t[1].initialSync.copiedDocs) === 0 &&
          num(t[1].inputMessageCount) === 0, "a pending collection has figures: " + EJSON.stringify(t[1]));
    return s === "completed,completed";
  }, 180);
  print("statuses seen: " + [...seen].join(" | "));
  check(seen.has("in_progress,pending") || seen.has("completed,pending") || seen.has("completed,in_progress"),
        "no status before completion was seen");

  // Writes after the copy (events: orders 40, customers 25).
  app.orders.insertMany(Array.from({ length: 20 }, (_, i) => ({ _id: 200000 + i, item: "late", qty: 2 })));
  app.orders.updateMany({ _id: { $gte: 50, $lt: 60 } }, { $set: { qty: -2 } });
  app.orders.deleteMany({ _id: { $gte: 200, $lt: 210 } });
  app.customers.insertMany(Array.from({ length: 10 }, (_, i) => ({ _id: 200000 + i, name: "late" })));
  app.customers.updateMany({ _id: { $gte: 30, $lt: 40 } }, { $set: { name: "v" } });
  app.customers.deleteMany({ _id: { $gte: 200, $lt: 205 } });

  // The first difference between source and destination, "" when none.
  // The sink writes each document with its _stream_meta, as ASP's does
  // (only $project / $unset remove it): the rest is the source document.
  function diff(coll) {
    const a = app[coll].find().sort({ _id: 1 }).toArray();
    const b = destDb[coll].find({}, { _stream_meta: 0 }).sort({ _id: 1 }).toArray();
    for (let i = 0; i < Math.max(a.length, b.length); i++) {
      const x = EJSON.stringify(a[i]), y = EJSON.stringify(b[i]);
      if (x !== y) return coll + "[" + i + "]: source " + x + ", destination " + y;
    }
    return "";
  }
  waitFor("the destination equal to the sources", () => diff("orders") === "" && diff("customers") === "", 120,
          () => diff("orders") + " " + diff("customers") + ", DLQ " + EJSON.stringify(app.dlq.findOne()));
  check(app.orders.countDocuments() === NO + 100 - 50 + 20 - 10 &&
        app.customers.countDocuments() === NC + 50 - 20 + 10 - 5, "source counts");
  const m = destDb.customers.findOne({ _id: 1000 })._stream_meta.source;
  check(m.ns.db === "appdb" && m.ns.coll === "customers" && m.operationType === "insert" &&
        m.initialSync.phase === "initialSync", "a copied document's _stream_meta: " + EJSON.stringify(m));
  print("REPLICATED orders " + destDb.orders.countDocuments() + ", customers " + destDb.customers.countDocuments());

  // The figures once every event is counted: messages = copied + events.
  const events = [240, 125];
  let op;
  waitFor("the figures of every event", () => {
    op = op0("replicate");
    return op.targetStats.every((t, j) => num(t.inputMessageCount) === num(t.initialSync.copiedDocs) + events[j]) &&
      num(op.inputMessageCount) === num(op.targetStats[0].inputMessageCount) + num(op.targetStats[1].inputMessageCount);
  }, 60, () => EJSON.stringify(op));
  print("targetStats: " + EJSON.stringify(op.targetStats) + " initialSync: " + EJSON.stringify(op.initialSync));
  ts = op.targetStats;
  for (const t of ts) {
    check(isLong(t.inputMessageCount) && isLong(t.initialSync.copiedDocs) && isLong(t.initialSync.estimatedDocs),
          "Longs: " + EJSON.stringify(t));
    check(t.initialSync.status === "completed", "status: " + EJSON.stringify(t));
  }
  const co = num(ts[0].initialSync.copiedDocs), cc = num(ts[1].initialSync.copiedDocs);
  check(co >= NO - 50 && co <= NO + 100, "orders copiedDocs " + co);
  check(customersExact ? cc === NC + 50 - 20 : cc >= NC - 20 && cc <= NC + 50, "customers copiedDocs " + cc);
  check(num(ts[0].initialSync.estimatedDocs) === NO && num(ts[1].initialSync.estimatedDocs) === NC, "estimates");
  check(ts[0].inputMessageSize > 0 && ts[1].inputMessageSize > 0 &&
        ts[0].inputMessageSize + ts[1].inputMessageSize === num(op.inputMessageSize),
        "inputMessageSize: " + ts[0].inputMessageSize + " + " + ts[1].inputMessageSize + " vs " + op.inputMessageSize);
  check(isLong(op.initialSync.estimatedDocs) && num(op.initialSync.estimatedDocs) === NO + NC &&
        isLong(op.initialSync.copiedDocs) && num(op.initialSync.copiedDocs) === co + cc,
        "operatorStats[0].initialSync: " + EJSON.stringify(op.initialSync));
  check(sp.replicate.stats().stats.initialSync.phase === "changeStream", "the changeStream phase");
  check(app.dlq.countDocuments() === 0, "DLQ: " + EJSON.stringify(app.dlq.find().toArray()));
  sp.replicate.stop();
  sp.replicate.drop();
  print("MULTI OK");
} else if (mode === "fail") {
  // Source: the `dest` server (killed by the shell in the middle).
  const src = destDb.getSiblingDB("faildb");
  src.big.deleteMany({}); src.small.deleteMany({});
  for (let b = 0; b < 3000; b += 1000) {
    src.big.insertMany(Array.from({ length: 1000 }, (_, i) => ({ _id: b + i })));
  }
  src.small.insertOne({ _id: 1 });
  sp.createStreamProcessor("isfail", [
    { $source: { connectionName: "dest", db: "faildb", coll: ["big", "small"], initialSync: { enable: true } } },
    { $addFields: { slow: { $function: { body: "function() { var t = Date.now(); while (Date.now() - t < 3) {} return 1; }",
                                         args: [], lang: "js" } } } },
    { $merge: { into: { connectionName: "atlas", db: "appdb", coll: "failed_copy" } } }
  ]);
  sp.isfail.start({ tier: "SP10" });
  let t;
  waitFor("the copy under way", () => {
    t = op0("isfail").targetStats;
    return t[0].initialSync.status === "in_progress" && num(t[0].initialSync.copiedDocs) >= 100;
  }, 60);
  print("FAIL READY " + EJSON.stringify(t));
} else if (mode === "failed") {
  let st;
  waitFor("the processor failed", () => { st = sp.isfail.stats({ options: { verbose: true } }).stats; return st.status === "error"; }, 60);
  const t = st.operatorStats[0].targetStats;
  print("failed: " + st.error + " " + EJSON.stringify(t));
  check(t.length === 2 && t[0].coll === "big" && t[0].initialSync.status === "failed" &&
        t[1].coll === "small" && t[1].initialSync.status === "pending", "statuses: " + statuses(t));
  check(num(t[0].initialSync.estimatedDocs) === 3000 && num(t[1].initialSync.estimatedDocs) === 1 &&
        num(t[0].initialSync.copiedDocs) >= 100 && num(t[0].initialSync.copiedDocs) < 3000 &&
        num(t[1].initialSync.copiedDocs) === 0, "figures: " + EJSON.stringify(t));
  check(/initial sync cannot read faildb\.big/.test(st.error), "error: " + st.error);
  sp.isfail.drop();
  print("FAILED OK");
} else {
  throw new Error("ISM_MODE?");
}
