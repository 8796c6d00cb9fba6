"""e2e: what forwarding must keep doing, with pymongo, through aspen's relay
(the default) and through the mongoc lanes (--backend-forwarding lanes).

Run by tests/e2e/run-pytest.sh, which sets ASPEN_PORT (relay) and
ASPEN_LANES_PORT, and ASPEN_RUN_DIR (aspen's logs: aspen.log is the relay's).

  - an explicit session's cursor across getMore, and killCursors;
  - a change-stream cursor (getMore with maxAwaitTimeMS) sees an insert;
  - an exhaust cursor (OP_MSG exhaustAllowed): aspen answers each getMore
    with one reply, and pymongo reads every document;
  - unacknowledged writes (w: 0, OP_MSG moreToCome): no reply, applied;
  - large messages: a 40 MB insert batch (relay; 15 MB for the lanes, whose
    single command document is limited to 16 MB) and 15 MB replies;
  - a slow client: pipelined requests whose replies it does not read make
    aspen stop reading it at the output high-water mark; every reply then
    arrives, in order.
"""

import os
import socket
import struct
import threading
import time

import bson
import pytest
from bson.timestamp import Timestamp
from pymongo import CursorType, MongoClient
from pymongo.errors import OperationFailure
from pymongo.write_concern import WriteConcern


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run this through tests/e2e/run-pytest.sh")
    return value


@pytest.fixture(scope="module", params=["relay", "lanes"])
def client(request):
    port = _env("ASPEN_PORT" if request.param == "relay" else "ASPEN_LANES_PORT")
    c = MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                    serverSelectionTimeoutMS=10000, socketTimeoutMS=120000)
    c.aspen_port = int(port)
    yield c
    c.close()


@pytest.fixture
def coll(client, request):
    name = request.node.name.replace("[", "_").replace("]", "")
    db = client["aspen_e2e_forward"]
    try:
        db.drop_collection(name)
    except OperationFailure:
        pass
    return db[name]


def test_session_cursor_across_get_more(client, coll):
    coll.insert_many([{"_id": i} for i in range(100)])
    with client.start_session() as s:
        cur = coll.find({}, session=s).sort("_id", 1).batch_size(7)
        assert [d["_id"] for d in cur] == list(range(100))
        # A cursor closed early is killed on the backend (killCursors).
        cur = coll.find({}, session=s).sort("_id", 1).batch_size(5)
        assert next(cur)["_id"] == 0
        cur.close()
        assert coll.count_documents({}, session=s) == 100


def test_kill_cursors_command(coll):
    coll.insert_many([{"_id": i} for i in range(30)])
    db = coll.database
    first = db.command({"find": coll.name, "batchSize": 2})
    cid = first["cursor"]["id"]
    assert cid != 0
    killed = db.command({"killCursors": coll.name, "cursors": [cid]})
    assert killed["cursorsKilled"] == [cid]
    with pytest.raises(OperationFailure) as exc:
        db.command({"getMore": cid, "collection": coll.name})
    assert exc.value.code == 43  # CursorNotFound


def test_change_stream(coll):
    # pymongo's plain watch() needs operationTime, which the bundled
    # backing server does not send (tests/e2e/README.md); start at a time.
    coll.insert_one({"_id": "before"})
    with coll.watch(start_at_operation_time=Timestamp(int(time.time()) - 1, 0),
                    max_await_time_ms=200) as stream:
        coll.insert_one({"_id": "seen"})
        seen = None
        deadline = time.monotonic() + 20
        while seen is None and time.monotonic() < deadline:
            ev = stream.try_next()
            if ev and ev["operationType"] == "insert" and ev["documentKey"]["_id"] == "seen":
                seen = ev
        assert seen is not None, "the change stream did not deliver the insert"


def test_exhaust_cursor(coll):
    coll.insert_many([{"_id": i, "pad": "x" * 100} for i in range(500)])
    cur = coll.find({}, cursor_type=CursorType.EXHAUST).sort("_id", 1).batch_size(20)
    assert [d["_id"] for d in cur] == list(range(500))


def test_unacknowledged_write(coll):
    unack = coll.with_options(write_concern=WriteConcern(w=0))
    res = unack.insert_one({"_id": "w0"})
    assert not res.acknowledged
    # Same connection, in order: the write was forwarded before the find.
    deadline = time.monotonic() + 10
    while coll.count_documents({"_id": "w0"}) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert coll.count_documents({"_id": "w0"}) == 1


def test_large_messages(client, coll):
    # The relay sends the client's document sequence as it came, so an insert
    # batch may be as large as a message (48 MB). The lanes hand mongoc one
    # command document, which a server takes only up to 16 MB + 16 KB.
    relay = client.aspen_port == int(_env("ASPEN_PORT"))
    n = 8 if relay else 3
    big = [{"_id": i, "blob": bytes([i]) * (5 * 1024 * 1024)} for i in range(n)]
    res = coll.insert_many(big)  # relay: ~40 MB in one or two OP_MSGs
    assert len(res.inserted_ids) == n
    got = list(coll.find({}).sort("_id", 1))  # replies of up to ~16 MB
    assert [d["_id"] for d in got] == list(range(n))
    for d in got:
        assert d["blob"] == bytes([d["_id"]]) * (5 * 1024 * 1024)


def _op_msg(doc, request_id):
    body = bson.encode(doc)
    payload = struct.pack("<I", 0) + b"\x00" + body
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, 2013) + payload


def _read_frame(sock, deadline):
    def recv_exact(n):
        buf = b""
        while len(buf) < n:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("aspen closed the connection")
            buf += chunk
        return buf
    header = recv_exact(16)
    length, _, response_to, op = struct.unpack("<iiii", header)
    rest = recv_exact(length - 16)
    assert op == 2013
    return response_to, bson.decode(rest[5:])


def test_slow_client_back_pressure(client, coll):
    # 1 MB documents; 40 pipelined finds of one each = 40 MB of replies,
    # well above the 16 MiB output high-water mark.
    blob = b"b" * (1024 * 1024)
    coll.insert_many([{"_id": i, "blob": blob} for i in range(4)])
    n = 40
    sock = socket.create_connection(("127.0.0.1", client.aspen_port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        reqs = b"".join(_op_msg({"find": coll.name, "filter": {"_id": i % 4},
                                 "$db": coll.database.name}, 100 + i)
                        for i in range(n))
        sender = threading.Thread(target=sock.sendall, args=(reqs,), daemon=True)
        sender.start()
        time.sleep(1.0)  # aspen fills its output queue and stops reading
        deadline = time.monotonic() + 60
        for i in range(n):
            response_to, doc = _read_frame(sock, deadline)
            assert response_to == 100 + i
            batch = doc["cursor"]["firstBatch"]
            assert doc["ok"] == 1.0 and batch[0]["_id"] == i % 4
            assert batch[0]["blob"] == blob
        sender.join(timeout=10)
    finally:
        sock.close()
    log = os.path.join(_env("ASPEN_RUN_DIR"),
                       "aspen.log" if client.aspen_port == int(_env("ASPEN_PORT"))
                       else "aspen-lanes.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(log, encoding="utf-8", errors="replace") as f:
            if "pausing reads from" in f.read():
                break
        time.sleep(0.1)
    else:
        pytest.fail("aspen never paused reading the slow client")
