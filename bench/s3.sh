#!/usr/bin/env bash
# Benchmark (not a test) of $emit to S3 against moto's server: N documents
# (a documents source, ~100 bytes each) -> $emit S3 in files of 10 000
# documents, plain and gzip. The rate is documents/s from the processor's
# first input until its stop returned (the stop's final flush waits for the
# last upload, so every document is in S3 then); process start-up is not
# counted. Also prints what moto stored (objects, bytes, read with boto3)
# and aspen's peak RSS.
#
#   bench/s3.sh [--docs N]        (BENCH_DOCS, default 200000)
#
# moto is a single-threaded Python server that keeps objects in memory: it
# bounds these figures (against real S3 uploads run 4 at a time).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=$ROOT/build-bench
DOCS=${BENCH_DOCS:-200000}
while [[ $# -gt 0 ]]; do
    case $1 in
        --docs) DOCS=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "s3.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/bench/lib.sh"
bench_setup s3

MOTO_PORT=$(free_port)
start_moto moto "$MOTO_PORT"
S3=http://127.0.0.1:$MOTO_PORT
"$PEERS_PYTHON" "$ROOT/tests/e2e/objstore_check.py" s3 "$S3" mkbucket bench
cat >"$ASPEN_RUN_DIR/aspen.json" <<JSON
{ "connections": [ { "name": "lake", "type": "s3", "endpoint": "$S3",
    "credentials": { "accessKeyId": "test", "secretAccessKey": "test" } } ] }
JSON
start_aspen --config "$ASPEN_RUN_DIR/aspen.json" --port 0 --state-dir "$ASPEN_RUN_DIR/aspen-state"
aspen_pid=$(<"$ASPEN_RUN_DIR/aspen.pid")
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"

cat >"$ASPEN_RUN_DIR/bench_s3.js" <<'JS'
const n = Number(process.env.BENCH_DOCS);
const admin = db.getSiblingDB("admin");
function stats(name) {
  const st = admin.runCommand({ getStreamProcessorStats: name }).stats;
  return { in: Number(st.inputMessageCount), out: Number(st.outputMessageCount) };
}
const docs = [];
for (let i = 0; i < n; i++) {
  docs.push({ i: i, device: "device-" + (i % 100), temp: 20 + (i % 17) / 10, ok: i % 3 === 0,
              at: new Date(1700000000000 + i) });
}
function run(name, config) {
  sp.createStreamProcessor(name, [{ $source: { documents: docs } },
    { $emit: { connectionName: "lake", bucket: "bench", path: name, config: config } }]);
  sp[name].start();
  const deadline = Date.now() + 600000;
  let t0 = 0, s = stats(name);
  while (s.out < n && Date.now() < deadline) {
    if (!t0 && s.in > 0) t0 = Date.now();
    sleep(20);
    s = stats(name);
  }
  if (s.out < n) throw new Error(`${name}: only ${s.out} of ${n} written`);
  sp[name].stop(); // the final flush: every file uploaded
  return Math.round(n / ((Date.now() - (t0 || Date.now() - 1)) / 1000));
}
const plain = run("plain", { writeOptions: { count: 10000 } });
const gz = run("gzip", { writeOptions: { count: 10000 }, compression: "gzip" });
print(JSON.stringify({ plain: plain, gzip: gz }));
JS

log "emitting $DOCS documents to S3 (moto), plain then gzip"
out=$(BENCH_DOCS=$DOCS MONGOSH_TIMEOUT=900 mongosh_raw --quiet --norc "$URI" \
    "$ASPEN_RUN_DIR/bench_s3.js" | tail -n 1)
rss_kb=$(awk '/VmHWM/ { print $2 }' "/proc/$aspen_pid/status")
stored() { # PREFIX: "objects bytes" under PREFIX, read with boto3
    "$PEERS_PYTHON" - "$S3" "$1" <<'PY'
import sys, boto3
c = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test")
objs = [o for p in c.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=sys.argv[2])
        for o in p.get("Contents", [])]
print(len(objs), sum(o["Size"] for o in objs))
PY
}
read -r plain_n plain_b < <(stored plain/)
read -r gz_n gz_b < <(stored gzip/)
printf '%-52s %12s\n' "documents per run" "$DOCS"
printf '%-52s %12s\n' "documents -> \$emit S3 (files of 10 000), docs/s" "$(sed -nE 's/.*"plain":([0-9]+).*/\1/p' <<<"$out")"
printf '%-52s %12s\n' "  objects / bytes in moto" "$plain_n / $plain_b"
printf '%-52s %12s\n' "documents -> \$emit S3 gzip, docs/s" "$(sed -nE 's/.*"gzip":([0-9]+).*/\1/p' <<<"$out")"
printf '%-52s %12s\n' "  objects / bytes in moto" "$gz_n / $gz_b"
printf '%-52s %9s MB\n' "aspen peak RSS (VmHWM)" "$((${rss_kb:-0} / 1024))"
stop_aspen || true
stop_moto moto
