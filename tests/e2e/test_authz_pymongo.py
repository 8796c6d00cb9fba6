"""e2e: authorization beyond one namespace (issue 20, items 4-8), with pymongo.

Run by tests/e2e/run-pytest.sh (BACKING_URI, ASPEN_RUN_DIR). This module
starts its own aspen with users, custom roles and Atlas connections that
run as different dbRoleToExecute roles, and checks:

- a command needs its privileges on every namespace it touches: a
  readWrite@authz_a user cannot $merge / $out into another database,
  $lookup from one, rename a collection across, map-reduce out of its
  database (mongod's "not authorized on <db> to execute command ..."), and
  nothing is written;
- a forwarded cursor belongs to whoever opened it: another user can neither
  getMore nor killCursors it (whatever namespace it names), the owner still
  can, from another connection too;
- custom roles: a collection-scoped privilege grants that collection only,
  and a misspelled key, a wrong type or an unknown action stops aspen with
  a message naming the role and the key;
- stream processors reach data only through their connections'
  dbRoleToExecute (shown by sp.listConnections()): a literal namespace the
  role does not cover refuses the create (422), a computed $merge target it
  does not cover sends that document to the DLQ and the rest carries on;
- getCmdLineOpts, getLog, getParameter, hostInfo, serverStatus need cluster-monitor
  privileges.
"""

import json
import os
import re
import time

import pytest
from bson import Int64
from pymongo import MongoClient
from pymongo.errors import OperationFailure

import aspen_proc

A, B, SALES = "authz_a", "authz_b", "authz_sales"
STREAM_ACTIONS = ["createStreamProcessor", "processStreamProcessor", "startStreamProcessor",
                  "stopStreamProcessor", "dropStreamProcessor", "modifyStreamProcessor",
                  "sampleStreamProcessor", "streamProcessorStats", "listStreamProcessors",
                  "getStreamProcessor", "listStreamConnections"]
CONFIG = {
    "connections": [
        {"name": "atlas", "type": "atlas"},
        {"name": "atlasRO", "type": "atlas",
         "dbRoleToExecute": {"role": "readAnyDatabase", "type": "BUILT_IN"}},
        {"name": "atlasA", "type": "atlas",
         "dbRoleToExecute": {"role": f"readWrite@{A}", "type": "BUILT_IN"}},
        {"name": "atlasOrders", "type": "atlas",
         "dbRoleToExecute": {"role": "ordersWriter", "type": "CUSTOM"}},
    ],
    "security": {"roles": [
        {"role": "ordersReader", "privileges": [
            {"resource": {"db": SALES, "collection": "orders"}, "actions": ["find"]}]},
        {"role": "ordersWriter", "privileges": [
            {"resource": {"db": SALES, "collection": "orders"},
             "actions": ["find", "insert", "update"]}]},
        {"role": "streamer", "actions": STREAM_ACTIONS},
    ]},
}
USERS = [("root", "rootpw", "atlasAdmin"), ("rwA", "rwApw", f"readWrite@{A}"),
         ("readA", "readApw", f"read@{A}"), ("orders", "orderspw", "ordersReader"),
         ("reader", "readerpw", "readAnyDatabase"), ("monitor", "monitorpw", "clusterMonitor"),
         ("streamer", "streamerpw", "streamer")]


def _write_config(name, config):
    path = os.path.join(aspen_proc.run_dir(), name)
    with open(path, "w") as f:
        json.dump(config, f)
    return path


@pytest.fixture(scope="module")
def aspen():
    backing = aspen_proc.backing_uri()
    config = _write_config("aspen-authz.json", CONFIG)
    state = os.path.join(aspen_proc.run_dir(), "state-authz-py")
    aspen_proc.add_users(state, USERS, config)
    a = aspen_proc.start("authz-py", ["--config", config, "--backend", backing,
                                      "--state-dir", state])
    yield a.port
    aspen_proc.stop(a)


def _client(port, user):
    pw = dict((u, p) for u, p, _ in USERS)[user]
    return MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                       username=user, password=pw, authSource="admin",
                       serverSelectionTimeoutMS=10000)


@pytest.fixture(scope="module")
def root(aspen):
    c = _client(aspen, "root")
    yield c
    c.close()


@pytest.fixture
def login(aspen):
    clients = []

    def make(user):
        clients.append(_client(aspen, user))
        return clients[-1]
    yield make
    for c in clients:
        c.close()


def _refused(fn, code=13):
    with pytest.raises(OperationFailure) as e:
        fn()
    assert e.value.code == code, e.value.details
    return e.value.details["errmsg"]


def _not_authorized(fn, db):
    msg = _refused(fn)
    assert msg.startswith(f"not authorized on {db} to execute command {{ "), msg
    return msg


def _drop(db, coll):
    try:
        db.drop_collection(coll)
    except OperationFailure:
        pass  # mongo-java-server: "ns not found" (no code) for a missing collection


# ---- item 4: every namespace a command touches ------------------------------

def test_cross_database_writes_refused(root, login):
    _drop(root[B], "c")
    root[A]["x"].insert_many([{"_id": i} for i in range(3)])
    a = login("rwA")[A]
    # The issue's scenario.
    msg = _not_authorized(lambda: a.command(
        {"aggregate": "x", "pipeline": [{"$merge": {"into": {"db": B, "coll": "c"}}}],
         "cursor": {}}), A)
    assert '$merge: { into: { db: "authz_b", coll: "c" } }' in msg, msg
    _not_authorized(lambda: a.command(
        {"aggregate": "x", "pipeline": [{"$out": {"db": B, "coll": "c"}}], "cursor": {}}), A)
    _not_authorized(lambda: a.command(
        {"aggregate": "x", "pipeline": [
            {"$lookup": {"from": {"db": B, "coll": "secret"}, "as": "s", "pipeline": []}}],
         "cursor": {}}), A)
    _not_authorized(lambda: a.command(
        {"aggregate": "x", "pipeline": [{"$facet": {"f": [
            {"$lookup": {"from": {"db": B, "coll": "secret"}, "as": "s", "pipeline": []}}]}}],
         "cursor": {}}), A)
    _not_authorized(lambda: a.command(
        {"mapReduce": "x", "map": "function() {}", "reduce": "function() {}",
         "out": {"replace": "c", "db": B}}), A)
    _not_authorized(lambda: a.client.admin.command(
        {"renameCollection": f"{A}.x", "to": f"{B}.c"}), "admin")
    _not_authorized(lambda: a.client.admin.command(
        {"renameCollection": f"{B}.secret", "to": f"{A}.stolen"}), "admin")
    _not_authorized(lambda: a.command(
        {"create": "v", "viewOn": "x", "pipeline": [
            {"$unionWith": {"coll": "x", "pipeline": [
                {"$lookup": {"from": {"db": B, "coll": "secret"}, "as": "s",
                             "pipeline": []}}]}}]}), A)
    # Nothing reached the other database; reads of its own still work.
    assert root[B]["c"].count_documents({}) == 0
    assert len(list(a["x"].find())) == 3
    # A read-only user writes nowhere, its own database included.
    _not_authorized(lambda: login("readA")[A].command(
        {"aggregate": "x", "pipeline": [{"$merge": {"into": "copy"}}], "cursor": {}}), A)


# ---- item 5: cursors belong to who opened them ------------------------------

def test_cursor_of_another_user(root, login):
    _drop(root[B], "secret")
    root[B]["secret"].insert_many([{"_id": i, "s": "secret"} for i in range(10)])
    root[A]["x"].insert_one({"_id": "visible"})
    owner = root.start_session()
    first = root[B].command({"find": "secret", "batchSize": 2}, session=owner)
    cid = first["cursor"]["id"]
    assert cid != 0
    thief = login("readA")
    # getMore naming a collection the thief may read: refused all the same.
    msg = _refused(lambda: thief[A].command({"getMore": Int64(cid), "collection": "x",
                                             "batchSize": 2}))
    assert ("was not created by the authenticated user" in msg or
            "is not the same as the operation context's session id" in msg), msg
    # ... or naming the cursor's own namespace: no find there.
    _not_authorized(lambda: thief[B].command({"getMore": Int64(cid), "collection": "secret",
                                              "batchSize": 2}), B)
    # killCursors: refused whole, and the cursor lives on.
    msg = _not_authorized(lambda: thief[A].command(
        {"killCursors": "x", "cursors": [Int64(cid)]}), A)
    assert "killCursors" in msg
    # The owner itself, but in another session: mongod's session check.
    msg = _refused(lambda: root[B].command({"getMore": Int64(cid), "collection": "secret"}))
    assert "is not the same as the operation context's session id" in msg, msg
    # The owner goes on in its session.
    more = root[B].command({"getMore": Int64(cid), "collection": "secret", "batchSize": 3},
                           session=owner)
    assert [d["_id"] for d in more["cursor"]["nextBatch"]] == [2, 3, 4]
    # A cursor aspen never handed out is not found, whoever asks.
    assert _refused(lambda: thief[A].command({"getMore": Int64(12345), "collection": "x"}),
                    code=43) == "cursor id 12345 not found"
    # The owner kills it; then it is gone for everyone.
    killed = root[B].command({"killCursors": "secret", "cursors": [Int64(cid)]}, session=owner)
    assert killed["ok"] == 1
    _refused(lambda: root[B].command({"getMore": Int64(cid), "collection": "secret"},
                                     session=owner), code=43)
    owner.end_session()


def test_own_cursors_iterate(root, login):
    """Drivers' own getMore / killCursors go through for the cursor's owner."""
    _drop(root[A], "many")
    root[A]["many"].insert_many([{"_id": i} for i in range(50)])
    a = login("readA")[A]
    assert [d["_id"] for d in a["many"].find().sort("_id", 1).batch_size(7)] == list(range(50))
    cur = a["many"].find().batch_size(5)
    next(cur)
    cur.close()  # killCursors of its own cursor


# ---- item 6: custom roles ----------------------------------------------------

def test_collection_scoped_role(root, login):
    root[SALES]["orders"].insert_one({"_id": "o1"})
    root[SALES]["customers"].insert_one({"_id": "c1"})
    o = login("orders")[SALES]
    assert o["orders"].find_one({"_id": "o1"}) is not None
    _not_authorized(lambda: o["customers"].find_one(), SALES)
    _not_authorized(lambda: o.list_collection_names(), SALES)
    _not_authorized(lambda: login("orders")["other"]["orders"].find_one(), "other")
    _not_authorized(lambda: o["orders"].insert_one({"x": 1}), SALES)


@pytest.mark.parametrize("bad,want", [
    ({"role": "bad", "privileges": [{"resourse": {"db": "sales"}, "actions": ["find"]}]},
     "security.roles[0] (role 'bad').privileges[0] has an unknown key 'resourse'"),
    ({"role": "bad", "privileges": [{"resource": {"db": 5}, "actions": ["find"]}]},
     "security.roles[0] (role 'bad').privileges[0].resource.db must be a string"),
    ({"role": "bad", "privileges": [{"resource": {"db": "sales"}, "actions": ["finds"]}]},
     "unknown privilege action 'finds'"),
])
def test_bad_custom_role_refuses_start(bad, want):
    config = _write_config("aspen-authz-bad.json", {"security": {"roles": [bad]}})
    out = aspen_proc.refused_start("authz-bad", [
        "--config", config, "--state-dir", os.path.join(aspen_proc.run_dir(), "state-authz-bad")])
    assert want in out, out


@pytest.mark.parametrize("role,want", [
    ({"role": "noSuchRole", "type": "CUSTOM"}, "no custom role 'noSuchRole'"),
    ({"role": "readWrite", "type": "BUILT_IN"}, "write it readWrite@<db>"),
    ({"role": "readAnyDatabase", "type": "BUILTIN"}, "must be BUILT_IN or CUSTOM"),
    ({"rol": "readAnyDatabase"}, "unknown config key 'connections[0].dbRoleToExecute.rol'"),
])
def test_bad_connection_role_refuses_start(role, want):
    config = _write_config("aspen-authz-badconn.json", {"connections": [
        {"name": "x", "type": "atlas", "uri": "mongodb://127.0.0.1:1/",
         "dbRoleToExecute": role}]})
    out = aspen_proc.refused_start("authz-badconn", [
        "--config", config,
        "--state-dir", os.path.join(aspen_proc.run_dir(), "state-authz-badconn")])
    assert want in out, out


# ---- item 7: stream processors run as their connections' roles --------------

def test_list_connections_shows_roles(login):
    conns = {c["name"]: c for c in login("streamer").admin.command(
        {"listStreamConnections": 1})["connections"]}
    assert conns["atlas"]["dbRoleToExecute"] == {"role": "readWriteAnyDatabase",
                                                 "type": "BUILT_IN"}
    assert conns["atlasRO"]["dbRoleToExecute"] == {"role": "readAnyDatabase",
                                                   "type": "BUILT_IN"}
    assert conns["atlasOrders"]["dbRoleToExecute"] == {"role": "ordersWriter", "type": "CUSTOM"}
    assert "dbRoleToExecute" not in conns["sample_stream_solar"]


SOURCE = {"$source": {"documents": [{"t": A, "v": 1}, {"t": B, "v": 2}]}}


@pytest.mark.parametrize("pipeline,options,where", [
    # $merge through a read-only connection.
    ([SOURCE, {"$merge": {"into": {"connectionName": "atlasRO", "db": A, "coll": "c"}}}],
     None, "pipeline[1].$merge"),
    # Watching another database.
    ([{"$source": {"connectionName": "atlasA", "db": B, "coll": "secret"}},
      {"$merge": {"into": {"connectionName": "atlasA", "db": A, "coll": "c"}}}],
     None, "pipeline[0].$source"),
    # Watching the whole deployment.
    ([{"$source": {"connectionName": "atlasA"}},
      {"$merge": {"into": {"connectionName": "atlasA", "db": A, "coll": "c"}}}],
     None, "pipeline[0].$source"),
    # $lookup of another database, or through its pipeline.
    ([SOURCE, {"$lookup": {"from": {"connectionName": "atlasA", "db": B, "coll": "secret"},
                           "localField": "v", "foreignField": "_id", "as": "s"}},
      {"$merge": {"into": {"connectionName": "atlasA", "db": A, "coll": "c"}}}],
     None, "pipeline[1].$lookup"),
    ([SOURCE, {"$lookup": {"from": {"connectionName": "atlasA", "db": A, "coll": "x"},
                           "as": "s", "pipeline": [
                               {"$unionWith": {"coll": "y", "db": B}}]}},
      {"$merge": {"into": {"connectionName": "atlasA", "db": A, "coll": "c"}}}],
     None, "pipeline[1].$lookup"),
    # A custom role scoped to one collection.
    ([SOURCE, {"$merge": {"into": {"connectionName": "atlasOrders", "db": SALES,
                                   "coll": "customers"}}}],
     None, "pipeline[1].$merge"),
    # The DLQ.
    ([SOURCE, {"$merge": {"into": {"connectionName": "atlasA", "db": A, "coll": "c"}}}],
     {"dlq": {"connectionName": "atlasRO", "db": A, "coll": "dlq"}}, "options.dlq"),
])
def test_connection_role_refuses_literal_namespace(login, pipeline, options, where):
    admin = login("streamer").admin
    cmd = {"createStreamProcessor": "refused", "pipeline": pipeline}
    if options:
        cmd["options"] = options
    msg = _refused(lambda: admin.command(cmd), code=422)
    assert re.search(r"^connection '\w+' is not authorized to (read|write|run) .*: its "
                     r"dbRoleToExecute \(\S+\) does not grant ", msg), msg
    assert f"(at {where})" in msg, msg
    assert "refused" not in [p["name"] for p in admin.command(
        {"listStreamProcessors": 1})["streamProcessors"]]


def test_connection_role_allows_its_namespaces(login):
    admin = login("streamer").admin
    for name, pipeline in [
        ("okA", [SOURCE, {"$merge": {"into": {"connectionName": "atlasA", "db": A,
                                              "coll": "c"}}}]),
        ("okOrders", [SOURCE, {"$merge": {"into": {"connectionName": "atlasOrders",
                                                   "db": SALES, "coll": "orders"}}}]),
        ("okDefault", [SOURCE, {"$merge": {"into": {"connectionName": "atlas", "db": B,
                                                    "coll": "c"}}}]),
    ]:
        assert admin.command({"createStreamProcessor": name, "pipeline": pipeline})["ok"] == 1
        assert admin.command({"dropStreamProcessor": name})["ok"] == 1
    # sp.process is held to the same rules.
    _refused(lambda: admin.command({"processStreamProcessor": [
        SOURCE, {"$merge": {"into": {"connectionName": "atlasRO", "db": A, "coll": "c"}}}]}),
        code=422)


def _wait(what, cond, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_connection_role_dead_letters_computed_target(root, login):
    for db, coll in [(A, "dyn"), (B, "dyn"), (A, "dyndlq")]:
        _drop(root[db], coll)
    admin = login("streamer").admin
    admin.command({"createStreamProcessor": "dyn", "pipeline": [
        SOURCE, {"$merge": {"into": {"connectionName": "atlasA", "db": "$t", "coll": "dyn"}}}],
        "options": {"dlq": {"connectionName": "atlas", "db": A, "coll": "dyndlq"}}})
    try:
        admin.command({"startStreamProcessor": "dyn"})
        dlq = _wait("the DLQ entry", lambda: root[A]["dyndlq"].find_one())
        assert root[B]["dyn"].count_documents({}) == 0
        _wait("the allowed write", lambda: root[A]["dyn"].find_one({"v": 1}))
        reason = dlq["errInfo"]["reason"]
        assert "code = Unauthorized" in reason, reason
        assert f"connection 'atlasA' is not authorized to write {B}.dyn" in reason, reason
        assert dlq["doc"]["v"] == 2
        stats = admin.command({"getStreamProcessorStats": "dyn"})
        assert stats["ok"] == 1
        procs = {p["name"]: p for p in admin.command(
            {"listStreamProcessors": 1})["streamProcessors"]}
        assert procs["dyn"]["state"] == "STARTED", procs["dyn"]
    finally:
        admin.command({"dropStreamProcessor": "dyn"})


# ---- item 8: aspen's diagnostics need cluster-monitor privileges ------------

@pytest.mark.parametrize("cmd", [{"getCmdLineOpts": 1}, {"getLog": "startupWarnings"},
                                 {"hostInfo": 1}, {"serverStatus": 1},
                                 {"getParameter": 1, "featureCompatibilityVersion": 1}])
def test_diagnostics_need_cluster_monitor(login, cmd):
    for user in ("reader", "rwA", "streamer"):
        _not_authorized(lambda: login(user).admin.command(cmd), "admin")
    for user in ("monitor", "root"):
        assert login(user).admin.command(cmd)["ok"] == 1
