// e2e: $emit to S3 (moto) and Azure Blob Storage (Azurite), driven by
// test_object_stores.sh one phase at a time (OS_PHASE). What reaches the
// stores is read back by objstore_check.py (boto3, azure-storage-blob).
const phase = process.env.OS_PHASE;
const os = db.getSiblingDB("os");
function assert(c, msg) { if (!c) { throw new Error("assertion failed: " + msg); } }
function stats(name) { const r = sp[name].stats(); return r.stats || r; }
function waitFor(what, fn, ms) {
  const end = Date.now() + (ms || 60000);
  while (Date.now() < end) { if (fn()) { return; } sleep(200); }
  throw new Error("timed out waiting for " + what);
}
function docs(n, extra) {
  const out = [];
  for (let i = 0; i < n; i++) { out.push(Object.assign({ i: i, g: i % 3 }, extra || {})); }
  return out;
}
function refused(pipeline, re) {
  let err = null;
  try { sp.createStreamProcessor("bad", pipeline); } catch (e) { err = e; }
  if (!err) { sp.bad.drop(); }
  assert(err && re.test(err.message), "refused with " + re + ": " + (err && err.message));
}
// Runs a {documents} -> $emit processor until its input is all out, then
// stops it (the final flush writes the last file).
function runDocs(name, input, emit) {
  sp.createStreamProcessor(name, [{ $source: { documents: input } }, { $emit: emit }]);
  sp[name].start();
  waitFor(name + " output", () => Number(stats(name).outputMessageCount) === input.length);
  checkSinkStats(name, input.length, emit);
  sp[name].stop();
  sp[name].drop();
}
// The sink's verbose operatorStats (issue 17): every document in, and a
// literal target in targetStats ({bucket|container, path}).
function checkSinkStats(name, n, emit) {
  let ops = [], sink = {};
  const counted = () => {
    ops = sp[name].stats({ verbose: true }).stats.operatorStats;
    sink = ops[ops.length - 1];
    return Number(ops[0].outputMessageCount) === n && Number(sink.inputMessageCount) === n;
  };
  try { waitFor(name + " operatorStats", counted, 20000); } catch (e) {
    throw new Error(name + ": source and sink counts: " + EJSON.stringify(ops));
  }
  const j = EJSON.stringify(ops);
  assert(Number(sink.inputMessageSize) > 0, name + ": sink size: " + j);
  const store = emit.bucket !== undefined ? "bucket" : "container";
  if (typeof emit.path === "string") {
    const t = sink.targetStats && sink.targetStats[0];
    assert(t && t[store] === emit[store] && t.path === emit.path && Number(t.inputMessageCount) === n,
           name + ": targetStats: " + j);
  } else {
    assert(!sink.targetStats, name + ": no targetStats for a computed path: " + j);
  }
}
const cs = (coll) => ({ $source: { connectionName: "atlas", db: "os", coll: coll } });

if (phase === "connections") {
  const list = sp.listConnections();
  const lake = list.find((c) => c.name === "lake");
  const blob = list.find((c) => c.name === "blob");
  assert(lake && lake.type === "s3" && lake.aws.roleArn.startsWith("arn:aws:iam::"),
         "lake listed as s3 with its roleArn: " + EJSON.stringify(lake));
  assert(lake.credentials.accessKeyId === "test" && !("secretAccessKey" in lake.credentials),
         "lake lists its key id, not its secret: " + EJSON.stringify(lake));
  assert(blob && blob.type === "azure-blob" && blob.azure.storageAccountName === "devstoreaccount1",
         "blob listed as azure-blob: " + EJSON.stringify(blob));
  const all = EJSON.stringify(list);
  assert(!all.includes("s3-secret") && !all.includes("Eby8vdM02x"), "no secret listed: " + all);
}

if (phase === "parse") {
  const src = { $source: { documents: docs(1) } };
  refused([src, { $emit: { connectionName: "lake", bucket: "b", nope: 1 } }],
          /BSON field '\$emit.nope' is an unknown field/);
  refused([src, { $emit: { connectionName: "lake", path: "p" } }],
          /'\$emit.bucket' is missing but a required field/);
  refused([src, { $emit: { connectionName: "blob", bucket: "b" } }],
          /'\$emit.bucket' is an unknown field/);
  refused([src, { $emit: { connectionName: "lake", bucket: "b", config: { outputFormat: "xml" } } }],
          /Enumeration value 'xml' for field '\$emit.config.outputFormat'/);
  refused([src, { $emit: { connectionName: "lake", bucket: "b", config: { compression: "zstd" } } }],
          /Enumeration value 'zstd'/);
  refused([src, { $emit: { connectionName: "lake", bucket: "b", config: { writeOptions: { count: 0 } } } }],
          /writeOptions.count' must be a positive integer/);
  refused([src, { $emit: { connectionName: "lake", bucket: "b", config: { writeOptions: { rows: 1 } } } }],
          /writeOptions.rows' is an unknown field/);
  // ASP's interval is {size, unit}, more than 0 and at most 7 days.
  refused([src, { $emit: { connectionName: "lake", bucket: "b", config: { writeOptions: { interval: 500 } } } }],
          /'\$emit.config.writeOptions.interval' is the wrong type 'int', expected type 'object'/);
  refused([src, { $emit: { connectionName: "lake", bucket: "b", config: { writeOptions: { interval: { size: 0, unit: "ms" } } } } }],
          /writeOptions.interval' must be more than 0 and at most 7 days/);
  refused([src, { $emit: { connectionName: "lake", bucket: "b", config: { writeOptions: { interval: { size: 8, unit: "day" } } } } }],
          /writeOptions.interval' must be more than 0 and at most 7 days/);
  refused([src, { $emit: { connectionName: "lake", bucket: "b", config: { writeOptions: { interval: { size: 1, unit: "week" } } } } }],
          /Enumeration value 'week' for field '\$emit.config.writeOptions.interval.unit'/);
  refused([src, { $emit: { connectionName: "lake", bucket: "b", config: { compressionLevel: 10, compression: "gzip" } } }],
          /'\$emit.config.compressionLevel' must be between 1 and 9/);
  refused([src, { $emit: { connectionName: "lake", bucket: "b", config: { dateFormat: "unix" } } }],
          /Enumeration value 'unix' for field '\$emit.config.dateFormat'/);
}

if (phase === "files") {
  runDocs("count", docs(35), { connectionName: "lake", bucket: "lake", path: "count",
                               config: { writeOptions: { count: 10 } } });
  runDocs("bytes", docs(40), { connectionName: "lake", bucket: "lake", path: "bytes/",
                               config: { writeOptions: { bytes: 300 } } });
  runDocs("paths", docs(30), { connectionName: "lake", bucket: "lake",
                               path: { $concat: ["grp/", { $toString: "$g" }] } });
  runDocs("gzip", docs(25, { o: ObjectId(), d: new Date(), n: NumberDecimal("1.5") }),
          { connectionName: "lake", bucket: "lake", region: "us-east-1", path: "gzip",
            config: { compression: "gzip", outputFormat: "basicJson", delimiter: "\n" } });
  runDocs("iso", docs(6, { d: new Date(1736540258387) }),
          { connectionName: "lake", bucket: "lake", path: "iso",
            config: { compression: "gzip", compressionLevel: 1, dateFormat: "ISO8601",
                      writeOptions: { count: 3, interval: { size: 1, unit: "hour" } } } });
  runDocs("canon", docs(5), { connectionName: "lake", bucket: "lake", path: "canon",
                              config: { outputFormat: "canonicalJson", delimiter: "|" } });
  // Files of ~12 MB: multipart uploads (parts of 8 MiB).
  const big = (name, emit) => {
    sp.createStreamProcessor(name, [{ $source: { documents: docs(60) } },
      { $addFields: { pad: { $map: { input: { $range: [0, 2000] }, in: "0123456789".repeat(10) } } } },
      { $emit: emit }]);
    sp[name].start();
    waitFor(name + " output", () => Number(stats(name).outputMessageCount) === 60);
    sp[name].stop();
    sp[name].drop();
  };
  big("big", { connectionName: "lake", bucket: "lake", path: "big", config: { writeOptions: { count: 60 } } });
  big("azbig", { connectionName: "blob", container: "blobs", path: "azbig", config: { writeOptions: { count: 60 } } });
  runDocs("azure", docs(35), { connectionName: "blob", container: "blobs", path: "az",
                               config: { writeOptions: { count: 10 }, compression: "gzip" } });
}

// Against a moto that checks signatures: a PUT, a multipart upload, and a
// wrong secret refused at start.
if (phase === "signed") {
  runDocs("small", docs(30), { connectionName: "lakeauth", bucket: "authb", path: "small",
                               config: { writeOptions: { count: 10 } } });
  sp.createStreamProcessor("big", [{ $source: { documents: docs(60) } },
    { $addFields: { pad: { $map: { input: { $range: [0, 2000] }, in: "0123456789".repeat(10) } } } },
    { $emit: { connectionName: "lakeauth", bucket: "authb", path: "big", config: { writeOptions: { count: 60 } } } }]);
  sp.big.start();
  waitFor("big output", () => Number(stats("big").outputMessageCount) === 60);
  sp.big.stop();
  const st = sp.listStreamProcessors({ name: "big" }).find((p) => p.name === "big");
  assert(st.state === "STOPPED", "big stopped, not failed: " + st.state + " " + st.errorMsg);
  sp.big.drop();
  sp.createStreamProcessor("bad", [{ $source: { documents: docs(1) } },
    { $emit: { connectionName: "lakeauthbad", bucket: "authb" } }]);
  let err = null;
  try { sp.bad.start(); } catch (e) { err = e; }
  assert(err && err.code === 444 && /authentication failed .*HTTP 403 SignatureDoesNotMatch/.test(err.message),
         "a wrong secret fails the start: " + (err && err.code) + " " + (err && err.message));
  sp.bad.drop();
}

if (phase === "faults") {
  sp.createStreamProcessor("nobucket", [cs("nb"), { $emit: { connectionName: "lake", bucket: "nosuch" } }]);
  let err = null;
  try { sp.nobucket.start(); } catch (e) { err = e; }
  assert(err && /S3 \$emit to bucket 'nosuch' \(connection 'lake'\) failed: not found: HTTP 404 NoSuchBucket/.test(err.message),
         "a missing bucket fails the start: " + (err && err.message));
  sp.nobucket.drop();
  sp.createStreamProcessor("badkey", [cs("bk"), { $emit: { connectionName: "blobbadkey", container: "blobs" } }]);
  err = null;
  try { sp.badkey.start(); } catch (e) { err = e; }
  assert(err && /Azure Blob \$emit .* failed: authentication failed .*HTTP 403/.test(err.message),
         "a wrong account key fails the start: " + (err && err.message));
  sp.badkey.drop();
  sp.createStreamProcessor("down", [cs("dn"), { $emit: { connectionName: "lakedown", bucket: "lake" } }]);
  err = null;
  try { sp.down.start(); } catch (e) { err = e; }
  assert(err && err.code === 443 && /S3 \$emit .* failed: cannot reach the store/.test(err.message),
         "an unreachable endpoint fails the start with 443: " + (err && err.code) + " " + (err && err.message));
  sp.down.drop();
}

// A bucket / container deleted while its processor runs: the next upload
// is refused (404) and the processor fails with the store's reason.
if (phase === "gone_start") {
  sp.createStreamProcessor("s3gone", [cs("s3gone"), { $emit: { connectionName: "lake", bucket: "gone",
    config: { writeOptions: { count: 1 } } } }]);
  sp.s3gone.start();
  sp.createStreamProcessor("azgone", [cs("azgone"), { $emit: { connectionName: "blob", container: "gone",
    config: { writeOptions: { count: 1 } } } }]);
  sp.azgone.start();
}
if (phase === "gone_check") {
  for (const [name, re] of [["s3gone", /S3 \$emit to bucket 'gone' .* not found: HTTP 404 NoSuchBucket/],
                            ["azgone", /Azure Blob \$emit to container 'gone' .* not found: HTTP 404 ContainerNotFound/]]) {
    waitFor(name + " FAILED", () => sp.listStreamProcessors({ name: name }).find((p) => p.name === name).state === "FAILED");
    const p = sp.listStreamProcessors({ name: name }).find((x) => x.name === name);
    assert(re.test(p.errorMsg), name + " fails with the store's reason: " + p.errorMsg);
    sp[name].drop();
  }
}

// A change stream -> $emit S3 cut by count while it runs.
if (phase === "cs_start") {
  sp.createStreamProcessor("cs", [cs("csin"), { $project: { _id: 0, i: "$fullDocument.i" } },
    { $emit: { connectionName: "lake", bucket: "lake", path: "cs", config: { writeOptions: { count: 5 } } } }]);
  sp.cs.start();
  // Cut by interval (500 ms) while it runs: no checkpoint is due (its
  // interval is 10 minutes) and nothing else would cut these files.
  sp.createStreamProcessor("iv", [cs("ivin"), { $project: { _id: 0, i: "$fullDocument.i" } },
    { $emit: { connectionName: "lake", bucket: "lake", path: "iv", config: { writeOptions: { interval: { size: 500, unit: "ms" }, count: 1000 } } } }]);
  sp.iv.start();
  // Cut by bytes (40, uncompressed), gzip-compressed.
  sp.createStreamProcessor("csgz", [cs("csgzin"), { $project: { _id: 0, i: "$fullDocument.i" } },
    { $emit: { connectionName: "lake", bucket: "lake", path: "csgz",
               config: { compression: "gzip", writeOptions: { bytes: 40 } } } }]);
  sp.csgz.start();
  // Uploads through a relay the test cuts: retried until it is back.
  sp.createStreamProcessor("down", [cs("downin"), { $project: { _id: 0, i: "$fullDocument.i" } },
    { $emit: { connectionName: "lakerelay", bucket: "lake", path: "down", config: { writeOptions: { count: 1 } } } }]);
  sp.down.start();
}
if (phase === "cs_insert") {
  const [coll, from, to] = process.env.OS_ARGS.split(" ");
  for (let i = Number(from); i < Number(to); i++) { os[coll].insertOne({ i: i }); }
}
if (phase === "cs_started") {
  for (const n of ["cs", "iv", "csgz", "down"]) {
    assert(stats(n).status === "running" || stats(n).state === "STARTED", n + " still runs: " + EJSON.stringify(stats(n)));
  }
}
if (phase === "cs_stop") {
  for (const n of ["cs", "iv", "csgz", "down"]) { sp[n].stop(); sp[n].drop(); }
}

// SIGKILL: a change stream -> $emit S3 with short checkpoints.
if (phase === "kill_start") {
  sp.createStreamProcessor("kill", [cs("killin"), { $project: { _id: 0, i: "$fullDocument.i" } },
    { $emit: { connectionName: "lake", bucket: "lake", path: "kill", config: { writeOptions: { count: 40, interval: { size: 300, unit: "ms" } } } } }]);
  sp.kill.start();
}
if (phase === "kill_wait") {
  const n = Number(process.env.OS_ARGS);
  waitFor("kill's input", () => stats("kill").inputMessageCount >= 1 && os.killin.countDocuments() === n, 120000);
  sleep(2000);
  sp.kill.stop();
}
