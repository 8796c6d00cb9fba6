#!/usr/bin/env bash
# e2e: the Kinesis $source and $emit against kinesalite (npm; its resharding
# is faithful), through stock mongosh, with a real backing server; boto3
# (tests/e2e/kinesis/kin.py) writes the input streams and reads the output
# ones. Connections listed without secrets; ASP's option errors; a missing
# stream, missing credentials and an unreachable endpoint failing the start
# with 460 and the reason. Kinesis -> $validate -> $merge from two shards,
# the invalid and the non-JSON record in the DLQ, `_stream_meta.source`
# (kinesisStream, shardId, sequenceNumber, partitionKey); a shard split
# mid-stream (parents read to their end, then the children); stop, more
# records, start: resumed from the per-shard sequence numbers of the
# checkpoint. Kinesis -> Kinesis (basicJson, partitionKey from the
# document) read back by boto3. $emit through a network outage (a TCP
# relay stopped and started): the processor keeps running and every record
# arrives. SIGKILL of aspen under a Kinesis -> $merge processor: after the
# restart every record is merged.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

CONFIG=$ASPEN_RUN_DIR/aspen-kinesis.json
STATE=$ASPEN_RUN_DIR/state-kinesis
rm -rf "$STATE"
KIN="$PEERS_PYTHON $HERE/kinesis/kin.py"
# No AWS_* variables: the kinNoCreds connection must have no credentials.
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN
RELAY_PORT=

write_config() {
    RELAY_PORT=$(free_port)
    cat >"$CONFIG" <<JSON
{ "streams": { "checkpointIntervalMs": 200 },
  "connections": [
  { "name": "atlas", "type": "atlas" },
  { "name": "kin", "type": "kinesis", "aws": { "roleArn": "arn:aws:iam::123456789012:role/asp" },
    "region": "us-east-1", "endpoint": "$KINESIS_ENDPOINT",
    "credentials": { "accessKeyId": "AKIDLOCAL", "secretAccessKey": "s3cr3t" } },
  { "name": "kinRelay", "type": "kinesis", "endpoint": "http://127.0.0.1:$RELAY_PORT",
    "credentials": { "accessKeyId": "AKIDLOCAL", "secretAccessKey": "s3cr3t" } },
  { "name": "kinDown", "type": "kinesis", "endpoint": "http://127.0.0.1:1",
    "credentials": { "accessKeyId": "AKIDLOCAL", "secretAccessKey": "s3cr3t" } },
  { "name": "kinNoCreds", "type": "kinesis", "endpoint": "$KINESIS_ENDPOINT" } ] }
JSON
}

phase() { KIN_PHASE=$1 mongosh_run "$URI" "$HERE/js/kinesis.js"; }
kin() { $KIN "$@" 2>>"$ASPEN_RUN_DIR/tools.log"; }

streams() {
    kin create in 2 && kin create in2 2 && kin create in3 1 && kin create in4 2 &&
        kin create out 2 && kin create out3 1
}

start_aspen_kin() {
    start_aspen --config "$CONFIG" --bind 127.0.0.1 --port "${1:-0}" \
        --backend "$BACKING_URI" --state-dir "$STATE" || return 1
    URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
}

# split_mid_stream: split a shard of `in` and write 100 more records (to the
# children), then 20 to the other parent.
split_mid_stream() {
    kin put in 100 150 && kin split in >/dev/null && kin put in 150 250 &&
        [[ $(kin shards in | grep -c open) -eq 3 ]]
}

# k2k_check: boto3 reads `out`: the 48 valid documents of in2's 50 (13's n
# is a string, 17 is no JSON) in basicJson (the date as milliseconds), with
# the partition keys the pipeline computed.
k2k_check() {
    local out
    out=$(kin read out 48) || { echo "# out: ${out:0:300}"; return 1; }
    "$PEERS_PYTHON" - "$out" <<'PY'
import json, sys
recs = [json.loads(l) for l in sys.argv[1].splitlines()]
docs = {}
for r in recs:
    d = json.loads(r["data"])
    assert r["key"] == d["k"] == "p%d" % (d["n"] % 3), r
    assert d["when"] == 1714521600000, d   # basicJson: Date as ms
    docs[d["_id"]] = d
assert sorted(docs) == [i for i in range(50) if i not in (13, 17)], sorted(docs)
assert len(recs) == 48, len(recs)
PY
}

# parent_first: aspen's log shows the split parent read to its end before
# either child was read.
parent_first() {
    local log=$ASPEN_RUN_DIR/aspen.log parent end c2 c3
    parent=$(kin shards in | awk '$2 != "-" { print $2; exit }')
    end=$(grep -n "\"shard $parent read to its end\"" "$log" | head -n 1 | cut -d: -f1)
    c2=$(grep -n '"reading shard shardId-000000000002"' "$log" | head -n 1 | cut -d: -f1)
    c3=$(grep -n '"reading shard shardId-000000000003"' "$log" | head -n 1 | cut -d: -f1)
    [[ -n $end && -n $c2 && -n $c3 && $end -lt $c2 && $end -lt $c3 ]] ||
        { echo "# parent $parent end at line ${end:-?}, children at ${c2:-?}, ${c3:-?}"; return 1; }
}

# relay_retried: the $emit logged its retries while the network was away.
relay_retried() { grep -q '"ctx":"relayed".*records again' "$ASPEN_RUN_DIR/aspen.log"; }

# crash_resumed: after the SIGKILL, kcrash resumed its shards from the
# checkpoint rather than from TRIM_HORIZON.
crash_resumed() { grep -q '"ctx":"kcrash".*resumes after its checkpoint' "$ASPEN_RUN_DIR/aspen.log"; }

relay_outage() {
    kin put in3 0 100 || return 1
    sleep 2
    stop_relay || return 1
    kin put in3 100 300 || return 1
    sleep 3
    start_relay "$RELAY_PORT" "$KINESIS_PORT"
}

relay_check_out() {
    local out
    out=$(kin read out3 299 90) || { echo "# out3 has fewer records"; return 1; }
    # Through a file: 299 records are more than one argument may hold.
    printf '%s\n' "$out" >"$ASPEN_RUN_DIR/out3.jsonl"
    "$PEERS_PYTHON" - "$ASPEN_RUN_DIR/out3.jsonl" <<'PY'
import json, sys
ids = set()
for l in open(sys.argv[1]).read().splitlines():
    ids.add(json.loads(json.loads(l)["data"])["_id"])
want = set(range(300)) - {17}
assert ids == want, sorted(want - ids)[:20]
PY
}

crash_run() {
    kin put in4 0 3000 || return 1
    KIN_N=3000 phase crash_begin || return 1
    kill_aspen || return 1
    kin put in4 3000 4000 || return 1
    start_aspen_kin "$ASPEN_LISTEN_PORT"
}

must "backing server starts" start_backing
must "kinesalite starts" start_kinesalite
must "streams created with boto3" streams
write_config
must "aspen starts" start_aspen_kin
check "listing, option errors, missing stream/credentials/endpoint fail with 460" phase errors
check "boto3 puts 100 records into 'in' (2 shards)" kin put in 0 100
check "Kinesis -> \$validate -> \$merge, DLQ, stream metadata, operatorStats" phase merge_begin
check "a shard split mid-stream, 150 more records (children)" split_mid_stream
KIN_N=250 check "every record merged once, the children read after their parent" phase merge_resharded
check "the split parent was read to its end before its children" parent_first
check "the processor stops" phase merge_stop
check "50 more records while stopped" kin put in 250 300
KIN_N=300 check "the restart resumes from the checkpointed sequence numbers" phase merge_resume
check "boto3 puts 50 records into in2" kin put in2 0 50
check "Kinesis -> Kinesis processor starts" phase k2k_begin
check "boto3 reads out: basicJson, partition keys from the documents" k2k_check
check "the Kinesis sink's operatorStats and targetStats {stream}" phase k2k_stats
must "relay to kinesalite starts" start_relay "$RELAY_PORT" "$KINESIS_PORT"
check "\$emit through the relay starts" phase relay_begin
check "the network goes away under \$emit and comes back" relay_outage
check "the processor kept running" phase relay_check
check "\$emit retried while the network was away" relay_retried
check "boto3 reads every record from out3" relay_check_out
check "Kinesis -> \$merge, aspen SIGKILLed mid-stream and restarted" crash_run
KIN_N=4000 check "after the restart every record is merged" phase crash_check
check "the restart resumed the shards from the checkpoint" crash_resumed
check "aspen stops cleanly, no sanitizer report" stop_aspen
check "relay stops" stop_relay
check "kinesalite stops" stop_kinesalite
check "backing server stops" stop_backing

checks_done
