#!/usr/bin/env bash
# Benchmark (not a test) of aspen's MongoDB paths, in one run:
#   1. change stream -> $merge: N documents inserted into bench.src on the
#      backing server; documents/s until all N are in bench.dst;
#   2. $lookup enrichment: N events (a documents source) each joined with
#      one of 1000 products by $lookup, then $merge; documents/s until all N
#      are in bench.enriched.
# Rates are taken from the processors' own counters (first input to last
# output), so process start-up is not counted. Prints aspen's peak RSS.
#
#   bench/mongodb.sh [--docs N]        (BENCH_DOCS, default 20000)
#
# The backing server is mongo-java-server (in memory, single-threaded Java),
# which bounds these figures; against a real mongod they are higher.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=$ROOT/build-bench
DOCS=${BENCH_DOCS:-20000}
while [[ $# -gt 0 ]]; do
    case $1 in
        --docs) DOCS=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "mongodb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/bench/lib.sh"
bench_setup mongodb

start_backing
cat >"$ASPEN_RUN_DIR/aspen.json" <<JSON
{ "connections": [ { "name": "atlas", "type": "atlas" } ] }
JSON
start_aspen --config "$ASPEN_RUN_DIR/aspen.json" --port 0 \
    --backend "$BACKING_URI" --state-dir "$ASPEN_RUN_DIR/aspen-state"
aspen_pid=$(<"$ASPEN_RUN_DIR/aspen.pid")
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"

cat >"$ASPEN_RUN_DIR/bench_mongodb.js" <<'JS'
const n = Number(process.env.BENCH_DOCS);
const admin = db.getSiblingDB("admin");
const b = db.getSiblingDB("bench");
function stats(name) {
  const st = admin.runCommand({ getStreamProcessorStats: name }).stats;
  return { in: Number(st.inputMessageCount), out: Number(st.outputMessageCount),
           dlq: Number(st.dlqMessageCount) };
}
// Waits until `name` has written `want` documents; returns the rate from its
// first input to its last output, in documents/s.
function rate(name, want) {
  const deadline = Date.now() + 600000;
  let t0 = 0, s = stats(name);
  while (s.out + s.dlq < want && Date.now() < deadline) {
    if (!t0 && s.in > 0) t0 = Date.now();
    sleep(50);
    s = stats(name);
  }
  if (s.out + s.dlq < want) throw new Error(`${name}: only ${s.out} of ${want} written`);
  return { rate: Math.round(want / ((Date.now() - (t0 || Date.now() - 1)) / 1000)), dlq: s.dlq };
}

// 1. change stream -> $merge
sp.createStreamProcessor("cs", [
  { $source: { connectionName: "atlas", db: "bench", coll: "src" } },
  { $addFields: { seen: true } },
  { $merge: { into: { connectionName: "atlas", db: "bench", coll: "dst" } } }]);
sp.cs.start();
for (let i = 0; i < n; i += 1000) {
  const batch = [];
  for (let j = i; j < Math.min(n, i + 1000); j++) batch.push({ _id: j, v: j % 97, tag: "t" + (j % 10) });
  b.src.insertMany(batch);
}
const cs = rate("cs", n);

// 2. $lookup enrichment
const products = [];
for (let i = 0; i < 1000; i++) products.push({ _id: i, name: "product " + i, price: i * 0.25 });
b.products.insertMany(products);
const events = [];
for (let i = 0; i < n; i++) events.push({ _id: i, pid: i % 1000, qty: 1 + (i % 5) });
sp.createStreamProcessor("lk", [
  { $source: { documents: events } },
  { $lookup: { from: { connectionName: "atlas", db: "bench", coll: "products" },
               localField: "pid", foreignField: "_id", as: "product" } },
  { $merge: { into: { connectionName: "atlas", db: "bench", coll: "enriched" } } }]);
sp.lk.start();
const lk = rate("lk", n);
print(JSON.stringify({ cs: cs.rate, cs_dlq: cs.dlq, lk: lk.rate, lk_dlq: lk.dlq }));
JS

log "running $DOCS documents through each path"
out=$(BENCH_DOCS=$DOCS MONGOSH_TIMEOUT=900 mongosh_raw --quiet --norc "$URI" \
    "$ASPEN_RUN_DIR/bench_mongodb.js" | tail -n 1)
rss_kb=$(awk '/VmHWM/ { print $2 }' "/proc/$aspen_pid/status")
cs_rate=$(sed -nE 's/.*"cs":([0-9]+).*/\1/p' <<<"$out")
lk_rate=$(sed -nE 's/.*"lk":([0-9]+).*/\1/p' <<<"$out")
printf '%-52s %12s\n' "documents per path" "$DOCS"
printf '%-52s %12s\n' "change stream -> \$addFields -> \$merge, docs/s" "${cs_rate:-?}"
printf '%-52s %12s\n' "documents -> \$lookup (1000 products) -> \$merge, docs/s" "${lk_rate:-?}"
printf '%-52s %9s MB\n' "aspen peak RSS (VmHWM)" "$((${rss_kb:-0} / 1024))"
stop_aspen || true
stop_backing || true
