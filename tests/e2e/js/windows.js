// e2e: windows through stock mongosh against aspen (no backend needed).
// Uses the wire commands behind sp.process (processStreamProcessor +
// getMoreSampleStreamProcessor) so each case can stop once it has what it
// expects. Throws on the first mismatch.
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
function near(a, b) { return Math.abs(a - b) < 1e-9; }
const admin = db.getSiblingDB("admin");
const B = new Date("2026-01-01T00:00:00Z").getTime();
const at = (s) => new Date(B + s * 1000);

// Runs an ephemeral processor until `want` messages arrived or `ms` passed.
function run(pipeline, want, ms, options) {
  const cmd = { processStreamProcessor: pipeline };
  if (options) cmd.options = options;
  const r = admin.runCommand(cmd);
  assert(r.ok === 1, "processStreamProcessor: " + JSON.stringify(r));
  let cursorId = r.cursorId, msgs = [];
  const deadline = Date.now() + ms;
  while (String(cursorId) !== "0" && msgs.length < want && Date.now() < deadline) {
    const m = admin.runCommand({ getMoreSampleStreamProcessor: r.name, cursorId });
    msgs.push(...m.messages);
    cursorId = m.cursorId;
    if (m.messages.length === 0) sleep(200);
  }
  admin.runCommand({ dropStreamProcessor: r.name });
  return msgs;
}
function expectError(pipeline, re) {
  try { admin.runCommand({ processStreamProcessor: pipeline }); }
  catch (e) {
    assert(e.code === 420, `want 420, got ${e.code}: ${e.message}`);
    assert(re.test(e.message), `message ${JSON.stringify(e.message)} !~ ${re}`);
    return;
  }
  throw new Error("expected an error matching " + re);
}

// Listing 15.6: hopping window, 30 s interval, 10 s hop, $avg per _id.
const hopping = run([
  { $source: { documents: [
      { _id: "s1", temperature: 10, t: at(0) }, { _id: "s1", temperature: 20, t: at(5) },
      { _id: "s2", temperature: 30, t: at(12) }, { _id: "s1", temperature: 40, t: at(25) },
      { _id: "flush", temperature: 0, t: at(200) }],
    timeField: "$t" } },
  { $hoppingWindow: { interval: { size: 30, unit: "second" }, hopSize: { size: 10, unit: "second" },
      pipeline: [{ $group: { _id: "$_id", avgTemperature: { $avg: "$temperature" } } }] } },
], 8, 15000);
assert(hopping.length === 8, "8 window results, got " + hopping.length + ": " + EJSON.stringify(hopping));
const byWin = hopping.map(d => [(d._stream_meta.window.start.getTime() - B) / 1000, d._id, d.avgTemperature]);
const expected = [[-20, "s1", 15], [-10, "s1", 15], [-10, "s2", 30], [0, "s1", 70 / 3], [0, "s2", 30],
                  [10, "s2", 30], [10, "s1", 40], [20, "s1", 40]];
for (let i = 0; i < expected.length; i++) {
  assert(byWin[i][0] === expected[i][0] && byWin[i][1] === expected[i][1] && near(byWin[i][2], expected[i][2]),
         `result ${i}: want ${expected[i]}, got ${byWin[i]}`);
  const w = hopping[i]._stream_meta.window;
  assert(w.end.getTime() - w.start.getTime() === 30000, "30 s windows");
}
print("hopping window (listing 15.6) ok");

// Late data: [0,10) closes when t=20 arrives; t=5 is then late.
const late = run([
  { $source: { documents: [{ v: 1, t: at(0) }, { v: 2, t: at(20) }, { v: 3, t: at(5) }], timeField: "$t" } },
  { $tumblingWindow: { interval: { size: 10, unit: "second" },
      pipeline: [{ $group: { _id: null, n: { $count: {} }, total: { $sum: "$v" } } }] } },
], 2, 10000);
assert(late.length === 2, "one result and one DLQ entry: " + EJSON.stringify(late));
assert(late[0].n === 1 && late[0].total === 1, "window [0,10) result");
const dlq = late[1]._dlqMessage;
assert(dlq && dlq.errInfo.reason === "Input document arrived late.", "late reason");
assert(dlq.missedWindowStartTimes[0].getTime() === B, "missedWindowStartTimes");
assert(dlq.doc.v === 3, "the late document is in the DLQ entry");
print("late data to the DLQ ok");

// idleTimeout on the virtual clock: the last window closes as soon as the
// input is over, deterministically.
const idle = run([
  { $source: { documents: [{ k: "a", t: at(1) }, { k: "a", t: at(3) }, { k: "b", t: at(4) }], timeField: "$t" } },
  { $tumblingWindow: { interval: { size: 10, unit: "second" }, idleTimeout: { size: 5, unit: "second" },
      pipeline: [{ $group: { _id: "$k", n: { $sum: 1 } } }, { $sort: { _id: -1 } }] } },
], 2, 10000, { virtualClock: true });
assert(idle.length === 2 && idle[0]._id === "b" && idle[1]._id === "a" && idle[1].n === 2,
       "idle-closed window, sorted: " + EJSON.stringify(idle));
print("idleTimeout on the virtual clock ok");

// $sort + $limit + $count inside windows; $meta window start as _id.
const inner = run([
  { $source: { documents: [{ x: 3, t: at(1) }, { x: 1, t: at(2) }, { x: 2, t: at(3) }, { x: 9, t: at(61) }],
      timeField: "$t" } },
  { $tumblingWindow: { interval: { size: 1, unit: "minute" }, allowedLateness: 0,
      pipeline: [{ $sort: { x: 1 } }, { $limit: 2 },
                 { $group: { _id: { $meta: "stream.window.start" }, xs: { $push: "$x" } } }] } },
], 1, 10000);
assert(inner.length === 1 && inner[0]._id.getTime() === B, "_id is the window start");
assert(JSON.stringify(inner[0].xs) === "[1,2]", "sorted and limited: " + JSON.stringify(inner[0].xs));
print("$sort/$limit/$group with $meta inside a window ok");

// Refusals, with ASP's reasons.
const src = { $source: { documents: [] } };
expectError([src, { $tumblingWindow: { interval: { size: 10, unit: "second" }, pipeline: [{ $skip: 1 }] } }],
            /Unsupported stage: \$skip/);
expectError([src, { $tumblingWindow: { interval: { size: 0, unit: "second" }, pipeline: [] } }],
            /Window interval size must be greater than 0\./);
expectError([src, { $tumblingWindow: { interval: { size: 1, unit: "second" }, allowedLateness: { size: 31, unit: "minute" }, pipeline: [] } }],
            /Maximum allowedLateness is 30 minutes/);
expectError([src, { $tumblingWindow: { interval: { size: 1, unit: "second" }, pipeline: [] } },
             { $hoppingWindow: { interval: { size: 2, unit: "second" }, hopSize: { size: 1, unit: "second" }, pipeline: [] } }],
            /Only one window stage is allowed in a pipeline\./);
expectError([src, { $sessionWindow: { partitionBy: "$k", gap: { size: 1, unit: "second" }, pipeline: [{ $project: { k: 1 } }] } }],
            /\$sessionWindow\.pipeline isn't supported/);
expectError([src, { $tumblingWindow: { interval: { size: 1, unit: "second" }, pipeline: [{ $tumblingWindow: {} }] } }],
            /\$tumblingWindow stage is not permitted in the inner pipeline of a window stage/);
print("window refusals ok");

// Session windows: per partition, gap 5 s.
const sessions = run([
  { $source: { documents: [{ u: "x", t: at(0) }, { u: "x", t: at(3) }, { u: "y", t: at(4) }, { u: "x", t: at(20) },
                           { u: "z", t: at(100) }], timeField: "$t" } },
  { $sessionWindow: { partitionBy: "$u", gap: { size: 5, unit: "second" }, allowedLateness: 0,
      pipeline: [{ $group: { _id: "$u", n: { $sum: 1 } } }] } },
], 3, 10000);
assert(sessions.length === 3, "three sessions closed: " + EJSON.stringify(sessions));
const sx = sessions.find(d => d._id === "x" && d.n === 2);
assert(sx && sx._stream_meta.window.start.getTime() === B &&
       sx._stream_meta.window.end.getTime() === B + 8000, "session x [0, 3+5)");
assert(sessions.some(d => d._id === "y" && d.n === 1), "session y");
assert(sessions.some(d => d._id === "x" && d.n === 1), "second session of x");
print("session windows ok");
