// e2e: the Kinesis $source and $emit through stock mongosh against aspen,
// kinesalite and a real backing server. Run by test_kinesis.sh, one phase
// at a time (KIN_PHASE); throws on the first mismatch. boto3 (kin.py) writes
// the input streams and reads the output ones, never through aspen.
load(__dirname + "/util.js");
const kt = db.getSiblingDB("kin");
const dlq = { connectionName: "atlas", db: "kin", coll: "dlq" };
const merge = (coll) => ({ $merge: { into: { connectionName: "atlas", db: "kin", coll } } });
const phase = process.env.KIN_PHASE;
const N = Number(process.env.KIN_N || 0);
const proc = (name) => sp.listStreamProcessors().find(p => p.name === name);
// The valid documents of kin.py's put FROM TO: every _id but 13 (n "bad")
// and 17 (not JSON).
function valid(from, to) {
  let n = 0;
  for (let i = from; i < to; i++) if (i !== 13 && i !== 17) n++;
  return n;
}

if (phase === "errors") {
  // Listed with ASP's aws.roleArn, the region and endpoint; never the secret.
  const conns = sp.listConnections();
  const k = conns.find(c => c.name === "kin");
  assert(k && k.type === "kinesis" && k.aws.roleArn === "arn:aws:iam::123456789012:role/asp" &&
         k.region === "us-east-1" && /^http:\/\/127\.0\.0\.1:\d+$/.test(k.endpoint) &&
         k.credentials.accessKeyId === "AKIDLOCAL", "kinesis connection listed: " + JSON.stringify(k));
  assert(!JSON.stringify(conns).includes("s3cr3t"), "no secret key in listings");

  const src = (extra) => Object.assign({ connectionName: "kin", stream: "in" }, extra);
  const create = (s, sink) => () => sp.createStreamProcessor("bad", [{ $source: s }, sink || merge("x")]);
  expectError(create({ connectionName: "kin" }), 420, /'\$source.stream' is missing/);
  expectError(create(src({ nope: 1 })), 420, /'\$source.nope' is an unknown field/);
  expectError(create(src({ config: { initialPosition: "MIDDLE" } })), 420, /Enumeration value 'MIDDLE'/);
  expectError(create(src({ config: { initialPosition: "AT_SEQUENCE_NUMBER" } })), 420,
    /supported by Atlas Stream Processing but not yet by this version of aspen/);
  expectError(create(src({ config: { initialPosition: "AT_TIMESTAMP" } })), 420, /atTimestamp is required/);
  expectError(create(src({ config: { reshardDetectionIntervalSecs: "x" } })), 420, /wrong type/);
  expectError(create(src({ config: { shardCount: 2 } })), 420, /'\$source.config.shardCount' is an unknown field/);
  expectError(create(src({ shardIdleTimeout: { size: 1, unit: "week" } })), 420, /Enumeration value 'week'/);
  expectError(create({ documents: [{ a: 1 }] }, { $emit: { connectionName: "kin" } }), 420,
    /'\$emit.stream' is missing/);
  expectError(create({ documents: [{ a: 1 }] },
    { $emit: { connectionName: "kin", stream: "out", config: { outputFormat: "xml" } } }), 420,
    /Enumeration value 'xml'/);
  expectError(create({ documents: [{ a: 1 }] },
    { $emit: { connectionName: "kin", stream: "out", topic: "t" } }), 420,
    /'\$emit.topic' is an unknown field/);
  // Accepted: ASP's whole option set.
  sp.createStreamProcessor("full", [
    { $source: src({ region: "us-east-1", shardIdleTimeout: { size: 5, unit: "second" }, tsFieldName: "ingest",
                     config: { consumerARN: "arn:aws:kinesis:us-east-1:123456789012:stream/in/consumer/c:1",
                               initialPosition: "AT_TIMESTAMP", atTimestamp: new Date(0),
                               reshardDetectionIntervalSecs: 60 } }) },
    { $emit: { connectionName: "kin", stream: "out", region: "us-east-1", partitionKey: "$k",
               config: { outputFormat: "basicJson", dateFormat: "ISO8601" } } }]);
  sp.full.drop();

  // A stream that does not exist fails the start with the service's reason.
  sp.createStreamProcessor("missing", [{ $source: src({ stream: "noSuchStream" }) }, merge("x")]);
  expectError(() => sp.missing.start(), 460, /ResourceNotFoundException/);
  assert(/noSuchStream/.test(proc("missing").errorMsg), "missing stream: " + proc("missing").errorMsg);
  sp.missing.drop();
  // No credentials anywhere: the start fails and says so.
  sp.createStreamProcessor("nocreds", [{ $source: { connectionName: "kinNoCreds", stream: "in" } }, merge("x")]);
  expectError(() => sp.nocreds.start(), 460, /no AWS credentials/);
  sp.nocreds.drop();
  // An unreachable endpoint: the start fails once the retries run out.
  sp.createStreamProcessor("down", [{ $source: { documents: [{ a: 1 }] } },
    { $emit: { connectionName: "kinDown", stream: "out" } }]);
  expectError(() => sp.down.start(), 460, /cannot be reached/);
  sp.down.drop();
}

if (phase === "merge_begin") {
  // Kinesis -> $validate -> $merge from the oldest record of every shard.
  sp.createStreamProcessor("kmerge", [
    { $source: { connectionName: "kin", stream: "in", config: { initialPosition: "TRIM_HORIZON" } } },
    { $validate: { validator: { n: { $type: "int" } }, validationAction: "dlq" } },
    { $addFields: { meta: { $meta: "stream.source" } } },
    merge("kmerge")], { dlq });
  sp.kmerge.start();
  waitFor(`${valid(0, 100)} documents merged`, () => kt.kmerge.countDocuments() === valid(0, 100), 60000);
  const d = kt.kmerge.findOne({ _id: 5 });
  assert(d.meta.type === "kinesis" && d.meta.kinesisStream === "in" && /^shardId-/.test(d.meta.shardId) &&
         /^\d+$/.test(d.meta.sequenceNumber) && d.meta.partitionKey === "k5", "stream meta: " + JSON.stringify(d.meta));
  waitFor("2 DLQ entries", () => kt.dlq.countDocuments() === 2);
  const bad = kt.dlq.findOne({ "doc.data": "this is not json" });
  assert(bad && /JSON/.test(bad.errInfo.reason) && bad.operatorName === "KinesisConsumerOperator",
         "not-JSON record in the DLQ: " + JSON.stringify(kt.dlq.find().toArray()));
  assert(kt.dlq.findOne({ "doc._id": 13 }), "invalid document in the DLQ");
  // Verbose operatorStats (issue 17): the Kinesis source counts what it
  // read (the record that is not JSON as a dead letter), the $merge sink
  // what it wrote, with its literal target.
  let ops = [];
  const counted = () => {
    ops = sp.kmerge.stats({ verbose: true }).stats.operatorStats;
    const src = ops[0], sink = ops[ops.length - 1];
    return src.name === "KinesisConsumerOperator" && Number(src.dlqMessageCount) === 1 &&
           Number(src.outputMessageCount) === valid(0, 100) + 1 &&
           Number(sink.inputMessageCount) === valid(0, 100) && Boolean(sink.targetStats) &&
           sink.targetStats[0].coll === "kmerge" &&
           Number(sink.targetStats[0].inputMessageCount) === valid(0, 100);
  };
  try { waitFor("operatorStats", counted, 20000); } catch (e) {
    throw new Error("kmerge operatorStats: " + JSON.stringify(ops));
  }
}

if (phase === "merge_resharded") {
  // After the split: the records written to the children arrive too, each
  // once, and the child shards show in the metadata.
  waitFor(`${valid(0, N)} documents merged`, () => kt.kmerge.countDocuments() === valid(0, N), 60000);
  const shards = kt.kmerge.distinct("meta.shardId");
  assert(shards.length >= 3, "children read: " + JSON.stringify(shards));
  assert(proc("kmerge").state === "STARTED", "still running");
}

if (phase === "merge_stop") {
  sp.kmerge.stop();
}

if (phase === "merge_resume") {
  // Records written while stopped; the restart resumes every shard after
  // its checkpointed sequence number.
  sp.kmerge.start();
  waitFor(`${valid(0, N)} documents merged`, () => kt.kmerge.countDocuments() === valid(0, N), 60000);
  sleep(1000);
  // Started over, it would have sent _id 13 and the record that is not
  // JSON to the DLQ again.
  assert(kt.dlq.countDocuments() === 2, "no DLQ entry twice: " + kt.dlq.countDocuments());
}

if (phase === "k2k_begin") {
  // Kinesis -> Kinesis: basicJson, partitionKey from the document.
  sp.createStreamProcessor("k2k", [
    { $source: { connectionName: "kin", stream: "in2", config: { initialPosition: "TRIM_HORIZON" } } },
    { $match: { n: { $type: "int" } } },
    { $addFields: { when: new Date(Date.UTC(2024, 4, 1)), k: { $concat: ["p", { $toString: { $mod: ["$n", 3] } }] } } },
    { $project: { _stream_meta: 0 } },
    { $emit: { connectionName: "kin", stream: "out", partitionKey: "$k", config: { outputFormat: "basicJson" } } }]);
  sp.k2k.start();
}

if (phase === "k2k_stats") {
  // The Kinesis sink counts the 48 documents it wrote under its stream.
  let ops = [];
  const counted = () => {
    ops = sp.k2k.stats({ verbose: true }).stats.operatorStats;
    const sink = ops[ops.length - 1];
    return Number(sink.inputMessageCount) === 48 && Boolean(sink.targetStats) &&
           sink.targetStats[0].stream === "out" && Number(sink.targetStats[0].inputMessageCount) === 48;
  };
  try { waitFor("k2k operatorStats", counted, 20000); } catch (e) {
    throw new Error("k2k operatorStats: " + JSON.stringify(ops));
  }
}

if (phase === "relay_begin") {
  // $emit through a network that goes away: the source waits for the sink
  // (back-pressure) and nothing is lost.
  sp.createStreamProcessor("relayed", [
    { $source: { connectionName: "kin", stream: "in3", config: { initialPosition: "TRIM_HORIZON" } } },
    { $project: { _stream_meta: 0 } },
    { $emit: { connectionName: "kinRelay", stream: "out3", partitionKey: { $toString: "$_id" } } }]);
  sp.relayed.start();
}

if (phase === "relay_check") {
  const p = proc("relayed");
  assert(p.state === "STARTED", `the $emit processor survives the outage: ${p.state} ${p.errorMsg}`);
}

if (phase === "crash_begin") {
  sp.createStreamProcessor("kcrash", [
    { $source: { connectionName: "kin", stream: "in4", config: { initialPosition: "TRIM_HORIZON" } } },
    merge("kcrash")]);
  sp.kcrash.start();
  waitFor("1000 documents merged", () => kt.kcrash.countDocuments() >= 1000, 60000, 20);
  sleep(500); // a checkpoint or two
}

if (phase === "crash_check") {
  waitFor("the processor restarted", () => proc("kcrash") && proc("kcrash").state === "STARTED", 30000);
  // Every record but the one that is not JSON (no DLQ here).
  waitFor(`${N - 1} documents merged`, () => kt.kcrash.countDocuments() === N - 1, 90000);
}
