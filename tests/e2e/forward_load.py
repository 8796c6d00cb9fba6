"""Steady forwarded load across a backing-server restart (driven by
test_forward_restart.sh, which owns the backing server).

Usage: python forward_load.py ASPEN_URI [--threads N] [--min-down-failures N]

THREADS pymongo threads insert small documents through aspen, one at a
time, with acknowledged writes (w: 1), and record for every insert when it
started and ended (time.monotonic), its _id, and whether the server
acknowledged it or the error it got. The script talks to the shell on
stdin/stdout, one word a line:

  script: READY     (every thread has had acknowledged inserts)
  shell:  DOWN      (the backing server was killed and is gone)
  script: RESTART   (every thread has seen inserts fail since DOWN, and a
                     second has passed)
  shell:  UP        (the backing server listens again, started empty)

then it stops the load once every thread has had acknowledged inserts
again, reads the collection and prints one TAP line per check ("ok N - ..."
/ "not ok N - ...", with "# " details). The backing server keeps its data
in memory, so the restart empties it; the checks are built on that:

  1. every insert that started after DOWN and ended before RESTART failed
     (nothing is acknowledged while the backend is gone), and there were
     some;
  2. those failures are clear: code 6 (HostUnreachable) with a message that
     names the backing deployment;
  3. every insert acknowledged that started after DOWN is in the collection
     afterwards: only the restarted server can have acknowledged it, so an
     acknowledgement aspen made up (or took from another command's reply)
     shows as a missing document;
  4. the collection holds nothing that was never inserted;
  5. forwarding resumed by itself: every thread had acknowledged inserts
     after UP, without reconnecting or restarting anything.

Every wait is bounded; the exit status is non-zero if a check failed.
"""
import argparse
import sys
import threading
import time

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

NETWORK_CODES = {6, 7, 89, 9001, 202}


def say(word):
    print(word, flush=True)


def hear(expected):
    line = sys.stdin.readline().strip()
    if line != expected:
        raise SystemExit(f"forward_load: expected {expected!r} from the shell, got {line!r}")
    return time.monotonic()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("uri")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--min-down-failures", type=int, default=5)
    args = ap.parse_args()

    client = MongoClient(args.uri, serverSelectionTimeoutMS=10000,
                         socketTimeoutMS=30000, maxPoolSize=args.threads + 2)
    coll = client["aspen_e2e_restart"]["load"]
    try:
        coll.drop()
    except OperationFailure:
        pass

    lock = threading.Lock()
    records = []  # (thread, _id, t_start, t_end, acked, code, errmsg)
    stop = threading.Event()

    def worker(t):
        seq = 0
        while not stop.is_set():
            seq += 1
            _id = f"t{t}-{seq}"
            t0 = time.monotonic()
            acked, code, msg = False, None, None
            try:
                coll.insert_one({"_id": _id, "t": t, "seq": seq})
                acked = True
            except OperationFailure as e:
                code, msg = e.code, str(e)
            except PyMongoError as e:
                msg = f"{type(e).__name__}: {e}"
            t1 = time.monotonic()
            with lock:
                records.append((t, _id, t0, t1, acked, code, msg))
            if not acked:
                time.sleep(0.02)  # no busy loop while the backend is away

    threads = [threading.Thread(target=worker, args=(t,), daemon=True)
               for t in range(args.threads)]
    for th in threads:
        th.start()

    def wait_until(pred, limit_s, what):
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            with lock:
                if pred(records):
                    return True
            time.sleep(0.05)
        print(f"# timed out after {limit_s} s waiting for {what}", flush=True)
        return False

    def per_thread(recs, cond, n):
        counts = [0] * args.threads
        for r in recs:
            if cond(r):
                counts[r[0]] += 1
        return all(c >= n for c in counts)

    wait_until(lambda recs: per_thread(recs, lambda r: r[4], 20), 60,
               "acknowledged inserts before the kill")
    say("READY")
    t_down = hear("DOWN")
    wait_until(lambda recs: per_thread(recs, lambda r: r[2] > t_down and not r[4],
                                       args.min_down_failures), 60,
               "failures while the backend is down")
    # Stay down for a second at least: long enough for every pooled
    # connection to notice, for queued commands to be answered.
    time.sleep(max(0.0, t_down + 1.0 - time.monotonic()))
    t_restart = time.monotonic()
    say("RESTART")
    t_up = hear("UP")
    resumed = wait_until(lambda recs: per_thread(recs, lambda r: r[2] > t_up and r[4], 20),
                         60, "acknowledged inserts after the restart")
    stop.set()
    for th in threads:
        th.join(timeout=60)

    stored = {d["_id"] for d in coll.find({}, {"_id": 1})}
    client.close()

    n = 0
    failed = 0

    def check(name, ok, details=()):
        nonlocal n, failed
        n += 1
        print(f"{'ok' if ok else 'not ok'} {n} - {name}", flush=True)
        for d in list(details)[:10]:
            print(f"# {d}", flush=True)
        if not ok:
            failed += 1

    down = [r for r in records if r[2] > t_down and r[3] < t_restart]
    down_acked = [r for r in down if r[4]]
    check(f"nothing acknowledged while the backend was down ({len(down)} inserts tried)",
          len(down) > 0 and not down_acked,
          [f"acknowledged while down: {r[1]}" for r in down_acked] or
          ([] if down else ["no insert ran entirely while the backend was down"]))

    unclear = [r for r in down if not r[4] and
               (r[5] not in NETWORK_CODES or "backing MongoDB deployment" not in (r[6] or ""))]
    sample = next((r for r in down if not r[4]), None)
    check("errors while down are clear: HostUnreachable naming the backing deployment",
          len(down) > 0 and not unclear,
          [f"unclear: {r[1]} code={r[5]} {r[6]}" for r in unclear] +
          ([f"e.g. code={sample[5]}: {sample[6]}"] if sample else []))

    after = [r for r in records if r[2] > t_down and r[4]]
    missing = [r[1] for r in after if r[1] not in stored]
    check(f"every insert acknowledged after the kill is stored ({len(after)} of them)",
          len(after) > 0 and not missing,
          [f"acknowledged but not stored: {m}" for m in missing])

    attempted = {r[1] for r in records}
    phantom = sorted(stored - attempted)
    check("the collection holds only documents that were inserted", not phantom,
          [f"never inserted: {p}" for p in phantom])

    check("forwarding resumed by itself on every thread after the restart", resumed)

    print(f"1..{n}", flush=True)
    total_acked = sum(1 for r in records if r[4])
    print(f"# {len(records)} inserts, {total_acked} acknowledged; "
          f"down {t_restart - t_down:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
