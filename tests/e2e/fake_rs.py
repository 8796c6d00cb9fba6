"""A scripted two-member replica set for aspen's multi-host forwarding.

Usage: python fake_rs.py BACKING_PORT

Listens on two free ports as the members of replica set "rs0", and on a
third for control; prints "MEMBERS <port1> <port2> CONTROL <port3>". Each answers hello / isMaster (OP_QUERY and
OP_MSG) with the set's view: setName, hosts, primary, me, setVersion and
electionId, as a real member does. The primary forwards every other command
to the backing server (BACKING_PORT) and passes its reply back; a secondary
answers NotWritablePrimary (10107), as a member does to a write or a
primary read, except for getMore / killCursors on cursors it opened itself,
which it serves (cursors live on the member that opened them), and refuses
with CursorNotFound (43) for any other cursor.

Control commands (a line each on a connection to the control port; the
answer is one line):
  SWAP   the other member becomes primary (setVersion and electionId grow);
         answers "SWAPPED"
  STATS  answers a JSON line: per member, the commands it forwarded by name,
         and the NotWritablePrimary / CursorNotFound it answered
SIGTERM ends it.
"""
import asyncio
import json
import os
import signal
import socket
import struct
import sys

import bson
from bson.objectid import ObjectId

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ReplicaSet:
    def __init__(self, backing_port):
        self.backing_port = backing_port
        self.ports = [free_port(), free_port()]
        self.primary = 0
        self.set_version = 1
        self.election = 1
        self.stats = [{"forwarded": {}, "notPrimary": 0, "cursorNotFound": 0} for _ in self.ports]
        self.cursors = [set(), set()]  # cursor ids each member opened

    def host(self, i):
        return f"127.0.0.1:{self.ports[i]}"

    def hello(self, i):
        doc = {
            "ismaster": i == self.primary, "isWritablePrimary": i == self.primary,
            "secondary": i != self.primary, "setName": "rs0",
            "hosts": [self.host(0), self.host(1)], "primary": self.host(self.primary),
            "me": self.host(i), "setVersion": self.set_version,
            "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": 48000000,
            "maxWriteBatchSize": 100000, "localTime": bson.datetime.datetime.now(),
            "logicalSessionTimeoutMinutes": 30, "minWireVersion": 0,
            "maxWireVersion": 13, "ok": 1.0,
        }
        if i == self.primary:
            doc["electionId"] = ObjectId(f"7fffffff{self.election:016x}")
        return doc


async def read_frame(reader):
    header = await reader.readexactly(16)
    length, request_id, response_to, op = struct.unpack("<iiii", header)
    body = await reader.readexactly(length - 16)
    return header + body, request_id, op, body


def op_msg_reply(doc, response_to):
    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(doc)
    return struct.pack("<iiii", 16 + len(payload), 0, response_to, OP_MSG) + payload


def op_reply(doc, response_to):
    payload = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(doc)
    return struct.pack("<iiii", 16 + len(payload), 0, response_to, OP_REPLY) + payload


def msg_command(body):
    # flags, then sections; the kind-0 one is the command.
    pos = 4
    while pos < len(body):
        kind = body[pos]
        if kind == 0:
            (n,) = struct.unpack_from("<i", body, pos + 1)
            return bson.decode(body[pos + 1:pos + 1 + n])
        (n,) = struct.unpack_from("<i", body, pos + 1)
        pos += 1 + n
    return {}


async def serve(rs, i, reader, writer):
    up_r = up_w = None
    try:
        while True:
            frame, request_id, op, body = await read_frame(reader)
            if op == OP_QUERY:
                # Only the handshake comes as OP_QUERY.
                writer.write(op_reply(rs.hello(i), request_id))
                await writer.drain()
                continue
            cmd = msg_command(body)
            name = next(iter(cmd), "")
            if name.lower() in ("ismaster", "hello"):
                writer.write(op_msg_reply(rs.hello(i), request_id))
                await writer.drain()
                continue
            ids = []
            if name == "getMore":
                ids = [cmd["getMore"]]
            elif name == "killCursors":
                ids = list(cmd.get("cursors", []))
            if ids and not all(c in rs.cursors[i] for c in ids):
                rs.stats[i]["cursorNotFound"] += 1
                writer.write(op_msg_reply({"ok": 0.0, "code": 43, "codeName": "CursorNotFound",
                                           "errmsg": f"cursor id {ids[0]} not found"}, request_id))
                await writer.drain()
                continue
            if not ids and i != rs.primary:
                rs.stats[i]["notPrimary"] += 1
                writer.write(op_msg_reply({"ok": 0.0, "code": 10107, "codeName": "NotWritablePrimary",
                                           "errmsg": "not primary"}, request_id))
                await writer.drain()
                continue
            if up_w is None:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", rs.backing_port)
            up_w.write(frame)
            await up_w.drain()
            reply, _, _, rbody = await read_frame(up_r)
            rdoc = msg_command(rbody)
            cur = rdoc.get("cursor")
            if isinstance(cur, dict) and cur.get("id"):
                rs.cursors[i].add(cur["id"])
            rs.stats[i]["forwarded"][name] = rs.stats[i]["forwarded"].get(name, 0) + 1
            writer.write(reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        writer.close()
        if up_w:
            up_w.close()


async def control(rs, reader, writer):
    try:
        while True:
            line = (await reader.readline()).decode().strip()
            if not line:
                break
            if line == "SWAP":
                rs.primary = 1 - rs.primary
                rs.set_version += 1
                rs.election += 1
                writer.write(b"SWAPPED\n")
            elif line == "STATS":
                writer.write((json.dumps(rs.stats) + "\n").encode())
            else:
                writer.write(b"ERROR\n")
            await writer.drain()
    finally:
        writer.close()


async def main():
    rs = ReplicaSet(int(sys.argv[1]))
    servers = []
    for i, port in enumerate(rs.ports):
        servers.append(await asyncio.start_server(
            lambda r, w, i=i: serve(rs, i, r, w), "127.0.0.1", port))
    ctl = await asyncio.start_server(lambda r, w: control(rs, r, w), "127.0.0.1", 0)
    ctl_port = ctl.sockets[0].getsockname()[1]
    print(f"MEMBERS {rs.ports[0]} {rs.ports[1]} CONTROL {ctl_port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(main())
