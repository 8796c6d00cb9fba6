"""e2e: authentication that holds under pressure (issue 20, items 3, 8, 9,
10, 12, 13), with pymongo and a raw-wire client against aspens of this
module's own (tests/e2e/aspen_proc.py):

- a users file that vanishes, empties, breaks or opens up while aspen runs
  keeps the users loaded before, and authentication stays on;
- concurrent `aspen --add-user` runs all land; a users file others may
  read or write is refused;
- failed logins are throttled per (address, user): one user's failures lock
  out neither the other users nor are cleared by their successes;
- a login as a user name that is not UTF-8 reaches the audit log and the
  server log, both valid UTF-8 JSON;
- before login, frames are capped at what a handshake needs;
- getCmdLineOpts and listStreamConnections never show a secret.

Run by tests/e2e/run-pytest.sh (BACKING_URI, ASPEN_PORT).
"""

import base64
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest
from bson.binary import Binary
from pymongo import MongoClient
from pymongo.errors import OperationFailure

import aspen_proc
from aspen_proc import add_user, aspen_bin, run_dir

# hostile.py's raw wire client (as sp_limits.py uses it).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile"))
from hostile import op_msg, read_frame, reply_doc  # noqa: E402

ADMIN_PW = "adm1n!"
PREAUTH_MAX = 16384  # ASPEN_PREAUTH_MAX_MESSAGE


def _client(port, **kw):
    return MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                       serverSelectionTimeoutMS=10000, **kw)


def _code(port, command, **creds):
    """0 when a new client (with `creds`, if any) runs `command`, else the
    server's error code. Its hello makes aspen look at the users file."""
    c = _client(port, **creds)
    try:
        c.admin.command(command)
        return 0
    except OperationFailure as e:
        return e.code
    finally:
        c.close()


def _login_code(port, user, password):
    """0 when `user` logs in (and pings), else the error code (18)."""
    return _code(port, "ping", username=user, password=password, authSource="admin")


def _anonymous_code(port):
    """0 when a client with no user may list databases (auth off), else the
    error code (13 when auth is on)."""
    return _code(port, "listDatabases")


def _log(a):
    """The text of aspen `a`'s log (bad bytes kept as surrogates)."""
    with open(a.log_path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _fresh_state(name):
    state = os.path.join(run_dir(), name)
    shutil.rmtree(state, ignore_errors=True)
    return state


def _wait_for(pred, timeout_s=15):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


# ---- raw wire ------------------------------------------------------------------


def _read_reply(sock, timeout=10.0):
    """The reply document of one OP_MSG, or None on EOF or timeout."""
    frame = read_frame(sock, timeout)
    return reply_doc(frame) if frame else None


def _closed(sock, timeout=10.0):
    """True when aspen closes the connection within timeout."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except socket.timeout:
        return False
    except ConnectionError:
        return True


def _connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=10)


# ---- one aspen with users and an audit log, for several tests -------------------


@pytest.fixture(scope="module")
def secured():
    backing = aspen_proc.backing_uri()
    state = _fresh_state("state-robust")
    for user, pw, roles in [("admin", ADMIN_PW, "atlasAdmin"), ("alice", "alicepw", "readAnyDatabase"),
                            ("bob", "bobpw", "readAnyDatabase"), ("carol", "carolpw", "readAnyDatabase")]:
        r = add_user(state, user, pw, roles)
        assert r.returncode == 0, r.stderr
    audit = os.path.join(run_dir(), "audit-robust.log")
    if os.path.exists(audit):
        os.unlink(audit)
    a = aspen_proc.start("robust", ["--backend", backing, "--state-dir", state, "--audit-log", audit])
    a.audit_path = audit
    yield a
    aspen_proc.stop(a)


# ---- item 9: the login throttle ---------------------------------------------------


def test_throttle_is_per_address_and_user(secured):
    port = secured.port
    # Ten wrong passwords for alice lock alice out from this address ...
    for _ in range(10):
        assert _login_code(port, "alice", "wrong") == 18
    assert _login_code(port, "alice", "alicepw") == 18
    assert "too many failed logins for this user from this address" in _log(secured)
    # ... but not bob, on the same address,
    assert _login_code(port, "bob", "bobpw") == 0
    # and bob's success does not clear alice's count.
    assert _login_code(port, "alice", "alicepw") == 18
    # carol: five failures, a success of bob, five more: her count is ten.
    for _ in range(5):
        assert _login_code(port, "carol", "wrong") == 18
    assert _login_code(port, "bob", "bobpw") == 0
    for _ in range(5):
        assert _login_code(port, "carol", "wrong") == 18
    assert _login_code(port, "carol", "carolpw") == 18
    assert _login_code(port, "admin", ADMIN_PW) == 0


# ---- item 10: names that are not UTF-8 -------------------------------------------


def test_login_as_invalid_utf8_user_is_audited_and_logged(secured):
    """A failed SCRAM login as b"mallory\\xc3\\x28" (raw wire: drivers only
    send valid strings) is in the audit log and the server log, each line
    valid UTF-8 JSON with U+FFFD for the bad byte."""
    s = _connect(secured.port)
    try:
        first = b"n,,n=mallory\xc3\x28,r=fyko+d2lbbFgONRv9qkxdawL"
        s.sendall(op_msg({"saslStart": 1, "mechanism": "SCRAM-SHA-256",
                           "payload": Binary(first), "$db": "admin"}))
        r = _read_reply(s)
        assert r and r["ok"] == 1, r
        server_first = bytes(r["payload"]).decode()
        nonce = dict(kv.split("=", 1) for kv in server_first.split(","))["r"]
        proof = base64.b64encode(b"\x00" * 32).decode()
        final = f"c=biws,r={nonce},p={proof}".encode()
        s.sendall(op_msg({"saslContinue": 1, "conversationId": r["conversationId"],
                           "payload": Binary(final), "$db": "admin"}, 2))
        r = _read_reply(s)
        assert r and r["ok"] == 0 and r["code"] == 18, r
    finally:
        s.close()
    want = "mallory\ufffd("

    def audited():
        with open(secured.audit_path, "rb") as f:
            raw = f.read()
        raw.decode("utf-8")  # raises on invalid UTF-8
        return [e for e in map(json.loads, raw.decode().splitlines())
                if e.get("activity") == "Logon" and e["actor"].get("user") == want]

    assert _wait_for(audited), "no audit event for the failed login"
    ev = audited()[0]
    assert ev["status"] == "Failure" and ev["api"]["operation"] == "saslContinue"
    with open(secured.log_path, "rb") as f:
        log = f.read()
    log.decode("utf-8")  # every line valid UTF-8
    lines = [json.loads(x) for x in log.decode().splitlines() if x.startswith("{")]
    assert any(x.get("msg") == "Authentication failed" and
               x.get("attr", {}).get("principalName") == want for x in lines)


# ---- item 12: frames before login ---------------------------------------------------


def test_preauth_frames_are_capped(secured):
    port = secured.port
    # A 1 MB frame (under net.maxMessageSizeBytes) before login: refused
    # from its header with a clear error, and the connection closes.
    s = _connect(port)
    try:
        s.sendall(struct.pack("<iiii", 1_000_000, 7, 0, 2013) + b"\x00" * 4096)
        r = _read_reply(s)
        assert r is not None, "no reply to an oversized pre-auth frame"
        assert r["ok"] == 0 and r["code"] == 17, r
        assert "before authentication" in r["errmsg"], r
        assert _closed(s)
    finally:
        s.close()
    assert "message of 1000000 bytes before authentication" in _log(secured)
    # Twenty clients each announcing 40 MB are all turned away at once.
    socks = [_connect(port) for _ in range(20)]
    try:
        for s in socks:
            s.sendall(struct.pack("<iiii", 40_000_000, 1, 0, 2013) + b"\x00" * 65536)
        assert all(_closed(s) for s in socks)
    finally:
        for s in socks:
            s.close()
    # A fat handshake still fits: hello with large client metadata and a
    # speculativeAuthenticate, about 12 KB.
    s = _connect(port)
    try:
        hello = {"hello": 1, "$db": "admin", "saslSupportedMechs": "admin.admin",
                 "client": {"driver": {"name": "x" * 4000, "version": "1"},
                            "os": {"type": "Linux", "name": "y" * 4000},
                            "application": {"name": "z" * 3000}},
                 "speculativeAuthenticate": {
                     "saslStart": 1, "mechanism": "SCRAM-SHA-256", "db": "admin",
                     "payload": Binary(b"n,,n=admin,r=" + b"A" * 32)}}
        frame = op_msg(hello)
        assert 10_000 < len(frame) < PREAUTH_MAX
        s.sendall(frame)
        r = _read_reply(s)
        assert r and r["ok"] == 1 and "speculativeAuthenticate" in r, r
    finally:
        s.close()
    # Once logged in, the usual limit applies.
    c = _client(port, username="admin", password=ADMIN_PW, authSource="admin")
    try:
        coll = c["robust_e2e"]["big"]
        coll.insert_one({"blob": "b" * 1_000_000})
        assert coll.count_documents({}) >= 1
    finally:
        c.close()


def test_no_preauth_cap_without_auth():
    """With no users (auth off) nothing is "before login": big frames pass."""
    c = _client(int(os.environ["ASPEN_PORT"]))
    try:
        r = c.admin.command({"ping": 1, "pad": "p" * 200_000})
        assert r["ok"] == 1
    finally:
        c.close()


# ---- item 3: the users file going away -----------------------------------------------


def test_users_file_trouble_keeps_users_and_auth(tmp_path):
    backing = aspen_proc.backing_uri()
    state = _fresh_state("state-robust-vanish")
    assert add_user(state, "admin", ADMIN_PW, "atlasAdmin").returncode == 0
    users = os.path.join(state, "users.json")
    away = str(tmp_path / "users.json.away")
    a = aspen_proc.start("robust-vanish", ["--backend", backing, "--state-dir", state])
    try:
        assert _anonymous_code(a.port) == 13
        assert _login_code(a.port, "admin", ADMIN_PW) == 0

        def still_secured(what):
            assert _anonymous_code(a.port) == 13, f"{what}: auth switched off"
            assert _login_code(a.port, "admin", ADMIN_PW) == 0, f"{what}: admin lost"

        # The file moved away: aspen keeps its users (the default auto mode
        # used to load "no users" and let everyone in).
        shutil.move(users, away)
        still_secured("users file moved away")
        assert "no longer exists" in _log(a)
        # Empty, then not JSON, then readable by others.
        for what, text, mode in [("empty", "", 0o600), ("not JSON", "{users: [", 0o600),
                                 ("mode 0666", None, 0o666)]:
            if text is None:
                shutil.copy(away, users)
            else:
                with open(users, "w") as f:
                    f.write(text)
            os.chmod(users, mode)
            still_secured(what)
        assert "is empty" in _log(a)
        assert "is not valid (Extended) JSON" in _log(a)
        assert "are too open" in _log(a)
        # A valid file that lists nobody: nobody logs in, auth stays on.
        with open(users, "w") as f:
            f.write('{"users": []}')
        os.chmod(users, 0o600)
        assert _anonymous_code(a.port) == 13
        assert _login_code(a.port, "admin", ADMIN_PW) == 18
        # The file back: admin logs in again.
        shutil.move(away, users)
        assert _login_code(a.port, "admin", ADMIN_PW) == 0
        assert _anonymous_code(a.port) == 13
    finally:
        aspen_proc.stop(a)


# ---- item 13: aspen --add-user ------------------------------------------------------------


def test_parallel_add_user_all_land():
    state = _fresh_state("state-robust-add")
    n = 12
    procs = [subprocess.Popen([aspen_bin(), "--state-dir", state, "--add-user", f"u{i}",
                               "--password", f"pw{i}", "--roles", "readAnyDatabase"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
             for i in range(n)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    users = os.path.join(state, "users.json")
    with open(users) as f:
        names = sorted(u["user"] for u in json.load(f)["users"])
    assert names == sorted(f"u{i}" for i in range(n))
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600
    assert not [x for x in os.listdir(state) if ".tmp." in x]


def test_users_file_permissions_too_open():
    state = _fresh_state("state-robust-perms")
    assert add_user(state, "admin", ADMIN_PW, "atlasAdmin").returncode == 0
    users = os.path.join(state, "users.json")
    for mode in (0o666, 0o644, 0o640):
        os.chmod(users, mode)
        out = aspen_proc.refused_start(f"users file mode {mode:o}", ["--state-dir", state])
        assert f"permissions on users file {users} are too open (mode 0{mode:o})" in out, out
        r = add_user(state, "other", "pw", "readAnyDatabase")
        assert r.returncode != 0 and "are too open" in r.stderr, r.stderr
    os.chmod(users, 0o600)
    assert add_user(state, "other", "pw", "readAnyDatabase").returncode == 0


# ---- item 8: secrets in getCmdLineOpts and listStreamConnections ----------------------------


def test_secrets_redacted(tmp_path):
    config = tmp_path / "aspen.json"
    config.write_text(json.dumps({"connections": [
        {"name": "atlasSecret", "type": "atlas",
         "uri": "mongodb://svc:atlaspw@127.0.0.1:1/?tls=true&tlsCertificateKeyFilePassword=tlspw"
                "&authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:awstok"
                "&appName=shown"},
        {"name": "kafkaSecret", "type": "kafka", "bootstrapServers": "127.0.0.1:1",
         "security": {"protocol": "SASL_SSL", "mechanism": "PLAIN", "username": "kuser",
                      "password": "kafkapw"},
         "config": {"sasl.oauthbearer.config": "principal=admin extension_k=oauthsecret",
                    "ssl.key.password": "keypw", "ssl.key.pem": "PEMKEY",
                    "sasl.oauthbearer.client.secret": "clientsecret",
                    "socket.timeout.ms": 10000}}]}))
    backend = "mongodb://bk:backendpw@127.0.0.1:1/?tlsCertificateKeyFilePassword=bktlspw"
    a = aspen_proc.start("robust-redact", ["--config", str(config), "--state-dir",
                                           _fresh_state("state-robust-redact"), f"--backend={backend}"])
    try:
        c = _client(a.port)
        try:
            opts = c.admin.command("getCmdLineOpts")
            conns = c.admin.command("listStreamConnections")
        finally:
            c.close()
        shown = json.dumps(opts) + json.dumps(conns)
        for secret in ["backendpw", "bk:", "bktlspw", "atlaspw", "svc:", "tlspw", "awstok", "kafkapw",
                       "oauthsecret", "keypw", "PEMKEY", "clientsecret"]:
            assert secret not in shown, f"{secret} shown: {shown}"
        assert opts["parsed"]["backend"]["uri"] == \
            "mongodb://<redacted>@127.0.0.1:1/?tlsCertificateKeyFilePassword=<redacted>"
        assert any(x.startswith("--backend=mongodb://<redacted>@") for x in opts["argv"])
        by_name = {x["name"]: x for x in conns["connections"]}
        assert by_name["atlasSecret"]["uri"] == (
            "mongodb://<redacted>@127.0.0.1:1/?tls=true&tlsCertificateKeyFilePassword=<redacted>"
            "&authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:<redacted>"
            "&appName=shown")
        k = by_name["kafkaSecret"]
        assert k["security"] == {"protocol": "SASL_SSL", "mechanism": "PLAIN", "username": "kuser"}
        assert k["config"]["socket.timeout.ms"] == 10000
        for key in ["sasl.oauthbearer.config", "ssl.key.password", "ssl.key.pem",
                    "sasl.oauthbearer.client.secret"]:
            assert k["config"][key] == "<redacted>", k
        for secret in ["backendpw", "atlaspw", "tlspw", "awstok", "kafkapw", "oauthsecret"]:
            assert secret not in _log(a), f"{secret} in the server log"
    finally:
        aspen_proc.stop(a)
