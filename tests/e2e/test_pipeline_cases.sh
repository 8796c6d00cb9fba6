#!/usr/bin/env bash
# shellcheck disable=SC2016 # JavaScript in single quotes, on purpose
# e2e: the data-driven stage and pipeline cases (tests/cases/pipeline/*.json)
# against a running aspen with no backend, through mongosh 2.12:
#  1. js/pipeline_cases.js sends every case: non-persistent ones with the
#     wire commands of sp.process (processStreamProcessor, getMoreSample...,
#     dropStreamProcessor), comparing outputs, DLQ entries and errors;
#     persistent ones with createStreamProcessor (errors at create; aspen's
#     config has the cases' connections, as the unit runner's: "testAtlas",
#     "testKafka", "testKinesis" and "testS3", never contacted);
#  2. the real sp.process helper runs seed listing 15.7 (a documents source,
#     a $project and a $match): mongosh runs in the background until its
#     output shows both documents with their _stream_meta ({source: {type:
#     "generated"}}; the inclusion $project drops _ts), then gets SIGINT (as a
#     user's Ctrl-C), on which it drops the processor;
#  3. aspen stops cleanly, with no sanitizer report in its log.
# Prints TAP-style "ok N - ..." lines; exits non-zero if any check fails.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

JS=$HERE/js/pipeline_cases.js
CASES=$PEERS_ROOT/tests/cases/pipeline

# The case files through the wire commands; the script's own summary lines
# are shown as TAP comments.
run_cases() {
    local out=$ASPEN_RUN_DIR/pipeline_cases.out rc=0
    ASPEN_CASES_DIR=$CASES ASPEN_TEST_ATLAS=1 mongosh_run "$URI" "$JS" >"$out" 2>&1 || rc=$?
    sed 's/^/# /' "$out"
    return "$rc"
}

# Seed listing 15.7 with the stock sp.process helper. A documents source
# never ends, so mongosh is interrupted once the two documents are printed.
SP_PROCESS_JS='
let source = {
  $source: {
    documents: [
      { sensor: "A", temp: 45 },  // HIGH warning
      { sensor: "B", temp: 5 }    // LOW warning
    ]
  }
};
let project = {
  $project: {
    sensor: 1, temp: 1,
    status: { $cond: [{ $gte: ["$temp", 40] }, "HIGH",
                      { $cond: [{ $lte: ["$temp", 10] }, "LOW", "NORMAL"] }] }
  }
};
let filter = { $match: { status: { $in: ["HIGH", "LOW"] } } };
sp.process([source, project, filter]);
'

sp_process_seen() { # sp_process_seen FILE: both documents printed in full
    local f=$1
    grep -q "sensor: 'A'" "$f" && grep -q "sensor: 'B'" "$f" &&
        grep -q "status: 'HIGH'" "$f" && grep -q "status: 'LOW'" "$f" &&
        [[ $(grep -c "_stream_meta: {" "$f") -ge 2 && $(grep -c "type: 'generated'" "$f") -ge 2 ]]
}

sp_process_listing_15_7() {
    local out=$ASPEN_RUN_DIR/sp_process.out home=$ASPEN_RUN_DIR/mongosh-home pid i rc=0
    mkdir -p "$home"
    : >"$out"
    HOME=$home MONGOSH_FORCE_DISABLE_TELEMETRY_FOR_TESTING=1 \
        "$PEERS_MONGOSH" --quiet --norc "$URI" --eval "$SP_PROCESS_JS" >"$out" 2>&1 </dev/null &
    pid=$!
    for (( i = 0; i < 150; i++ )); do
        sp_process_seen "$out" && break
        _peers_alive "$pid" || break
        sleep 0.1
    done
    local seen=0
    sp_process_seen "$out" && seen=1
    if _peers_alive "$pid"; then
        kill -INT "$pid" 2>/dev/null || true
        # mongosh drops the processor, then exits.
        _peers_wait_gone "$pid" 15 || { echo "# mongosh did not exit after SIGINT"; kill -KILL "$pid" 2>/dev/null || true; rc=1; }
    else
        echo "# mongosh exited before it was interrupted"
        rc=1
    fi
    wait "$pid" 2>/dev/null || true
    sed 's/^/#   /' "$out"
    [[ $seen -eq 1 ]] || { echo "# the two documents with _stream_meta were not printed within 15 s"; rc=1; }
    grep -q "status: 'NORMAL'" "$out" && { echo "# a filtered-out document was printed"; rc=1; }
    if grep -Eq 'MongoServerError|Uncaught|TypeError' "$out"; then
        echo "# mongosh reported an error"
        rc=1
    fi
    return "$rc"
}

# After the interrupt the temporary processor of sp.process is gone: aspen's
# log says it was dropped, and asking for its stats fails. (sp.process
# processors are not listed by listStreamProcessors, so the name comes from
# the log lines written since SP_LOG_MARK.)
no_processor_left() {
    local log=$ASPEN_RUN_DIR/aspen.log out=$ASPEN_RUN_DIR/stats.out name recent i
    recent=$(tail -c +$((SP_LOG_MARK + 1)) "$log")
    name=$(sed -nE '/"to":"STARTED"/s/.*"processor":"([^"]+)".*/\1/p' <<<"$recent" | tail -n 1)
    [[ -n $name ]] || { echo "# no processor start found in aspen's log"; return 1; }
    echo "# sp.process ran as $name"
    for (( i = 0; i < 100; i++ )); do
        recent=$(tail -c +$((SP_LOG_MARK + 1)) "$log")
        grep -qF "\"ctx\":\"$name\",\"msg\":\"stream processor dropped\"" <<<"$recent" && break
        sleep 0.1
    done
    grep -qF "\"ctx\":\"$name\",\"msg\":\"stream processor dropped\"" <<<"$recent" ||
        { echo "# aspen did not log the drop of $name"; return 1; }
    mongosh_run "$URI" "
      try {
        db.getSiblingDB('admin').runCommand({getStreamProcessorStats: '$name'});
        print('still there');
      } catch (e) {
        print('gone: ' + e.codeName);
      }" >"$out" 2>&1 || true
    grep -q '^gone: ' "$out" || { sed 's/^/#   /' "$out"; return 1; }
}

# No backend; an atlas connection for the persistent cases' $merge and the
# Kafka, Kinesis and S3 ones for their $emit option checks, on a port
# nothing listens on (creating a processor does not connect).
CONFIG=$ASPEN_RUN_DIR/pipeline-cases.conf.json
cat >"$CONFIG" <<'EOF'
{ "connections": [ { "name": "testAtlas", "type": "atlas", "uri": "mongodb://127.0.0.1:1" },
                   { "name": "testKafka", "type": "kafka", "bootstrapServers": "127.0.0.1:1" },
                   { "name": "testKinesis", "type": "kinesis", "endpoint": "http://127.0.0.1:1" },
                   { "name": "testS3", "type": "s3", "endpoint": "http://127.0.0.1:1" } ] }
EOF
must "aspen starts without a backend" start_aspen --config "$CONFIG" --bind 127.0.0.1 --port 0 \
    --state-dir "$ASPEN_RUN_DIR/state-pipeline"
URI="mongodb://127.0.0.1:$ASPEN_LISTEN_PORT/admin?serverSelectionTimeoutMS=5000"
check "pipeline case files: sp.process commands, createStreamProcessor for persistent ones" run_cases
SP_LOG_MARK=$(stat -c %s "$ASPEN_RUN_DIR/aspen.log")
check "sp.process runs seed listing 15.7 until interrupted" sp_process_listing_15_7
check "sp.process left no processor behind after the interrupt" no_processor_left
check "aspen stops cleanly, no sanitizer report" stop_aspen

checks_done
