// e2e: a named stream processor's whole life through stock mongosh, against
// aspen with a real backing server. Run by test_sp_lifecycle.sh (phase 1).
// Throws (so mongosh exits non-zero) on the first mismatch.
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
function expectError(fn, code, re) {
  try { fn(); } catch (e) {
    assert(e.code === code, `want code ${code}, got ${e.code} (${e.message})`);
    if (re) assert(re.test(e.message), `message ${JSON.stringify(e.message)} does not match ${re}`);
    return e;
  }
  throw new Error(`expected error ${code} ${re || ""}`);
}
const admin = db.getSiblingDB("admin");
const out = db.getSiblingDB("sp_e2e");

// Connections: the built-in solar sample and the configured atlas one.
const conns = sp.listConnections();
assert(Array.isArray(conns), "listConnections returns an array");
assert(conns.some(c => c.name === "sample_stream_solar" && c.type === "inmemory"),
       "sample_stream_solar listed as ASP lists it (type inmemory): " + JSON.stringify(conns));
assert(conns.some(c => c.name === "atlas" && c.type === "atlas" && /^127\.0\.0\.1:\d+$/.test(c.cluster)),
       "atlas connection listed with its cluster (the backend's host): " + JSON.stringify(conns));
assert(!JSON.stringify(conns).includes("secret"), "no secrets in listings");

// Create.
const pipeline = [
  { $source: { connectionName: "sample_stream_solar" } },
  { $match: { event_type: 0 } },
  { $addFields: { kw: { $divide: ["$obs.watts", 1000] } } },
  { $merge: { into: { connectionName: "atlas", db: "sp_e2e", coll: "readings" } } },
];
sp.createStreamProcessor("solar", pipeline, { dlq: { connectionName: "atlas", db: "sp_e2e", coll: "dlq" } });
let list = sp.listStreamProcessors();
let entry = list.find(p => p.name === "solar");
assert(entry && entry.state === "CREATED", "created processor is listed as CREATED");
assert(entry.options.dlq.coll === "dlq", "options.dlq is listed");
let stats = admin.runCommand({ getStreamProcessorStats: "solar" });
assert(stats.ok === 1 && stats.state === "CREATED", "stats of a created processor");
assert(stats.stats.inputMessageCount.toString() === "0", "no input yet");
assert(Array.isArray(stats.pipeline), "stats shows the pipeline");

// Duplicate names and unknown processors.
expectError(() => sp.createStreamProcessor("solar", pipeline), 416, /already exists/);
expectError(() => admin.runCommand({ startStreamProcessor: "nope" }), 415, /does not exist/);

// Start, then sample with the real helper's wire commands.
let r = sp.solar.start();
assert(r.ok === 1, "start ok");
assert(sp.listStreamProcessors({ name: "solar" })[0].state === "STARTED", "state STARTED");
expectError(() => sp.solar.start(), 20, /already started/);
expectError(() => sp.solar.modify(pipeline), 20, /must be stopped/);

const started = admin.runCommand({ startSampleStreamProcessor: "solar", limit: 3 });
assert(started.ok === 1, "startSample ok");
let cursorId = started.cursorId, samples = [];
const deadline = Date.now() + 20000;
while (String(cursorId) !== "0" && Date.now() < deadline) {
  const more = admin.runCommand({ getMoreSampleStreamProcessor: "solar", cursorId });
  assert(Array.isArray(more.messages), "getMore has messages");
  samples.push(...more.messages);
  cursorId = more.cursorId;
  if (more.messages.length === 0) sleep(500);
}
assert(String(cursorId) === "0", "sample cursor ends after its limit");
assert(samples.length === 3, `limit 3 gives 3 samples, got ${samples.length}`);
for (const s of samples) {
  assert(typeof s.device_id === "string" && /^device_\d+$/.test(s.device_id), "device_id shape");
  assert(s.event_type === 0 && typeof s.kw === "number", "pipeline applied");
  assert(s._ts instanceof Date, "_ts is a Date");
  assert(s._stream_meta.source.type === "generated", "_stream_meta.source.type");
}

// Stats with both option shapes; counters are Longs.
sleep(1500);
stats = sp.solar.stats();
assert(stats.ok === 1 && stats.state === "STARTED" && stats.stats.status === "running", "running stats");
assert(Number(stats.stats.inputMessageCount) >= 3, "input counted");
assert(Number(stats.stats.outputMessageCount) >= 1, "output counted");
assert(stats.stats.watermark instanceof Date, "watermark is a Date");
const scaled = admin.runCommand({ getStreamProcessorStats: "solar", options: { scale: 1024, verbose: true } });
assert(scaled.ok === 1 && Number(scaled.stats.scaleFactor) === 1024, "nested options honoured");
expectError(() => admin.runCommand({ getStreamProcessorStats: "solar", bogus: 1 }), 40415, /unknown field/);

// $merge wrote to the backing deployment.
let n = 0;
for (let i = 0; i < 40 && n === 0; i++) { n = out.readings.countDocuments({}); if (!n) sleep(250); }
assert(n >= 1, "$merge wrote documents to the backend");
const doc = out.readings.findOne();
assert(doc.kw !== undefined && doc._stream_meta.source.type === "generated", "merged document shape");

// Stop, modify, errors on the stopped processor.
assert(sp.solar.stop().ok === 1, "stop ok");
assert(sp.listStreamProcessors({ name: "solar" })[0].state === "STOPPED", "state STOPPED");
expectError(() => sp.solar.stop(), 20, /not running/);
const newPipeline = [
  { $source: { connectionName: "sample_stream_solar" } },
  { $project: { device_id: 1, watts: "$obs.watts" } },
  { $merge: { into: { connectionName: "atlas", db: "sp_e2e", coll: "watts" } } },
];
assert(sp.solar.modify(newPipeline).ok === 1, "modify ok");
entry = sp.listStreamProcessors({ name: "solar" })[0];
assert(entry.pipeline[1].$project !== undefined, "modified pipeline listed");
assert(entry.options.dlq.coll === "dlq", "modify keeps the DLQ");

// Invalid pipelines get ASP's errors.
expectError(() => sp.createStreamProcessor("bad1", [{ $source: { connectionName: "sample_stream_solar" } }, { $group: { _id: 1 } },
  { $merge: { into: { connectionName: "atlas", db: "x", coll: "y" } } }]), 420,
  /\$group stage is only permitted in the inner pipeline of a window stage/);
expectError(() => sp.createStreamProcessor("bad2", [{ $source: { connectionName: "sample_stream_solar" } }, { $out: "x" }]), 420,
  /Unsupported stage: \$out/);
expectError(() => sp.createStreamProcessor("bad3", [{ $source: { connectionName: "sample_stream_solar" } }]), 420,
  /The last stage in the pipeline must be \$merge or \$emit/);
expectError(() => sp.createStreamProcessor("bad4", [{ $match: {} }]), 420, /First stage must be \$source, found: \$match/);
expectError(() => sp.createStreamProcessor("bad5", [{ $source: { connectionName: "nope" } },
  { $merge: { into: { connectionName: "atlas", db: "x", coll: "y" } } }]), 420, /Unknown connection name nope/);
expectError(() => sp.createStreamProcessor("bad6", pipeline, { dlq: { connectionName: "atlas", db: "x" } }), 420, /dlq/);
assert(!sp.listStreamProcessors().some(p => /^bad/.test(p.name)), "refused processors were not created");

// A second processor that stays running across the restart.
sp.createStreamProcessor("keeper", [
  { $source: { connectionName: "sample_stream_solar" } },
  { $merge: { into: { connectionName: "atlas", db: "sp_e2e", coll: "keeper" } } },
]);
assert(sp.keeper.start().ok === 1, "keeper started");
print("phase 1 ok");
