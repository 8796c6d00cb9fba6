"""e2e: pymongo logs in to aspen with SCRAM-SHA-256 and SCRAM-SHA-1.

Run by tests/e2e/run-pytest.sh, which starts a backing server (BACKING_URI)
and sets ASPEN_RUN_DIR. This module starts its own aspen (ASPEN_BIN, default
build/proxy/aspen) on a state directory holding users added with
`aspen --add-user`, so authentication is on for it only; it stops that aspen
at the end and fails on a bad exit status or a sanitizer report.
"""

import os
import re
import signal
import subprocess
import time

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANITIZER_RE = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:")


def _bin():
    b = os.environ.get("ASPEN_BIN", "build/proxy/aspen")
    return b if os.path.isabs(b) else os.path.join(ROOT, b)


X509_SUBJECT = "CN=aspen-client,OU=clients,O=aspen"


def _certs(run_dir):
    """The dev certificates (run-pytest.sh makes them; idempotent) and a
    client certificate + key in one PEM, as pymongo wants it."""
    certs = os.path.join(run_dir, "certs")
    subprocess.run(["bash", os.path.join(ROOT, "certs", "gen-dev-certs.sh"), certs], check=True,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "client-combined-py.pem"), "w") as out:
        for name in ("client.pem", "client-key.pem"):
            with open(os.path.join(certs, name)) as f:
                out.write(f.read())
    return certs


@pytest.fixture(scope="module")
def aspen():
    backing = os.environ.get("BACKING_URI")
    if not backing:
        pytest.fail("BACKING_URI is not set: run this through tests/e2e/run-pytest.sh")
    run_dir = os.environ.get("ASPEN_RUN_DIR", os.path.join(ROOT, "build", "run"))
    state = os.path.join(run_dir, "state-auth-py")
    log_path = os.path.join(run_dir, "aspen-auth-py.log")
    subprocess.run(["rm", "-rf", state], check=True)
    for user, pw, roles in [("admin", "s3cret!", "atlasAdmin"), ("reader", "r3ad", "readAnyDatabase")]:
        subprocess.run([_bin(), "--state-dir", state, "--add-user", user, "--password", pw,
                        "--roles", roles], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([_bin(), "--state-dir", state, "--add-user", X509_SUBJECT, "--external",
                    "--roles", "readAnyDatabase"], check=True, stdout=subprocess.DEVNULL)
    certs = _certs(run_dir)
    log = open(log_path, "w")
    # TLS allowed: plain clients for SCRAM, client certificates for X509.
    proc = subprocess.Popen([_bin(), "--bind", "127.0.0.1", "--port", "0", "--backend", backing,
                             "--state-dir", state, "--tls-mode", "allowed",
                             "--tls-cert", os.path.join(certs, "server.pem"),
                             "--tls-key", os.path.join(certs, "server-key.pem"),
                             "--tls-ca", os.path.join(certs, "ca.pem")],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    port = None
    for _ in range(100):
        with open(log_path) as f:
            m = re.search(r'"msg":\s*"Waiting for connections".*?"port":\s*(\d+)', f.read())
        if m:
            port = int(m.group(1))
            break
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    if port is None:
        proc.kill()
        proc.wait()
        with open(log_path) as f:
            pytest.fail("aspen did not start:\n" + f.read()[-3000:])
    yield port
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=15)
    log.close()
    with open(log_path) as f:
        text = f.read()
    assert not SANITIZER_RE.search(text), text[-3000:]
    assert rc == 0, f"aspen exited with {rc}"


def _client(port, **kw):
    return MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                       serverSelectionTimeoutMS=10000, **kw)


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1", None])
def test_login(aspen, mech):
    kw = {"username": "admin", "password": "s3cret!", "authSource": "admin"}
    if mech:
        kw["authMechanism"] = mech
    c = _client(aspen, **kw)
    try:
        st = c.admin.command("connectionStatus")
        assert st["authInfo"]["authenticatedUsers"] == [{"user": "admin", "db": "admin"}]
        assert st["authInfo"]["authenticatedUserRoles"] == [{"role": "atlasAdmin", "db": "admin"}]
        coll = c["auth_e2e_py"]["docs"]
        coll.insert_one({"mech": mech or "default"})
        assert coll.count_documents({"mech": mech or "default"}) >= 1
        assert c.admin.command("listStreamProcessors")["ok"] == 1
    finally:
        c.close()


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_wrong_password(aspen, mech):
    c = _client(aspen, username="admin", password="nope", authSource="admin", authMechanism=mech)
    try:
        with pytest.raises(OperationFailure) as e:
            c.admin.command("ping")
        assert e.value.code == 18
        assert "Authentication failed." in str(e.value)
    finally:
        c.close()


def test_unauthenticated_refused(aspen):
    c = _client(aspen)
    try:
        assert c.admin.command("ping")["ok"] == 1
        with pytest.raises(OperationFailure) as e:
            c["auth_e2e_py"]["docs"].find_one()
        assert e.value.code == 13
        assert "requires authentication" in str(e.value)
    finally:
        c.close()


def test_reader_privileges(aspen):
    c = _client(aspen, username="reader", password="r3ad", authSource="admin")
    try:
        c["auth_e2e_py"]["docs"].find_one()
        assert c.admin.command("listStreamProcessors")["ok"] == 1
        with pytest.raises(OperationFailure) as e:
            c["auth_e2e_py"]["docs"].insert_one({"x": 1})
        assert e.value.code == 13
        assert re.fullmatch(r'not authorized on auth_e2e_py to execute command '
                            r'\{ insert: "docs", .*\$db: "auth_e2e_py".* \}',
                            e.value.details["errmsg"]), e.value.details["errmsg"]
        with pytest.raises(OperationFailure) as e:
            c.admin.command({"createStreamProcessor": "p",
                             "pipeline": [{"$source": {"connectionName": "sample_stream_solar"}}]})
        assert e.value.code == 13
        assert e.value.details["errmsg"] == ("not authorized: missing privilege for action "
                                             "createStreamProcessor on resource "
                                             "<stream processing workspace>")
    finally:
        c.close()


def test_x509(aspen):
    run_dir = os.environ.get("ASPEN_RUN_DIR", os.path.join(ROOT, "build", "run"))
    c = _client(aspen, tls=True, tlsCAFile=os.path.join(run_dir, "certs", "ca.pem"),
                tlsCertificateKeyFile=os.path.join(run_dir, "client-combined-py.pem"),
                authMechanism="MONGODB-X509")
    try:
        st = c.admin.command("connectionStatus")
        assert st["authInfo"]["authenticatedUsers"] == [{"user": X509_SUBJECT, "db": "$external"}]
        assert st["authInfo"]["authenticatedUserRoles"] == [{"role": "readAnyDatabase", "db": "admin"}]
        assert c.admin.command("listStreamProcessors")["ok"] == 1
        with pytest.raises(OperationFailure) as e:
            c["auth_e2e_py"]["docs"].insert_one({"x": 1})
        assert e.value.code == 13
    finally:
        c.close()
