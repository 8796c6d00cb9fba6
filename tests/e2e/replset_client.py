"""The client side of test_forward_replset.sh: pymongo through aspen, which
forwards to tests/e2e/fake_rs.py's two-member replica set (found by aspen
through mongoc's monitor). Prints one TAP line per check.

Usage: python replset_client.py ASPEN_PORT CONTROL_PORT

  1. writes and reads go to the primary (member 0);
  2. after a failover (SWAP: member 1 becomes primary) writes reach the new
     primary by themselves within a bounded time; meanwhile a write may fail
     with the old primary's NotWritablePrimary, passed through unchanged, and
     never with anything else;
  3. a cursor opened on member 0 before the failover is still served by
     member 0 (getMore and killCursors go to the server of the cursor), and
     member 1 never saw a getMore for it.
"""
import json
import socket
import sys
import time

from pymongo import MongoClient
from pymongo.errors import NotPrimaryError, OperationFailure


def control(port, line):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((line + "\n").encode())
        return s.makefile().readline().strip()


def main():
    aspen_port, ctl = int(sys.argv[1]), int(sys.argv[2])
    client = MongoClient(f"mongodb://127.0.0.1:{aspen_port}/?directConnection=true",
                         serverSelectionTimeoutMS=10000, retryWrites=False)
    db = client["aspen_e2e_replset"]
    coll = db["c"]
    n, failed = 0, 0

    def check(name, ok, detail=""):
        nonlocal n, failed
        n += 1
        print(f"{'ok' if ok else 'not ok'} {n} - {name}", flush=True)
        if detail:
            print(f"# {detail}", flush=True)
        failed += 0 if ok else 1

    # 1. The primary (member 0) gets the commands, once mongoc found it.
    deadline = time.monotonic() + 20
    first_error = None
    while True:
        try:
            coll.insert_many([{"_id": i} for i in range(10)])
            break
        except OperationFailure as e:
            first_error = e
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    stats = json.loads(control(ctl, "STATS"))
    check("writes go to the primary", stats[0]["forwarded"].get("insert", 0) == 1 and
          not stats[1]["forwarded"], f"stats {stats} first error {first_error}")

    first = db.command({"find": "c", "batchSize": 2, "sort": {"_id": 1}})
    cid = first["cursor"]["id"]
    check("a cursor opened on the primary", cid != 0)

    # 2. Failover.
    assert control(ctl, "SWAP") == "SWAPPED"
    deadline = time.monotonic() + 30
    errors = []
    ok = False
    while time.monotonic() < deadline:
        try:
            coll.insert_one({"_id": "after"})
            ok = True
            break
        except (NotPrimaryError, OperationFailure) as e:
            # pymongo raises NotPrimaryError (no .code) for 10107.
            details = getattr(e, "details", None) or {}
            errors.append(details.get("code", getattr(e, "code", None)))
            time.sleep(0.1)
    stats = json.loads(control(ctl, "STATS"))
    check("after the failover writes reach the new primary by themselves",
          ok and stats[1]["forwarded"].get("insert", 0) == 1,
          f"errors {errors[:5]} stats {stats}")
    check("meanwhile only the old primary's NotWritablePrimary came back",
          all(c == 10107 for c in errors), f"codes {sorted(set(errors), key=str)}")

    # 3. The old cursor stays with the member that opened it.
    more = db.command({"getMore": cid, "collection": "c", "batchSize": 3})
    got = [d["_id"] for d in more["cursor"]["nextBatch"]]
    killed = db.command({"killCursors": "c", "cursors": [cid]})
    stats = json.loads(control(ctl, "STATS"))
    check("getMore and killCursors go to the cursor's server",
          got == [2, 3, 4] and killed.get("cursorsKilled") == [cid] and
          stats[0]["forwarded"].get("getMore", 0) == 1 and
          stats[0]["forwarded"].get("killCursors", 0) == 1 and
          stats[1]["cursorNotFound"] == 0, f"got {got} killed {killed} stats {stats}")

    client.close()
    print(f"1..{n}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
