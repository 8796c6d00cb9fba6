"""A Kafka $source's partitions processed in parallel (issue 18, lever 4).

A processor Kafka $source -> $match -> $addFields -> Kafka $emit on a tier
with more than one vCPU (SP30: 2) reads a 4-partition topic with worker
threads (runtime/workers.c). On the broker aspen hosts ("local": true),
written and read with librdkafka's Python client: every partition holds an
ordered sequence of events and some lines that are not JSON. Asserted:
every kept event comes out exactly once, each partition's in its order
(the output is keyed by the input partition, so each one's events share an
output partition); the stats' sums equal the inputs (input, output and DLQ
counts, and the verbose operator figures summed over the workers); the DLQ
holds every bad line, from every partition (so from every worker); a stop
in the middle of a second batch and a start resume with nothing lost and
nothing twice (a graceful stop checkpoints what the workers finished); and
aspen logs that workers ran. A processor on the default tier (one vCPU)
reads the same topic without workers and gives the same output.

With KAFKA_BOOTSTRAP set (tests/e2e/test_kafka_workers.sh, which starts a
real Apache Kafka broker), the same tests run against that broker.
"""

import json
import os
import re
import subprocess
import time

import pymongo
import pytest

import aspen_proc

confluent_kafka = pytest.importorskip("confluent_kafka")

PARTS = 4
BAD_EVERY = 97  # a line that is not JSON after every BAD_EVERY events


REAL = os.environ.get("KAFKA_BOOTSTRAP")
# Topic names of this run (a real broker may keep earlier runs' topics).
RUN = "%x" % int(time.time() * 1000)


def tname(name):
    return name + "-" + RUN


@pytest.fixture(scope="module")
def aspen():
    state = os.path.join(aspen_proc.run_dir(), "state-kafka-workers")
    subprocess.run(["rm", "-rf", state], check=True)
    config = os.path.join(aspen_proc.run_dir(), "aspen-kafka-workers.json")
    kafka = ([{"name": "lk", "type": "kafka", "bootstrapServers": REAL},
              {"name": "lkNoCreate", "type": "kafka", "bootstrapServers": REAL,
               "config": {"allow.auto.create.topics": False}}] if REAL
             else [{"name": "lk", "type": "kafka", "local": True}])
    with open(config, "w") as f:
        json.dump({"connections": [{"name": "atlas", "type": "atlas"}, *kafka]}, f)
    a = aspen_proc.start("kafka-workers", ["--config", config, "--backend",
                                            aspen_proc.backing_uri(), "--state-dir", state])
    yield a
    aspen_proc.stop(a)


def _bootstrap(a):
    if REAL:
        return REAL
    for _ in range(100):
        with open(a.log_path) as f:
            m = re.search(r"local Kafka broker.*?listening on (127\.0\.0\.1:\d+)", f.read())
        if m:
            return m.group(1)
        time.sleep(0.1)
    pytest.fail("no local Kafka broker address in the log")


def _admin(a):
    return pymongo.MongoClient(f"mongodb://127.0.0.1:{a.port}/",
                               directConnection=True).admin


def _produce(bootstrap, topic, start, n):
    """n events per partition, seq start..start+n-1, in order, with a bad
    line after every BAD_EVERY-th; returns the bad lines written."""
    p = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                                  "enable.idempotence": True})
    bad = 0
    for seq in range(start, start + n):
        for part in range(PARTS):
            p.produce(topic, json.dumps({"p": part, "seq": seq, "k": seq % 10}),
                      partition=part)
            if seq % BAD_EVERY == BAD_EVERY - 1:
                p.produce(topic, "not json %d/%d" % (part, seq), partition=part)
                bad += 1
        p.poll(0)
    assert p.flush(30) == 0
    return bad


def _create_topic(bootstrap, topic):
    """A real broker creates it with 4 partitions; the local broker
    (librdkafka's mock cluster) creates a topic a producer asks about,
    with 4 partitions."""
    if REAL:
        from confluent_kafka.admin import AdminClient, NewTopic
        adm = AdminClient({"bootstrap.servers": bootstrap})
        adm.create_topics([NewTopic(topic, PARTS, 1)])[topic].result(60)
    p = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    deadline = time.time() + 30
    while time.time() < deadline:
        md = p.list_topics(topic, timeout=10)
        if md.topics[topic].error is None and len(md.topics[topic].partitions) == PARTS:
            return
        time.sleep(0.2)
    pytest.fail("topic %s has no %d partitions" % (topic, PARTS))


def _read_all(bootstrap, topic, want, group, until=None):
    """Every message of `topic` until `want` came (or `until(out)` holds;
    bounded), as (partition, offset, document)."""
    c = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                  "auto.offset.reset": "earliest",
                                  "enable.auto.commit": False})
    c.subscribe([topic])
    out = []
    deadline = time.time() + 60
    done = False
    while not done and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            out.append((m.partition(), m.offset(), json.loads(m.value())))
            if until and len(out) % 1000:
                continue  # `until` looks at everything: not per message
        done = until(out) if until else len(out) >= want
    # Anything beyond `want` (a duplicate) shows up within a short wait.
    end = time.time() + 1.5
    while time.time() < end:
        m = c.poll(0.2)
        if m is not None and not m.error():
            out.append((m.partition(), m.offset(), json.loads(m.value())))
    c.close()
    return out


def _stats(admin, name, verbose=False):
    return admin.command({"getStreamProcessorStats": name,
                          "options": {"verbose": verbose}})["stats"]


def _wait_input(admin, name, n):
    deadline = time.time() + 90
    st = _stats(admin, name)
    while st["inputMessageCount"] < n and time.time() < deadline:
        time.sleep(0.2)
        st = _stats(admin, name)
    assert st["inputMessageCount"] == n, st
    return st


def _pipeline(topic_in, topic_out):
    return [
        {"$source": {"connectionName": "lk", "topic": topic_in,
                     "config": {"auto_offset_reset": "earliest"}}},
        {"$match": {"k": {"$lt": 8}}},
        {"$addFields": {"twice": {"$multiply": ["$seq", 2]}}},
        {"$emit": {"connectionName": "lk", "topic": topic_out,
                   "config": {"key": "$p", "keyFormat": "int"}}},
    ]


def _check_output(msgs, seqs):
    """Each kept (p, seq) with seq in `seqs` exactly once, each partition's
    in order, each in the same output partition."""
    kept = [(p, s) for p in range(PARTS) for s in seqs if s % 10 < 8]
    got = [(d["p"], d["seq"]) for _, _, d in msgs]
    assert len(got) == len(set(got)), "duplicates: %d of %d" % (len(got) - len(set(got)), len(got))
    assert sorted(got) == sorted(kept)
    for _, _, d in msgs:
        assert d["twice"] == 2 * d["seq"]
    for p in range(PARTS):
        mine = sorted((off, d["seq"], part) for part, off, d in msgs if d["p"] == p)
        assert len({part for _, _, part in mine}) == 1, "partition %d split" % p
        order = [s for _, s, _ in mine]
        assert order == sorted(order), "partition %d out of order" % p


def test_partitions_in_parallel(aspen):
    bootstrap = _bootstrap(aspen)
    admin = _admin(aspen)
    dlq = pymongo.MongoClient(aspen_proc.backing_uri()).kw_workers.dlq
    dlq.drop()
    _create_topic(bootstrap, tname("kwIn"))
    n1 = 1500
    bad1 = _produce(bootstrap, tname("kwIn"), 0, n1)
    admin.command({"createStreamProcessor": "kw", "pipeline": _pipeline(tname("kwIn"), tname("kwOut")),
                   "options": {"tier": "SP30",
                               "dlq": {"connectionName": "atlas", "db": "kw_workers",
                                       "coll": "dlq"}}})
    admin.command({"startStreamProcessor": "kw"})
    total1 = PARTS * n1  # inputs: the bad lines are dead letters, not inputs
    _wait_input(admin, "kw", total1)
    kept1 = sum(1 for s in range(n1) if s % 10 < 8) * PARTS
    deadline = time.time() + 30
    st = _stats(admin, "kw", verbose=True)
    while (st["outputMessageCount"] < kept1 or st["dlqMessageCount"] < bad1) \
            and time.time() < deadline:
        time.sleep(0.2)
        st = _stats(admin, "kw", verbose=True)
    assert st["outputMessageCount"] == kept1, st
    assert st["dlqMessageCount"] == bad1, st
    # The operator figures, summed over the workers (published with the
    # flush after the last input).
    want = {"KafkaConsumerOperator": (PARTS * n1, PARTS * n1, bad1),
            "MatchOperator": (PARTS * n1, kept1, 0),
            "AddFieldsOperator": (kept1, kept1, 0),
            "KafkaEmitOperator": (kept1, kept1, 0)}
    deadline = time.time() + 10
    while True:
        ops = {o["name"]: (o["inputMessageCount"], o["outputMessageCount"],
                           o["dlqMessageCount"])
               for o in _stats(admin, "kw", verbose=True)["operatorStats"]}
        if ops == want or time.time() > deadline:
            break
        time.sleep(0.3)
    assert ops == want

    _check_output(_read_all(bootstrap, tname("kwOut"), kept1, tname("check1")), range(n1))

    # Every bad line in the DLQ, from every partition, once.
    deadline = time.time() + 10
    while dlq.count_documents({}) < bad1 and time.time() < deadline:
        time.sleep(0.2)
    entries = list(dlq.find({}))
    assert len(entries) == bad1
    assert {e["_stream_meta"]["source"]["partition"] for e in entries} == set(range(PARTS))
    assert len({(e["_stream_meta"]["source"]["partition"],
                 e["_stream_meta"]["source"]["offset"]) for e in entries}) == bad1

    # A second batch, stopped in the middle and started again.
    n2 = 6000
    bad2 = _produce(bootstrap, tname("kwIn"), n1, n2)
    deadline = time.time() + 60
    while _stats(admin, "kw")["inputMessageCount"] < total1 + 2000 and time.time() < deadline:
        time.sleep(0.05)
    admin.command({"stopStreamProcessor": "kw"})
    mid = _stats(admin, "kw")["inputMessageCount"]
    admin.command({"startStreamProcessor": "kw"})
    total2 = total1 + PARTS * n2
    _wait_input(admin, "kw", total2)
    kept2 = kept1 + sum(1 for s in range(n1, n1 + n2) if s % 10 < 8) * PARTS
    deadline = time.time() + 30
    while _stats(admin, "kw")["outputMessageCount"] < kept2 and time.time() < deadline:
        time.sleep(0.2)
    assert _stats(admin, "kw")["outputMessageCount"] == kept2
    _check_output(_read_all(bootstrap, tname("kwOut"), kept2, tname("check2")), range(n1 + n2))
    assert dlq.count_documents({}) == bad1 + bad2
    assert total1 < mid <= total2
    admin.command({"stopStreamProcessor": "kw"})
    admin.command({"dropStreamProcessor": "kw"})

    with open(aspen.log_path) as f:
        log = f.read()
    if (os.cpu_count() or 1) >= 2:
        assert "2 workers process the source's partitions" in log


def test_default_tier_single_thread_same_output(aspen):
    """The default tier (SP10, one vCPU) runs no workers; its output is the
    same events, in the same order per partition."""
    bootstrap = _bootstrap(aspen)
    admin = _admin(aspen)
    with open(aspen.log_path) as f:
        runs = f.read().count("workers process the source's partitions")
    _create_topic(bootstrap, tname("kwIn1"))
    n = 800
    _produce(bootstrap, tname("kwIn1"), 0, n)
    admin.command({"createStreamProcessor": "kw1", "pipeline": _pipeline(tname("kwIn1"), tname("kwOut1"))})
    admin.command({"startStreamProcessor": "kw1"})
    _wait_input(admin, "kw1", PARTS * n)
    kept = sum(1 for s in range(n) if s % 10 < 8) * PARTS
    _check_output(_read_all(bootstrap, tname("kwOut1"), kept, tname("check3")), range(n))
    admin.command({"stopStreamProcessor": "kw1"})
    admin.command({"dropStreamProcessor": "kw1"})
    with open(aspen.log_path) as f:
        assert f.read().count("workers process the source's partitions") == runs


@pytest.mark.skipif(not REAL, reason="deletes a topic: a real broker only")
def test_emit_topic_deleted_fails_then_resumes(aspen):
    """A worker's $emit whose topic is deleted fails the processor with the
    one-thread error; started again once the topic is back, it emits
    exactly what it could not deliver: no checkpoint (no offset commit)
    ran past a worker's undelivered events."""
    from confluent_kafka.admin import AdminClient, NewTopic
    bootstrap = _bootstrap(aspen)
    admin = _admin(aspen)
    adm = AdminClient({"bootstrap.servers": bootstrap})
    t_in, t_out = tname("kwDoomIn"), tname("kwDoomOut")
    _create_topic(bootstrap, t_in)
    adm.create_topics([NewTopic(t_out, 1, 1)])[t_out].result(60)
    n1 = 200
    _produce(bootstrap, t_in, 0, n1)
    pipeline = [
        {"$source": {"connectionName": "lk", "topic": t_in,
                     "config": {"auto_offset_reset": "earliest"}}},
        {"$match": {"k": {"$lt": 8}}},
        {"$emit": {"connectionName": "lkNoCreate", "topic": t_out,
                   "config": {"key": "$p", "keyFormat": "int"}}},
    ]
    admin.command({"createStreamProcessor": "kwDoom", "pipeline": pipeline,
                   "options": {"tier": "SP30"}})
    admin.command({"startStreamProcessor": "kwDoom"})
    kept1 = sum(1 for s in range(n1) if s % 10 < 8) * PARTS
    deadline = time.time() + 60
    while _stats(admin, "kwDoom")["outputMessageCount"] < kept1 and time.time() < deadline:
        time.sleep(0.2)
    assert _stats(admin, "kwDoom")["outputMessageCount"] == kept1
    time.sleep(1.5)  # a flush, a checkpoint and its commit after them
    adm.delete_topics([t_out])[t_out].result(60)
    n2 = 50
    _produce(bootstrap, t_in, n1, n2)
    deadline = time.time() + 90
    while time.time() < deadline:
        p = [x for x in admin.command({"listStreamProcessors": 1})["streamProcessors"]
             if x["name"] == "kwDoom"][0]
        if p["state"] == "FAILED":
            break
        time.sleep(0.3)
    assert p["state"] == "FAILED", p
    assert re.search(r"\$emit to topic '%s' .*the topic does not exist" % t_out,
                     p["errorMsg"]), p["errorMsg"]
    # The topic back: a start resumes from the last checkpoint, which
    # covers only delivered events, so every later one comes out.
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            adm.create_topics([NewTopic(t_out, 1, 1)])[t_out].result(60)
            break
        except Exception:  # the deletion may still be under way
            time.sleep(0.5)
    admin.command({"startStreamProcessor": "kwDoom"})
    kept2 = len([s for s in range(n1, n1 + n2) if s % 10 < 8]) * PARTS
    want = {(p, s) for p in range(PARTS) for s in range(n1, n1 + n2) if s % 10 < 8}
    msgs = _read_all(bootstrap, t_out, kept2, tname("check4"),
                     until=lambda out: want <= {(d["p"], d["seq"]) for _, _, d in out})
    got = {(d["p"], d["seq"]) for _, _, d in msgs}
    assert want <= got, "lost: %s" % sorted(want - got)[:10]
    admin.command({"stopStreamProcessor": "kwDoom"})
    admin.command({"dropStreamProcessor": "kwDoom"})


def test_rebalance_between_processors(aspen):
    """Two worker processors in one consumer group: the second's start and
    stop move partitions between them (revoked here, assigned there and
    back). Every event comes out, and each partition's events first come
    out in order (a partition moved may repeat what came after the last
    commit, at-least-once, as with one thread)."""
    bootstrap = _bootstrap(aspen)
    admin = _admin(aspen)
    t_in, t_out = tname("kwReb"), tname("kwRebOut")
    _create_topic(bootstrap, t_in)
    pipeline = _pipeline(t_in, t_out)
    pipeline[0]["$source"]["config"]["group_id"] = tname("kwRebGroup")
    for name in ("kwRebA", "kwRebB"):
        admin.command({"createStreamProcessor": name, "pipeline": pipeline,
                       "options": {"tier": "SP30"}})

    def inputs():
        return sum(_stats(admin, n)["inputMessageCount"] for n in ("kwRebA", "kwRebB"))

    def wait_inputs(n):
        deadline = time.time() + 90
        while inputs() < n and time.time() < deadline:
            time.sleep(0.2)
        assert inputs() >= n

    n = 1000
    _produce(bootstrap, t_in, 0, n)
    admin.command({"startStreamProcessor": "kwRebA"})
    wait_inputs(PARTS * n)
    admin.command({"startStreamProcessor": "kwRebB"})
    # The group gives B its share (A's revoked) before the second batch.
    deadline = time.time() + 60
    while not _stats(admin, "kwRebB").get("kafkaPartitions") and time.time() < deadline:
        time.sleep(0.2)
    assert _stats(admin, "kwRebB").get("kafkaPartitions")
    _produce(bootstrap, t_in, n, n)
    wait_inputs(2 * PARTS * n)
    assert _stats(admin, "kwRebB")["inputMessageCount"] > 0
    admin.command({"stopStreamProcessor": "kwRebB"})
    _produce(bootstrap, t_in, 2 * n, n)
    want = {(p, s) for p in range(PARTS) for s in range(3 * n) if s % 10 < 8}
    msgs = _read_all(bootstrap, t_out, len(want), tname("check5"),
                     until=lambda out: want <= {(d["p"], d["seq"]) for _, _, d in out})
    got = [(d["p"], d["seq"]) for _, _, d in sorted(msgs, key=lambda m: (m[0], m[1]))]
    assert want <= set(got), "lost: %s" % sorted(want - set(got))[:10]
    assert set(got) <= want
    for p in range(PARTS):
        first, seen = [], set()
        for q, s in got:
            if q == p and s not in seen:
                seen.add(s)
                first.append(s)
        assert first == sorted(first), "partition %d out of order" % p
    admin.command({"stopStreamProcessor": "kwRebA"})
    for name in ("kwRebA", "kwRebB"):
        admin.command({"dropStreamProcessor": name})
