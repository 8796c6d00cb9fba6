// e2e: seed listing 15.6.6 (sample_stream_solar, 10 s tumbling window,
// $avg of obs.watts, $max of obs.temp) through sp.process's wire commands.
// The first window closes about 13-23 s after the start (lateness 3 s).
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
const admin = db.getSiblingDB("admin");
let s = { $source: { connectionName: "sample_stream_solar",
                     timeField: { $dateFromString: { dateString: "$timestamp" } } } };
let t = { $tumblingWindow: { interval: { size: 10, unit: "second" },
  pipeline: [{ $group: { _id: "$group_id", avg_watts: { $avg: "$obs.watts" }, max_temp: { $max: "$obs.temp" } } }] } };
const r = admin.runCommand({ processStreamProcessor: [s, t] });
let cursorId = r.cursorId, msgs = [];
const deadline = Date.now() + 45000;
while (msgs.length === 0 && Date.now() < deadline) {
  const m = admin.runCommand({ getMoreSampleStreamProcessor: r.name, cursorId });
  msgs.push(...m.messages);
  cursorId = m.cursorId;
  if (m.messages.length === 0) sleep(500);
}
admin.runCommand({ dropStreamProcessor: r.name });
assert(msgs.length > 0, "a window closed within 45 s");
for (const d of msgs) {
  assert(Number.isInteger(d._id) && d._id >= 0 && d._id <= 10, "_id is a group_id");
  assert(d.avg_watts === null || (d.avg_watts >= 0 && d.avg_watts <= 450), "avg_watts in range");
  assert(d.max_temp === null || (d.max_temp >= 5 && d.max_temp <= 25), "max_temp in range");
  const w = d._stream_meta.window;
  assert(w.end - w.start === 10000 && w.start.getTime() % 10000 === 0, "epoch-aligned 10 s window");
}
print(`listing 15.6.6: ${msgs.length} group results from the first window ok`);
