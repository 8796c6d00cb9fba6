#!/usr/bin/env bash
# e2e: $emit to Amazon S3 and Azure Blob Storage against real local
# emulators -- moto's server (S3) and Azurite (Azure Blob) -- driven by
# stock mongosh (js/object_stores.js); what reaches the stores is read back
# with boto3 and azure-storage-blob (objstore_check.py), never with aspen.
# Checks: the connections are listed without secrets; requests are signed
# as a moto that checks SigV4 accepts (and a wrong secret is refused); ASP's options are
# validated; files are cut by writeOptions.count, .bytes and .interval,
# split by a path expression, gzip-compressed, in basicJson and
# canonicalJson with a delimiter, each document exactly once; 12 MB files
# uploaded in parts (S3 multipart, Azure blocks) and whole; Azure blobs
# likewise; a change stream -> $emit S3 writes while it runs; a missing
# bucket, a wrong Azure key and an unreachable endpoint fail the start
# with the store's reason; a bucket or container deleted mid-run fails the
# processor with the store's 404 in its errorMsg; an
# S3 endpoint that goes away mid-run (a relay cut) is retried until it is
# back, without losing a document; and SIGKILLs of aspen while documents
# flow leave every document in S3 at least once and no object truncated.
# Bounded: every wait has a timeout; about a minute.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

OS_KILL_DOCS=${OS_KILL_DOCS:-2000}
CONFIG=$ASPEN_RUN_DIR/aspen-os.json
STATE=$ASPEN_RUN_DIR/state-os
AZ_DIR=$ASPEN_RUN_DIR/azurite-os
rm -rf "$STATE" "$AZ_DIR"

MOTO_PORT=$(free_port)
AZ_PORT=$(free_port)
RELAY_PORT=$(free_port)
DOWN_PORT=$(free_port) # nothing listens there
AUTH_PORT=$(free_port)
S3AUTH=http://127.0.0.1:$AUTH_PORT
S3=http://127.0.0.1:$MOTO_PORT
AZ=http://127.0.0.1:$AZ_PORT/$AZURITE_ACCOUNT
store() { "$PEERS_PYTHON" "$HERE/objstore_check.py" "$@"; }

write_config() { # CHECKPOINT_INTERVAL_MS
    cat >"$CONFIG" <<JSON
{ "streams": { "checkpointIntervalMs": $1 },
  "connections": [
  { "name": "atlas", "type": "atlas" },
  { "name": "lake", "type": "s3", "aws": { "roleArn": "arn:aws:iam::123456789012:role/aspen" },
    "region": "us-east-1", "endpoint": "$S3",
    "credentials": { "accessKeyId": "test", "secretAccessKey": "s3-secret" } },
  { "name": "lakeauth", "type": "s3", "endpoint": "$S3AUTH",
    "credentials": { "accessKeyId": "$AUTH_KEY", "secretAccessKey": "$AUTH_SECRET" } },
  { "name": "lakeauthbad", "type": "s3", "endpoint": "$S3AUTH",
    "credentials": { "accessKeyId": "$AUTH_KEY", "secretAccessKey": "not-the-secret" } },
  { "name": "lakedown", "type": "s3", "endpoint": "http://127.0.0.1:$DOWN_PORT",
    "credentials": { "accessKeyId": "test", "secretAccessKey": "s3-secret" } },
  { "name": "lakerelay", "type": "s3", "endpoint": "http://127.0.0.1:$RELAY_PORT",
    "credentials": { "accessKeyId": "test", "secretAccessKey": "s3-secret" } },
  { "name": "blob", "type": "azure-blob", "azure": { "storageAccountName": "$AZURITE_ACCOUNT" },
    "endpoint": "$AZ", "accountKey": "$AZURITE_KEY" },
  { "name": "blobbadkey", "type": "azure-blob", "azure": { "storageAccountName": "$AZURITE_ACCOUNT" },
    "endpoint": "$AZ", "accountKey": "$(printf 'not the key' | base64)" } ] }
JSON
}

start() {
    start_aspen --config "$CONFIG" --bind 127.0.0.1 --port 0 \
        --backend "$BACKING_URI" --state-dir "$STATE" || return 1
    URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
}
phase() { OS_PHASE=$1 OS_ARGS=${2:-} mongosh_run "$URI" "$HERE/js/object_stores.js"; }
insert() { OS_PHASE=cs_insert OS_ARGS="$1 $2 $3" mongosh_run "$BACKING_URI" "$HERE/js/object_stores.js"; }
# until_ok SECONDS CMD...: retry CMD every half second until it succeeds.
until_ok() {
    local end=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        (( SECONDS < end )) || { "$@" || true; return 1; }
        sleep 0.5
    done
    "$@"
}
objects_at_least() { (( $(store s3 "$S3" count lake "$1") >= $2 )); }

must "backing server starts" start_backing
must "moto (S3) starts" start_moto moto "$MOTO_PORT"
must "Azurite (Azure Blob) starts" start_azurite "$AZ_PORT" "$AZ_DIR"
must "bucket lake created with boto3" store s3 "$S3" mkbucket lake
must "container blobs created with azure-storage-blob" store azure "$AZ" mkbucket blobs
must "relay to moto starts" start_relay "$RELAY_PORT" "$MOTO_PORT"
# A second moto that checks credentials and SigV4 signatures (after the
# three unchecked IAM requests that make a user and its key).
must "moto checking signatures starts" eval 'MOTO_ENV=INITIAL_NO_AUTH_ACTION_COUNT=3 start_moto motoauth "$AUTH_PORT"'
read -r AUTH_KEY AUTH_SECRET < <(store s3 "$S3AUTH" iamkey aspen)
export OS_S3_KEY=$AUTH_KEY OS_S3_SECRET=$AUTH_SECRET
must "an IAM user's key made there" test -n "$AUTH_SECRET"
must "bucket authb created with it" store s3 "$S3AUTH" mkbucket authb
unset OS_S3_KEY OS_S3_SECRET
write_config 600000
must "aspen starts" start

check "s3 and azure-blob connections listed, without secrets" phase connections
check "\$emit S3/Azure options validated with ASP's messages" phase parse
check "documents -> \$emit S3 and Azure Blob (count, bytes, path, gzip, formats)" phase files
check "S3 count 10: 35 documents once, in objects of 10" \
    store s3 "$S3" expect lake count/ --ids 35 --once --per-object 10 --min-objects 4
check "S3 bytes 300: 40 documents once, no object over 300 bytes" \
    store s3 "$S3" expect lake bytes/ --ids 40 --once --max-bytes 300 --min-objects 4
for g in 0 1 2; do
    check "S3 path expression: grp/$g/ holds the 10 documents of g=$g" \
        store s3 "$S3" expect lake "grp/$g/" --check "doc['g'] == $g and doc['i'] % 3 == $g"
done
check "S3 path expression: 30 documents once over the three paths" \
    store s3 "$S3" expect lake grp/ --ids 30 --once --min-objects 3
check "S3 gzip + basicJson: readable with gzip, ObjectId/Decimal as strings, Date as ms" \
    store s3 "$S3" expect lake gzip/ --ids 25 --once --suffix .json.gz \
    --check "isinstance(doc['o'], str) and len(doc['o']) == 24 and isinstance(doc['d'], int) and doc['d'] > 1.7e12 and doc['n'] == '1.5'"
check "S3 gzip level 1 + dateFormat ISO8601: Dates as ISO-8601 strings, files of 3" \
    store s3 "$S3" expect lake iso/ --ids 6 --once --per-object 3 --suffix .json.gz \
    --check "doc['d'] == '2025-01-10T20:17:38.387Z'"
check "S3 canonicalJson with delimiter '|'" \
    store s3 "$S3" expect lake canon/ --ids 5 --once --delimiter '|' \
    --check "doc['i'] == {'\$numberInt': str(doc['i']['\$numberInt'])}"
check "S3 multipart: a 12 MB file uploaded in parts, whole, each document once" \
    store s3 "$S3" expect lake big/ --ids 60 --once --multipart
check "Azure Blob: a 12 MB file as blocks + block list, whole, each document once" \
    store azure "$AZ" expect blobs azbig/ --ids 60 --once --multipart
check "Azure Blob: 35 documents once in gzip blobs of 10, read by azure-storage-blob" \
    store azure "$AZ" expect blobs az/ --ids 35 --once --per-object 10 --suffix .json.gz
check "signed requests accepted by a moto that checks SigV4 (PUT, multipart); a wrong secret fails the start" phase signed
authstore() { OS_S3_KEY=$AUTH_KEY OS_S3_SECRET=$AUTH_SECRET store "$@"; }
check "signed: 30 documents once in objects of 10" \
    authstore s3 "$S3AUTH" expect authb small/ --ids 30 --once --per-object 10
check "signed: the 12 MB object went up in parts, whole" \
    authstore s3 "$S3AUTH" expect authb big/ --ids 60 --once --multipart
check "a missing bucket, a wrong Azure key, an unreachable endpoint fail the start" phase faults
must "bucket and container 'gone' created" eval 'store s3 "$S3" mkbucket gone && store azure "$AZ" mkbucket gone'
must "processors writing to them start" phase gone_start
check "bucket and container 'gone' deleted while they run" eval 'store s3 "$S3" rmbucket gone && store azure "$AZ" rmbucket gone'
check "an insert for each" eval 'insert s3gone 0 1 && insert azgone 0 1'
check "each processor FAILED with the store's 404 reason in errorMsg" phase gone_check

must "change stream -> \$emit processors start" phase cs_start
check "12 inserts into os.csin" insert csin 0 12
check "count 5: two full objects while it runs" until_ok 30 objects_at_least cs/ 2
check "3 inserts into os.ivin" insert ivin 0 3
check "interval 500 ms: the object is written while it runs" until_ok 30 objects_at_least iv/ 1
check "12 inserts into os.csgzin" insert csgzin 0 12
check "5 inserts into os.downin" insert downin 0 5
check "uploads through the relay land" until_ok 30 objects_at_least down/ 5
check "the relay is cut (S3 unreachable)" stop_relay
check "5 more inserts while S3 is unreachable" insert downin 5 10
sleep 2
check "nothing more lands while S3 is unreachable" objects_at_least down/ 5
check "the processors still run (uploads retried, not failed)" phase cs_started
check "the relay is back" start_relay "$RELAY_PORT" "$MOTO_PORT"
check "the retried uploads land: 10 documents once" \
    until_ok 30 store s3 "$S3" expect lake down/ --ids 10 --once --min-objects 10
check "aspen logged the retries" grep -q 'upload of .* failed .*retrying with back-off' "$ASPEN_RUN_DIR/aspen.log"
check "change stream processors stop (final flush)" phase cs_stop
check "change stream -> S3: 12 documents once" store s3 "$S3" expect lake cs/ --ids 12 --once --per-object 5
check "interval: 3 documents once" store s3 "$S3" expect lake iv/ --ids 3 --once
check "change stream -> S3 bytes 40 + gzip: 12 documents once, gunzipped by the reader, none over 40 bytes" \
    store s3 "$S3" expect lake csgz/ --ids 12 --once --max-bytes 40 --suffix .json.gz --min-objects 2
check "aspen stops cleanly" stop_aspen

# SIGKILL during S3 writes: short checkpoints, inserts flowing, two kills.
write_config 200
must "aspen restarts (checkpoints every 200 ms)" start
must "change stream -> \$emit S3 (kill) starts" phase kill_start
half=$((OS_KILL_DOCS / 2))
# Each kill comes once the processor has written since its (re)start: a
# change stream that saw no event has no position to resume from on the
# backing server (see README), and the test is about kills mid-write.
objects_now() { store s3 "$S3" count lake kill/; }
insert killin 0 "$half" &
ins=$!
check "objects written before SIGKILL 1" until_ok 60 objects_at_least kill/ 1
check "SIGKILL 1 during S3 writes" kill_aspen
wait "$ins" || true
check "aspen restarts after SIGKILL 1" start
before=$(objects_now)
insert killin "$half" "$OS_KILL_DOCS" &
ins=$!
check "more objects written before SIGKILL 2" until_ok 60 objects_at_least kill/ $((before + 1))
check "SIGKILL 2 during S3 writes" kill_aspen
wait "$ins" || true
check "aspen restarts after SIGKILL 2" start
check "every document in S3 at least once, no object truncated" \
    until_ok 90 store s3 "$S3" expect lake kill/ --ids "$OS_KILL_DOCS"
check "aspen stops cleanly" stop_aspen
stop_relay 2>/dev/null || true
stop_azurite
stop_moto moto
stop_moto motoauth
stop_backing
checks_done
