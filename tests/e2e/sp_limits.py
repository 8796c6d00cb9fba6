"""Scenarios for tests/e2e/test_sp_limits.sh (issue 20 items 1, 2, 14).

Usage: sp_limits.py --port P SCENARIO

Prints TAP lines ("ok N - ..." / "not ok N - ...", hostile.py's check);
exits 1 if any check failed. Every wait is bounded (socket timeouts of a
minute: without the fixes these waits last for hours or never end).

Scenarios:
  utf8      createStreamProcessor with "\\xc3\\x28" in a $match value or
            the name, sent as raw OP_MSG: refused with 22 InvalidBSON;
            listStreamProcessors still decodes for pymongo (no
            InvalidBSON), the good processor is listed
  names     a name with '/', one with a NUL, a 100 000-character one:
            refused with 2 BadValue; "nul\\0zzz" does not drop "nul"
  grow      sp.process with $reduce over $range [0, 40] doubling a string
            ($concat) and an array ($concatArrays): each document goes to
            the DLQ with mongod's 16493 / BSONObjectTooLarge error, the
            next document too, and aspen answers
  slow      sp.process computing something slow but bounded (each
            document a nested $reduce up to the evaluation step limit);
            while it computes, another client drops it and lists the
            processors: both answer. Then a second such processor is left
            running for the shell test's SIGTERM.
"""

import argparse
import os
import socket
import sys
import time

import bson
import pymongo

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile"))
import hostile  # noqa: E402
from hostile import check, op_msg, read_frame, reply_doc  # noqa: E402

TIMEOUT_MS = 60000


def client(port):
    return pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/", directConnection=True,
                               serverSelectionTimeoutMS=TIMEOUT_MS,
                               socketTimeoutMS=TIMEOUT_MS)


def outcome(admin, cmd):
    """The reply, or {"ok": 0, "code": ..., "errmsg": ...} from the error."""
    try:
        return admin.command(cmd)
    except pymongo.errors.OperationFailure as e:
        return {"ok": 0, "code": e.code, "errmsg": str(e)}


def raw_command(port, doc, find, replace):
    """Sends `doc` as OP_MSG with the bytes `find` replaced by `replace`
    (same length), so the command carries what pymongo would refuse to
    encode; returns the decoded reply."""
    doc = dict(doc)
    doc["$db"] = "admin"
    msg = op_msg(doc)
    assert msg.count(find) == 1
    msg = msg.replace(find, replace)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_MS / 1000) as s:
        s.sendall(msg)
        frame = read_frame(s, timeout=TIMEOUT_MS / 1000)
    return reply_doc(frame) if frame else None


SINK = {"$merge": {"into": {"connectionName": "atlas", "db": "d", "coll": "c"}}}


def pipeline(match_value="x"):
    return [{"$source": {"documents": [{"a": 1}]}}, {"$match": {"a": match_value}}, SINK]


def list_names(admin):
    return [p["name"] for p in admin.command({"listStreamProcessors": 1})["streamProcessors"]]


def scenario_utf8(args):
    admin = client(args.port).admin
    admin.command({"createStreamProcessor": "good", "pipeline": pipeline()})
    r = raw_command(args.port, {"createStreamProcessor": "bad", "pipeline": pipeline("ZZ")},
                    b"ZZ", b"\xc3\x28")
    check("invalid UTF-8 in a $match value is refused with 22 InvalidBSON",
          r is not None and r.get("code") == 22 and "pipeline.1.$match.a" in r.get("errmsg", ""),
          repr(r))
    r = raw_command(args.port, {"createStreamProcessor": "bZZ", "pipeline": pipeline()},
                    b"bZZ", b"b\xc3\x28")
    check("invalid UTF-8 in the name is refused with 22 InvalidBSON",
          r is not None and r.get("code") == 22, repr(r))
    try:
        names = list_names(admin)
        check("listStreamProcessors decodes and lists only the good one", names == ["good"],
              repr(names))
    except Exception as e:  # bson.errors.InvalidBSON before the fix
        check("listStreamProcessors decodes and lists only the good one", False, repr(e))


def scenario_names(args):
    admin = client(args.port).admin
    for name, what in (("a/b", "'/'"), ("nul\0zzz", "a NUL"), ("x" * 100000, "100 000 characters"),
                       ("..", "'..'"), ("tab\there", "a control character")):
        r = outcome(admin, {"createStreamProcessor": name, "pipeline": pipeline()})
        check(f"a name with {what} is refused with 2 BadValue", r.get("code") == 2, repr(r)[:300])
    admin.command({"createStreamProcessor": "nul", "pipeline": pipeline()})
    r = outcome(admin, {"dropStreamProcessor": "nul\0zzz"})
    check("dropping 'nul\\0zzz' is refused", r.get("code") == 2, repr(r))
    check("... and 'nul' is still there", "nul" in list_names(admin))
    admin.command({"dropStreamProcessor": "nul"})


def sample_until(admin, name, cursor, want, limit_s=120):
    """getMore until `want` messages came (or the cursor ended, or limit_s)."""
    msgs = []
    deadline = time.monotonic() + limit_s
    while len(msgs) < want and time.monotonic() < deadline:
        r = admin.command({"getMoreSampleStreamProcessor": name, "cursorId": cursor})
        msgs += r["messages"]
        if r["cursorId"] == 0:
            break
        if len(msgs) < want:
            time.sleep(0.2)
    return msgs


def scenario_grow(args):
    admin = client(args.port).admin
    for op, init, code in (("$concat", "ab", "Tried to create string longer than 16MB"),
                           ("$concatArrays", [1], "BSONObj size: ")):
        pl = [{"$source": {"documents": [{"a": 1}, {"a": 2}]}},
              {"$project": {"a": 1, "x": {"$reduce": {"input": {"$range": [0, 40]},
                                                      "initialValue": init,
                                                      "in": {op: ["$$value", "$$value"]}}}}}]
        r = admin.command({"processStreamProcessor": pl})
        msgs = sample_until(admin, r["name"], r["cursorId"], 2)
        reasons = [m.get("_dlqMessage", {}).get("errInfo", {}).get("reason", "") for m in msgs]
        check(f"{op} doubling in $reduce: both documents go to the DLQ ({code.strip()})",
              len(reasons) == 2 and all(code in x for x in reasons), repr(reasons)[:400])
        admin.command({"dropStreamProcessor": r["name"]})
    check("aspen still answers", admin.command({"ping": 1})["ok"] == 1)


# Each document: a nested $reduce of n * n additions, which the evaluation
# step limit (100 000 000 operators) ends after some seconds; 200 of them.
def slow_pipeline():
    inner = {"$reduce": {"input": {"$range": [0, "$n"]}, "initialValue": 0,
                         "in": {"$add": ["$$value", "$$this"]}}}
    outer = {"$reduce": {"input": {"$range": [0, "$n"]}, "initialValue": 0,
                         "in": {"$add": ["$$value", inner]}}}
    return [{"$source": {"documents": [{"n": 100000, "i": i} for i in range(200)]}},
            {"$project": {"x": outer}}]


def wait_computing(admin, name, limit_s=60):
    """Until the processor has taken its first document (so it is in the
    middle of that document's evaluation)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        st = admin.command({"getStreamProcessorStats": name})["stats"]
        if st.get("inputMessageCount", 0) >= 1:
            return True
        time.sleep(0.05)
    return False


def scenario_slow(args):
    c1 = client(args.port)
    r = c1.admin.command({"processStreamProcessor": slow_pipeline()})
    c1.admin.command({"getMoreSampleStreamProcessor": r["name"], "cursorId": r["cursorId"]})
    admin = client(args.port).admin
    check("the slow processor takes its first document", wait_computing(admin, r["name"]))
    # It is computing its first document now. Another client:
    d = outcome(admin, {"dropStreamProcessor": r["name"]})
    check("dropping a processor in the middle of a long evaluation answers", d.get("ok") == 1,
          repr(d))
    try:
        names = list_names(admin)
        check("listStreamProcessors answers meanwhile", isinstance(names, list))
    except Exception as e:
        check("listStreamProcessors answers meanwhile", False, repr(e))
    c1.close()
    # One more, left computing for SIGTERM (the shell test stops aspen).
    c2 = client(args.port)
    r = c2.admin.command({"processStreamProcessor": slow_pipeline()})
    c2.admin.command({"getMoreSampleStreamProcessor": r["name"], "cursorId": r["cursorId"]})
    check("a second one takes its first document", wait_computing(admin, r["name"]))
    print(f"# {r['name']} computes; leaving it for SIGTERM", flush=True)
    # Keep the connection open: the shell test sends SIGTERM now.
    if args.ready_file:
        open(args.ready_file, "w").close()
    time.sleep(args.hold)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready-file")
    ap.add_argument("--hold", type=float, default=0)
    ap.add_argument("scenario", choices=["utf8", "names", "grow", "slow"])
    args = ap.parse_args()
    globals()["scenario_" + args.scenario](args)
    return 1 if hostile.FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
