// e2e phase 2 (after aspen was SIGKILLed and started again on the same state
// directory): definitions survived, the running processor runs again.
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
const list = sp.listStreamProcessors();
const solar = list.find(p => p.name === "solar");
const keeper = list.find(p => p.name === "keeper");
assert(solar && solar.state === "STOPPED", "solar came back STOPPED");
assert(solar.pipeline[1].$project !== undefined, "solar kept its modified pipeline");
assert(solar.options.dlq.coll === "dlq", "solar kept its DLQ");
assert(keeper && keeper.state === "STARTED", "keeper came back STARTED");
const before = db.getSiblingDB("sp_e2e").keeper.countDocuments({});
let after = before;
for (let i = 0; i < 40 && after <= before; i++) { sleep(250); after = db.getSiblingDB("sp_e2e").keeper.countDocuments({}); }
assert(after > before, "keeper is producing again after the restart");
assert(sp.keeper.drop().ok === 1, "drop of a running processor stops and drops it");
assert(sp.solar.drop().ok === 1, "drop solar");
assert(sp.listStreamProcessors().length === 0, "nothing left");
print("phase 2 ok");
