"""e2e: the foundation through aspen with pymongo, in plain TCP and with TLS.

Run by tests/e2e/run-pytest.sh, which starts a backing server and two aspens
and sets:
  ASPEN_PORT      aspen with TLS disabled
  ASPEN_TLS_PORT  aspen with --tls-mode required
  ASPEN_CA_FILE   the dev CA that signed aspen's server certificate
"""

import os

import pytest
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError, OperationFailure

N = 250


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run this through tests/e2e/run-pytest.sh")
    return value


@pytest.fixture(scope="module", params=["plain", "tls"])
def client(request):
    opts = {"serverSelectionTimeoutMS": 10000, "socketTimeoutMS": 60000}
    if request.param == "plain":
        uri = f"mongodb://127.0.0.1:{_env('ASPEN_PORT')}/?directConnection=true"
    else:
        uri = f"mongodb://127.0.0.1:{_env('ASPEN_TLS_PORT')}/?directConnection=true"
        opts.update(tls=True, tlsCAFile=_env("ASPEN_CA_FILE"))
    c = MongoClient(uri, **opts)
    yield c
    c.close()


@pytest.fixture
def coll(client, request):
    # One collection per test (and per plain/tls run): tests stay independent.
    name = request.node.name.replace("[", "_").replace("]", "")
    db = client["aspen_e2e_pymongo"]
    try:
        db.drop_collection(name)
    except OperationFailure:
        pass  # mongo-java-server: "ns not found" (no code) for a missing collection
    return db[name]


def _docs():
    return [{"_id": i, "i": i, "g": i % 5, "even": i % 2 == 0} for i in range(N)]


def test_ping(client):
    assert client.admin.command("ping")["ok"] == 1


def test_build_info(client):
    info = client.admin.command("buildInfo")
    assert isinstance(info["version"], str) and info["version"]


def test_insert_many_and_find_with_get_more(coll):
    res = coll.insert_many(_docs())
    assert len(res.inserted_ids) == N
    # batch_size 10 makes the cursor issue getMore commands for the rest.
    got = [d["_id"] for d in coll.find({}).sort("_id", 1).batch_size(10)]
    assert got == list(range(N))


def test_explicit_get_more(coll):
    coll.insert_many(_docs())
    db = coll.database
    first = db.command({"find": coll.name, "filter": {}, "sort": {"_id": 1}, "batchSize": 10})
    assert len(first["cursor"]["firstBatch"]) == 10
    cursor_id = first["cursor"]["id"]
    assert cursor_id != 0
    more = db.command({"getMore": cursor_id, "collection": coll.name, "batchSize": 1000})
    assert [d["_id"] for d in more["cursor"]["nextBatch"]] == list(range(10, N))
    assert more["cursor"]["id"] == 0


def test_aggregate_match_group(coll):
    coll.insert_many(_docs())
    got = list(
        coll.aggregate(
            [
                {"$match": {"even": True}},
                {"$group": {"_id": "$g", "n": {"$sum": 1}, "total": {"$sum": "$i"}}},
                {"$sort": {"_id": 1}},
            ]
        )
    )
    want = {}
    for d in _docs():
        if d["even"]:
            w = want.setdefault(d["g"], {"_id": d["g"], "n": 0, "total": 0})
            w["n"] += 1
            w["total"] += d["i"]
    assert got == [want[g] for g in sorted(want)]


def test_count_documents(coll):
    coll.insert_many(_docs())
    assert coll.count_documents({}) == N
    assert coll.count_documents({"g": 3}) == N // 5


def test_duplicate_key(coll):
    coll.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError) as exc:
        coll.insert_one({"_id": 1})
    assert exc.value.code == 11000
    assert coll.count_documents({}) == 1


def test_update_and_delete(coll):
    coll.insert_many(_docs())
    res = coll.update_many({"g": 1}, {"$set": {"tag": "one"}})
    assert res.matched_count == N // 5 and res.modified_count == N // 5
    assert coll.count_documents({"tag": "one"}) == N // 5
    res = coll.delete_many({"even": True})
    assert res.deleted_count == N // 2
    assert coll.count_documents({}) == N // 2


def test_drop(coll):
    coll.insert_one({"x": 1})
    assert coll.name in coll.database.list_collection_names()
    coll.drop()
    assert coll.name not in coll.database.list_collection_names()
    assert coll.count_documents({}) == 0
