// e2e: verbose stats (issue 17) with the values checked. Run by
// test_stats.sh against aspen with a backing server and the broker aspen
// hosts ("localKafka").
//
// A feeder (change stream on stats.feed -> $emit to topic stats_in) turns
// inserts into Kafka messages; the processor under test reads them (Kafka
// $source -> $tumblingWindow of 10 s with $group -> $merge). Three
// documents in [T0, T0+10 s) and two in [T0+10 s, T0+20 s): the second
// window's first document closes the first, so one result is merged and
// one window, starting at T0+10 s, stays open. A change stream -> $merge
// processor is checked the same way.
load(__dirname + "/util.js");
const sdb = db.getSiblingDB("stats");
const T0 = 1700000000000; // a multiple of 10 s

function j(v) { return EJSON.stringify(v, { relaxed: true }); }
function stats(name, opts) { return sp[name].stats(Object.assign({ verbose: true }, opts || {})).stats; }
function isLong(v) { return v instanceof Long || (typeof v === "object" && v !== null && v._bsontype === "Long"); }
function num(v) { return isLong(v) ? Number(v) : v; }
function isDate(v) { return v instanceof Date; }
// Checks the fields every verbose stats has and their types.
function checkShape(s, what) {
  for (const k of ["inputMessageCount", "outputMessageCount", "dlqMessageCount", "dlqMessageSize", "stateSize", "memoryTrackerBytes"])
    assert(isLong(s[k]), `${what}: ${k} is a Long: ${s[k]}`);
  for (const k of ["inputMessageSize", "outputMessageSize"])
    assert(typeof s[k] === "number", `${what}: ${k} is a number: ${s[k]}`);
  const l = s.latency;
  assert(l && l.unit === "microseconds", `${what}: latency.unit: ${j(l)}`);
  for (const k of ["p50", "p99", "count", "sum"]) assert(isLong(l[k]), `${what}: latency.${k} is a Long`);
  assert(isDate(l.start) && isDate(l.end) && l.start <= l.end, `${what}: latency start <= end: ${j(l)}`);
  assert(num(l.p50) <= num(l.p99), `${what}: p50 <= p99: ${j(l)}`);
  assert(num(l.sum) >= num(l.p50) * 0, `${what}: latency sum`);
  assert(Array.isArray(s.operatorStats), `${what}: operatorStats: ${j(s)}`);
  for (const op of s.operatorStats) {
    for (const k of ["inputMessageCount", "inputMessageSize", "outputMessageCount", "outputMessageSize",
                     "dlqMessageCount", "dlqMessageSize", "stateSize", "maxMemoryUsage", "executionTimeMillis"])
      assert(isLong(op[k]), `${what}: operatorStats ${op.name}.${k} is a Long: ${j(op)}`);
    assert(num(op.maxMemoryUsage) >= num(op.stateSize), `${what}: ${op.name} maxMemoryUsage >= stateSize`);
  }
  assert(!("addedParallelism" in s), `${what}: no addedParallelism without parallelism > 1`);
}
// Polls a processor's verbose stats until pred holds (bounded); the last
// ones go into the timeout's message.
function waitStats(name, what, pred, opts, ms) {
  const limit = ms || 60000;
  const end = Date.now() + limit;
  let last;
  while (Date.now() < end) {
    last = stats(name, opts);
    if (pred(last)) return last;
    sleep(200);
  }
  print(`last stats of ${name}: ${EJSON.stringify(last, { relaxed: true })}`);
  throw new Error(`timed out after ${limit} ms waiting for ${what}`);
}
function counts(op) { return [num(op.inputMessageCount), num(op.outputMessageCount), num(op.dlqMessageCount)]; }
function same(a, b) { return JSON.stringify(a) === JSON.stringify(b); }

// ---- Kafka -> window -> $merge -------------------------------------------------
sp.createStreamProcessor("statsFeed", [
  { $source: { connectionName: "atlas", db: "stats", coll: "feed",
               config: { fullDocument: "updateLookup", fullDocumentOnly: true } } },
  { $project: { _id: 0, t: 1, v: 1 } },
  { $emit: { connectionName: "localKafka", topic: "stats_in" } }]);
sp.statsFeed.start();
sp.createStreamProcessor("statsWin", [
  { $source: { connectionName: "localKafka", topic: "stats_in", timeField: { $toDate: "$t" },
               partitionIdleTimeout: { size: NumberInt(1), unit: "second" },
               config: { auto_offset_reset: "earliest" } } },
  { $tumblingWindow: { interval: { size: NumberInt(10), unit: "second" },
                       pipeline: [{ $group: { _id: null, n: { $sum: 1 }, total: { $sum: "$v" } } }] } },
  { $merge: { into: { connectionName: "atlas", db: "stats", coll: "winOut" } } }]);
sp.statsWin.start();
// The messages land on one of the topic's partitions: the others, idle
// for more than partitionIdleTimeout by the time the fourth document comes,
// do not hold the watermark back.
[1000, 2000, 3000].forEach((o, i) => sdb.feed.insertOne({ _id: i, t: T0 + o, v: i + 1 }));
// A fresh consumer group on the local broker: its first assignment waits
// for the group's rebalance, which a loaded machine stretches; not timed.
waitStats("statsWin", "statsWin to read 3", s => num(s.inputMessageCount) === 3, undefined, 180000);
sleep(1500);
[14000, 15000].forEach((o, i) => sdb.feed.insertOne({ _id: 3 + i, t: T0 + o, v: 4 + i }));
const w = waitStats("statsWin", "statsWin to read 5 and merge 1", s =>
  num(s.inputMessageCount) === 5 && num(s.outputMessageCount) === 1 &&
  s.operatorStats.length === 3 && num(s.operatorStats[2].outputMessageCount) === 1 &&
  num(s.latency.count) === 1); // a latency is counted once $merge has written
checkShape(w, "statsWin");
assert(w.status === "running", "running: " + w.status);
assert(sdb.winOut.countDocuments({ n: 3, total: 6 }) === 1, "the first window merged: " + j(sdb.winOut.find().toArray()));
assert(same(w.operatorStats.map(o => o.name), ["KafkaConsumerOperator", "WindowOperator", "MergeOperator"]),
       "operator names: " + j(w.operatorStats.map(o => o.name)));
const [src, win, merge] = w.operatorStats;
assert(same(counts(src), [5, 5, 0]), "source counts: " + j(src));
assert(same(counts(win), [5, 1, 0]), "window counts: " + j(win));
assert(same(counts(merge), [1, 1, 0]), "$merge counts: " + j(merge));
assert(num(src.inputMessageSize) === num(w.inputMessageSize), "source input size = processor's");
assert(num(merge.outputMessageSize) === w.outputMessageSize, "sink output size = processor's");
assert(num(win.outputMessageSize) === num(merge.inputMessageSize), "window output = $merge input");
assert(num(win.stateSize) > 0 && num(win.stateSize) === num(w.stateSize), "the open window's state: " + j(win));
// The open window is [T0+10 s, T0+20 s).
for (const o of [w, win]) {
  assert(isDate(o.minOpenWindowStartTime) && o.minOpenWindowStartTime.getTime() === T0 + 10000,
         "minOpenWindowStartTime: " + j(o.minOpenWindowStartTime));
  assert(isDate(o.maxOpenWindowStartTime) && o.maxOpenWindowStartTime.getTime() === T0 + 10000,
         "maxOpenWindowStartTime: " + j(o.maxOpenWindowStartTime));
}
assert(same(merge.targetStats.map(t => [t.db, t.coll, num(t.inputMessageCount), num(t.outputMessageCount)]),
            [["stats", "winOut", 1, 1]]), "targetStats: " + j(merge.targetStats));
// One result left the window: its latency counts from its first input.
assert(num(w.latency.count) === 1 && num(merge.latency.count) === 1, "one latency: " + j(w.latency));
const firstSeen = Date.now(); // the first result's latency was counted by now
assert(num(w.latency.sum) >= num(w.latency.p50) / 1.25, "sum vs p50: " + j(w.latency));
assert(!("changeStreamState" in w), "no changeStreamState on a Kafka source");
// A third window's document closes the second: both open-window times move.
sdb.feed.insertOne({ _id: 9, t: T0 + 25000, v: 10 });
// latency covers the last 30 s (as ASP's): on a loaded machine the first
// result's may have left it by the time the second is written.
const aged = () => Date.now() - firstSeen >= 30000;
const w2 = waitStats("statsWin", "the second window closed", s => num(s.outputMessageCount) === 2 &&
  (num(s.latency.count) === 2 || (num(s.latency.count) === 1 && aged())));
assert(w2.minOpenWindowStartTime.getTime() === T0 + 20000 && w2.maxOpenWindowStartTime.getTime() === T0 + 20000,
       "open window moved: " + j([w2.minOpenWindowStartTime, w2.maxOpenWindowStartTime]));
assert(num(w2.latency.p50) <= num(w2.latency.p99), "p50 <= p99: " + j(w2.latency));

// Scaling: every size divided the same way (down).
const raw = stats("statsWin"), kib = stats("statsWin", { scale: 1024 });
for (const k of ["inputMessageSize", "outputMessageSize", "dlqMessageSize", "stateSize"])
  assert(num(kib[k]) === Math.floor(num(raw[k]) / 1024), `scaled ${k}: ${num(raw[k])} -> ${num(kib[k])}`);
assert(num(kib.operatorStats[0].inputMessageSize) === Math.floor(num(raw.operatorStats[0].inputMessageSize) / 1024),
       "operator sizes scaled too");
assert(num(kib.memoryTrackerBytes) === num(raw.memoryTrackerBytes), "memoryTrackerBytes is not scaled");
assert(num(kib.scaleFactor) === 1024, "scaleFactor");

// ---- change stream -> $merge --------------------------------------------------
sp.createStreamProcessor("statsCs", [
  { $source: { connectionName: "atlas", db: "stats", coll: "csIn" } },
  { $merge: { into: { connectionName: "atlas", db: "stats", coll: "csOut" } } }]);
sp.statsCs.start();
sdb.csIn.insertMany([{ _id: 1, a: 1 }, { _id: 2, a: 2 }, { _id: 3, a: 3 }]);
const c = waitStats("statsCs", "statsCs to merge 3", s =>
  num(s.outputMessageCount) === 3 && num(s.operatorStats[1].outputMessageCount) === 3);
checkShape(c, "statsCs");
assert(same(c.operatorStats.map(o => o.name), ["ChangeStreamConsumerOperator", "MergeOperator"]),
       "operator names: " + j(c.operatorStats.map(o => o.name)));
assert(same(counts(c.operatorStats[0]), [3, 3, 0]) && same(counts(c.operatorStats[1]), [3, 3, 0]),
       "counts: " + j(c.operatorStats));
assert(num(c.inputMessageCount) === 3, "input 3");
assert(num(c.latency.count) === 3, "three latencies: " + j(c.latency));
assert(typeof c.changeStreamState === "object" && c.changeStreamState !== null && "_data" in c.changeStreamState,
       "changeStreamState is the resume token: " + j(c.changeStreamState));
assert(isLong(c.changeStreamTimeDifferenceSecs) && num(c.changeStreamTimeDifferenceSecs) >= 0,
       "changeStreamTimeDifferenceSecs: " + j(c.changeStreamTimeDifferenceSecs));
assert(!("minOpenWindowStartTime" in c), "no open-window times without a window");
// $merge counts a document when the processor hands it to its writer,
// which writes it in a batch just after: the documents land shortly after
// the figures say 3 (bounded wait).
const mergedBy = Date.now() + 60000;
while (sdb.csOut.countDocuments() !== 3 && Date.now() < mergedBy) sleep(200);
assert(sdb.csOut.countDocuments() === 3, "merged: " + j(sdb.csOut.find().toArray()));

// ---- $merge.parallelism counts as added parallelism ----------------------------
sp.createStreamProcessor("statsPar", [
  { $source: { connectionName: "atlas", db: "stats", coll: "parIn" } },
  { $merge: { into: { connectionName: "atlas", db: "stats", coll: "parOut" }, parallelism: 3 } }]);
const p = sp.statsPar.stats().stats;
assert(num(p.addedParallelism) === 2, "addedParallelism 3 - 1: " + j(p));

// ---- statuses: ASP's set --------------------------------------------------------
assert(p.status === "created", "never started: created: " + p.status);
sp.statsCs.stop();
const stopped = sp.statsCs.stats();
assert(stopped.state === "STOPPED" && stopped.stats.status === "created",
       "stopped: state STOPPED, status created: " + j([stopped.state, stopped.stats.status]));
for (const n of ["statsWin", "statsFeed", "statsPar"]) sp[n].drop();
sp.statsCs.drop();
print("stats: all checks passed");
