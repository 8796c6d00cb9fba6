"""Hostile clients against a running aspen (tests/e2e/test_hostile.sh).

Usage: hostile.py --port P --pid PID [--tls-ca CA] SCENARIO...

Each scenario misbehaves on its own sockets and checks aspen's answer; a
well-behaved pymongo client pings aspen every 100 ms on another thread the
whole time, and must never fail or wait more than PING_LIMIT_S. Prints TAP
lines ("ok N - ..." / "not ok N - ..."); exits 1 if any check failed.

Scenarios (all bounded in time):
  trickle     an OP_MSG ping sent one byte every 40 ms: answered correctly
  idle        half-open connections (nothing sent, half a header, a stalled
              TLS ClientHello) are closed by net.idleTimeoutSecs
  huge        a frame announcing 2 GB: connection closed, nothing allocated
  flood       many connections opened at once (beyond net.maxConnections)
              and dropped; aspen refuses the excess and keeps serving
  pipeline    requests pipelined without reading replies: aspen stops
              reading at the output high-water mark, its memory stays
              bounded; then the client resets the connection mid-reply
  garbage     TLS handshake garbage and plaintext garbage
"""

import argparse
import os
import random
import resource
import select
import socket
import struct
import sys
import threading
import time

import bson
import pymongo

PING_LIMIT_S = 3.0  # generous: aspen runs under ASan in CI

N = 0
FAILED = 0


def check(name, ok, detail=""):
    global N, FAILED
    N += 1
    if ok:
        print(f"ok {N} - {name}", flush=True)
    else:
        FAILED += 1
        print(f"not ok {N} - {name}" + (f": {detail}" if detail else ""), flush=True)


def op_msg(doc, request_id=1):
    body = struct.pack("<I", 0) + b"\x00" + bson.encode(doc)
    return struct.pack("<iiii", 16 + len(body), request_id, 0, 2013) + body


def read_frame(sock, timeout=10.0):
    """One reply frame (header + body) or None on EOF / timeout."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while len(buf) < 4 or len(buf) < struct.unpack("<i", buf[:4])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf += chunk
    except (socket.timeout, ConnectionError):
        return None
    return buf


def reply_doc(frame):
    # OP_MSG: header(16) flags(4) kind(1) doc
    return bson.decode(frame[21:])


def readable(socks, timeout_s):
    """The sockets of `socks` that are readable (or closed) within timeout_s.
    poll, not select: the flood's descriptors go past FD_SETSIZE."""
    p = select.poll()
    by_fd = {}
    for s in socks:
        p.register(s, select.POLLIN | select.POLLERR | select.POLLHUP)
        by_fd[s.fileno()] = s
    return [by_fd[fd] for fd, _ in p.poll(int(timeout_s * 1000))]


def wait_closed(sock, timeout):
    """True when the peer closes the socket (EOF or reset) within timeout."""
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    while time.monotonic() < deadline:
        if readable([sock], 0.2):
            try:
                if not sock.recv(65536):
                    return True
            except BlockingIOError:
                continue
            except ConnectionError:
                return True
    return False


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class Pinger(threading.Thread):
    """The well-behaved client: pymongo pings every 100 ms."""

    def __init__(self, uri):
        super().__init__(daemon=True)
        self.client = pymongo.MongoClient(uri, heartbeatFrequencyMS=500,
                                          serverSelectionTimeoutMS=5000,
                                          socketTimeoutMS=10000)
        self.stop = threading.Event()
        self.count = 0
        self.errors = []
        self.max_s = 0.0

    def run(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                r = self.client.admin.command("ping")
                if r.get("ok") != 1:
                    self.errors.append(repr(r))
            except Exception as e:  # noqa: BLE001 - any failure counts
                self.errors.append(repr(e))
            self.max_s = max(self.max_s, time.monotonic() - t0)
            self.count += 1
            self.stop.wait(0.1)


# ---- scenarios -------------------------------------------------------------

def scenario_trickle(args):
    frame = op_msg({"ping": 1, "$db": "admin"}, request_id=7)
    s = connect(args.port)
    for b in frame:
        s.sendall(bytes([b]))
        time.sleep(0.04)
    rep = read_frame(s)
    ok = rep is not None and struct.unpack("<i", rep[8:12])[0] == 7 and \
        reply_doc(rep).get("ok") == 1
    check("a frame trickled one byte at a time is answered", ok)
    s.close()


def scenario_idle(args):
    socks = []
    for _ in range(5):
        socks.append(("nothing sent", connect(args.port)))
    s = connect(args.port)
    s.sendall(op_msg({"ping": 1, "$db": "admin"})[:8])
    socks.append(("half a header", s))
    s = connect(args.port)
    # A TLS record header announcing a ClientHello that never comes.
    s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    socks.append(("stalled TLS ClientHello", s))
    limit = args.idle_timeout + 5
    for what, s in socks:
        check(f"idle connection ({what}) closed within {limit} s",
              wait_closed(s, limit))
        s.close()


def scenario_huge(args):
    s = connect(args.port)
    s.sendall(struct.pack("<iiii", 0x7FFFFFFF, 9, 0, 2013) + b"\x00" * 5)
    rep = read_frame(s, timeout=10)
    err = reply_doc(rep) if rep and len(rep) > 21 else {}
    check("a frame announcing 2 GB gets an error reply",
          err.get("ok") == 0 and err.get("code") == 17, repr(err))
    check("... and its connection is closed", wait_closed(s, 10))
    s.close()
    # The same header over the TLS-less path with a message just over the
    # configured limit.
    s = connect(args.port)
    s.sendall(struct.pack("<iiii", args.max_message + 1, 10, 0, 2013))
    check("a frame over net.maxMessageSizeBytes closes the connection",
          wait_closed(s, 10))
    s.close()


def scenario_flood(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.flood + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        soft = min(want, hard)
    n = min(args.flood, soft - 64)
    socks = []
    t0 = time.monotonic()
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", args.port), timeout=10))
        except OSError as e:
            check("flood: connect", False, repr(e))
            break
    # Aspen closes what is above net.maxConnections: count the closed ones.
    closed = 0
    deadline = time.monotonic() + 20
    pending = list(socks)
    while pending and time.monotonic() < deadline:
        still = []
        rs = set(readable(pending, 0.5))
        for s in pending:
            if s in rs:
                try:
                    if not s.recv(1):
                        closed += 1
                        continue
                except OSError:
                    closed += 1
                    continue
            still.append(s)
        pending = still
        if len(socks) - closed <= args.max_connections:
            break
    open_now = len(socks) - closed
    check(f"flood: {len(socks)} connections opened in "
          f"{time.monotonic() - t0:.1f} s; aspen kept at most "
          f"net.maxConnections ({args.max_connections}) open",
          len(socks) == n and open_now <= args.max_connections,
          f"{open_now} still open")
    for s in socks:
        s.close()
    # Open-and-drop churn: connect, send nothing or half a hello, close.
    for i in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", args.port), timeout=10)
            if i % 3 == 0:
                s.sendall(op_msg({"hello": 1, "$db": "admin"})[:30])
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        except OSError as e:
            check("churn: connect", False, repr(e))
            return
    check(f"churn: {n} connections opened and dropped (some reset)", True)


def connect_served(port, timeout):
    """A connection aspen has answered a hello on. Right after the flood
    aspen may still be closing its connections (slowly under ASan on a
    loaded machine) and refuse new ones at net.maxConnections: retry until
    one is served, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        s = connect(port)
        try:
            s.sendall(op_msg({"hello": 1, "$db": "admin"}))
        except OSError:
            pass
        else:
            if read_frame(s, 10.0) is not None:
                s.settimeout(10)
                return s
        s.close()
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def scenario_pipeline(args):
    before = rss_kb(args.pid)
    s = connect_served(args.port, 60)
    if s is None:
        check("pipeline: aspen serves a new connection after the flood", False)
        return
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frame = op_msg({"hello": 1, "$db": "admin"})
    batch = frame * 2000
    sent = 0
    target = 400 * 1024 * 1024  # far more than aspen may buffer
    s.setblocking(False)
    stalled_since = None
    reset = False
    while sent < target:
        try:
            sent += s.send(batch)
            stalled_since = None
        except BlockingIOError:
            now = time.monotonic()
            stalled_since = stalled_since or now
            # aspen under ASan on a loaded machine can take a second to
            # catch up, which is not a pause; 2 s still ends before
            # net.idleTimeoutSecs (3 s) closes a paused connection.
            if now - stalled_since > 2:
                break
            p = select.poll()
            p.register(s, select.POLLOUT)
            p.poll(200)
        except ConnectionError:
            # net.idleTimeoutSecs ended the connection: no reply was taken.
            reset = True
            break
    after = rss_kb(args.pid)
    check(f"pipelined requests without reading: aspen stopped reading after "
          f"{sent // 1024} KiB" + (" (then closed it as idle)" if reset else ""),
          sent < target)
    grown = after - before
    check(f"... and its memory stayed bounded (RSS grew {grown} KiB)",
          grown < 256 * 1024, f"{before} -> {after} KiB")
    # aspen may still be working through what it read when the client
    # stalls (under ASan on a loaded machine, seconds of it); only then do
    # its replies reach net.outputHighWaterMarkBytes (which the log must
    # show) and the idle timeout close the connection. Wait for that close,
    # without reading (reading would take the replies): POLLRDHUP says the
    # peer closed even while unread replies sit in our buffer.
    if not reset:
        p = select.poll()
        p.register(s, select.POLLRDHUP)
        deadline = time.monotonic() + args.idle_timeout + 60
        while not reset and time.monotonic() < deadline:
            reset = bool(p.poll(200))
        check("... then aspen closed it as idle, replies unread", reset)
    # Disconnect mid-reply: reset with replies still queued.
    if not reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    # A client that reads part of a reply and leaves.
    s = connect(args.port)
    s.sendall(op_msg({"hello": 1, "$db": "admin"}) * 200)
    s.recv(100)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    check("clients that disconnect mid-reply are dropped", True)


def scenario_garbage(args):
    rnd = random.Random(1234)
    for i in range(20):
        s = connect(args.port)
        if i % 2 == 0:
            # A TLS handshake record with a garbage body.
            body = bytes(rnd.getrandbits(8) for _ in range(300))
            s.sendall(b"\x16\x03\x01" + struct.pack(">H", len(body)) + body)
        else:
            # Plaintext garbage: a header with a random length and opcode.
            s.sendall(bytes(rnd.getrandbits(8) for _ in range(64)))
        closed = wait_closed(s, args.idle_timeout + 5)
        s.close()
        if not closed:
            check(f"garbage #{i} closed", False)
            return
    check("20 connections of TLS/plaintext garbage closed", True)


SCENARIOS = {
    "trickle": scenario_trickle,
    "idle": scenario_idle,
    "huge": scenario_huge,
    "flood": scenario_flood,
    "pipeline": scenario_pipeline,
    "garbage": scenario_garbage,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--idle-timeout", type=int, default=3)
    ap.add_argument("--max-connections", type=int, default=500)
    ap.add_argument("--max-message", type=int, default=48000000)
    ap.add_argument("--flood", type=int, default=2000)
    ap.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    args = ap.parse_args()

    pinger = Pinger(f"mongodb://127.0.0.1:{args.port}/?directConnection=true")
    pinger.start()
    try:
        for name in args.scenarios:
            print(f"# scenario {name}", flush=True)
            SCENARIOS[name](args)
            check(f"aspen (pid {args.pid}) still runs after '{name}'",
                  os.path.exists(f"/proc/{args.pid}"))
    finally:
        pinger.stop.set()
        pinger.join(15)
    check(f"the well-behaved client's {pinger.count} pings all answered",
          pinger.count > 0 and not pinger.errors, "; ".join(pinger.errors[:3]))
    check(f"... each within {PING_LIMIT_S} s (slowest {pinger.max_s:.3f} s)",
          pinger.max_s < PING_LIMIT_S)
    print(f"1..{N}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
