// e2e: Avro through a Schema Registry (issue 15). Run by test_avro.sh in
// phases (AV_PHASE). The topic avro_in holds AV_N Avro records written by
// the independent client (avro_client.py) plus a message that is not in the
// registry's wire format and one with an unknown schema id.
//   start:  "relay": avro_in -> $validate (temp < 500, else DLQ) -> $emit Avro
//           (the same schema, auto-registered under avro_out-value) to
//           avro_out; "win": avro_in -> $tumblingWindow (count and sum of
//           count per device) -> $merge into av.win. Both with a DLQ.
//   check:  the DLQs hold the undecodable messages (and $validate's), the
//           window results are right, and the $emit refusals are ASP's.
load(__dirname + "/util.js");
const av = db.getSiblingDB("av");
const n = Number(process.env.AV_N);
const schema = JSON.parse(process.env.AV_SCHEMA);
const phase = process.env.AV_PHASE;
const src = { connectionName: "kafka1", topic: "avro_in",
              schemaRegistry: { connectionName: "registry" },
              config: { auto_offset_reset: "earliest" } };
const dlq = (coll) => ({ dlq: { connectionName: "atlas", db: "av", coll } });

if (phase === "start") {
  sp.createStreamProcessor("relay", [
    { $source: src },
    { $validate: { validator: { temp: { $lt: 500 } }, validationAction: "dlq" } },
    { $emit: { connectionName: "kafka1", topic: "avro_out",
               schemaRegistry: { connectionName: "registry",
                                 valueSchema: { type: "avro", schema,
                                                options: { autoRegisterSchemas: true } } } } }],
    dlq("relay_dlq"));
  sp.relay.start();
  sp.createStreamProcessor("win", [
    { $source: Object.assign({}, src, { timeField: { $toDate: "$ts" } }) },
    { $tumblingWindow: { interval: { size: NumberInt(1), unit: "hour" },
                         allowedLateness: { size: NumberInt(0), unit: "second" },
                         pipeline: [{ $group: { _id: "$device", n: { $sum: 1 },
                                                count: { $sum: "$count" },
                                                first: { $min: "$ts" } } }] } },
    { $merge: { into: { connectionName: "atlas", db: "av", coll: "win" } } }],
    dlq("win_dlq"));
  sp.win.start();
  print("started");
} else if (phase === "check") {
  // Two undecodable messages in each DLQ, plus $validate's refusals.
  const invalid = [...Array(n).keys()].filter(i => i % 5 === 4).length;
  waitFor("relay DLQ entries", () => av.relay_dlq.countDocuments() >= 2 + invalid, 60000);
  waitFor("win DLQ entries", () => av.win_dlq.countDocuments() >= 2, 60000);
  for (const c of [av.relay_dlq, av.win_dlq]) {
    const reasons = c.find().toArray().map(d => d.errInfo.reason);
    assert(reasons.some(r => /not in the schema registry's wire format/.test(r)),
           "wire-format reason: " + EJSON.stringify(reasons));
    assert(reasons.some(r => /schema id 999999 is not in the schema registry/.test(r)),
           "unknown-id reason: " + EJSON.stringify(reasons));
    const garbage = c.findOne({ "doc.value": "not avro at all" });
    assert(garbage, "the raw bytes kept: " + EJSON.stringify(c.find().toArray()));
  }
  assert(av.relay_dlq.countDocuments({ "errInfo.reason": /\$validate/ }) === invalid,
         "$validate's DLQ entries: " + EJSON.stringify(av.relay_dlq.find().toArray()));
  print("checked");
} else if (phase === "window") {
  // The window closes when the watermark passes its end: the test has
  // produced a record two hours later.
  waitFor("window results", () => av.win.countDocuments() === 3, 60000);
  for (const d of av.win.find().toArray()) {
    const ids = [...Array(n).keys()].filter(i => `dev-${i % 3}` === d._id);
    assert(d.n === ids.length, "count of " + d._id + ": " + EJSON.stringify(d));
    const want = ids.reduce((a, i) => a + 10000000000 + i, 0);
    assert(Number(d.count) === want, "sum of " + d._id + ": " + EJSON.stringify(d));
    assert(d.first instanceof Date, "a timestamp-millis is a Date: " + EJSON.stringify(d));
  }
  print("window ok");
} else if (phase === "outage") {
  // The registry is down. "late" starts now, with no schema cached: each
  // message of avro_in (AV_N records, the two bad ones, the one two hours
  // later) goes to its DLQ, and it keeps running.
  sp.createStreamProcessor("late", [
    { $source: src },
    { $merge: { into: { connectionName: "atlas", db: "av", coll: "late" } } }],
    dlq("late_dlq"));
  sp.late.start();
  waitFor("late's DLQ entries", () => av.late_dlq.countDocuments() === n + 3, 60000);
  const reasons = av.late_dlq.find().toArray().map(d => d.errInfo.reason);
  const down = reasons.filter(r => /schema registry is unreachable/.test(r));
  assert(down.length === n + 2, "unreachable: " + EJSON.stringify(reasons));
  assert(av.late.countDocuments() === 0, "nothing merged");
  sleep(1500);
  const st = sp.late.stats().stats;
  assert(sp.listStreamProcessors().find(p => p.name === "late").state === "STARTED",
         "late still running");
  assert(Number(st.dlqMessageCount) === n + 3, "late's dlqMessageCount: " + EJSON.stringify(st));
  print("outage ok");
} else if (phase === "recovered") {
  // The registry is back: records 100..102, written after, are merged.
  waitFor("records 100..102 in av.late",
          () => av.late.countDocuments({ id: { $in: [100, 101, 102] } }) === 3, 60000);
  assert(av.late_dlq.countDocuments() === n + 3, "no new DLQ entries");
  sp.late.stop();
  sp.late.drop();
  print("recovered ok");
} else if (phase === "stall_start") {
  // "stalled" reads avro_in through a registry that never answers.
  sp.createStreamProcessor("stalled", [
    { $source: Object.assign({}, src, { schemaRegistry: { connectionName: "stalled" } }) },
    { $merge: { into: { connectionName: "atlas", db: "av", coll: "stalled" } } }],
    dlq("stalled_dlq"));
  sp.stalled.start();
  print("stall_start ok");
} else if (phase === "stall_stop") {
  // Its first schema request waits on the registry (the test saw it
  // arrive). The stop abandons it: the message it was for is neither
  // decoded nor dead-lettered (no checkpoint covers it: a restart reads it
  // again), and the processor stops as any other, without an error.
  sp.stalled.stop();
  const p = sp.listStreamProcessors().find(x => x.name === "stalled");
  assert(p.state === "STOPPED" && !p.errorMsg,
         "stopped without an error: " + p.state + " " + p.errorMsg);
  const st = sp.stalled.stats().stats;
  assert(Number(st.dlqMessageCount) === 0 && av.stalled_dlq.countDocuments() === 0,
         "nothing dead-lettered: " + EJSON.stringify(st) + " " +
         EJSON.stringify(av.stalled_dlq.find().toArray()));
  assert(av.stalled.countDocuments() === 0, "nothing decoded");
  sp.stalled.drop();
  print("stall_stop ok");
} else if (phase === "refusals") {
  const bad = (stage, re) => {
    let msg = "";
    try { sp.process([{ $source: { documents: [{ a: 1 }] } }, stage]); } catch (e) { msg = e.message; }
    assert(re.test(msg), EJSON.stringify(stage) + " -> " + msg);
  };
  const emit = (sr) => ({ $emit: { connectionName: "kafka1", topic: "t", schemaRegistry: sr } });
  bad(emit({ connectionName: "registry", valueSchema: { type: "json", schema } }),
      /supports only "avro" serialization/);
  bad(emit({ connectionName: "kafka1", valueSchema: { type: "avro", schema } }),
      /must name a schemaRegistry connection/);
  bad(emit({ connectionName: "registry", valueSchema: { type: "avro", schema: { type: "nope" } } }),
      /not a valid Avro schema/);
  bad(emit({ connectionName: "registry", valueSchema: { type: "avro", schema,
        options: { autoRegisterSchemas: false, subjectNameStrategy: "RecordNameStrategy" } } }),
      /subjectNameStrategy can be set only if autoRegisterSchemas is true/);
  let msg = "";
  try {
    sp.createStreamProcessor("bad", [{ $source: { connectionName: "kafka1", topic: "t",
      schemaRegistry: { connectionName: "nope" } } }, { $merge: { into: { connectionName: "atlas", db: "a", coll: "b" } } }]);
  } catch (e) { msg = e.message; }
  assert(/Unknown connection name nope/.test(msg), msg);
  const conns = sp.listConnections();
  const reg = conns.find(c => c.name === "registry");
  assert(reg && reg.type === "schemaRegistry" && reg.schemaRegistryUrls.length === 1 &&
         reg.schemaRegistryAuthentication.username === "reader" &&
         !JSON.stringify(reg).includes("s3cret"), "listing: " + EJSON.stringify(reg));
  print("refusals ok");
}
