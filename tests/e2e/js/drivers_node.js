// e2e (issue 22) with the Node.js driver that mongosh bundles (7.9): what a
// driver gets through aspen when the backing deployment is a replica set
// (the backing server's --replset) and in load-balanced mode. Run by
// tests/e2e/test_drivers_node.sh:
//   node drivers_node.js TXN_PORT LB_PORT RELAY_PID_FILE
// TXN_PORT: aspen whose backend is reached through tests/e2e/tcp_relay.py
// (RELAY_PID_FILE: SIGUSR1 drops the next reply and closes that connection);
// LB_PORT: aspen with net.loadBalanced. Prints one "ok N - ..." or
// "not ok N - ..." line per check; exits non-zero on a failure.
'use strict';
const fs = require('fs');
const path = require('path');
const { MongoClient, ObjectId } = require(path.join(__dirname, '../../../.deps/node/node_modules/mongodb'));

const [txnPort, lbPort, relayPidFile] = process.argv.slice(2);
const OPTS = { serverSelectionTimeoutMS: 20000, socketTimeoutMS: 20000, heartbeatFrequencyMS: 500 };
let n = 0, failed = 0;

async function check(name, fn) {
  n++;
  try {
    await fn();
    console.log(`ok ${n} - ${name}`);
  } catch (e) {
    failed++;
    console.log(`not ok ${n} - ${name}: ${e && e.stack || e}`);
  }
}
function assert(cond, msg) { if (!cond) throw new Error('assertion failed: ' + msg); }
function cutNextReply() { process.kill(Number(fs.readFileSync(relayPidFile, 'utf8').trim()), 'SIGUSR1'); }

async function fresh(client, name) {
  const db = client.db('drivers_node');
  await db.collection(name).drop().catch(() => {});
  return db.collection(name);
}

function recorder(client) {
  const started = [], failures = [];
  client.on('commandStarted', e => started.push(e));
  client.on('commandFailed', e => failures.push(e));
  return { started, failures, named: name => started.filter(e => e.commandName === name).map(e => e.command) };
}

async function spRoundtrip(client) {
  const admin = client.db('admin');
  let r = await admin.command({ processStreamProcessor: [{ $source: { documents: [{ drv: 22 }] } }] });
  const name = r.name; let cursorId = r.cursorId; const got = [];
  for (let i = 0; i < 200 && String(cursorId) !== '0'; i++) {
    r = await admin.command({ getMoreSampleStreamProcessor: name, cursorId });
    got.push(...r.messages);
    cursorId = r.cursorId;
    if (got.some(m => m.drv === 22)) break;
  }
  assert(got.some(m => m.drv === 22), 'sample shows the document: ' + JSON.stringify(got));
  await admin.command({ dropStreamProcessor: name });
  r = await admin.command({ listStreamProcessors: 1, filter: null });
  assert(Array.isArray(r.streamProcessors), 'listStreamProcessors');
}

(async () => {
  const c = new MongoClient(`mongodb://127.0.0.1:${txnPort}/`, { ...OPTS, monitorCommands: true });
  const rec = recorder(c);
  let heartbeatFailures = 0;
  c.on('serverHeartbeatFailed', () => heartbeatFailures++);
  await c.connect();

  await check('aspen in front of a replica set is a mongos to the driver', async () => {
    const hello = await c.db('admin').command({ hello: 1 });
    assert(hello.msg === 'isdbgrid', 'msg');
    assert(hello.topologyVersion && hello.topologyVersion.processId instanceof ObjectId, 'topologyVersion');
    assert(hello.logicalSessionTimeoutMinutes === 30 && hello.maxWireVersion === 13, 'backend facts');
    const desc = c.topology.description;
    assert(desc.type === 'Sharded', 'topology ' + desc.type);
    assert([...desc.servers.values()][0].type === 'Mongos', 'server type');
  });

  await check('a retryable write carries txnNumber and is retried once after a cut, executed once', async () => {
    const coll = await fresh(c, 'retry');
    cutNextReply();
    await coll.insertOne({ _id: 'r1' });
    const inserts = rec.named('insert').filter(cmd => cmd.documents[0]._id === 'r1');
    assert(inserts.length === 2, 'two attempts, got ' + inserts.length);
    assert(inserts[0].txnNumber.equals(inserts[1].txnNumber), 'same txnNumber');
    const f = rec.failures.filter(e => e.commandName === 'insert').pop();
    assert(f && f.failure.errorLabels && f.failure.errorLabels.includes('RetryableWriteError'), 'label');
    assert(await coll.countDocuments({ _id: 'r1' }) === 1, 'executed once');
  });

  await check('a transaction over several commands and a getMore commits', async () => {
    const coll = await fresh(c, 'commit');
    await coll.insertMany([0, 1, 2, 3, 4].map(i => ({ _id: i })));
    const s = c.startSession();
    try {
      await s.withTransaction(async () => {
        await coll.insertOne({ _id: 10 }, { session: s });
        await coll.updateOne({ _id: 0 }, { $set: { t: true } }, { session: s });
        const ids = (await coll.find({}, { session: s, batchSize: 2 }).sort({ _id: 1 }).toArray()).map(d => d._id);
        assert(JSON.stringify(ids) === '[0,1,2,3,4,10]', 'reads its own writes: ' + ids);
      });
    } finally { await s.endSession(); }
    const txn = rec.started.filter(e => e.command.autocommit === false).map(e => e.command);
    const names = txn.map(cmd => Object.keys(cmd)[0]);
    assert(names.includes('getMore') && names[names.length - 1] === 'commitTransaction', 'names ' + names);
    assert(new Set(txn.map(cmd => String(cmd.txnNumber))).size === 1, 'one txnNumber');
    assert(await coll.countDocuments({}) === 6, 'committed');
  });

  await check('an aborted transaction leaves nothing behind', async () => {
    const coll = await fresh(c, 'abort');
    await coll.insertOne({ _id: 1, v: 'old' });
    const s = c.startSession();
    try {
      s.startTransaction();
      await coll.insertOne({ _id: 2 }, { session: s });
      await coll.updateOne({ _id: 1 }, { $set: { v: 'new' } }, { session: s });
      await s.abortTransaction();
    } finally { await s.endSession(); }
    const docs = await coll.find().toArray();
    assert(docs.length === 1 && docs[0].v === 'old', JSON.stringify(docs));
  });

  await check('a commit is retried after a cut and commits once', async () => {
    const coll = await fresh(c, 'commit_retry');
    const before = rec.named('commitTransaction').length;
    const s = c.startSession();
    try {
      s.startTransaction();
      await coll.insertOne({ _id: 1 }, { session: s });
      cutNextReply();
      await s.commitTransaction();
    } finally { await s.endSession(); }
    assert(rec.named('commitTransaction').length - before === 2, 'commit sent twice');
    assert(await coll.countDocuments({}) === 1, 'committed');
  });

  await check('sp commands work in front of a replica set', () => spRoundtrip(c));

  await check('the streamed hello keeps the monitor healthy', async () => {
    await new Promise(r => setTimeout(r, 1500));
    assert(heartbeatFailures === 0, heartbeatFailures + ' heartbeat failures');
  });
  await c.close();

  const lb = new MongoClient(`mongodb://127.0.0.1:${lbPort}/?loadBalanced=true`, OPTS);
  await lb.connect();
  await check('loadBalanced=true: CRUD, a getMore and a transaction', async () => {
    assert(lb.topology.description.type === 'LoadBalanced', 'topology ' + lb.topology.description.type);
    const coll = await fresh(lb, 'lb');
    await coll.insertMany([0, 1, 2, 3, 4].map(i => ({ _id: i })));
    await coll.updateOne({ _id: 1 }, { $set: { u: 1 } });
    await coll.deleteOne({ _id: 4 });
    const ids = (await coll.find({}, { batchSize: 2 }).sort({ _id: 1 }).toArray()).map(d => d._id);
    assert(JSON.stringify(ids) === '[0,1,2,3]', 'ids ' + ids);
    const s = lb.startSession();
    try {
      await s.withTransaction(async () => { await coll.insertOne({ _id: 9 }, { session: s }); });
    } finally { await s.endSession(); }
    assert(await coll.countDocuments({}) === 5, 'count');
  });
  await check('loadBalanced=true: sp commands', () => spRoundtrip(lb));
  await lb.close();

  const refused = new MongoClient(`mongodb://127.0.0.1:${txnPort}/?loadBalanced=true`,
                                  { serverSelectionTimeoutMS: 3000, connectTimeoutMS: 3000 });
  await check('loadBalanced=true without net.loadBalanced is refused (354)', async () => {
    let err = null;
    try { await refused.db('admin').command({ ping: 1 }); } catch (e) { err = e; }
    assert(err && (err.code === 354 || /354|load balancing/.test(String(err.message) + String(err.cause))),
           'refused: ' + err);
  });
  await refused.close().catch(() => {});

  console.log(`${n - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})().catch(e => { console.log('not ok - ' + (e && e.stack || e)); process.exit(1); });
