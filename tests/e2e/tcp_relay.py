"""A TCP relay for e2e tests: the network between aspen and a peer.

Usage: python tcp_relay.py LISTEN_PORT TARGET_HOST:TARGET_PORT [--spare-hello]

Forwards every connection made to 127.0.0.1:LISTEN_PORT to the target and
prints "RELAYING <port>" once it listens. SIGTERM ends it at once, cutting
every open connection, which is what the client sees when the network goes
away; started again on the same port, it lets clients reconnect. Used by
tests/e2e/peers.sh (start_relay / stop_relay).

SIGUSR1 arms a one-shot cut: the next bytes the target sends (a reply) are
dropped and that connection is closed on both sides, as when the network
fails after a request reached the server but before its reply came back
(the case retryable writes exist for). It prints "CUT" when it did. With
--spare-hello, a reply to hello/isMaster is never cut: a driver's monitoring
connection (whose hello aspen answers, and streams) cannot take the cut
meant for the command a test runs.
"""
import asyncio
import os
import signal
import struct
import sys


ARMED = {"cut": False}
SPARE_HELLO = "--spare-hello" in sys.argv[3:]
HELLOS = (b"hello", b"isMaster", b"ismaster")


def command_name(data):
    """The command an OP_MSG request starts with: the first key of its body
    (after the 16-byte header, the flags, the section kind and the
    document's length); b"" for anything else."""
    if len(data) < 27 or struct.unpack_from("<i", data, 12)[0] != 2013:
        return b""
    end = data.find(b"\x00", 26)
    return data[26:end] if end > 0 else b""


async def pump(reader, writer, conn, target_writer=None):
    """Copies reader to writer; `target_writer` is set on the target ->
    client direction (the one an armed cut drops). `conn` is what both
    directions of one connection share: the command of its last request."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if target_writer is None:
                conn["cmd"] = command_name(data)
            elif ARMED["cut"] and not (SPARE_HELLO and conn["cmd"] in HELLOS):
                ARMED["cut"] = False
                target_writer.close()
                print("CUT", flush=True)
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main():
    listen_port = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)

    async def on_client(c_reader, c_writer):
        try:
            t_reader, t_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            c_writer.close()
            return
        conn = {"cmd": b""}
        await asyncio.gather(pump(c_reader, t_writer, conn),
                             pump(t_reader, c_writer, conn, target_writer=t_writer))

    asyncio.get_running_loop().add_signal_handler(
        signal.SIGUSR1, lambda: ARMED.update(cut=True))
    server = await asyncio.start_server(on_client, "127.0.0.1", listen_port,
                                        reuse_address=True)
    print(f"RELAYING {listen_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        asyncio.run(main())
    except OSError as e:
        sys.exit(f"tcp_relay: {e}")
