// e2e: $https, $setStreamMeta and stream.source.ts through stock mongosh,
// against http_peer.py (plain and TLS) and a real backing server. Run by
// test_https.sh one phase at a time (HT_PHASE); throws on the first mismatch.
load(__dirname + "/util.js");
const phase = process.env.HT_PHASE;
const t = db.getSiblingDB("https_e2e");
const DLQ = { dlq: { connectionName: "atlas", db: "https_e2e", coll: "dlq" } };
const src = coll => ({ $source: { connectionName: "atlas", db: "https_e2e", coll,
                                  config: { fullDocument: "updateLookup", fullDocumentOnly: true } } });
const merge = coll => ({ $merge: { into: { connectionName: "atlas", db: "https_e2e", coll } } });
function state(name) {
  const p = sp.listStreamProcessors({ name })[0];
  return p ? p.state : "(gone)";
}
function startAndWait(name) {
  sp[name].start();
  waitFor(`${name} STARTED`, () => state(name) === "STARTED");
}
function stats(name) { const r = sp[name].stats(); return r.stats || r; }
const tojson = x => EJSON.stringify(x, { relaxed: true });

if (phase === "main") {
  // ---- the connections are listed without secrets --------------------------
  const conns = sp.listConnections();
  const web = conns.find(c => c.name === "web");
  assert(web && web.type === "https", "web listed as https: " + JSON.stringify(conns));
  assert(web.headers.includes("X-Static") && web.auth === "bearer", "header names and auth kind listed");
  assert(!JSON.stringify(conns).includes("tok-secret") && !JSON.stringify(conns).includes("s1-value"),
         "no secret listed");

  // ---- validation with ASP's rules -----------------------------------------
  const bad = (stage, re) => expectError(
    () => sp.createStreamProcessor("bad", [src("x"), stage, merge("y")]), 420, re);
  bad({ $https: { connectionName: "web", as: "r", bogus: 1 } }, /BSON field '\$https.bogus' is an unknown field/);
  bad({ $https: { connectionName: "web" } }, /'\$https.as' is missing but a required field/);
  bad({ $https: { as: "r" } }, /'\$https.connectionName' is missing/);
  bad({ $https: { connectionName: "nope", as: "r" } }, /Unknown connection name nope/);
  bad({ $https: { connectionName: "atlas", as: "r" } }, /requires a connection of type https/);
  bad({ $https: { connectionName: "web", as: "r", method: "TRACE" } }, /Enumeration value 'TRACE' for field '\$https.method'/);
  bad({ $https: { connectionName: "web", as: "r", onError: "retry" } }, /Enumeration value 'retry' for field '\$https.onError'/);
  bad({ $https: { connectionName: "web", as: "r", config: { requestTimeoutSec: "5" } } },
      /'\$https.config.requestTimeoutSec' is the wrong type 'string', expected type 'int'/);
  bad({ $https: { connectionName: "web", as: "r", config: { retries: 2 } } }, /'\$https.config.retries' is an unknown field/);
  bad({ $https: { connectionName: "web", as: "r", payload: [{ $match: { a: 1 } }] } },
      /\$match stage is not permitted in the payload \(inner pipeline\) of an https stage/);
  bad({ $https: { connectionName: "web", as: 5 } }, /'\$https.as' is the wrong type/);
  bad({ $setStreamMeta: { coll: "$c" } }, /beginning with 'stream.'/);
  bad({ $tumblingWindow: { interval: { size: 1, unit: "second" }, pipeline: [{ $setStreamMeta: { "stream.k": 1 } }] } },
      /\$setStreamMeta stage is not permitted in the inner pipeline of a window stage/);
  // Accepted: in a window's pipeline, and as the last stage.
  sp.createStreamProcessor("okWindow", [src("x"), { $tumblingWindow: { interval: { size: 1, unit: "second" },
    pipeline: [{ $https: { connectionName: "web", as: "r" } }, { $group: { _id: null, n: { $sum: 1 } } }] } }, merge("y")]);
  sp.okWindow.drop();
  sp.createStreamProcessor("okLast", [src("x"), { $https: { connectionName: "web", path: "record/x", method: "POST", as: "r" } }]);
  sp.okLast.drop();

  // ---- change stream -> $https enrichment -> $merge -------------------------
  sp.createStreamProcessor("enrich", [
    src("orders"),
    { $https: { connectionName: "web", path: "echo/orders", method: "POST",
                parameters: { qty: "$qty", ok: true },
                headers: { "X-Order": { $toString: "$_id" }, "Bad Header": "dropped" },
                payload: [{ $project: { _id: 1, qty: 1 } }],
                as: "resp" } },
    { $addFields: { status: { $meta: "stream.https.httpStatusCode" },
                    ingested: { $meta: "stream.source.ts" } } },
    merge("enriched"),
  ], DLQ);
  startAndWait("enrich");
  t.orders.insertMany([{ _id: 1, qty: 3 }, { _id: 2, qty: 5 }, { _id: 3, qty: 8 }]);
  waitFor("3 enriched orders", () => t.enriched.countDocuments() === 3);
  for (const d of t.enriched.find().toArray()) {
    const r = d.resp;
    assert(r.method === "POST" && r.path === "/echo/orders", "method and path: " + tojson(r));
    assert(r.query.qty === String(d.qty) && r.query.ok === "true", "parameters: " + tojson(r.query));
    assert(r.headers["x-order"] === String(d._id), "stage header: " + tojson(r.headers));
    assert(r.headers["x-static"] === "s1-value", "connection header");
    assert(r.headers.authorization === "Bearer tok-secret", "connection auth");
    assert(!("bad header" in r.headers), "an invalid header name is left out");
    assert(tojson(r.body) === tojson({ _id: d._id, qty: d.qty }), "the payload pipeline shaped the body: " + tojson(r.body));
    assert(d.status === 200, "stream.https.httpStatusCode");
    assert(d.ingested instanceof Date, "stream.source.ts is a Date: " + tojson(d.ingested));
    const m = d._stream_meta;
    assert(m.https.url.startsWith("http://127.0.0.1:") && m.https.url.includes("/echo/orders?qty="),
           "_stream_meta.https.url: " + m.https.url);
    assert(m.https.method === "POST" && typeof m.https.responseTimeMs !== "undefined", "_stream_meta.https");
  }

  // ---- answers that follow onError, per kind of answer ---------------------
  sp.createStreamProcessor("kinds", [
    src("kinds"),
    { $https: { connectionName: "web", path: "$kind", as: "resp", config: { parseJsonStrings: true } } },
    merge("kindsOut"),
  ], DLQ);
  startAndWait("kinds");
  t.kinds.insertMany([
    { _id: "ok", kind: "echo/x" }, { _id: "text", kind: "text" }, { _id: "empty", kind: "empty" },
    { _id: "notype", kind: "notype" }, { _id: "jsonstr", kind: "jsonstr" },
    { _id: "404", kind: "status/404" }, { _id: "notjson", kind: "notjson" }, { _id: "html", kind: "html" },
    { _id: "big", kind: "big/17000000" }, { _id: "badpath", kind: 5 },
  ]);
  waitFor("5 merged and 5 dead-lettered",
          () => t.kindsOut.countDocuments() === 5 && t.dlq.countDocuments({ "doc._id": { $in: ["404", "notjson", "html", "big", "badpath"] } }) === 5, 60000);
  const k = Object.fromEntries(t.kindsOut.find().toArray().map(d => [d._id, d]));
  assert(k.text.resp === "plain words", "text/plain is a string");
  assert(!("resp" in k.empty), "an empty body sets no field");
  assert(k.notype.resp.typed === false, "no Content-Type: JSON");
  assert(tojson(k.jsonstr.resp) === tojson({ inner: { a: 1 }, list: [1, 2], s: "x" }), "parseJsonStrings: " + tojson(k.jsonstr.resp));
  const dl = Object.fromEntries(t.dlq.find({ "doc._id": { $exists: true } }).toArray().map(d => [d.doc._id, d]));
  assert(dl["404"].operatorName === "HttpsOperator", "operatorName: " + tojson(dl["404"]));
  assert(/status code 404/.test(dl["404"].errInfo.reason), "404 reason: " + dl["404"].errInfo.reason);
  assert(dl["404"]._stream_meta.https.httpStatusCode === 404, "the DLQ entry has _stream_meta.https");
  assert(dl["404"].processorName === "kinds" && dl["404"].dlqTime instanceof Date, "DLQ entry fields");
  assert(/not valid JSON/.test(dl.notjson.errInfo.reason), "non-JSON: " + dl.notjson.errInfo.reason);
  assert(/Content-Type 'text\/html'/.test(dl.html.errInfo.reason), "html: " + dl.html.errInfo.reason);
  assert(/larger than/.test(dl.big.errInfo.reason), "oversized: " + dl.big.errInfo.reason);
  assert(/path must evaluate to a string/.test(dl.badpath.errInfo.reason), "bad path: " + dl.badpath.errInfo.reason);
  assert(state("kinds") === "STARTED", "the processor carries on");

  // onError: "ignore" passes the document on without the field.
  sp.createStreamProcessor("ignoring", [src("ign"),
    { $https: { connectionName: "web", path: "status/404", as: "resp", onError: "ignore" } }, merge("ignOut")], DLQ);
  startAndWait("ignoring");
  t.ign.insertOne({ _id: 1 });
  waitFor("ignored doc merged", () => t.ignOut.countDocuments() === 1);
  assert(!("resp" in t.ignOut.findOne()), "no resp with ignore");

  // A 500 fails the processor whatever onError says; onError "fail" fails on a 404.
  sp.createStreamProcessor("five", [src("five"),
    { $https: { connectionName: "web", path: "status/500", as: "resp", onError: "ignore" } }, merge("fiveOut")], DLQ);
  startAndWait("five");
  t.five.insertOne({ _id: 1 });
  waitFor("five FAILED", () => state("five") === "FAILED");
  const fp = sp.listStreamProcessors({ name: "five" })[0];
  assert(/status code 500/.test(fp.errorMsg), "error message: " + fp.errorMsg);
  sp.createStreamProcessor("failing", [src("failing"),
    { $https: { connectionName: "web", path: "status/404", as: "resp", onError: "fail" } }, merge("failOut")], DLQ);
  startAndWait("failing");
  t.failing.insertOne({ _id: 1 });
  waitFor("failing FAILED", () => state("failing") === "FAILED");
  assert(t.failOut.countDocuments() === 0, "nothing merged past the failure");

  // A peer that refuses connections: onError (dlq).
  sp.createStreamProcessor("down", [src("down"), { $https: { connectionName: "webdown", as: "resp" } }, merge("downOut")], DLQ);
  startAndWait("down");
  t.down.insertOne({ _id: "d1" });
  waitFor("refused connection dead-lettered", () => t.dlq.countDocuments({ "doc._id": "d1" }) === 1);
  assert(/failed/.test(t.dlq.findOne({ "doc._id": "d1" }).errInfo.reason), "transport error reason");

  // TLS with the dev CA.
  sp.createStreamProcessor("tls", [src("tlsIn"), { $https: { connectionName: "webtls", path: "echo/tls", as: "resp" } }, merge("tlsOut")], DLQ);
  startAndWait("tls");
  t.tlsIn.insertOne({ _id: 1 });
  waitFor("TLS answer merged", () => t.tlsOut.countDocuments() === 1);
  assert(t.tlsOut.findOne().resp.path === "/echo/tls", "TLS echo");

  // ---- $setStreamMeta routing $merge to per-key collections ---------------
  sp.createStreamProcessor("route", [src("products"),
    { $setStreamMeta: { "stream.coll": { $concat: ["cat_", "$category"] } } },
    { $merge: { into: { connectionName: "atlas", db: "https_e2e", coll: { $meta: "stream.coll" } } } }], DLQ);
  startAndWait("route");
  t.products.insertMany([{ _id: "A", category: "tech" }, { _id: "B", category: "clothing" }, { _id: "C", category: "tech" },
                         { _id: "D", category: 7 }]);
  waitFor("routed", () => t.cat_tech.countDocuments() === 2 && t.cat_clothing.countDocuments() === 1);
  assert(t.cat_tech.find().toArray().map(d => d._id).sort().join() === "A,C", "tech routed");
  waitFor("a failing $setStreamMeta expression goes to the DLQ",
          () => t.dlq.countDocuments({ "doc._id": "D", operatorName: "SetStreamMetaOperator" }) === 1);

  // ---- $https as the final stage ------------------------------------------
  sp.createStreamProcessor("hook", [src("events"),
    { $https: { connectionName: "web", path: "record/run1", method: "POST", as: "r" } }], DLQ);
  startAndWait("hook");
  t.events.insertMany([1, 2, 3, 4, 5].map(i => ({ _id: i })));
  waitFor("5 delivered by the final $https", () => Number(stats("hook").outputMessageCount) === 5);
  sp.hook.stop();
} else if (phase === "hook2") {
  // The second run: only what came since is delivered.
  t.events.insertMany([6, 7].map(i => ({ _id: i })));
  startAndWait("hook");
  waitFor("7 delivered over both runs", () => Number(stats("hook").outputMessageCount) === 7);
  sp.hook.stop();
} else if (phase === "lambda") {
  const lc = sp.listConnections().find(c => c.name === "lambda");
  assert(lc && lc.type === "aws-lambda" && lc.aws.roleArn.endsWith("role/asp-invoker") && lc.region === "us-east-1",
         "lambda listed: " + tojson(lc));
  assert(!tojson(sp.listConnections()).includes("lambda-s3cr3t"), "no secret key listed");
  const bad = (stage, re, last) => expectError(
    () => sp.createStreamProcessor("bad", [src("x"), stage].concat(last ? [] : [merge("y")])), 420, re);
  bad({ $externalFunction: { connectionName: "lambda", functionName: "f", execution: "async", as: "r" } },
      /as cannot be set when execution is async/);
  bad({ $externalFunction: { connectionName: "lambda", functionName: "f" } }, /as is required when execution is sync/);
  bad({ $externalFunction: { connectionName: "lambda", functionName: "f", execution: "async", parallelism: 2 } },
      /parallelism above 1 requires execution sync/);
  bad({ $externalFunction: { connectionName: "lambda", functionName: "f", as: "r", partitionBy: "$k" } },
      /partitionBy requires execution sync and parallelism above 1/);
  bad({ $externalFunction: { connectionName: "web", functionName: "f", as: "r" } }, /requires a connection of type aws-lambda/);
  bad({ $externalFunction: { connectionName: "lambda", as: "r" } }, /'\$externalFunction.functionName' is missing/);
  bad({ $externalFunction: { connectionName: "lambda", functionName: "f", as: "r", retries: 1 } },
      /'\$externalFunction.retries' is an unknown field/);
  bad({ $externalFunction: { connectionName: "lambda", functionName: "f", as: "r", payload: [{ $unwind: "$a" }] } },
      /\$unwind stage is not permitted in the payload \(inner pipeline\) of an external function stage/);

  // sync: the function's result in `as` (moto echoes the payload).
  sp.createStreamProcessor("fnSync", [src("fnIn"),
    { $externalFunction: { connectionName: "lambda", functionName: "echoFn", as: "fn",
                           parallelism: 4, partitionBy: "$k", payload: [{ $project: { _id: 1, n: 1 } }] } },
    merge("fnOut")], DLQ);
  startAndWait("fnSync");
  t.fnIn.insertMany([1, 2, 3].map(i => ({ _id: i, n: i * 10, k: i % 2, other: "x" })));
  waitFor("3 results merged", () => t.fnOut.countDocuments() === 3);
  for (const d of t.fnOut.find().toArray()) {
    assert(tojson(d.fn) === tojson({ _id: d._id, n: d.n }), "the function's result: " + tojson(d));
  }
  // async: the pipeline goes on without the result; a full ARN works too.
  sp.createStreamProcessor("fnAsync", [src("fnAIn"),
    { $externalFunction: { connectionName: "lambda", execution: "async",
                           functionName: "arn:aws:lambda:us-east-1:123456789012:function:echoFn" } },
    merge("fnAOut")], DLQ);
  startAndWait("fnAsync");
  t.fnAIn.insertMany([{ _id: 1 }, { _id: 2 }]);
  waitFor("async documents merged", () => t.fnAOut.countDocuments() === 2);
  assert(!("fn" in t.fnAOut.findOne()), "no result with async");
  // An Invoke API error (a 404 from an endpoint with a wrong path) follows
  // onError (dlq).
  sp.createStreamProcessor("fnMissing", [src("fnMIn"),
    { $externalFunction: { connectionName: "lambdaWrongPath", functionName: "echoFn", as: "fn" } }, merge("fnMOut")], DLQ);
  startAndWait("fnMissing");
  t.fnMIn.insertOne({ _id: "m1" });
  waitFor("the failed call dead-lettered", () => t.dlq.countDocuments({ "doc._id": "m1" }) === 1);
  const e = t.dlq.findOne({ "doc._id": "m1" });
  assert(e.operatorName === "ExternalFunctionOperator" && /status code 404/.test(e.errInfo.reason),
         "DLQ entry: " + tojson(e));
  // As the last stage (a sink), sync without `as`.
  sp.createStreamProcessor("fnSink", [src("fnSIn"),
    { $externalFunction: { connectionName: "lambda", functionName: "echoFn" } }], DLQ);
  startAndWait("fnSink");
  t.fnSIn.insertMany([{ _id: 1 }, { _id: 2 }, { _id: 3 }]);
  waitFor("3 invoked by the final stage", () => Number(stats("fnSink").outputMessageCount) === 3);
  for (const n of ["fnSync", "fnAsync", "fnMissing", "fnSink"]) sp[n].stop();
} else if (phase === "stall_start") {
  // A processor whose peer never answers, next to one that works.
  sp.createStreamProcessor("stalled", [src("stallIn"),
    { $https: { connectionName: "webstall", path: "stall", as: "r" } }, merge("stallOut")], DLQ);
  startAndWait("stalled");
  const docs = [];
  for (let i = 0; i < 3000; i++) docs.push({ _id: i, pad: "x".repeat(1000) });
  t.stallIn.insertMany(docs);
  // It reads until its window (maxInFlight 4) is full, or until it idles
  // and its flush waits for the requests in flight; either way it stops
  // reading while the peer stalls.
  waitFor("the stalled processor read", () => Number(stats("stalled").inputMessageCount) >= 1);
} else if (phase === "stall_check") {
  const n = Number(stats("stalled").inputMessageCount);
  assert(n <= 5, `back-pressure: the stalled processor read ${n} documents, at most maxInFlight + 1 = 5`);
  assert(state("stalled") === "STARTED", "still STARTED");
  // Others are not held up: the enrich processor still answers.
  t.orders.insertOne({ _id: 4, qty: 1 });
  waitFor("another processor still enriches", () => t.enriched.countDocuments() === 4);
  assert(sp.listStreamProcessors().length > 0, "listStreamProcessors answers");
  // A stop interrupts the wait for room.
  sp.stalled.stop();
  assert(state("stalled") === "STOPPED", "stalled stopped");
  sp.stalled.drop();
} else {
  throw new Error("unknown HT_PHASE " + phase);
}
