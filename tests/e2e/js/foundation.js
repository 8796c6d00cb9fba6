// Foundation checks through aspen with mongosh 2.12: handshake, forwarded
// CRUD, cursors with getMore, aggregation, errors, admin commands and `sp`.
// Run by tests/e2e/test_foundation_mongosh.sh (plain and TLS). Any mismatch
// throws, so mongosh exits non-zero.
'use strict';

function fail(what, got, want) {
  throw new Error(`${what}: got ${EJSON.stringify(got)}, want ${EJSON.stringify(want)}`);
}
function eq(what, got, want) {
  const g = EJSON.stringify(got, { relaxed: true });
  const w = EJSON.stringify(want, { relaxed: true });
  if (g !== w) fail(what, got, want);
}

const N = 250;
const t = db.getSiblingDB('aspen_e2e_foundation');
const coll = t.getCollection('docs');
// The same backing server serves the plain and the TLS run. (On a missing
// collection mongo-java-server answers drop with "ns not found" and no code,
// which mongosh's drop() throws instead of returning false.)
try {
  coll.drop();
} catch (e) {
  if (!/ns not found/.test(e.message)) throw e;
}

// ping
const ping = db.runCommand({ ping: 1 });
if (ping.ok !== 1) fail('ping.ok', ping.ok, 1);

// insertMany
const docs = [];
for (let i = 0; i < N; i++) docs.push({ _id: i, i, g: i % 5, even: i % 2 === 0, s: `doc${i}` });
const ins = coll.insertMany(docs);
if (ins.acknowledged !== true) fail('insertMany.acknowledged', ins.acknowledged, true);
eq('insertMany count', Object.keys(ins.insertedIds).length, N);

// find with batchSize 10: the shell's cursor issues getMores for the rest.
let seen = 0;
let sum = 0;
const cur = coll.find({}).sort({ _id: 1 }).batchSize(10);
while (cur.hasNext()) {
  const d = cur.next();
  if (d._id !== seen) fail('find order', d._id, seen);
  sum += d.i;
  seen++;
}
eq('find().batchSize(10) docs', seen, N);
eq('find sum', sum, (N * (N - 1)) / 2);

// The same by hand: the cursor id from find must work in getMore.
const first = t.runCommand({ find: 'docs', filter: {}, sort: { _id: 1 }, batchSize: 10 });
eq('find.firstBatch length', first.cursor.firstBatch.length, 10);
if (first.cursor.id == 0) fail('find cursor id', first.cursor.id, 'non-zero');
eq('find ns', first.cursor.ns, 'aspen_e2e_foundation.docs');
let more = t.runCommand({ getMore: first.cursor.id, collection: 'docs', batchSize: 100 });
eq('getMore.nextBatch length', more.cursor.nextBatch.length, 100);
eq('getMore first _id', more.cursor.nextBatch[0]._id, 10);
more = t.runCommand({ getMore: first.cursor.id, collection: 'docs', batchSize: 1000 });
eq('last getMore length', more.cursor.nextBatch.length, N - 110);
if (more.cursor.id != 0) fail('exhausted cursor id', more.cursor.id, 0);

// aggregate with $match and $group
const agg = coll.aggregate([
  { $match: { even: true } },
  { $group: { _id: '$g', n: { $sum: 1 }, total: { $sum: '$i' } } },
  { $sort: { _id: 1 } },
]).toArray();
const want = [];
for (let g = 0; g < 5; g++) want.push({ _id: g, n: 0, total: 0 });
for (const d of docs) if (d.even) { want[d.g].n++; want[d.g].total += d.i; }
eq('aggregate $match/$group', agg, want);

// countDocuments
eq('countDocuments({})', coll.countDocuments({}), N);
eq('countDocuments({g: 3})', coll.countDocuments({ g: 3 }), N / 5);

// duplicate key
let dup = null;
try {
  coll.insertOne({ _id: 7 });
} catch (e) {
  dup = e;
}
if (dup === null) throw new Error('duplicate _id insert did not throw');
if (dup.name !== 'MongoServerError') fail('duplicate key error name', dup.name, 'MongoServerError');
eq('duplicate key error code', dup.code, 11000);
eq('count after failed insert', coll.countDocuments({}), N);

// drop
eq('drop()', coll.drop(), true);
eq('count after drop', coll.countDocuments({}), 0);

// admin commands
const bi = db.adminCommand({ buildInfo: 1 });
if (typeof bi.version !== 'string' || bi.version.length === 0) fail('buildInfo.version', bi.version, 'a string');

// Atlas Stream Processing helpers
if (typeof sp !== 'object') fail('typeof sp', typeof sp, 'object');

print('foundation.js: all checks passed');
