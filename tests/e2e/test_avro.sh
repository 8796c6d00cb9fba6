#!/usr/bin/env bash
# e2e: Avro through a Schema Registry (issue 15), with stock mongosh against
# the real Apache Kafka broker and a real Confluent-compatible registry
# (Apicurio Registry). The independent client (avro_client.py: confluent-kafka
# + fastavro) writes Avro records with every Avro type and logical type,
# plus an undecodable message and one with an unknown schema id, to
# avro_in. Then (js/avro.js):
#   - avro_in -> $validate -> $emit Avro to avro_out: the client reads
#     avro_out back and every field of every valid record is what it wrote;
#     the undecodable messages and $validate's refusals are in the DLQ;
#   - avro_in -> $tumblingWindow -> $merge: the window's results are right;
#   - the refusals of bad schemaRegistry options, and the connection's listing;
#   - a registry outage: what cannot be decoded goes to the DLQ, the
#     processor runs on and decodes again once the registry is back;
#   - a registry that never answers (http_peer.py's /stall): a stop while
#     the processor waits for a schema returns STOPPED without an error, and
#     the message it was decoding is not dead-lettered (read again later).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

CONFIG=$ASPEN_RUN_DIR/aspen-avro.json
STATE=$ASPEN_RUN_DIR/state-avro
rm -rf "$STATE"
COUNT=20
CLIENT=("$PEERS_PYTHON" "$HERE/avro_client.py")

must "backing server starts" start_backing
KAFKA_FRESH=1
must "Kafka broker starts" start_kafka
must "schema registry starts" start_registry
STALL_PORT=$(free_port)
must "a registry that never answers starts (http_peer.py /stall)" start_http_peer stall "$STALL_PORT"
must "topics avro_in, avro_out" kafka_create_topic avro_in 1 2>>"$ASPEN_RUN_DIR/tools.log"
kafka_create_topic avro_out 1 2>>"$ASPEN_RUN_DIR/tools.log"
cat >"$CONFIG" <<JSON
{ "connections": [
  { "name": "atlas", "type": "atlas" },
  { "name": "kafka1", "type": "kafka", "bootstrapServers": "$KAFKA_BOOTSTRAP" },
  { "name": "registry", "type": "schemaRegistry", "provider": "CONFLUENT",
    "schemaRegistryUrls": ["$REGISTRY_URL"],
    "schemaRegistryAuthentication": { "type": "USER_INFO", "username": "reader",
                                      "password": "s3cret" } },
  { "name": "stalled", "type": "schemaRegistry", "provider": "CONFLUENT",
    "schemaRegistryUrls": ["http://127.0.0.1:$STALL_PORT/stall"] } ] }
JSON
PORT=$(free_port)
URI="mongodb://127.0.0.1:$PORT/"
must "aspen starts" start_aspen --config "$CONFIG" --bind 127.0.0.1 --port "$PORT" \
    --backend "$BACKING_URI" --state-dir "$STATE"
export AV_N=$COUNT
AV_SCHEMA=$("$PEERS_PYTHON" -c 'import json, sys; sys.path.insert(0, sys.argv[1]); import avro_client; print(json.dumps(avro_client.SCHEMA))' "$HERE")
export AV_SCHEMA
phase() { AV_PHASE=$1 mongosh_run "$URI" "$HERE/js/avro.js"; }

must "the independent client writes Avro records" \
    "${CLIENT[@]}" produce "$KAFKA_BOOTSTRAP" "$REGISTRY_URL" avro_in "$COUNT"
must "processors start (Avro \$source, \$validate, Avro \$emit; window, \$merge)" phase start
skip=()
for (( i = 0; i < COUNT; i++ )); do (( i % 5 == 4 )) && skip+=("$i"); done
check "the independent client reads avro_out: every field and logical type round-tripped" \
    "${CLIENT[@]}" consume "$KAFKA_BOOTSTRAP" "$REGISTRY_URL" avro_out $((COUNT - ${#skip[@]})) "${skip[@]}"
check "undecodable messages and \$validate's refusals are in the DLQs" phase check
check "a record two hours later" \
    "${CLIENT[@]}" produce_one "$KAFKA_BOOTSTRAP" "$REGISTRY_URL" avro_in 7200
check "the window's results are merged" phase window
check "bad schemaRegistry options are refused; the connection is listed without its password" \
    phase refusals
# A registry outage: a processor that has no schema cached yet sends what
# it cannot decode to its DLQ with the reason and keeps running; once the
# registry is back (same port, empty: in-memory), new records are decoded.
check "registry stops (an outage)" stop_registry
check "during the outage: every message in the DLQ as 'unreachable', the processor running" \
    phase outage
must "registry starts again on its port" start_registry "$REGISTRY_PORT"
check "after the outage: new records decoded" \
    "${CLIENT[@]}" produce "$KAFKA_BOOTSTRAP" "$REGISTRY_URL" avro_in 3 100 ""
check "after the outage: the new records merged" phase recovered
# The stalled registry: a stop must not wait for a schema request that
# nothing answers (the request's own timeout is 5 s).
stall_in_flight() { # until the peer holds a schema request
    local i
    for (( i = 0; i < 600; i++ )); do
        "$PEERS_PYTHON" - "$STALL_PORT" <<'PY' && return 0
import json, sys, urllib.request
hits = json.load(urllib.request.urlopen("http://127.0.0.1:%s/hits" % sys.argv[1], timeout=5))
sys.exit(0 if any(p.startswith("/stall/schemas/ids/") for p in hits) else 1)
PY
        sleep 0.1
    done
    return 1
}
check "a processor whose registry never answers starts" phase stall_start
check "its schema request waits on the registry" stall_in_flight
check "stopped meanwhile: STOPPED, no error, the message not dead-lettered" phase stall_stop
check "the stalled registry stops" stop_http_peer stall
check "aspen stops cleanly, no sanitizer report" stop_aspen
check "registry stops" stop_registry
check "Kafka broker stops" stop_kafka
check "backing server stops" stop_backing
checks_done
