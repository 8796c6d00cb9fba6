// e2e: Kafka $source and $emit through stock mongosh against aspen, a real
// Apache Kafka broker and a real backing server. Run by test_kafka.sh, one
// phase at a time (KT_PHASE); throws on the first mismatch.
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
function expectError(fn, code, re) {
  try { fn(); } catch (e) {
    assert(e.code === code, `want code ${code}, got ${e.code} (${e.message})`);
    if (re) assert(re.test(e.message), `message ${JSON.stringify(e.message)} does not match ${re}`);
    return e;
  }
  throw new Error(`expected error ${code} ${re || ""}`);
}
function waitFor(what, fn, ms) {
  const end = Date.now() + (ms || 30000);
  let last;
  while (Date.now() < end) {
    last = fn();
    if (last) return last;
    sleep(200);
  }
  throw new Error("timed out waiting for " + what);
}
const kt = db.getSiblingDB("kt");
const dlq = { connectionName: "atlas", db: "kt", coll: "dlq" };
const phase = process.env.KT_PHASE;

if (phase === "read") {
  // Connections: the kafka one is listed with its servers, never a secret.
  const conns = sp.listConnections();
  const k = conns.find(c => c.name === "kafka1");
  assert(k && k.type === "kafka" && /^127\.0\.0\.1:\d+$/.test(k.bootstrapServers), "kafka connection listed");
  const s = conns.find(c => c.name === "kafkaSasl");
  assert(s && s.security.protocol === "SASL_PLAINTEXT" && s.security.username === "alice", "security listed");
  assert(!JSON.stringify(conns).includes("hunter2"), "no password in listings: " + JSON.stringify(conns));

  // Option validation with ASP's wording.
  expectError(() => sp.createStreamProcessor("bad1", [
    { $source: { connectionName: "kafka1", topic: "dailySales", nope: 1 } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "x" } } }]), 420,
    /BSON field '\$source.nope' is an unknown field/);
  expectError(() => sp.createStreamProcessor("bad2", [
    { $source: { connectionName: "kafka1" } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "x" } } }]), 420,
    /'\$source.topic' is missing/);
  expectError(() => sp.createStreamProcessor("bad3", [
    { $source: { connectionName: "kafka1", topic: "t", config: { auto_offset_reset: "middle" } } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "x" } } }]), 420,
    /Enumeration value 'middle'/);
  expectError(() => sp.createStreamProcessor("bad4", [
    { $source: { documents: [{ a: 1 }] } },
    { $emit: { connectionName: "kafka1", topic: "t", config: { key: "$a" } } }]), 420,
    /Expected config.keyFormat to be specified when config.key is specified/);
  expectError(() => sp.createStreamProcessor("bad5", [
    { $source: { connectionName: "kafka1", topic: "t", partitionIdleTimeout: { size: 1, unit: "week" } } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "x" } } }]), 420,
    /Enumeration value 'week'/);

  // A missing topic fails the start with 419 and "no partitions found".
  sp.createStreamProcessor("missing", [
    { $source: { connectionName: "kafka1", topic: "noSuchTopic" } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "x" } } }]);
  expectError(() => sp.missing.start(), 419, /no partitions found/);
  const m = sp.listStreamProcessors().find(p => p.name === "missing");
  assert(m.state === "FAILED" && /no partitions found/.test(m.errorMsg), "missing topic: FAILED with the reason");
  sp.missing.drop();

  // dailySales (seeded by the test: 4 valid sales, 1 line that is not JSON)
  // -> $match -> $merge; the bad line goes to the DLQ with its bytes.
  sp.createStreamProcessor("sales", [
    { $source: { connectionName: "kafka1", topic: "dailySales",
                 config: { auto_offset_reset: "earliest", keyFormat: "string" } } },
    { $match: { amount: { $gte: 10 } } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "sales" } } }], { dlq });
  sp.sales.start();
  waitFor("3 sales in kt.sales", () => kt.sales.countDocuments() === 3);
  waitFor("1 DLQ entry", () => kt.dlq.countDocuments() === 1);
  const d = kt.dlq.findOne();
  assert(d.doc.value === "this is not json", "DLQ keeps the raw bytes: " + JSON.stringify(d));
  assert(/JSON/.test(d.errInfo.reason), "DLQ reason: " + d.errInfo.reason);
  assert(d.operatorName === "KafkaConsumerOperator", "operatorName");
  assert(d._stream_meta.source.topic === "dailySales", "DLQ entry has its source metadata");
  // Never ingested: its metadata has no ingestion time (source.ts).
  assert(JSON.stringify(Object.keys(d._stream_meta.source)) ===
         '["type","topic","partition","offset","key"]', "DLQ source meta fields: " + JSON.stringify(d._stream_meta));
  const first = kt.sales.findOne({ item: "apple" });
  const src = first._stream_meta.source;
  assert(src.type === "kafka" && src.topic === "dailySales" && src.partition === 0, "source meta: " + JSON.stringify(src));
  assert(src.offset instanceof Long && src.offset.toString() === "0", "offset is a Long: " + JSON.stringify(src));
  assert(src.key === "k1", "string key: " + JSON.stringify(src));
  // ASP's fields in aspen's order, the ingestion time after the type.
  assert(JSON.stringify(Object.keys(src)) === '["type","ts","topic","partition","offset","key"]' &&
         src.ts instanceof Date, "source meta fields: " + JSON.stringify(src));
  assert(first._ts instanceof Date, "_ts is a Date (the Kafka timestamp)");
  sp.sales.stop();
  print("read phase ok");
}

if (phase === "resume") {
  // Two more messages were produced while it was stopped: it continues
  // from its committed offsets, with no gap and no duplicate.
  sp.sales.start();
  waitFor("5 sales after the restart", () => kt.sales.countDocuments() === 5);
  sleep(1500);
  assert(kt.sales.countDocuments() === 5, "no duplicates after the restart");
  assert(kt.dlq.countDocuments() === 1, "no DLQ duplicates either");
  sp.sales.stop();
  print("resume phase ok");
}

if (phase === "validate") {
  // Seed listing 15.4's shape: dailySales -> $validate (dlq) -> $emit to
  // another topic. Valid sales reach validSales; the short sale and the line
  // that is not JSON go to the DLQ.
  const dlq15 = { connectionName: "atlas", db: "kt", coll: "dlq15" };
  sp.createStreamProcessor("salesDataProcessor", [
    { $source: { connectionName: "kafka1", topic: "dailySales",
                 config: { auto_offset_reset: "earliest", group_id: "kt-validate" } } },
    { $validate: { validator: { $and: [{ item: { $exists: true, $type: "string" } },
                                       { amount: { $exists: true, $gte: 10 } }] },
                   validationAction: "dlq" } },
    { $emit: { connectionName: "kafka1", topic: "validSales" } }], { dlq: dlq15 });
  sp.salesDataProcessor.start();
  sp.createStreamProcessor("validReader", [
    { $source: { connectionName: "kafka1", topic: "validSales",
                 config: { auto_offset_reset: "earliest", group_id: "kt-valid-reader" } } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "valid" } } }]);
  waitFor("topic validSales", () => {
    try { sp.validReader.start(); return true; } catch (e) { if (e.code !== 419) throw e; return false; }
  });
  // 7 sales so far: apple 12, pear 3, (not JSON), plum 40, fig 10.5, kiwi 11, lime 99.
  waitFor("5 valid sales emitted and read back", () => kt.valid.countDocuments() === 5);
  waitFor("2 DLQ entries", () => kt.dlq15.countDocuments() === 2);
  assert(kt.valid.countDocuments({ item: "pear" }) === 0, "the short sale was not emitted");
  assert(kt.dlq15.countDocuments({ "errInfo.reason": "Input document found to be invalid in $validate stage" }) === 1,
         "the invalid sale is in the DLQ with $validate's reason");

  // auto_offset_reset latest: a new group sees only what arrives after it
  // started; earliest (above) saw everything.
  sp.createStreamProcessor("latecomer", [
    { $source: { connectionName: "kafka1", topic: "dailySales",
                 config: { auto_offset_reset: "latest", group_id: "kt-latest" } } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "latest" } } }]);
  sp.latecomer.start();
  // Its group must own the partition (and have resolved "latest") before
  // the new sale is produced.
  waitFor("latecomer assigned its partition", () => {
    const st = sp.latecomer.stats().stats;
    return st.kafkaPartitions && st.kafkaPartitions.length === 1;
  });
  sleep(3000);
  sp.createStreamProcessor("lateWriter", [
    { $source: { documents: [{ item: "late", amount: 50 }] } },
    { $emit: { connectionName: "kafka1", topic: "dailySales" } }]);
  sp.lateWriter.start();
  waitFor("the new sale", () => kt.latest.countDocuments() === 1);
  sleep(1000);
  assert(kt.latest.countDocuments() === 1 && kt.latest.findOne().item === "late",
         "latest: only the sale produced after the start");
  for (const n of ["salesDataProcessor", "validReader", "latecomer", "lateWriter"]) sp[n].drop();
  print("validate phase ok");
}

if (phase === "emit") {
  // documents -> $emit (dynamic topic, int key, headers) -> a Kafka $source
  // reads them back with their metadata.
  sp.createStreamProcessor("writer", [
    { $source: { documents: [{ _id: 1, kind: "rt", n: "one" }, { _id: 2, kind: "rt", n: "two" }] } },
    { $emit: { connectionName: "kafka1", topic: { $concat: ["round", "$kind"] },
               config: { key: "$_id", keyFormat: "int", headers: { who: "$n" } } } }]);
  sp.writer.start();
  sp.createStreamProcessor("reader", [
    { $source: { connectionName: "kafka1", topic: ["roundrt"],
                 config: { auto_offset_reset: "earliest", keyFormat: "int" } } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "roundtrip" } } }], { dlq });
  waitFor("topic roundrt", () => {
    try { sp.reader.start(); return true; } catch (e) { if (e.code !== 419) throw e; return false; }
  });
  waitFor("2 round-trip documents", () => kt.roundtrip.countDocuments() === 2);
  const r = kt.roundtrip.findOne({ _id: 1 });
  const src = r._stream_meta.source;
  assert(r.n === "one", "value round-trips: " + JSON.stringify(r));
  assert(src.topic === "roundrt" && src.partition === 0 && src.offset instanceof Long, "meta: " + JSON.stringify(src));
  assert(src.key === 1, "int key round-trips: " + JSON.stringify(src));
  assert(JSON.stringify(Object.keys(src)) === '["type","ts","topic","partition","offset","key","headers"]',
         "source meta fields: " + JSON.stringify(src));
  assert(src.headers.length === 1 && src.headers[0].k === "who" &&
         src.headers[0].v.toString("utf8") === "one" || src.headers[0].v.base64() === "b25l", "headers: " + JSON.stringify(src));
  sp.writer.stop();
  sp.reader.stop();
  print("emit phase ok");
}

if (phase === "two_topics") {
  // Partition 0 of twoA and of twoB are two partitions: each holds the
  // window's watermark back until it is read, so whichever topic is read
  // first makes none of the other's messages late; every 1 s window counts
  // the 5 messages of each topic, and the DLQ stays empty.
  const dlqTopics = { connectionName: "atlas", db: "kt", coll: "dlqTopics" };
  sp.createStreamProcessor("twoTopics", [
    { $source: { connectionName: "kafka1", topic: ["twoA", "twoB"], timeField: "$t",
                 config: { auto_offset_reset: "earliest" } } },
    { $tumblingWindow: { interval: { size: 1, unit: "second" }, allowedLateness: 0,
                         pipeline: [{ $group: { _id: { $meta: "stream.window.start" },
                                                n: { $sum: 1 },
                                                topics: { $addToSet: "$topic" } } }] } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "twoTopics" } } }],
    { dlq: dlqTopics });
  sp.twoTopics.start();
  waitFor("6 windows of twoA and twoB", () => kt.twoTopics.countDocuments() === 6);
  const wins = kt.twoTopics.find().sort({ _id: 1 }).toArray();
  const late = kt.dlqTopics.find().toArray();
  assert(late.length === 0, "no DLQ entries: " + JSON.stringify(late.slice(0, 2)));
  const base = Date.UTC(2024, 4, 1);
  wins.forEach((w, k) => {
    assert(w._id.getTime() === base + k * 1000 && w.n === 10 &&
           JSON.stringify(w.topics.sort()) === '["twoA","twoB"]', "window " + k + ": " + JSON.stringify(w));
  });
  sp.twoTopics.stop();
  print("two_topics phase ok");
}

if (phase === "local") {
  // Zero-setup Kafka: the "localKafka" connection has "local": true, so
  // aspen hosts the broker itself and lists its loopback address.
  const c = sp.listConnections().find(x => x.name === "localKafka");
  assert(c && c.type === "kafka" && c.local === true && /^127\.0\.0\.1:\d+$/.test(c.bootstrapServers),
         "local connection listed with its address: " + JSON.stringify(c));
  // documents -> $emit to the local broker (the topic is created on first
  // use) ...
  sp.createStreamProcessor("localWriter", [
    { $source: { documents: [{ _id: 1, v: "a" }, { _id: 2, v: "b" }, { _id: 3, v: "c" }] } },
    { $emit: { connectionName: "localKafka", topic: "localTopic",
               config: { key: "$_id", keyFormat: "int" } } }]);
  sp.localWriter.start();
  // ... and sp.process's wire commands read them back from it.
  const admin = db.getSiblingDB("admin");
  const got = {};
  waitFor("3 messages from the local broker", () => {
    let r;
    try {
      r = admin.runCommand({ processStreamProcessor: [
        { $source: { connectionName: "localKafka", topic: "localTopic",
                     config: { auto_offset_reset: "earliest", keyFormat: "int" } } }] });
    } catch (e) { if (e.code !== 419) throw e; return false; } // topic not there yet
    const end = Date.now() + 15000;
    while (Object.keys(got).length < 3 && Date.now() < end) {
      const m = admin.runCommand({ getMoreSampleStreamProcessor: r.name, cursorId: r.cursorId });
      for (const d of m.messages || []) {
        const src = d._stream_meta.source;
        assert(src.type === "kafka" && src.topic === "localTopic" && src.key === d._id,
               "local message meta: " + JSON.stringify(d));
        got[d._id] = d.v;
      }
      sleep(200);
    }
    admin.runCommand({ dropStreamProcessor: r.name });
    return Object.keys(got).length === 3;
  }, 60000);
  assert(got[1] === "a" && got[2] === "b" && got[3] === "c", "round trip: " + JSON.stringify(got));
  sp.localWriter.stop();
  sp.localWriter.drop();
  print("local phase ok");
}

if (phase === "restart_begin") {
  // A Kafka -> $merge processor that keeps running while the test kills
  // the broker and starts it again (test_kafka.sh broker_restart).
  sp.createStreamProcessor("survivor", [
    { $source: { connectionName: "kafka1", topic: "restartIn",
                 partitionIdleTimeout: { size: 1, unit: "second" },
                 config: { auto_offset_reset: "earliest" } } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "survived" }, on: "_id" } }], { dlq });
  sp.survivor.start();
  waitFor("the first messages in kt.survived", () => kt.survived.countDocuments() > 0);
  print("restart_begin phase ok");
}

if (phase === "restart_check") {
  // Every message produced before, during and after the broker restart is
  // there exactly once (the merge is on _id, so a re-read tail would not
  // add documents, and a lost message would leave a gap), and the processor
  // is still running.
  const want = Number(process.env.KT_RESTART_N);
  waitFor(`${want} documents in kt.survived`, () => kt.survived.countDocuments() >= want, 120000);
  sleep(1500);
  assert(kt.survived.countDocuments() === want, "no extra documents: " + kt.survived.countDocuments());
  assert(kt.survived.countDocuments({ _id: { $gte: 0, $lt: want } }) === want, "every _id in 0.." + (want - 1));
  const n = kt.survived.aggregate([{ $group: { _id: null, s: { $sum: "$n" } } }]).toArray()[0].s;
  assert(n === want * (want - 1) / 2, "each message's own payload: sum " + n);
  assert(kt.dlq.countDocuments({ "_stream_meta.source.topic": "restartIn" }) === 0, "nothing in the DLQ");
  const p = sp.listStreamProcessors().find(x => x.name === "survivor");
  assert(p.state === "STARTED", "still running: " + p.state + " " + p.errorMsg);
  const stats = () => db.getSiblingDB("admin").runCommand({ getStreamProcessorStats: "survivor" }).stats;
  const st = stats();
  assert(st.inputMessageCount >= want, "stats count every message read: " + JSON.stringify(st));
  // The Kafka fields: the group, and the one partition read to its end
  // with the end committed and, with nothing more to read for longer than
  // partitionIdleTimeout, idle (published every second or so).
  const k = waitFor("Kafka stats caught up", () => {
    const s = stats();
    const kp = s.kafkaPartitions || [];
    return kp.length === 1 && Number(kp[0].checkpointOffset) === want &&
           Number(kp[0].currentOffset) === want && kp[0].isIdle === true ? s : null;
  });
  assert(/^asp-[0-9a-f]{24}-consumer$/.test(k.kafkaConsumerGroup), "kafkaConsumerGroup: " + k.kafkaConsumerGroup);
  const kp = k.kafkaPartitions[0];
  assert(kp.topic === "restartIn" && kp.partition === 0 && Number(kp.partitionOffsetLag) === 0 &&
         Number(k.kafkaTotalOffsetLag) === 0, "kafkaPartitions: " + JSON.stringify(k));
  sp.survivor.stop();
  print("restart_check phase ok");
}

// ---- faults: delivery errors, deleted topics, authentication ----------------

// The processor `name` as sp.listStreamProcessors() and sp.<name>.stats()
// show it once it has FAILED; both carry the same error message.
function failedWith(name, re) {
  const p = waitFor(`${name} FAILED`, () => {
    const x = sp.listStreamProcessors().find(q => q.name === name);
    return x && x.state === "FAILED" ? x : null;
  }, 90000);
  assert(re.test(p.errorMsg), `${name}: errorMsg ${JSON.stringify(p.errorMsg)} does not match ${re}`);
  const s = db.getSiblingDB("admin").runCommand({ getStreamProcessorStats: name });
  assert(s.ok === 1 && s.state === "FAILED" && s.stats.status === "error" && s.stats.error === p.errorMsg,
         `${name}: stats show the failure: ${JSON.stringify(s)}`);
  return p;
}

if (phase === "too_large") {
  // Topic tinyTopic takes records of at most 1024 bytes (max.message.bytes,
  // set by test_kafka.sh). One document of ~3 KB among 29 small ones: the
  // broker refuses whole batches, so the small ones batched with the big
  // one must be sent again, not dead-lettered; only the big one goes to the
  // DLQ, is counted in the stats (as dead-lettered, not as output), and
  // the processor keeps running.
  const docs = [{ _id: 1, s: "a" }, { _id: 2, s: "x".repeat(3000) }, { _id: 3, s: "c" }];
  for (let i = 4; i <= 30; i++) docs.push({ _id: i, s: "y".repeat(100) });
  const dlqBig = { connectionName: "atlas", db: "kt", coll: "dlqBig" };
  sp.createStreamProcessor("bigWriter", [
    { $source: { documents: docs } },
    { $emit: { connectionName: "kafka1", topic: "tinyTopic" } }], { dlq: dlqBig });
  sp.bigWriter.start();
  waitFor("the oversized document in the DLQ", () => kt.dlqBig.countDocuments() === 1);
  const d = kt.dlqBig.findOne();
  assert(d.doc._id === 2 && d.operatorName === "KafkaEmitOperator", "DLQ entry: " + JSON.stringify(d).slice(0, 300));
  assert(/tinyTopic.*too large/i.test(d.errInfo.reason), "reason: " + d.errInfo.reason);
  const st = waitFor("stats count the delivery error", () => {
    const s = sp.bigWriter.stats().stats;
    return Number(s.dlqMessageCount) === 1 && Number(s.outputMessageCount) === 29 ? s : null;
  });
  assert(st.status === "running" && Number(st.dlqMessageSize) > 3000, "stats: " + JSON.stringify(st));
  sleep(1000);
  assert(kt.dlqBig.countDocuments() === 1, "only the oversized document is dead-lettered");
  assert(sp.listStreamProcessors().find(p => p.name === "bigWriter").state === "STARTED", "still running");
  sp.bigWriter.drop();
  print("too_large phase ok");
}

if (phase === "delete_begin") {
  // doomedIn -> $merge, and feedIn -> $emit to doomedOut through a
  // connection that does not auto-create topics; test_kafka.sh deletes
  // doomedIn and doomedOut while both run.
  sp.createStreamProcessor("doomedSource", [
    { $source: { connectionName: "kafka1", topic: "doomedIn", config: { auto_offset_reset: "earliest" } } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "doomed" } } }]);
  sp.doomedSource.start();
  sp.createStreamProcessor("doomedSink", [
    { $source: { connectionName: "kafka1", topic: "feedIn", config: { auto_offset_reset: "earliest" } } },
    { $emit: { connectionName: "kafkaNoCreate", topic: "doomedOut" } }], { dlq });
  sp.doomedSink.start();
  waitFor("3 documents from doomedIn", () => kt.doomed.countDocuments() === 3);
  waitFor("3 documents emitted to doomedOut", () => {
    const s = sp.doomedSink.stats().stats;
    // kafkaPartitions is empty while the group has not assigned the
    // partition yet (or again, during a rebalance).
    return Number(s.outputMessageCount) === 3 && s.kafkaPartitions &&
           s.kafkaPartitions.length > 0 &&
           Number(s.kafkaPartitions[0].checkpointOffset) === 3;
  });
  print("delete_begin phase ok");
}

if (phase === "delete_check") {
  // Both processors FAILED with a clear reason instead of hanging, and the
  // commands that list them keep answering.
  failedWith("doomedSource", /\$source .*deleted or is no longer available \(no partitions found\).*doomedIn/);
  failedWith("doomedSink", /\$emit to topic 'doomedOut' .*the topic does not exist/);
  assert(kt.dlq.countDocuments({ "_stream_meta.source.topic": "feedIn" }) === 0,
         "the undelivered documents are not dead-lettered (the processor failed instead)");
  print("delete_check phase ok");
}

if (phase === "delete_resume") {
  // doomedOut exists again (test_kafka.sh): the failed processor starts
  // again from its committed offsets, which never passed the documents it
  // could not deliver, so exactly those (4, 5, 6) are emitted now.
  sp.doomedSink.start();
  sp.createStreamProcessor("doomedReader", [
    { $source: { connectionName: "kafka1", topic: "doomedOut", config: { auto_offset_reset: "earliest" } } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "redelivered" } } }]);
  sp.doomedReader.start();
  waitFor("3 redelivered documents", () => kt.redelivered.countDocuments() === 3, 60000);
  sleep(1500);
  const ids = kt.redelivered.find().toArray().map(d => d._id).sort();
  assert(JSON.stringify(ids) === "[4,5,6]", "redelivered exactly 4, 5, 6: " + JSON.stringify(ids));
  for (const n of ["doomedSource", "doomedSink", "doomedReader"]) sp[n].drop();
  print("delete_resume phase ok");
}

if (phase === "sasl") {
  // The broker's SASL_PLAINTEXT listener: the right password works, a
  // wrong one fails the start with 419 and says authentication failed,
  // for $emit and for $source alike, and FAILED shows that reason.
  sp.createStreamProcessor("saslWriter", [
    { $source: { documents: [{ _id: 1, via: "sasl" }] } },
    { $emit: { connectionName: "kafkaSaslOk", topic: "saslTopic" } }]);
  sp.saslWriter.start();
  sp.createStreamProcessor("saslReader", [
    { $source: { connectionName: "kafkaSaslOk", topic: "saslTopic", config: { auto_offset_reset: "earliest" } } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "viaSasl" } } }]);
  waitFor("topic saslTopic", () => {
    try { sp.saslReader.start(); return true; } catch (e) { if (e.code !== 419) throw e; return false; }
  });
  waitFor("a document through the SASL listener", () => kt.viaSasl.countDocuments() === 1);
  const bad = /authentication failed.*SASL authentication error/;
  sp.createStreamProcessor("badAuthEmit", [
    { $source: { documents: [{ _id: 1 }] } },
    { $emit: { connectionName: "kafkaBadAuth", topic: "saslTopic" } }]);
  expectError(() => sp.badAuthEmit.start(), 419, bad);
  failedWith("badAuthEmit", bad);
  sp.createStreamProcessor("badAuthSource", [
    { $source: { connectionName: "kafkaBadAuth", topic: "saslTopic" } },
    { $merge: { into: { connectionName: "atlas", db: "kt", coll: "never" } } }]);
  expectError(() => sp.badAuthSource.start(), 419, bad);
  failedWith("badAuthSource", bad);
  assert(!JSON.stringify(sp.listConnections()).includes(process.env.KAFKA_SASL_PASSWORD), "no password listed");
  for (const n of ["saslWriter", "saslReader", "badAuthEmit", "badAuthSource"]) sp[n].drop();
  print("sasl phase ok");
}
