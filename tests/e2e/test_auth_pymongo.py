"""e2e: pymongo logs in to aspen with SCRAM-SHA-256 and SCRAM-SHA-1.

Run by tests/e2e/run-pytest.sh, which starts a backing server (BACKING_URI)
and sets ASPEN_RUN_DIR. This module starts its own aspen (ASPEN_BIN, default
build/proxy/aspen) on a state directory holding users added with
`aspen --add-user`, so authentication is on for it only; it stops that aspen
at the end and fails on a bad exit status or a sanitizer report.
"""

import os
import re
import subprocess

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

import aspen_proc

ROOT = aspen_proc.ROOT
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
    backing = aspen_proc.backing_uri()
    run_dir = aspen_proc.run_dir()
    state = os.path.join(run_dir, "state-auth-py")
    aspen_proc.add_users(state, [("admin", "s3cret!", "atlasAdmin"),
                                 ("reader", "r3ad", "readAnyDatabase")])
    subprocess.run([aspen_proc.aspen_bin(), "--state-dir", state, "--add-user", X509_SUBJECT,
                    "--external", "--roles", "readAnyDatabase"], check=True,
                   stdout=subprocess.DEVNULL)
    certs = _certs(run_dir)
    # TLS allowed: plain clients for SCRAM, client certificates for X509.
    a = aspen_proc.start("auth-py", ["--backend", backing, "--state-dir", state,
                                     "--tls-mode", "allowed",
                                     "--tls-cert", os.path.join(certs, "server.pem"),
                                     "--tls-key", os.path.join(certs, "server-key.pem"),
                                     "--tls-ca", os.path.join(certs, "ca.pem")])
    yield a.port
    aspen_proc.stop(a)


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
    run_dir = aspen_proc.run_dir()
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
