// e2e: MongoDB connections through stock mongosh against aspen and the
// backing server: change-stream $source (collection, fullDocumentOnly,
// whole database, whole deployment), $lookup / $cachedLookup enrichment (seed listing 15.5),
// $merge modes, dynamic targets, whenMatched pipelines, write errors in the
// DLQ collection, $emit to time-series collections, option validation and an
// unreachable connection. Run by
// test_mongodb.sh; throws (mongosh exits non-zero) on the first mismatch.
// Results are read back through aspen, which forwards to the backing server.
// With PHASE set, runs only that phase of the resume tests (stop/start, a
// network outage, a restarted backing server: see the end of this file),
// which read back directly from the backing server ($BACKING_URI).
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
function expectError(fn, code, re) {
  try { fn(); } catch (e) {
    assert(e.code === code, `want code ${code}, got ${e.code} (${e.message})`);
    if (re) assert(re.test(e.message), `message ${JSON.stringify(e.message)} does not match ${re}`);
    return e;
  }
  throw new Error(`expected error ${code} ${re || ""}`);
}
// Waits (bounded) until fn() is truthy; returns its last value.
function waitFor(fn, what) {
  let v;
  for (let i = 0; i < 120; i++) { v = fn(); if (v) return v; sleep(250); }
  throw new Error("timed out waiting for " + what);
}
function step(name) { print("# " + name); }
// drop() that tolerates a missing collection (mongo-java-server answers
// "ns not found" without a code, which mongosh's drop() throws on).
function dropColl(c) { try { c.drop(); } catch (e) { if (!/ns not found/.test(e.message)) throw e; } }
const atlas = "atlas";
if (process.env.PHASE) {
  resumePhase(process.env.PHASE);
  quit(0);
}
const d = db.getSiblingDB("mdb_e2e");
const inv = db.getSiblingDB("inventoryDB");

// ---- change stream on a collection -> $addFields -> $merge ----------------
step("change stream on a collection");
sp.createStreamProcessor("cs_coll", [
  { $source: { connectionName: atlas, db: "mdb_e2e", coll: "people" } },
  { $addFields: { seenBy: "aspen" } },
  { $merge: { into: { connectionName: atlas, db: "mdb_e2e", coll: "people_events" } } },
]);
sp.cs_coll.start();
d.people.insertOne({ _id: 1, name: "Ada", age: 36 });
d.people.insertOne({ _id: 2, name: "Bob", age: 17 });
d.people.updateOne({ _id: 1 }, { $set: { age: 37 } });
waitFor(() => d.people_events.countDocuments({}) >= 3, "3 change events merged");
const ins = d.people_events.findOne({ operationType: "insert", "fullDocument._id": 1 });
assert(ins, "insert event merged");
assert(ins.seenBy === "aspen", "$addFields applied");
assert(ins._ts instanceof Date, "_ts is a Date");
assert(ins._stream_meta.source.type === "atlas", "_stream_meta.source.type is atlas");
assert(ins._stream_meta.source.operationType === "insert", "_stream_meta.source.operationType");
assert(ins._stream_meta.source.ns.db === "mdb_e2e" && ins._stream_meta.source.ns.coll === "people",
       "_stream_meta.source.ns");
assert(d.people_events.countDocuments({ operationType: "update" }) === 1, "update event merged");
let st = sp.cs_coll.stats();
assert(st.state === "STARTED" && Number(st.stats.inputMessageCount) === 3, "3 events counted");
sp.cs_coll.stop();

// ---- listing 15.3: change stream -> $validate -> $merge, fullDocumentOnly -----
step("listing 15.3 with fullDocumentOnly");
sp.createStreamProcessor("validated", [
  { $source: { connectionName: atlas, db: "myDB", coll: "myCollection",
               config: { fullDocument: "updateLookup", fullDocumentOnly: true } } },
  { $validate: { validator: { $and: [
      { name: { $exists: true, $type: "string" } },
      { age: { $exists: true, $type: "int", $gte: 18 } },
      { email: { $exists: true, $regex: "^.+@.+\\..+$" } } ] },
    validationAction: "discard" } },
  { $merge: { into: { connectionName: atlas, db: "validatedDB", coll: "validatedCollection" } } },
]);
sp.validated.start();
const my = db.getSiblingDB("myDB").myCollection;
my.insertMany([
  { _id: "p1", name: "Ann", age: NumberInt(30), email: "ann@example.com" },
  { _id: "p2", name: "Kid", age: NumberInt(12), email: "kid@example.com" },
  { _id: "p3", name: "NoMail", age: NumberInt(40) },
  { _id: "p4", name: "Cy", age: NumberInt(50), email: "cy@example.org" },
]);
const vc = db.getSiblingDB("validatedDB").validatedCollection;
waitFor(() => vc.countDocuments({}) >= 2, "valid people merged");
sleep(1000);
assert(vc.countDocuments({}) === 2, "only valid people arrive");
const ann = vc.findOne({ _id: "p1" });
assert(ann && ann.name === "Ann" && ann.operationType === undefined, "fullDocumentOnly: the document itself");
assert(ann._stream_meta.source.operationType === "insert", "metadata kept with fullDocumentOnly");
sp.validated.stop();

// ---- dynamic $merge.into.coll ----------------------------------------------
step("dynamic $merge target");
sp.createStreamProcessor("dyn", [
  { $source: { connectionName: atlas, db: "watchdb", coll: "a",
               config: { fullDocument: "updateLookup", fullDocumentOnly: true } } },
  { $merge: { into: { connectionName: atlas, db: "mdb_e2e", coll: { $concat: ["kind_", "$kind"] } } } },
], { dlq: { connectionName: atlas, db: "mdb_e2e", coll: "dlq_dyn" } });
sp.dyn.start();
const wdb = db.getSiblingDB("watchdb");
wdb.a.insertMany([{ _id: 1, kind: "x" }, { _id: 2, kind: "y" }, { _id: 3, kind: 42 }]);  // 42: DLQ
waitFor(() => d.kind_x.countDocuments({}) === 1 && d.kind_y.countDocuments({}) === 1,
        "documents in two targets");
waitFor(() => d.dlq_dyn.countDocuments({}) === 1, "non-string target in the DLQ");
const badTarget = d.dlq_dyn.findOne();
assert(/\$merge.into.coll/.test(badTarget.errInfo.reason), "DLQ reason names into.coll: " + badTarget.errInfo.reason);
sp.dyn.stop();

// ---- whole-database watch (only where the server serves database-level
// change streams: a real mongod does, and our BackingServer adds them to
// mongo-java-server 1.47, which serves collection-level ones only) ------
function serverWatchesDatabases() {
  try {
    const probe = db.getSiblingDB("probe_db_watch");
    const c = probe.watch();
    probe.p.insertOne({ x: 1 });
    for (let i = 0; i < 8; i++) { if (c.tryNext()) { c.close(); return true; } sleep(250); }
    c.close();
  } catch (e) { print("# database watch probe: " + e.message); }
  return false;
}
if (serverWatchesDatabases()) {
  step("whole-database watch");
  sp.createStreamProcessor("dbwatch", [
    { $source: { connectionName: atlas, db: "watchdb2", config: { pipeline: [{ $match: { operationType: "insert" } }] } } },
    { $merge: { into: { connectionName: atlas, db: "mdb_e2e", coll: "dbwatch" } } },
  ]);
  sp.dbwatch.start();
  const w2 = db.getSiblingDB("watchdb2");
  w2.a.insertOne({ _id: 1 });
  w2.b.insertOne({ _id: 2 });
  w2.b.deleteOne({ _id: 2 });   // filtered out by config.pipeline
  waitFor(() => d.dbwatch.countDocuments({}) === 2, "events from two collections");
  assert(d.dbwatch.countDocuments({ "ns.db": "watchdb2", "ns.coll": "a", "documentKey._id": 1 }) === 1 &&
         d.dbwatch.countDocuments({ "ns.db": "watchdb2", "ns.coll": "b", "documentKey._id": 2 }) === 1,
         "each event names its collection: " + JSON.stringify(d.dbwatch.find({}, { ns: 1 }).toArray()));
  sleep(1000);
  assert(d.dbwatch.countDocuments({ operationType: "delete" }) === 0, "config.pipeline filters at the source");
  // Stopped and started again, it resumes after the last event it saw.
  sp.dbwatch.stop();
  w2.c.insertOne({ _id: 3 });
  sp.dbwatch.start();
  w2.a.insertOne({ _id: 4 });
  waitFor(() => d.dbwatch.countDocuments({}) === 4, "events while stopped and after the restart");
  assert(d.dbwatch.countDocuments({ "ns.coll": "c", "documentKey._id": 3 }) === 1, "the insert made while stopped");
  sp.dbwatch.stop();

  step("collection list (a database watch filtered on ns.coll)");
  sp.createStreamProcessor("colllist", [
    { $source: { connectionName: atlas, db: "watchdb3", coll: ["a", "c"],
                 config: { pipeline: [{ $match: { operationType: "insert" } }] } } },
    { $merge: { into: { connectionName: atlas, db: "mdb_e2e", coll: "colllist" } } },
  ]);
  sp.colllist.start();
  const w3 = db.getSiblingDB("watchdb3");
  w3.b.insertOne({ _id: 1 });   // not in the list
  w3.a.insertOne({ _id: 2 });
  w3.c.insertOne({ _id: 3 });
  w3.c.updateOne({ _id: 3 }, { $set: { u: 1 } });   // filtered out by config.pipeline
  waitFor(() => d.colllist.countDocuments({}) === 2, "events from the listed collections");
  sp.colllist.stop();
  w3.b.insertOne({ _id: 4 });
  w3.c.insertOne({ _id: 5 });
  sp.colllist.start();   // reopens with the same filter and pipeline
  waitFor(() => d.colllist.countDocuments({}) === 3, "the listed collection's insert made while stopped");
  sleep(1000);
  assert(d.colllist.countDocuments({ "ns.coll": "b" }) === 0 && d.colllist.countDocuments({ operationType: { $ne: "insert" } }) === 0,
         "only the listed collections' inserts: " + JSON.stringify(d.colllist.find({}, { ns: 1, operationType: 1 }).toArray()));
  sp.colllist.stop();

  step("whole-deployment watch");
  sp.createStreamProcessor("clusterwatch", [
    { $source: { connectionName: atlas,
                 config: { pipeline: [{ $match: { "ns.db": { $in: ["watchdb4", "watchdb5"] } } }] } } },
    { $merge: { into: { connectionName: atlas, db: "mdb_e2e", coll: "clusterwatch" } } },
  ]);
  sp.clusterwatch.start();
  db.getSiblingDB("watchdb4").a.insertOne({ _id: 1 });
  db.getSiblingDB("watchdb5").b.insertOne({ _id: 2 });
  waitFor(() => d.clusterwatch.countDocuments({}) === 2, "events from two databases");
  assert(d.clusterwatch.countDocuments({ "ns.db": "watchdb4", "ns.coll": "a" }) === 1 &&
         d.clusterwatch.countDocuments({ "ns.db": "watchdb5", "ns.coll": "b" }) === 1,
         "each event names its database: " + JSON.stringify(d.clusterwatch.find({}, { ns: 1 }).toArray()));
  sp.clusterwatch.stop();
} else {
  print("# skip: the backing server does not serve database-level change streams");
}

// ---- listing 15.5: $lookup into inventoryDB.products --------------------------
step("listing 15.5 $lookup");
inv.products.insertMany([
  { _id: "sku1", name: "pen", price: 2 },
  { _id: "sku2", name: "ink", price: 5 },
  { _id: "sku3", name: "pad", price: 3 },
]);
sp.createStreamProcessor("enrich", [
  { $source: { connectionName: atlas, db: "shop", coll: "orders",
               config: { fullDocument: "updateLookup", fullDocumentOnly: true } } },
  { $lookup: { from: { connectionName: atlas, db: "inventoryDB", coll: "products" },
               localField: "productId", foreignField: "_id", as: "productDetails" } },
  { $lookup: { from: { connectionName: atlas, db: "inventoryDB", coll: "products" },
               localField: "productIds", foreignField: "_id", as: "many" } },
  { $lookup: { from: { connectionName: atlas, db: "inventoryDB", coll: "products" },
               let: { maxPrice: "$budget" },
               pipeline: [{ $match: { $expr: { $lte: ["$price", "$$maxPrice"] } } },
                          { $project: { _id: 1 } }],
               as: "affordable" } },
  { $cachedLookup: { from: { connectionName: atlas, db: "inventoryDB", coll: "products" },
                     localField: "productId", foreignField: "_id", as: "cached",
                     ttl: { size: 1, unit: "minute" }, maxMemUsageBytes: 1048576 } },
  // Validate after the lookup that the enrichment worked.
  { $validate: { validator: { productDetails: { $size: 1 } }, validationAction: "dlq" } },
  { $merge: { into: { connectionName: atlas, db: "shop", coll: "enriched" } } },
], { dlq: { connectionName: atlas, db: "shop", coll: "dlq" } });
sp.enrich.start();
const shop = db.getSiblingDB("shop");
shop.orders.insertMany([
  { _id: 1, productId: "sku1", productIds: ["sku2", "sku3", "nope"], budget: 2 },
  { _id: 2, productId: "sku2", productIds: [], budget: 10 },
  { _id: 3, productId: "missing", budget: 0 },
  { _id: 4, productId: "sku1", budget: 3 },
]);
waitFor(() => shop.enriched.countDocuments({}) === 3, "3 enriched orders");
waitFor(() => shop.dlq.countDocuments({}) === 1, "unmatched order in the DLQ");
const o1 = shop.enriched.findOne({ _id: 1 });
assert(o1.productDetails.length === 1 && o1.productDetails[0].name === "pen", "equality lookup");
assert(o1.many.length === 2, "array localField matches any element: " + JSON.stringify(o1.many));
assert(o1.affordable.length === 1 && o1.affordable[0]._id === "sku1", "let + pipeline: " + JSON.stringify(o1.affordable));
assert(o1.cached.length === 1 && o1.cached[0].price === 2, "$cachedLookup");
const o2 = shop.enriched.findOne({ _id: 2 });
assert(o2.affordable.length === 3 && o2.many.length === 0, "pipeline with budget 10");
assert(shop.enriched.findOne({ _id: 4 }).cached[0].name === "pen", "cached lookup hit");
const dl = shop.dlq.findOne();
assert(dl.doc._id === 3 && /invalid in \$validate/.test(dl.errInfo.reason), "DLQ entry for the unmatched order");
sp.enrich.stop();

// The equality form is batched (one $in query for many documents, each
// then given the results its own condition matches): every result must be
// what the document's own query returns, in the same order. Arrays, null,
// missing, numeric types and documents on both sides; expected results
// from the server itself, one find() per document. (No arrays nested in a
// foreign value: mongo-java-server matches {$in: [1]} against [[1, 2]],
// which mongod, and aspen's matcher, do not.)
step("batched $lookup = per-document queries");
dropColl(d.lk_foreign);
d.lk_foreign.insertMany([
  { _id: 1, k: 1 }, { _id: 2, k: 2 }, { _id: 3, k: "a" }, { _id: 4, k: null }, { _id: 5 },
  { _id: 6, k: [1, 3] }, { _id: 7, k: NumberLong("2") }, { _id: 8, k: { x: 1 } }, { _id: 9, k: 1.5 },
  { _id: 11, k: [] }, { _id: 12, k: [null, 7] }, { _id: 13, k: 1.0 },
  { _id: 14, k: [{ x: 1 }, "b"] },
]);
const lkIn = [
  { _id: "a", l: 1 }, { _id: "b", l: NumberLong("2") }, { _id: "c", l: "a" }, { _id: "d", l: null },
  { _id: "e" }, { _id: "f", l: [1, "a"] }, { _id: "g", l: [] }, { _id: "h", l: { x: 1 } },
  { _id: "i", l: 3 }, { _id: "j", l: 99 }, { _id: "k", l: [1, 2] }, { _id: "m", l: [null, 2] },
  { _id: "n", l: 1.5 }, { _id: "o", l: ["b", 7] }, { _id: "p", l: [[1, 2]] },
];
dropColl(d.lk_batch_out);
sp.createStreamProcessor("lk_batch", [
  { $source: { documents: lkIn } },
  { $lookup: { from: { connectionName: atlas, db: "mdb_e2e", coll: "lk_foreign" },
               localField: "l", foreignField: "k", as: "m" } },
  { $merge: { into: { connectionName: atlas, db: "mdb_e2e", coll: "lk_batch_out" } } },
]);
sp.lk_batch.start();
waitFor(() => d.lk_batch_out.countDocuments({}) === lkIn.length, "every batched document merged");
sp.lk_batch.stop();
for (const x of lkIn) {
  const cond = x.l === undefined ? { $eq: null } : Array.isArray(x.l) ? { $in: x.l } : { $eq: x.l };
  const want = d.lk_foreign.find({ k: cond }).toArray().map((f) => f._id);
  const got = d.lk_batch_out.findOne({ _id: x._id }).m.map((f) => f._id);
  assert(JSON.stringify(got) === JSON.stringify(want),
         `lookup of ${JSON.stringify(x)}: got ${JSON.stringify(got)}, its own query ${JSON.stringify(want)}`);
}

// ---- $merge whenMatched / whenNotMatched --------------------------------------
step("$merge modes");
function mergeRun(name, target, mergeOpts, docs) {
  sp.createStreamProcessor(name, [
    { $source: { documents: docs } },
    { $merge: Object.assign({ into: { connectionName: atlas, db: "mdb_e2e", coll: target } }, mergeOpts) },
  ], { dlq: { connectionName: atlas, db: "mdb_e2e", coll: "dlq_" + name } });
  sp[name].start();
  return name;
}
function seed(coll) {
  dropColl(d[coll]);
  d[coll].insertMany([{ _id: 1, a: 1, keep: "old" }, { _id: 2, a: 2, keep: "old" }]);
}
const incoming = [{ _id: 1, a: 10 }, { _id: 3, a: 30 }];
const modes = [
  ["m_merge", { whenMatched: "merge", whenNotMatched: "insert" }, (c) => c.findOne({ _id: 1 }).keep === "old" && c.findOne({ _id: 1 }).a === 10 && c.countDocuments({}) === 3],
  ["m_replace", { whenMatched: "replace" }, (c) => c.findOne({ _id: 1 }).keep === undefined && c.findOne({ _id: 1 }).a === 10 && c.countDocuments({}) === 3],
  ["m_keep", { whenMatched: "keepExisting" }, (c) => c.findOne({ _id: 1 }).a === 1 && c.countDocuments({ _id: 3 }) === 1],
  ["m_discard", { whenMatched: "merge", whenNotMatched: "discard" }, (c) => c.findOne({ _id: 1 }).a === 10 && c.countDocuments({ _id: 3 }) === 0],
  ["m_delete", { whenMatched: "delete", whenNotMatched: "discard" }, (c) => c.countDocuments({ _id: 1 }) === 0 && c.countDocuments({}) === 1],
  // Modes chosen per document by expressions: a >= 20 replaces, else keeps;
  // only documents with a >= 20 are inserted.
  ["m_expr", { whenMatched: { $cond: [{ $gte: ["$a", 20] }, "replace", "keepExisting"] },
               whenNotMatched: { $cond: [{ $gte: ["$a", 20] }, "insert", "discard"] } },
   (c) => c.findOne({ _id: 1 }).a === 1 && c.findOne({ _id: 1 }).keep === "old" && c.countDocuments({ _id: 3 }) === 1],
];
for (const [name, opts, ok] of modes) {
  seed(name);
  mergeRun(name, name, opts, incoming);
  waitFor(() => ok(d[name]), name + " result " + JSON.stringify(d[name].find().toArray()));
  sp[name].stop();
}

// whenMatched pipeline with let and $$new. mongo-java-server 1.47 cannot
// run updates with a pipeline; there the server's error must reach the DLQ.
step("whenMatched pipeline");
function serverRunsPipelineUpdates() {
  const c = d.probe_pipeline_update;
  dropColl(c);
  c.insertOne({ _id: 1, a: 1 });
  try { c.updateOne({ _id: 1 }, [{ $set: { a: 2 } }]); } catch (e) { return false; }
  return c.findOne({ _id: 1 }).a === 2;
}
seed("m_pipe");
mergeRun("m_pipe", "m_pipe", { let: { inc: "$a" }, whenMatched: [{ $set: { a: { $add: ["$a", "$$inc"] }, last: "$$new.a" } }] }, incoming);
if (serverRunsPipelineUpdates()) {
  waitFor(() => { const c = d.m_pipe, one = c.findOne({ _id: 1 }), three = c.findOne({ _id: 3 });
                  return one.a === 11 && one.last === 10 && one.keep === "old" && three && three.a === 30 && three.last === undefined; },
          "pipeline result " + JSON.stringify(d.m_pipe.find().toArray()));
} else {
  print("# the backing server refuses pipeline updates: expecting the DLQ entry");
  waitFor(() => d.dlq_m_pipe.countDocuments({}) === 2, "pipeline update errors in the DLQ");
  const pe = d.dlq_m_pipe.findOne({ "doc._id": 1 });
  assert(/Failed to process an input document in the current batch in MergeOperator/.test(pe.errInfo.reason),
         "server's error in the DLQ: " + pe.errInfo.reason);
  assert(d.m_pipe.findOne({ _id: 1 }).a === 1, "matched document untouched");
}
sp.m_pipe.stop();

// Compound `on` with a unique index, replayed twice: idempotent.
step("compound on, replay");
dropColl(d.m_on);
d.m_on.createIndex({ region: 1, sku: 1 }, { unique: true });
const onDocs = [{ region: "eu", sku: "a", n: 1 }, { region: "us", sku: "a", n: 2 }];
mergeRun("m_on", "m_on", { on: ["region", "sku"], whenMatched: "replace" }, onDocs);
waitFor(() => d.m_on.countDocuments({}) === 2, "compound on inserted");
sp.m_on.stop();
sp.m_on.start();  // the documents source replays the same input
sleep(1500);
assert(d.m_on.countDocuments({}) === 2, "replay leaves the same collection");
sp.m_on.stop();

// A duplicate key write error lands in the DLQ with the server's error.
step("duplicate key to the DLQ");
dropColl(d.m_dup);
d.m_dup.createIndex({ email: 1 }, { unique: true });
d.m_dup.insertOne({ _id: 100, email: "taken@example.com" });
mergeRun("m_dup", "m_dup", {}, [{ _id: 1, email: "free@example.com" }, { _id: 2, email: "taken@example.com" }]);
waitFor(() => d.dlq_m_dup.countDocuments({}) === 1, "duplicate key in the DLQ");
const dup = d.dlq_m_dup.findOne();
assert(/DuplicateKey/.test(dup.errInfo.reason) && dup.doc._id === 2, "server's error in the DLQ: " + dup.errInfo.reason);
assert(dup.operatorName === "MergeOperator" && dup.processorName === "m_dup", "DLQ entry shape");
assert(d.m_dup.countDocuments({}) === 2, "the good document was written");
// The refused document counts as dead-lettered, not as output.
waitFor(() => {
  const s = sp.m_dup.stats().stats;
  return Number(s.outputMessageCount) === 1 && Number(s.dlqMessageCount) === 1;
}, "stats: 1 output, 1 dead-lettered");
sp.m_dup.stop();

// ---- $emit to a time-series collection ------------------------------------------
// Collections and DLQ entries are read directly from the backing server
// (listCollections included), not through aspen.
step("$emit to time-series collections");
const tsDirect = new Mongo(process.env.BACKING_URI).getDB("mdb_ts");
const tsInfo = (name) => tsDirect.getCollectionInfos().find((c) => c.name === name);
const at = (s) => new Date("2024-05-01T10:00:" + s + "Z");
const tsDocs = [
  { _id: 1, t: at("01"), sensor: { id: "a" }, kind: "x", v: 1 },
  { _id: 2, t: at("02"), sensor: { id: "b" }, kind: "y", v: 2 },
  { _id: 3, sensor: { id: "a" }, kind: "x", v: 3 },                 // no timeField: DLQ
  { _id: 4, t: "2024-05-01T10:00:04Z", sensor: { id: "b" }, kind: "y", v: 4 },  // a string: DLQ
  { _id: 5, t: at("05"), sensor: { id: "a" }, kind: "x", v: 5 },
  { _id: 6, t: at("06"), sensor: { id: "a" }, kind: "x", big: "z".repeat(4 * 1024 * 1024) },  // > 4 MB: DLQ
];
sp.createStreamProcessor("ts_emit", [
  { $source: { documents: tsDocs } },
  { $emit: { connectionName: atlas, db: "mdb_ts", coll: { $concat: ["readings_", "$kind"] },
             timeseries: { timeField: "t", metaField: "sensor", granularity: "minutes" } } },
], { dlq: { connectionName: atlas, db: "mdb_ts", coll: "dlq" } });
sp.ts_emit.start();
waitFor(() => tsDirect.readings_x.countDocuments({}) === 2 && tsDirect.readings_y.countDocuments({}) === 1,
        "documents routed to readings_x (2) and readings_y (1)");
waitFor(() => tsDirect.dlq.countDocuments({}) === 3, "3 refused documents in the DLQ");
for (const name of ["readings_x", "readings_y"]) {
  const info = tsInfo(name);
  assert(info && info.type === "timeseries", name + " is a time-series collection: " + JSON.stringify(info));
  const o = info.options.timeseries;
  assert(o.timeField === "t" && o.metaField === "sensor" && o.granularity === "minutes",
         name + " has the $emit's options: " + JSON.stringify(o));
}
const r1 = tsDirect.readings_x.findOne({ _id: 1 });
assert(r1.t instanceof Date && r1.t.getTime() === at("01").getTime(), "timeField written as a Date: " + JSON.stringify(r1));
assert(r1.sensor.id === "a" && r1.v === 1, "metaField and measurements written");
assert(tsDirect.readings_y.findOne({ _id: 2 }).sensor.id === "b", "the y document in readings_y");
assert(tsDirect.readings_x.countDocuments({ _id: { $in: [3, 4, 6] } }) === 0 &&
       tsDirect.readings_y.countDocuments({ _id: { $in: [3, 4, 6] } }) === 0, "refused documents not written");
for (const id of [3, 4]) {
  const e = tsDirect.dlq.findOne({ "doc._id": id });
  assert(e && e.operatorName === "TimeseriesEmitOperator" && e.processorName === "ts_emit",
         "DLQ entry shape: " + JSON.stringify(e));
  assert(/code = BadValue, reason = 't' must be present and contain a valid BSON UTC datetime value/.test(e.errInfo.reason),
         "the server's error in the DLQ: " + e.errInfo.reason);
}
const big = tsDirect.dlq.findOne({ "doc._id": 6 }, { "doc.big": 0 });
assert(big && /4 MB/.test(big.errInfo.reason), "the > 4 MB document in the DLQ: " + JSON.stringify(big && big.errInfo));
waitFor(() => {
  const s = sp.ts_emit.stats().stats;
  return Number(s.inputMessageCount) === 6 && Number(s.outputMessageCount) === 3 && Number(s.dlqMessageCount) === 3;
}, "stats: 6 in, 3 written, 3 dead-lettered " + JSON.stringify(sp.ts_emit.stats().stats));
sp.ts_emit.stop();

// A literal target: created at start; one that already exists as a
// time-series collection (created here with other options) is written to;
// one that exists as a plain collection fails the start.
step("$emit to an existing time-series collection, and to a plain one");
dropColl(tsDirect.pre);
tsDirect.createCollection("pre", { timeseries: { timeField: "t", granularity: "hours" } });
sp.createStreamProcessor("ts_pre", [
  { $source: { documents: [{ _id: 1, t: at("10"), v: 1 }] } },
  { $emit: { connectionName: atlas, db: "mdb_ts", coll: "pre", timeseries: { timeField: "t" } } },
]);
sp.ts_pre.start();
waitFor(() => tsDirect.pre.countDocuments({}) === 1, "written to the existing time-series collection");
assert(tsInfo("pre").options.timeseries.granularity === "hours", "its options are left as they were");
sp.ts_pre.stop();
dropColl(tsDirect.plain);
tsDirect.plain.insertOne({ _id: 0 });
sp.createStreamProcessor("ts_plain", [
  { $source: { documents: [{ _id: 1, t: at("10") }] } },
  { $emit: { connectionName: atlas, db: "mdb_ts", coll: "plain", timeseries: { timeField: "t" } } },
]);
expectError(() => sp.ts_plain.start(), 421, /Time series \$emit to mdb_ts.plain failed: the collection exists and is not a time-series collection/);
assert(tsDirect.plain.countDocuments({}) === 1, "nothing written to the plain collection");
sp.ts_plain.drop();
expectError(() => sp.createStreamProcessor("bad", [{ $source: { documents: [{ a: 1 }] } },
            { $emit: { connectionName: atlas, db: "d", coll: "c", timeseries: { timeField: "t", metaField: "t" } } }]),
            420, /'metaField' cannot be the same as 'timeField'/);

// ---- option validation --------------------------------------------------------
step("validation");
const sink = { $merge: { into: { connectionName: atlas, db: "x", coll: "y" } } };
const badSources = [
  [{ connectionName: atlas, coll: "c" }, /If coll is specified, db must be specified\./],
  [{ connectionName: atlas, db: "" }, /Cannot specify an empty database name/],
  [{ connectionName: atlas, db: "a", config: { startAfter: { _data: "00" }, startAtOperationTime: Timestamp(1, 0) } },
   /startAfter and startAtOperationTime cannot both be set/],
  [{ connectionName: atlas, db: "a", config: { fullDocumentOnly: true } },
   /fullDocumentOnly is set to true, fullDocument mode can either be updateLookup or required/],
  [{ connectionName: atlas, db: "a", config: { fullDocument: "required", fullDocumentOnly: true, fullDocumentBeforeChange: "required" } },
   /fullDocumentBeforeChange is set, so fullDocumentOnly should not be set\./],
  [{ connectionName: atlas, db: "a", config: { fullDocument: "sometimes" } }, /Enumeration value 'sometimes'/],
  [{ connectionName: atlas, db: "a", config: { bogus: 1 } }, /unknown field/],
  [{ connectionName: atlas, db: "a", topic: "t" }, /unknown field/],
];
for (const [src, re] of badSources) {
  expectError(() => sp.createStreamProcessor("bad", [{ $source: src }, sink]), 420, re);
}
// Accepted: startAtOperationTime as a Date, collection lists.
sp.createStreamProcessor("ok1", [{ $source: { connectionName: atlas, db: "a", coll: ["b", "c"],
  config: { startAtOperationTime: new Date(), fullDocument: "whenAvailable", maxAwaitTimeMS: 500, pipeline: [{ $match: { operationType: "insert" } }] } } }, sink]);
sp.ok1.drop();
const docsSrc = { $source: { documents: [{ a: 1 }] } };
expectError(() => sp.createStreamProcessor("bad", [docsSrc, { $merge: { into: { connectionName: atlas, db: "x", coll: "$c" }, parallelism: 2 } }]),
            420, /must be literals if \$merge.parallelism is greater than 1/);
expectError(() => sp.createStreamProcessor("bad", [docsSrc, { $lookup: { from: { connectionName: atlas, db: "x", coll: "y" }, localField: "a", foreignField: "b" } }, sink]),
            420, /must specify 'as'/);
expectError(() => sp.createStreamProcessor("bad", [docsSrc, { $lookup: { from: { connectionName: "sample_stream_solar", db: "x", coll: "y" }, localField: "a", foreignField: "b", as: "c" } }, sink]),
            420, /Only atlas connection type is currently supported for \$lookup/);
expectError(() => sp.createStreamProcessor("bad", [docsSrc, { $cachedLookup: { from: { connectionName: atlas, db: "x", coll: "y" }, localField: "a", foreignField: "b", as: "c" } }, sink]),
            420, /ttl/);

// ---- an unreachable server fails the start with 421 ----------------------------
step("unreachable connection");
sp.createStreamProcessor("down", [{ $source: { connectionName: "down", db: "a", coll: "b" } }, sink]);
expectError(() => sp.down.start(), 421, /down/);
assert(sp.listStreamProcessors({ name: "down" })[0].state !== "STARTED", "not started");
sp.down.drop();
print("mongodb e2e ok");

// ---- resume tests, one phase per mongosh run (test_mongodb.sh runs them in
// order and cuts the network or restarts the server in between) ---------------
//
// Every processor here writes one NEW document per event it processes
// ({_id: $createUUID, seq: <source _id>}), so an event processed twice
// leaves two documents with its seq: a repeat is visible as an extra
// document, a miss as an absent seq. Reads go directly to the backing
// server, not through aspen.
function resumePhase(phase) {
  const direct = new Mongo(process.env.BACKING_URI).getDB("mdb_resume");
  const dlq = (name) => ({ dlq: { connectionName: atlas, db: "mdb_resume", coll: "dlq_" + name } });
  const create = (name, conn) => sp.createStreamProcessor(name, [
    { $source: { connectionName: conn, db: "mdb_resume", coll: name + "_src",
                 // config.pipeline (only inserts happen): a stream reopened
                 // after an outage must still send it.
                 config: { fullDocument: "updateLookup", fullDocumentOnly: true,
                           pipeline: [{ $match: { operationType: "insert" } }] } } },
    { $project: { _id: { $createUUID: {} }, seq: "$_id" } },
    { $merge: { into: { connectionName: atlas, db: "mdb_resume", coll: name + "_out" } } },
  ], dlq(name));
  const insertSeqs = (name, from, to, pauseMs) => {
    for (let i = from; i < to; i++) {
      direct[name + "_src"].insertOne({ _id: i });
      if (pauseMs) sleep(pauseMs);
    }
  };
  // Every document of name_src arrived in name_out exactly once.
  const exactlyOnce = (name) => {
    const want = direct[name + "_src"].countDocuments({});
    waitFor(() => direct[name + "_out"].countDocuments({}) >= want,
            `${want} events of ${name} merged (have ${direct[name + "_out"].countDocuments({})})`);
    sleep(1500);  // anything repeated late would show up now
    const seqs = direct[name + "_out"].find({}, { seq: 1 }).toArray().map((x) => x.seq);
    const seen = new Map();
    for (const q of seqs) seen.set(q, (seen.get(q) || 0) + 1);
    const repeated = [...seen].filter(([, n]) => n > 1).map(([q]) => q);
    const missing = direct[name + "_src"].find({}, { _id: 1 }).toArray().map((x) => x._id).filter((q) => !seen.has(q));
    assert(repeated.length === 0, `${name}: repeated events for ${JSON.stringify(repeated.slice(0, 10))}`);
    assert(missing.length === 0, `${name}: missed events for ${JSON.stringify(missing.slice(0, 10))}`);
    assert(seqs.length === want, `${name}: ${seqs.length} documents for ${want} events`);
    assert(direct["dlq_" + name].countDocuments({}) === 0, `${name}: DLQ is empty`);
    print(`# ${name}: ${want} events, each merged exactly once`);
  };
  switch (phase) {
    // stop/start: "ss" runs while a feeder (phase ss_feed, in the
    // background) inserts; ss_bounce stops it, inserts, starts it again.
    case "ss_setup":
      create("ss", atlas);
      sp.ss.start();
      break;
    case "ss_feed":
      insertSeqs("ss", 0, 1500, 5);
      break;
    case "ss_bounce": {
      waitFor(() => direct.ss_out.countDocuments({}) >= 20, "ss running");
      sp.ss.stop();
      const atStop = direct.ss_src.countDocuments({});
      insertSeqs("ss", 100000, 100050);  // certainly while stopped
      sleep(1000);
      const atStart = direct.ss_src.countDocuments({});
      assert(atStart - atStop > 50, `the feeder inserted while stopped (${atStart - atStop - 50} documents)`);
      sp.ss.start();
      break;
    }
    case "ss_check": {
      insertSeqs("ss", 200000, 200050);
      exactlyOnce("ss");
      // The detector detects: an event whose document is written twice.
      direct.ss_out.insertOne({ _id: "probe", seq: 300000 });
      insertSeqs("ss", 300000, 300001);
      waitFor(() => direct.ss_out.countDocuments({ seq: 300000 }) === 2, "the probe counted twice");
      sp.ss.stop();
      break;
    }
    // A network outage between aspen and the server: "net" reads through
    // the relay (connection "flaky"), which test_mongodb.sh stops and
    // starts; the server itself keeps its oplog.
    case "net_setup":
      create("net", "flaky");
      sp.net.start();
      insertSeqs("net", 0, 50);
      waitFor(() => direct.net_out.countDocuments({}) === 50, "net running");
      break;
    case "net_down":
      insertSeqs("net", 50, 100);
      sleep(6000);
      assert(sp.listStreamProcessors({ name: "net" })[0].state === "STARTED", "net keeps running while the network is down");
      break;
    case "net_up":
      insertSeqs("net", 100, 150);
      exactlyOnce("net");
      assert(Number(sp.net.stats().stats.inputMessageCount) === 150, "net counted 150 events");
      sp.net.stop();
      break;
    // The backing server restarted: mongo-java-server keeps its oplog in
    // memory, so the processor's resume token is no longer there.
    case "lost_setup":
      create("lost", atlas);
      sp.lost.start();
      insertSeqs("lost", 0, 10);
      waitFor(() => direct.lost_out.countDocuments({}) === 10, "lost running");
      // A checkpoint with the token of the last event (the one taken at
      // stop): the position a later start resumes from.
      sp.lost.stop();
      sp.lost.start();
      insertSeqs("lost", 10, 15);
      waitFor(() => direct.lost_out.countDocuments({}) === 15, "lost running again");
      break;
    case "lost_after": {
      const entry = waitFor(() => { const e = sp.listStreamProcessors({ name: "lost" })[0]; return e.state === "FAILED" && e; },
                            "lost FAILED");
      for (const re of [/StreamProcessorCannotResumeFromSource/, /ChangeStreamHistoryLost, code 286/, /resumeFromCheckpoint: false/])
        assert(re.test(entry.errorMsg), `errorMsg ${JSON.stringify(entry.errorMsg)} matches ${re}`);
      assert(sp.lost.stats().stats.error === entry.errorMsg, "stats() shows the error");
      // Its checkpoint holds the lost token: starting from it fails the same way.
      expectError(() => sp.lost.start(), 425, /ChangeStreamHistoryLost/);
      sp.lost.start({ resumeFromCheckpoint: false });
      insertSeqs("lost", 100, 110);
      exactlyOnce("lost");
      sp.lost.stop();
      break;
    }
    default:
      throw new Error("unknown PHASE " + phase);
  }
  print(`# phase ${phase} ok`);
}
