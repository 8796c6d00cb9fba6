// Helpers for the mongosh e2e scripts: load(__dirname + "/util.js").
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
// Calls fn every everyMs (default 200) until it returns something truthy,
// and returns that; throws once ms (default 30 s) have passed.
function waitFor(what, fn, ms, everyMs) {
  const limit = ms || 30000;
  const end = Date.now() + limit;
  while (Date.now() < end) {
    const v = fn();
    if (v) return v;
    sleep(everyMs || 200);
  }
  throw new Error(`timed out after ${limit} ms waiting for ${what}`);
}
