"""Starting and stopping an aspen of a pytest module's own (tests/e2e/test_*.py).

run-pytest.sh starts a backing server (BACKING_URI) and sets ASPEN_RUN_DIR;
a module that needs its own aspen (users, a config file) starts one with
start(), which waits for its ready line and returns it with its port, and
stops it with stop(), which fails on a bad exit status or a sanitizer
report in its log.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANITIZER_RE = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:")


def aspen_bin():
    b = os.environ.get("ASPEN_BIN", "build/proxy/aspen")
    return b if os.path.isabs(b) else os.path.join(ROOT, b)


def run_dir():
    return os.environ.get("ASPEN_RUN_DIR", os.path.join(ROOT, "build", "run"))


def backing_uri():
    backing = os.environ.get("BACKING_URI")
    if not backing:
        pytest.fail("BACKING_URI is not set: run this through tests/e2e/run-pytest.sh")
    return backing


def add_users(state, users, config=None):
    """`aspen --add-user` for each (name, password, roles) in a fresh state
    directory `state`."""
    subprocess.run(["rm", "-rf", state], check=True)
    extra = ["--config", config] if config else []
    for user, pw, roles in users:
        subprocess.run([aspen_bin(), *extra, "--state-dir", state, "--add-user", user,
                        "--password", pw, "--roles", roles], check=True,
                       stdout=subprocess.DEVNULL)


def add_user(state, user, password, roles):
    """One `aspen --add-user` into `state` as it is (password None: an
    --external user); returns the CompletedProcess, output captured, for
    the caller to check (a refusal is what some tests want)."""
    args = ["--password", password] if password is not None else ["--external"]
    return subprocess.run([aspen_bin(), "--state-dir", state, "--add-user", user, *args,
                           "--roles", roles], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


class Aspen:
    """A running aspen: .port, .log_path."""

    def __init__(self, proc, log, log_path, port):
        self.proc, self._log, self.log_path, self.port = proc, log, log_path, port


def start(name, args):
    """Starts aspen with `args` (after --bind/--port), logging to
    <run dir>/aspen-<name>.log; fails the test if it does not get ready."""
    log_path = os.path.join(run_dir(), f"aspen-{name}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen([aspen_bin(), "--bind", "127.0.0.1", "--port", "0", *args],
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
        log.close()
        with open(log_path) as f:
            pytest.fail("aspen did not start:\n" + f.read()[-3000:])
    return Aspen(proc, log, log_path, port)


def stop(aspen):
    """SIGTERM, then: exit status 0 and no sanitizer report."""
    aspen.proc.send_signal(signal.SIGTERM)
    rc = aspen.proc.wait(timeout=15)
    aspen._log.close()
    with open(aspen.log_path) as f:
        text = f.read()
    assert not SANITIZER_RE.search(text), text[-3000:]
    assert rc == 0, f"aspen exited with {rc}"


def refused_start(name, args):
    """Runs aspen with `args`, which must make it refuse to start: returns
    its output (bounded wait)."""
    out = subprocess.run([aspen_bin(), "--bind", "127.0.0.1", "--port", "0", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, timeout=30, text=True)
    assert out.returncode != 0, f"aspen ({name}) started:\n{out.stdout[-2000:]}"
    assert not SANITIZER_RE.search(out.stdout), out.stdout[-3000:]
    return out.stdout


class Peer:
    """A backing server or TCP relay a module started: .port, .proc."""

    def __init__(self, proc, log, log_path, port):
        self.proc, self._log, self.log_path, self.port = proc, log, log_path, port

    def cut_next_reply(self):
        """A relay only: the next reply through it is dropped and its
        connection closed (tcp_relay.py, SIGUSR1)."""
        self.proc.send_signal(signal.SIGUSR1)

    def cuts(self):
        """A relay only: how many cuts it made so far."""
        with open(self.log_path) as f:
            return sum(1 for line in f if line.strip() == "CUT")


def _start_peer(name, argv, ready_re):
    log_path = os.path.join(run_dir(), f"{name}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    for _ in range(300):
        with open(log_path) as f:
            m = re.search(ready_re, f.read())
        if m:
            return Peer(proc, log, log_path, int(m.group(1)))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    log.close()
    with open(log_path) as f:
        pytest.fail(f"{name} did not start:\n" + f.read()[-3000:])


def start_backing(name, args=()):
    """A backing server of the module's own (`args`: e.g. ["--replset",
    "rs0"]) on a free port; waits for its LISTENING line."""
    jar = os.environ.get("ASPEN_BACKING_JAR",
                         os.path.join(ROOT, ".deps", "aspen-backing-server.jar"))
    return _start_peer(name, ["java", "-XX:+UseSerialGC", "-Xmx512m", "-jar", jar,
                              "--host", "127.0.0.1", "--port", "0", *args],
                       r"(?m)^LISTENING (\d+)$")


def start_relay(name, target_port):
    """tests/e2e/tcp_relay.py from a free port to 127.0.0.1:target_port; an
    armed cut never takes a reply to hello (the drivers' monitoring)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return _start_peer(name, [sys.executable, os.path.join(ROOT, "tests", "e2e", "tcp_relay.py"),
                              str(port), f"127.0.0.1:{target_port}", "--spare-hello"],
                       r"(?m)^RELAYING (\d+)$")


def stop_peer(peer):
    """SIGTERM and a bounded wait."""
    peer.proc.send_signal(signal.SIGTERM)
    try:
        peer.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        peer.proc.kill()
        peer.proc.wait()
    peer._log.close()
