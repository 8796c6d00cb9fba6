#!/usr/bin/env python3
"""A scriptable HTTP(S) peer for the $https e2e tests and bench/https.sh.

    http_peer.py PORT [--tls CERT KEY]

Prints "HTTP_PEER PORT" once it listens on 127.0.0.1:PORT (threaded: one
slow or stalled request does not hold the others). What it answers depends
on the path (any method; query parameters and JSON bodies are echoed back):

  /echo/...          200 application/json {method, path, query, headers
                     (lower-case names, X- and Authorization ones), body}
  /status/CODE       CODE with a small JSON body
  /slow/MS/...       the echo after MS milliseconds
  /stall             never answers until the client goes away (or 10 min)
  /text              200 text/plain "plain words"
  /html              200 text/html (a type $https does not accept)
  /notjson           200 application/json whose body is not JSON
  /jsonstr           200 {"inner": "{\"a\": 1}", "list": "[1, 2]", "s": "x"}
  /empty             200 with an empty body
  /big/BYTES         200 application/json: one string of BYTES characters
  /notype            200 JSON without a Content-Type header
  /record/RUN        200 {}; the JSON body is kept under RUN
  /received/RUN      200 [the bodies kept under RUN, in arrival order]
  /hits              200 {path: number of requests} so far
"""
import json
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORDS = {}
HITS = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: without TCP_NODELAY each
    # answer would wait for the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # quiet
        pass

    def _send(self, code, body=b"", ctype="application/json", extra=None):
        self.send_response(code)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _json(self, code, obj):
        self._send(code, json.dumps(obj).encode())

    def _handle(self):
        url = urllib.parse.urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with LOCK:
            HITS[url.path] = HITS.get(url.path, 0) + 1
        head = parts[0] if parts else ""
        echo = {
            "method": self.command,
            "path": url.path,
            "query": dict(urllib.parse.parse_qsl(url.query)),
            "headers": {k.lower(): v for k, v in self.headers.items()
                        if k.lower().startswith("x-") or k.lower() == "authorization"},
            "body": body,
        }
        if head == "echo" or not head:
            self._json(200, echo)
        elif head == "status":
            code = int(parts[1])
            self._json(code, {"status": code})
        elif head == "slow":
            time.sleep(int(parts[1]) / 1000.0)
            self._json(200, echo)
        elif head == "stall":
            # Hold the request until the client gives up (its socket closes).
            deadline = time.time() + 600
            self.connection.settimeout(0.2)
            while time.time() < deadline:
                try:
                    if self.connection.recv(1, 0x2) == b"":  # MSG_PEEK
                        return
                except (TimeoutError, ssl.SSLWantReadError, BlockingIOError):
                    pass
                except OSError:
                    return
        elif head == "text":
            self._send(200, b"plain words", "text/plain; charset=utf-8")
        elif head == "html":
            self._send(200, b"<p>hi</p>", "text/html")
        elif head == "notjson":
            self._send(200, b"{not json", "application/json")
        elif head == "jsonstr":
            self._json(200, {"inner": "{\"a\": 1}", "list": "[1, 2]", "s": "x"})
        elif head == "empty":
            self._send(200, b"", "application/json")
        elif head == "big":
            self._send(200, json.dumps("x" * int(parts[1])).encode())
        elif head == "notype":
            self._send(200, b'{"typed": false}', None)
        elif head == "record":
            with LOCK:
                RECORDS.setdefault(parts[1], []).append(body)
            self._json(200, {})
        elif head == "received":
            with LOCK:
                got = list(RECORDS.get(parts[1], []))
            self._json(200, got)
        elif head == "hits":
            with LOCK:
                self._json(200, dict(HITS))
        else:
            self._json(404, {"error": "no such path"})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class Server(ThreadingHTTPServer):
    # Room for many connections at once (the default backlog of 5 drops
    # SYNs under 32 concurrent clients: 1 s retransmits).
    request_queue_size = 256


def main():
    port = int(sys.argv[1])
    srv = Server(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    if len(sys.argv) >= 5 and sys.argv[2] == "--tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("HTTP_PEER %d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
