"""e2e: what drivers get through aspen with PyMongo (issue 22): the topology
aspen presents, retryable writes, transactions, load-balanced mode and
change streams.

The module runs peers of its own (aspen_proc): the backing server as a
one-member replica set (--replset rs0: sessions, retryable writes and
test-grade transactions, see tests/e2e/mongo-java-server Sessions.java), a
TCP relay between aspen and it and another between the client and aspen
(tcp_relay.py: a cut drops the next reply and closes that connection, as a
network failure after the request arrived), an aspen in front of it, one with
access control, one forwarding through the mongoc lanes, and one with
net.loadBalanced. run-pytest.sh's aspen
(ASPEN_PORT, in front of a standalone backing server) shows the
standalone-style answer and PyMongo's plain watch().

What is proven how: the backing server keeps transactions the way Sessions.java
says (writes applied at once and undone on abort, no isolation), so these
tests prove that drivers enable retryable writes and transactions through
aspen, that every command of a transaction reaches the backend with its
lsid/txnNumber/autocommit, that commits, aborts, retried writes and retried
commits reach one backend session and are executed once, and that aspen's
errors carry the labels drivers act on. Isolation and write conflicts need a
real replica set behind aspen.
"""

import os
import socket
import struct

import bson
import pytest
from bson.objectid import ObjectId
from pymongo import MongoClient, monitoring
from pymongo.errors import OperationFailure, PyMongoError

import aspen_proc

TIMEOUT_MS = 20000


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run this through tests/e2e/run-pytest.sh")
    return value


class Listener(monitoring.CommandListener):
    def __init__(self):
        self.started_events, self.failed_events = [], []

    def started(self, event):
        self.started_events.append(event)

    def succeeded(self, event):
        pass

    def failed(self, event):
        self.failed_events.append(event)

    def named(self, name):
        return [e.command for e in self.started_events if e.command_name == name]


@pytest.fixture(scope="module")
def peers():
    run = aspen_proc.run_dir()
    rs = aspen_proc.start_backing("backing-rs", ["--replset", "rs0"])
    to_backend = aspen_proc.start_relay("relay-aspen-backend", rs.port)
    txn = aspen_proc.start("txn", ["--backend", f"mongodb://127.0.0.1:{to_backend.port}/",
                                   "--state-dir", os.path.join(run, "state-txn")])
    to_aspen = aspen_proc.start_relay("relay-client-aspen", txn.port)
    lb = aspen_proc.start("lb", ["--backend", f"mongodb://127.0.0.1:{rs.port}/",
                                 "--load-balanced", "true",
                                 "--state-dir", os.path.join(run, "state-lb")])
    lanes = aspen_proc.start("txn-lanes", ["--backend", f"mongodb://127.0.0.1:{rs.port}/",
                                           "--backend-forwarding", "lanes",
                                           "--state-dir", os.path.join(run, "state-txn-lanes")])
    state_auth = os.path.join(run, "state-txn-auth")
    aspen_proc.add_users(state_auth, [("alice", "alice-pw", "readWriteAnyDatabase"),
                                      ("bob", "bob-pw", "readWriteAnyDatabase")])
    auth = aspen_proc.start("txn-auth", ["--backend", f"mongodb://127.0.0.1:{rs.port}/",
                                         "--state-dir", state_auth])
    yield {"rs": rs, "to_backend": to_backend, "txn": txn, "to_aspen": to_aspen,
           "lb": lb, "auth": auth, "lanes": lanes}
    for a in (auth, lanes, lb, txn):
        aspen_proc.stop(a)
    for p in (to_aspen, to_backend, rs):
        aspen_proc.stop_peer(p)


def client(port, listener=None, **opts):
    kw = {"serverSelectionTimeoutMS": TIMEOUT_MS, "socketTimeoutMS": TIMEOUT_MS}
    kw.update(opts)
    if listener:
        kw["event_listeners"] = [listener]
    return MongoClient(f"mongodb://127.0.0.1:{port}/", **kw)


def fresh(c, name):
    db = c["drivers_e2e"]
    try:
        db.drop_collection(name)
    except OperationFailure:
        pass  # mongo-java-server: "ns not found" (no code)
    return db[name]


def server_type(c):
    c.admin.command("ping")
    desc = c.topology_description
    return desc.topology_type_name, [s.server_type_name
                                     for s in desc.server_descriptions().values()]


def sp_roundtrip(c):
    """sp.process() as mongosh runs it: a documents source sampled until its
    document shows, then dropped; and a listing."""
    r = c.admin.command({"processStreamProcessor": [
        {"$source": {"documents": [{"drv": 22}]}}]})
    name, cursor, got = r["name"], r["cursorId"], []
    for _ in range(200):
        r = c.admin.command({"getMoreSampleStreamProcessor": name, "cursorId": cursor})
        got += r["messages"]
        cursor = r["cursorId"]
        if any(m.get("drv") == 22 for m in got) or cursor == 0:
            break
    assert any(m.get("drv") == 22 for m in got), got
    c.admin.command({"dropStreamProcessor": name})
    assert isinstance(c.admin.command({"listStreamProcessors": 1, "filter": None})
                      ["streamProcessors"], list)


# ---- the topology aspen presents -------------------------------------------------


def test_standalone_backend_gives_a_standalone(peers):
    lst = Listener()
    with client(_env("ASPEN_PORT"), lst) as c:
        hello = c.admin.command("hello")
        assert "msg" not in hello and "topologyVersion" not in hello
        assert server_type(c) == ("Single", ["Standalone"])
        coll = fresh(c, "standalone")
        coll.insert_one({"x": 1})
        # The retryable-writes spec: no txnNumber for a standalone.
        assert all("txnNumber" not in cmd for cmd in lst.named("insert"))


def test_replica_set_backend_gives_a_mongos(peers):
    lst = Listener()
    with client(peers["txn"].port, lst) as c:
        hello = c.admin.command("hello")
        assert hello["msg"] == "isdbgrid"
        assert isinstance(hello["topologyVersion"]["processId"], ObjectId)
        assert isinstance(hello["topologyVersion"]["counter"], int)
        assert hello["logicalSessionTimeoutMinutes"] == 30  # the backend's
        assert hello["maxWireVersion"] == 13  # the backend's (5.0), not aspen's 21
        assert "serviceId" not in hello
        assert server_type(c) == ("Sharded", ["Mongos"])
        coll = fresh(c, "mongos")
        coll.insert_one({"x": 1})
        inserts = lst.named("insert")
        assert inserts and all("txnNumber" in cmd and "lsid" in cmd for cmd in inserts)
        sp_roundtrip(c)  # sp commands keep working in this mode


# ---- retryable writes ------------------------------------------------------------


def _retried_insert(c, lst, relay, coll, doc):
    before = relay.cuts()
    relay.cut_next_reply()
    coll.insert_one(doc)  # succeeds: the driver retried once
    assert relay.cuts() == before + 1
    inserts = [cmd for cmd in lst.named("insert") if cmd["documents"][0]["_id"] == doc["_id"]]
    assert len(inserts) == 2, inserts
    assert inserts[0]["txnNumber"] == inserts[1]["txnNumber"]
    assert inserts[0]["lsid"] == inserts[1]["lsid"]
    # Executed once: without the backend's record of (lsid, txnNumber) the
    # retry would have failed with a duplicate key.
    assert coll.count_documents({"_id": doc["_id"]}) == 1


def test_retried_write_after_the_backend_connection_is_cut(peers):
    lst = Listener()
    with client(peers["txn"].port, lst) as c:
        coll = fresh(c, "retry_backend")
        _retried_insert(c, lst, peers["to_backend"], coll, {"_id": "b1"})
        # aspen's error for the lost backend connection had a mongos's label.
        failure = [e for e in lst.failed_events if e.command_name == "insert"][-1].failure
        assert failure["code"] == 6 and "RetryableWriteError" in failure["errorLabels"]


def test_retried_write_after_the_client_connection_is_cut(peers):
    lst = Listener()
    with client(peers["to_aspen"].port, lst) as c:
        coll = fresh(c, "retry_client")
        _retried_insert(c, lst, peers["to_aspen"], coll, {"_id": "c1"})


def test_retryable_writes_with_access_control(peers):
    """aspen maps each lsid to a per-user backend lsid: a retryable write and
    a transaction still reach one backend session."""
    port = peers["auth"].port
    with client(port, username="alice", password="alice-pw") as c:
        coll = fresh(c, "auth_txn")
        coll.insert_one({"_id": 1})
        with c.start_session() as s:
            with s.start_transaction():
                coll.insert_one({"_id": 2}, session=s)
                coll.update_one({"_id": 1}, {"$set": {"v": 1}}, session=s)
            s.start_transaction()
            coll.insert_one({"_id": 3}, session=s)
            s.abort_transaction()
        assert sorted(d["_id"] for d in coll.find()) == [1, 2]
        assert coll.find_one({"_id": 1})["v"] == 1


# ---- transactions ----------------------------------------------------------------


@pytest.mark.parametrize("way", ["txn", "lanes"])
def test_transaction_commit_spans_commands_and_a_getmore(peers, way):
    lst = Listener()
    with client(peers[way].port, lst) as c:
        coll = fresh(c, f"commit_{way}")
        coll.insert_many([{"_id": i, "n": i} for i in range(5)])
        with c.start_session() as s:
            with s.start_transaction():
                coll.insert_one({"_id": 10, "n": 10}, session=s)
                coll.update_one({"_id": 0}, {"$set": {"touched": True}}, session=s)
                seen = [d["_id"] for d in coll.find({}, session=s, batch_size=2).sort("_id")]
                assert seen == [0, 1, 2, 3, 4, 10]  # reads its own writes
        assert coll.count_documents({}) == 6
        assert coll.find_one({"_id": 0})["touched"] is True
        txn_cmds = [e.command for e in lst.started_events
                    if e.command.get("autocommit") is False]
        names = [cmd_name for cmd_name in (next(iter(cmd)) for cmd in txn_cmds)]
        assert names[0] == "insert" and txn_cmds[0]["startTransaction"] is True
        assert "getMore" in names and names[-1] == "commitTransaction"
        assert len({cmd["txnNumber"] for cmd in txn_cmds}) == 1
        assert len({bson.encode(cmd["lsid"]) for cmd in txn_cmds}) == 1


@pytest.mark.parametrize("way", ["txn", "lanes"])
def test_transaction_abort_undoes_its_writes(peers, way):
    with client(peers[way].port) as c:
        coll = fresh(c, f"abort_{way}")
        coll.insert_many([{"_id": 1, "v": "old"}, {"_id": 2}])
        with c.start_session() as s:
            s.start_transaction()
            coll.insert_one({"_id": 3}, session=s)
            coll.update_one({"_id": 1}, {"$set": {"v": "new"}}, session=s)
            coll.delete_one({"_id": 2}, session=s)
            assert coll.find_one({"_id": 1}, session=s)["v"] == "new"
            s.abort_transaction()
        assert sorted(d["_id"] for d in coll.find()) == [1, 2]
        assert coll.find_one({"_id": 1})["v"] == "old"


def test_commit_retried_after_the_backend_connection_is_cut(peers):
    lst = Listener()
    with client(peers["txn"].port, lst) as c:
        coll = fresh(c, "commit_retry")
        with c.start_session() as s:
            s.start_transaction()
            coll.insert_one({"_id": 1}, session=s)
            peers["to_backend"].cut_next_reply()
            s.commit_transaction()  # the driver retries the commit once
        assert len(lst.named("commitTransaction")) == 2
        failure = [e for e in lst.failed_events
                   if e.command_name == "commitTransaction"][0].failure
        assert {"RetryableWriteError", "UnknownTransactionCommitResult"} <= set(failure["errorLabels"])
        assert coll.count_documents({}) == 1


def test_transient_error_restarts_the_transaction(peers):
    lst = Listener()
    with client(peers["txn"].port, lst) as c:
        coll = fresh(c, "transient")
        with c.start_session() as s:
            s.start_transaction()
            peers["to_backend"].cut_next_reply()
            with pytest.raises(OperationFailure) as exc:
                coll.insert_one({"_id": "lost"}, session=s)
            assert exc.value.code == 6
            assert exc.value.has_error_label("TransientTransactionError")
            s.abort_transaction()
            # with_transaction retries the whole transaction on that label.
            cut = [True]

            def body(sess):
                if cut:
                    cut.pop()
                    peers["to_backend"].cut_next_reply()
                coll.insert_one({"_id": "kept"}, session=sess)

            s.with_transaction(body)
        assert sorted(d["_id"] for d in coll.find()) == ["kept"]
        assert len(lst.named("commitTransaction")) == 1


# ---- change streams --------------------------------------------------------------


@pytest.mark.parametrize("which", ["standalone", "replset"])
def test_plain_watch_sees_an_insert(peers, which):
    port = _env("ASPEN_PORT") if which == "standalone" else peers["txn"].port
    with client(port) as c:
        coll = fresh(c, f"watch_{which}")
        with coll.watch(max_await_time_ms=200) as stream:
            assert stream.try_next() is None  # an empty first batch: resumable
            assert stream.resume_token is not None  # its postBatchResumeToken
            coll.insert_one({"_id": "w", "x": 1})
            change = None
            for _ in range(50):
                change = stream.try_next()
                if change:
                    break
            assert change and change["operationType"] == "insert"
            assert change["fullDocument"] == {"_id": "w", "x": 1}


# ---- load-balanced mode ----------------------------------------------------------


def test_load_balanced_driver(peers):
    lst = Listener()
    port = peers["lb"].port
    with MongoClient(f"mongodb://127.0.0.1:{port}/?loadBalanced=true",
                     serverSelectionTimeoutMS=TIMEOUT_MS, event_listeners=[lst]) as c:
        assert c.topology_description.topology_type_name == "LoadBalanced"
        coll = fresh(c, "lb")
        coll.insert_many([{"_id": i} for i in range(7)])
        coll.update_one({"_id": 1}, {"$set": {"u": True}})
        coll.delete_one({"_id": 6})
        assert [d["_id"] for d in coll.find(batch_size=2).sort("_id")] == list(range(6))
        assert lst.named("getMore")
        with c.start_session() as s:
            with s.start_transaction():
                coll.insert_one({"_id": 100}, session=s)
                assert coll.count_documents({}, session=s) == 7
        assert coll.count_documents({}) == 7
        sp_roundtrip(c)  # sp commands in load-balanced mode
        hello = c.admin.command({"hello": 1, "loadBalanced": True})
        assert isinstance(hello["serviceId"], ObjectId) and hello["msg"] == "isdbgrid"


def test_load_balanced_refused_without_the_option(peers):
    with MongoClient(f"mongodb://127.0.0.1:{peers['txn'].port}/?loadBalanced=true",
                     serverSelectionTimeoutMS=3000, connectTimeoutMS=3000) as c:
        with pytest.raises(PyMongoError) as exc:
            c.admin.command("ping")
        assert "354" in str(exc.value) or "load balancing" in str(exc.value)


# ---- the streaming hello (SDAM streaming protocol) --------------------------------

MORE_TO_COME, EXHAUST_ALLOWED = 1 << 1, 1 << 16


def _send(s, request_id, doc, flags=0):
    body = struct.pack("<I", flags) + b"\x00" + bson.encode(doc)
    s.sendall(struct.pack("<iiii", 16 + len(body), request_id, 0, 2013) + body)


def _recv(s):
    def exactly(n):
        out = b""
        while len(out) < n:
            chunk = s.recv(n - len(out))
            assert chunk, "aspen closed the connection"
            out += chunk
        return out
    length, request_id, response_to, opcode = struct.unpack("<iiii", exactly(16))
    body = exactly(length - 16)
    flags = struct.unpack("<I", body[:4])[0]
    return request_id, response_to, flags, bson.decode(body[5:])


def test_awaitable_hello_streams_its_replies(peers):
    with socket.create_connection(("127.0.0.1", peers["txn"].port), timeout=20) as s:
        _send(s, 1, {"hello": 1, "$db": "admin"})
        _, to, flags, hello = _recv(s)
        assert to == 1 and not flags & MORE_TO_COME
        tv = hello["topologyVersion"]
        # Stale topologyVersion, no exhaust: answered at once.
        _send(s, 2, {"hello": 1, "topologyVersion": {"processId": ObjectId(), "counter": 0},
                     "maxAwaitTimeMS": 60000, "$db": "admin"})
        _, to, flags, _ = _recv(s)
        assert to == 2 and not flags & MORE_TO_COME
        # Current topologyVersion with exhaustAllowed: a stream of replies,
        # each with moreToCome, each answering the one before it.
        _send(s, 3, {"hello": 1, "topologyVersion": tv, "maxAwaitTimeMS": 100,
                     "$db": "admin"}, EXHAUST_ALLOWED)
        want = 3
        for _ in range(3):
            rid, to, flags, reply = _recv(s)
            assert to == want and flags & MORE_TO_COME
            assert reply["topologyVersion"] == tv and reply["ok"] == 1
            want = rid
