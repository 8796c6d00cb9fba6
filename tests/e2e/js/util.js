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
// Calls fn, which must throw error `code` (with a message matching the
// regex `re`, if given); returns the error.
function expectError(fn, code, re) {
  try { fn(); } catch (e) {
    assert(e.code === code, `want code ${code}, got ${e.code} (${e.message})`);
    if (re) assert(re.test(e.message), `message ${JSON.stringify(e.message)} does not match ${re}`);
    return e;
  }
  throw new Error(`expected error ${code} ${re || ""}`);
}
