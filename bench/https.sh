#!/usr/bin/env bash
# Benchmark (not a test) of the $https stage against the local HTTP peer
# (tests/e2e/http_peer.py, Python, threaded): requests/s and the p50/p99 of
# ASP's responseTimeMs (_stream_meta.https) at 1 and 32 requests in flight.
#
#   bench/https.sh [--requests N]
#
# Builds a Release aspen in build-bench/ (-DASPEN_TESTS=OFF), starts the
# backing server, the HTTP peer and aspen with two https connections to the
# peer, maxInFlight 1 and 32, and for each runs a processor
#   {documents: N small documents} -> $https (POST echo/bench, the payload
#   {_id}) -> $merge into bench.https<C>
# timed from its start to the N-th merged document. The peer is a Python
# server, so at 32 in flight it, not aspen, is usually the ceiling.
# Everything started is stopped on exit. Timings never fail the run; the
# exit status is non-zero only if something broke.
#
# Options (also as environment variables):
#   --requests N   requests per row (BENCH_REQUESTS, default 5000)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=$ROOT/build-bench

REQUESTS=${BENCH_REQUESTS:-5000}
while [[ $# -gt 0 ]]; do
    case $1 in
        --requests) REQUESTS=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "https.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/bench/lib.sh"
bench_setup https

HTTP_PORT=$(free_port)
start_backing
start_http_peer http_peer "$HTTP_PORT"
cat >"$ASPEN_RUN_DIR/aspen.json" <<JSON
{ "connections": [
  { "name": "atlas", "type": "atlas" },
  { "name": "web1", "type": "https", "url": "http://127.0.0.1:$HTTP_PORT", "maxInFlight": 1 },
  { "name": "web32", "type": "https", "url": "http://127.0.0.1:$HTTP_PORT", "maxInFlight": 32 } ] }
JSON
start_aspen --config "$ASPEN_RUN_DIR/aspen.json" --port 0 --backend "$BACKING_URI" \
    --state-dir "$ASPEN_RUN_DIR/aspen-state"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"

cat >"$ASPEN_RUN_DIR/bench_https.js" <<'JS'
const n = Number(process.env.BENCH_REQUESTS);
const b = db.getSiblingDB("bench");
const docs = [];
for (let i = 0; i < n; i++) docs.push({ _id: i, v: "x".repeat(64) });
for (const c of [1, 32]) {
  const name = "https" + c;
  sp.createStreamProcessor(name, [
    { $source: { documents: docs } },
    { $https: { connectionName: "web" + c, path: "echo/bench", method: "POST", as: "r",
                payload: [{ $project: { _id: 1 } }] } },
    { $project: { r: 0 } },
    { $merge: { into: { connectionName: "atlas", db: "bench", coll: name } } },
  ]);
  const t0 = Date.now();
  sp[name].start();
  const limit = t0 + 600000;
  while (b[name].countDocuments() < n && Date.now() < limit) sleep(20);
  const secs = (Date.now() - t0) / 1000;
  const got = b[name].countDocuments();
  const ms = b[name].find({}, { "_stream_meta.https.responseTimeMs": 1 }).toArray()
    .map(d => Number(d._stream_meta.https.responseTimeMs)).sort((x, y) => x - y);
  const pct = p => ms.length ? ms[Math.min(ms.length - 1, Math.floor(p * ms.length))] : NaN;
  print(`in flight ${String(c).padStart(2)}: ${got}/${n} requests in ${secs.toFixed(2)} s = ` +
        `${Math.round(got / secs)} requests/s, p50 ${pct(0.5)} ms, p99 ${pct(0.99)} ms`);
  sp[name].stop();
  sp[name].drop();
  if (got !== n) throw new Error(`${name}: only ${got} of ${n} merged`);
}
JS
rc=0
BENCH_REQUESTS=$REQUESTS MONGOSH_TIMEOUT=1300 mongosh_run "$URI" "$ASPEN_RUN_DIR/bench_https.js" || rc=1
stop_aspen || { log "aspen did not stop cleanly (see $ASPEN_RUN_DIR/aspen.log)"; rc=1; }
stop_http_peer http_peer || true
stop_backing || true
exit "$rc"
