#!/usr/bin/env bash
# e2e: $https, $setStreamMeta and stream.source.ts through stock mongosh,
# against http_peer.py (plain HTTP and TLS with the dev CA) and a real
# backing server: https connections listed without secrets; ASP's option
# errors; change stream -> $https (path, parameters, headers, payload,
# connection headers and bearer auth) -> $merge with the answers and
# _stream_meta.https in the merged documents; every kind of answer (text,
# empty, no Content-Type, parseJsonStrings, 404, non-JSON, HTML, oversized,
# a path that is no string, a refused connection) merged or dead-lettered
# as ASP documents; onError ignore and fail, a 500 failing the processor;
# $setStreamMeta routing $merge to per-key collections; $https as the final
# stage delivering every document once per run (the peer counts them); a
# processor whose peer stalls reads no further than its window while
# another processor keeps working, aspen's memory stays bounded, and a stop
# interrupts the wait. $externalFunction against moto's Lambda Invoke API
# (no Docker: an invoke echoes its payload): sync with the result in `as`,
# async, an API error (404: moto without Docker echoes for any function
# name, so the connection's endpoint has a wrong path) per onError, as the last stage, its option
# errors, and the aws-lambda connection listed without its keys.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

CONFIG=$ASPEN_RUN_DIR/aspen-https.json
STATE=$ASPEN_RUN_DIR/state-https
CERTS=$ASPEN_RUN_DIR/certs
rm -rf "$STATE"

HTTP_PORT=$(free_port)
HTTPS_PORT=$(free_port)
DOWN_PORT=$(free_port)
MOTO_PORT=$(free_port)

write_config() {
    cat >"$CONFIG" <<JSON
{ "connections": [
  { "name": "atlas", "type": "atlas" },
  { "name": "web", "type": "https", "url": "http://127.0.0.1:$HTTP_PORT/",
    "headers": { "X-Static": "s1-value" }, "auth": { "bearerToken": "tok-secret" } },
  { "name": "webtls", "type": "https", "url": "https://localhost:$HTTPS_PORT",
    "tlsCAFile": "$CERTS/ca.pem" },
  { "name": "webstall", "type": "https", "url": "http://127.0.0.1:$HTTP_PORT", "maxInFlight": 4 },
  { "name": "webdown", "type": "https", "url": "http://127.0.0.1:$DOWN_PORT",
    "maxInFlight": 1 },
  { "name": "lambda", "type": "aws-lambda", "aws": { "roleArn": "arn:aws:iam::123456789012:role/asp-invoker" },
    "region": "us-east-1", "endpoint": "http://127.0.0.1:$MOTO_PORT",
    "credentials": { "accessKeyId": "AKIDASPEN", "secretAccessKey": "lambda-s3cr3t" } },
  { "name": "lambdaWrongPath", "type": "aws-lambda", "endpoint": "http://127.0.0.1:$MOTO_PORT/wrong",
    "credentials": { "accessKeyId": "AKIDASPEN", "secretAccessKey": "lambda-s3cr3t" } } ] }
JSON
}

phase() { HT_PHASE=$1 mongosh_run "$URI" "$HERE/js/https.js"; }

# received RUN N: the peer got exactly N bodies under RUN, each _id once.
received() {
    local got
    got=$(curl -sf "http://127.0.0.1:$HTTP_PORT/received/$1") || return 1
    "$PEERS_PYTHON" - "$2" "$got" <<'PY'
import json, sys
want, got = int(sys.argv[1]), json.loads(sys.argv[2])
ids = [b["_id"] for b in got]
ok = len(ids) == want and len(set(ids)) == want
print("# received ids: %s" % ids)
sys.exit(0 if ok else 1)
PY
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$(<"$ASPEN_RUN_DIR/aspen.pid")/status"; }

stall_memory_bounded() {
    local before after
    before=$(rss_kb)
    phase stall_start || return 1
    after=$(rss_kb)
    echo "# aspen RSS ${before} kB -> ${after} kB with 3000 documents of 1 kB waiting"
    # The 3 MB of waiting documents stay in the backing server: aspen grows
    # by far less than they weigh twice over.
    [[ $(( after - before )) -lt 65536 ]]
}

must "dev certificates" bash "$PEERS_ROOT/certs/gen-dev-certs.sh" "$CERTS"
must "backing server starts" start_backing
must "HTTP peer starts" start_http_peer http_peer "$HTTP_PORT"
must "HTTPS peer starts" start_http_peer https_peer "$HTTPS_PORT" --tls "$CERTS/server.pem" "$CERTS/server-key.pem"
must "moto (Lambda) starts" start_moto moto "$MOTO_PORT"
must "Lambda function echoFn created in moto" "$PEERS_PYTHON" "$HERE/lambda_peer.py" "$MOTO_PORT" echoFn
write_config
must "aspen starts" start_aspen --config "$CONFIG" --bind 127.0.0.1 --port 0 \
    --backend "$BACKING_URI" --state-dir "$STATE"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/"
check "listing, errors, enrichment, answers and onError, TLS, routing, final stage" phase main
check "the final \$https delivered 5 documents, each once" received run1 5
check "second run of the final-stage processor" phase hook2
check "over both runs 7 documents, each once" received run1 7
check "\$externalFunction sync, async, errors and as the last stage against moto" phase lambda
check "a stalled peer: back-pressure, aspen's memory bounded" stall_memory_bounded
check "others keep working; a stop interrupts the wait" phase stall_check
check "aspen stops cleanly, no sanitizer report" stop_aspen
stop_http_peer http_peer
stop_http_peer https_peer
stop_moto moto
stop_backing

checks_done
