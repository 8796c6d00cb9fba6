// e2e: tiers and autoscaling (issue 17). Run by test_stats.sh against aspen
// with a backing server and the broker aspen hosts ("localKafka"): a
// start's tier in listings and stats, autoscaling accepted on create,
// start and modify and shown, effectiveTier, and the per-tier limits on
// parallelism and Kafka partitions refused with ASP's tier names.
load(__dirname + "/util.js");
function j(v) { return EJSON.stringify(v, { relaxed: true }); }
// The listing entry as the server sent it (mongosh wraps each in a
// processor object).
function entry(name) {
  const r = db.adminCommand({ listStreamProcessors: 1, filter: { name } });
  assert(r.ok === 1 && r.streamProcessors.length === 1, "listed: " + j(r));
  return r.streamProcessors[0];
}
function refused(fn, re, what) {
  let err = null;
  try { fn(); } catch (e) { err = e; }
  assert(err, what + ": refused");
  assert(re.test(err.message), `${what}: message ${err.message} matches ${re}`);
  assert(err.code === 420, `${what}: code 420, got ${err.code}`);
}
// A command's reply, ok or not ({ok: 0, errmsg, code} for an error).
function run(cmd) {
  let r;
  try { r = db.adminCommand(cmd); } catch (e) { r = { ok: 0, errmsg: e.message, code: e.code }; }
  return r;
}
const src = { $source: { connectionName: "atlas", db: "tiers", coll: "in" } };
const merge = (p) => ({ $merge: Object.assign({ into: { connectionName: "atlas", db: "tiers", coll: "out" } },
                                               p ? { parallelism: p } : {}) });

// ---- parallelism: cumulative (1 + each parallelism above 1 less one) --------------
refused(() => sp.createStreamProcessor("par2", [src, merge(2)], { tier: "SP2" }),
        /cumulative parallelism of 2 exceeds the maximum of 1 for tier SP2: use tier SP5 or higher/, "SP2 with parallelism 2");
refused(() => sp.createStreamProcessor("par9", [src, merge(9)]),
        /cumulative parallelism of 9 exceeds the maximum of 8 for tier SP10: use tier SP30 or higher/,
        "the default tier SP10 with parallelism 9");
sp.createStreamProcessor("par", [src, merge(2)], { tier: "SP5" });
refused(() => sp.par.start({ tier: "SP2" }), /maximum of 1 for tier SP2/, "start on a tier too small");
assert(entry("par").tier === "SP5" && entry("par").state === "CREATED", "a refused start changes nothing: " + j(entry("par")));

// ---- a start's tier: saved, listed, in stats ---------------------------------------
sp.par.start({ tier: "SP10" });
let e = entry("par");
assert(e.tier === "SP10" && e.state === "STARTED", "listing shows the start's tier: " + j(e));
let st = sp.par.stats();
assert(st.tier === "SP10" && st.effectiveTier === "SP10" && !("autoscaling" in st), "stats tier: " + j([st.tier, st.effectiveTier]));
assert(Number(st.stats.addedParallelism) === 1, "addedParallelism: " + j(st.stats.addedParallelism));
sp.par.stop();

// ---- autoscaling --------------------------------------------------------------------
sp.par.start({ autoscaling: { enabled: true, minTier: "SP30", maxTier: "SP50" } });
e = entry("par");
assert(e.tier === "SP10" && e.options.autoscaling.enabled === true && e.options.autoscaling.minTier === "SP30",
       "listing shows autoscaling: " + j(e));
st = sp.par.stats();
assert(st.tier === "SP10" && st.effectiveTier === "SP30", "effectiveTier is brought up to minTier: " + j([st.tier, st.effectiveTier]));
assert(st.autoscaling.enabled === true && st.autoscaling.maxTier === "SP50", "stats autoscaling: " + j(st.autoscaling));
sp.par.stop();
sp.par.modify({ autoscaling: { enabled: false } });
st = sp.par.stats();
assert(st.autoscaling.enabled === false && st.effectiveTier === "SP10", "modify turns it off: " + j([st.autoscaling, st.effectiveTier]));
sp.par.modify({ tier: "SP30" });
st = sp.par.stats();
assert(st.tier === "SP30" && st.effectiveTier === "SP30" && st.autoscaling.enabled === false,
       "modify's tier keeps autoscaling: " + j([st.tier, st.effectiveTier, st.autoscaling]));
sp.createStreamProcessor("auto", [src, merge()], { tier: "SP2", autoscaling: { enabled: true, maxTier: "SP5" } });
st = sp.auto.stats();
assert(st.tier === "SP2" && st.effectiveTier === "SP2" && st.autoscaling.maxTier === "SP5", "create with autoscaling: " + j(st));
// With autoscaling up to SP5, a parallelism SP2 cannot take is still
// refused on SP2: it runs on SP2 until it scales.
refused(() => sp.createStreamProcessor("auto2", [src, merge(2)], { tier: "SP2", autoscaling: { enabled: true, maxTier: "SP5" } }),
        /maximum of 1 for tier SP2/, "parallelism against the tier it starts on");

// Refusals of a bad autoscaling.
const bad = [
  [{ minTier: "SP5" }, /'startStreamProcessor.autoscaling.enabled' is missing but a required field/],
  [{ enabled: "yes" }, /startStreamProcessor.autoscaling.enabled must be a boolean/],
  [{ enabled: true, maxTier: "SP7" }, /invalid tier 'SP7' for startStreamProcessor.autoscaling.maxTier \(expected SP2, SP5, SP10, SP30 or SP50\)/],
  [{ enabled: true, minTier: "SP50", maxTier: "SP2" }, /minTier \(SP50\) must not be above startStreamProcessor.autoscaling.maxTier \(SP2\)/],
  [{ enabled: true, scaleUp: 1 }, /BSON field 'startStreamProcessor.autoscaling.scaleUp' is an unknown field/],
  ["on", /startStreamProcessor.autoscaling must be an object/],
];
for (const [a, re] of bad) {
  const r = run({ startStreamProcessor: "auto", autoscaling: a });
  assert(r.ok === 0 && r.code === 420 && re.test(r.errmsg), `autoscaling ${j(a)}: ${j(r)}`);
}
refused(() => sp.createStreamProcessor("auto3", [src, merge()], { autoscaling: { enabled: true, minTier: "SP1" } }),
        /invalid tier 'SP1' for options.autoscaling.minTier/, "create with a bad minTier");
let r = run({ modifyStreamProcessor: "auto", autoscaling: {} });
assert(r.ok === 0 && /'modifyStreamProcessor.autoscaling.enabled' is missing/.test(r.errmsg) ||
       r.ok === 0 && /autoscaling.enabled' is missing/.test(r.errmsg), "modify without enabled: " + j(r));

// ---- Kafka partitions per tier: SP2 reads at most 32 -------------------------------
// Nine topics of the local broker's four partitions each: 36.
const topics = Array.from({ length: 9 }, (_, i) => "tiers_t" + i);
sp.createStreamProcessor("fill", [
  { $source: { connectionName: "atlas", db: "tiers", coll: "fill", config: { fullDocument: "updateLookup", fullDocumentOnly: true } } },
  { $emit: { connectionName: "localKafka", topic: "$t" } }]);
sp.fill.start();
topics.forEach((t, i) => db.getSiblingDB("tiers").fill.insertOne({ _id: i, t }));
waitFor("the topics written", () => Number(sp.fill.stats().stats.outputMessageCount) === topics.length);
sp.createStreamProcessor("parts", [
  { $source: { connectionName: "localKafka", topic: topics } },
  { $merge: { into: { connectionName: "atlas", db: "tiers", coll: "partsOut" } } }], { tier: "SP2" });
refused(() => sp.parts.start(), /the Kafka \$source reads 36 partitions, more than the 32 tier SP2 allows: use tier SP5 or higher/,
        "36 partitions on SP2");
sp.parts.start({ tier: "SP5" });
assert(entry("parts").state === "STARTED", "36 partitions on SP5");
for (const n of ["parts", "fill", "par", "auto"]) sp[n].drop();
print("tiers: all checks passed");
