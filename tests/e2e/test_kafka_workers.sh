#!/usr/bin/env bash
# e2e: a Kafka $source's partitions processed by worker threads (issue 18,
# lever 4) against a real Apache Kafka broker (KRaft, one node): the tests of
# test_kafka_workers_pymongo.py (which run on aspen's local broker in the
# pytest step) with KAFKA_BOOTSTRAP set, so their aspen reads and writes
# the real broker: a 4-partition topic of per-partition ordered sequences
# through Kafka -> $match -> $addFields -> Kafka $emit on tier SP30, every
# event once and in order per partition, the stats' and operator figures'
# sums, DLQ entries from every partition, a stop/start mid-stream without
# loss or duplicate; the default tier's single thread, the same output; two
# processors in one group moving partitions (a rebalance) losing nothing;
# and a worker's $emit topic deleted: FAILED as on one thread, nothing lost.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.sh
. "$HERE/peers.sh"

workers_tests() {
    (cd "$PEERS_ROOT" && BACKING_URI=$BACKING_URI KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP \
        "$PEERS_PYTHON" -m pytest -q -p no:cacheprovider \
        tests/e2e/test_kafka_workers_pymongo.py)
}

must "backing server starts" start_backing
must "Kafka broker starts" start_kafka
check "4 partitions through worker threads and through one thread, real broker" workers_tests
check "Kafka broker stops" stop_kafka
check "backing server stops" stop_backing

checks_done
