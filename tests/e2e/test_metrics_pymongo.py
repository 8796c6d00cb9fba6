"""aspen's opt-in Prometheus endpoint (issue 17, beyond ASP).

An aspen of this module's own with --metrics-port 0 (a free port, read from
its log): `curl` of http://127.0.0.1:PORT/metrics is parsed by
prometheus_client's text-format parser, and the figures are checked against
what was done: a stream processor's input, output and DLQ counters, state,
latency histogram and state gauge; the proxy's connection and command
counters. Other paths get 404, other methods 405; the flag's range is
checked at start, and without it nothing listens.
"""

import json
import os
import re
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

import aspen_proc
from aspen_proc import backing_uri, run_dir


def _metrics_port(a):
    """The port of aspen `a`'s metrics endpoint, from its log (bounded)."""
    for _ in range(100):
        with open(a.log_path) as f:
            m = re.search(r'"msg":\s*"Serving Prometheus metrics".*?"port":\s*(\d+)', f.read())
        if m:
            return int(m.group(1))
        time.sleep(0.1)
    pytest.fail("no metrics endpoint in the log")


def _curl(port, path="/metrics", *extra):
    """curl's status code and body."""
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}",
                          *extra, f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=30, check=True)
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


def _samples(text):
    """{(name, frozenset(labels)): value} of every sample, parsed by
    prometheus_client (which raises on anything not in the text format)."""
    got = {}
    families = {}
    for fam in text_string_to_metric_families(text):
        families[fam.name] = fam
        for s in fam.samples:
            got[(s.name, frozenset(s.labels.items()))] = s.value
    return got, families


def _value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture(scope="module")
def aspen():
    state = os.path.join(run_dir(), "state-metrics")
    subprocess.run(["rm", "-rf", state], check=True)
    config = os.path.join(run_dir(), "aspen-metrics.json")
    with open(config, "w") as f:
        json.dump({"connections": [{"name": "atlas", "type": "atlas"}]}, f)
    a = aspen_proc.start("metrics", ["--config", config, "--backend", backing_uri(),
                                     "--state-dir", state, "--metrics-port", "0"])
    yield a
    aspen_proc.stop(a)


def test_metrics_parsed_and_counted(aspen):
    port = _metrics_port(aspen)
    c = MongoClient("127.0.0.1", aspen.port, directConnection=True, serverSelectionTimeoutMS=10000)
    try:
        # Five documents: one fails its $addFields (division by zero) to the DLQ.
        docs = [{"_id": i, "a": i} for i in range(5)]
        c.admin.command({"createStreamProcessor": "metricsP", "pipeline": [
            {"$source": {"documents": docs}},
            {"$addFields": {"inv": {"$divide": [1, "$a"]}}},
            {"$merge": {"into": {"connectionName": "atlas", "db": "metrics", "coll": "out"}}}]})
        c.admin.command({"startStreamProcessor": "metricsP"})
        deadline = time.time() + 30
        while True:
            st = c.admin.command({"getStreamProcessorStats": "metricsP"})["stats"]
            if st["outputMessageCount"] == 4 and st["dlqMessageCount"] == 1:
                break
            assert time.time() < deadline, f"stats: {st}"
            time.sleep(0.2)
        for i in range(3):
            c.metrics.other.insert_one({"i": i})
        c.admin.command("ping")

        code, text = _curl(port)
        assert code == 200, text
        samples, families = _samples(text)
        p = {"processor": "metricsP"}
        assert _value(samples, "aspen_processor_input_messages_total", **p) == 5
        assert _value(samples, "aspen_processor_output_messages_total", **p) == 4
        assert _value(samples, "aspen_processor_dlq_messages_total", **p) == 1
        assert _value(samples, "aspen_processor_input_bytes_total", **p) == st["inputMessageSize"]
        assert _value(samples, "aspen_processor_output_bytes_total", **p) == st["outputMessageSize"]
        assert _value(samples, "aspen_processor_state_bytes", **p) == 0
        assert _value(samples, "aspen_processor_state", state="STARTED", **p) == 1
        assert _value(samples, "aspen_processor_state", state="STOPPED", **p) == 0
        assert families["aspen_processor_input_messages"].type == "counter"  # the parser drops _total
        assert families["aspen_processor_latency_seconds"].type == "histogram"
        # The latency histogram: one observation per output document, the
        # buckets cumulative up to +Inf.
        lat = sorted(((float(dict(k[1])["le"]), v) for k, v in samples.items()
                      if k[0] == "aspen_processor_latency_seconds_bucket"
                      and dict(k[1])["processor"] == "metricsP"), key=lambda x: x[0])
        assert lat[-1] == (float("inf"), 4), lat
        assert all(a[1] <= b[1] for a, b in zip(lat, lat[1:])), lat
        assert _value(samples, "aspen_processor_latency_seconds_count", **p) == 4
        assert _value(samples, "aspen_processor_latency_seconds_sum", **p) >= 0
        # The proxy's counters.
        assert _value(samples, "aspen_connections_current") >= 1
        assert _value(samples, "aspen_connections_total") >= 1
        assert _value(samples, "aspen_commands_total", command="insert", handler="forward") == 3
        assert _value(samples, "aspen_commands_total", command="ping", handler="local") >= 1
        assert _value(samples, "aspen_commands_total", command="getStreamProcessorStats",
                      handler="local") >= 1

        # Stopped: the state gauge follows, the counters stay.
        c.admin.command({"stopStreamProcessor": "metricsP"})
        _, text = _curl(port)
        samples, _ = _samples(text)
        assert _value(samples, "aspen_processor_state", state="STOPPED", **p) == 1
        assert _value(samples, "aspen_processor_output_messages_total", **p) == 4
        c.admin.command({"dropStreamProcessor": "metricsP"})
    finally:
        c.close()


def test_metrics_other_requests(aspen):
    port = _metrics_port(aspen)
    code, _ = _curl(port, "/")
    assert code == 404
    code, _ = _curl(port, "/metrics", "-X", "POST")
    assert code == 405
    code, text = _curl(port, "/metrics?x=1")
    assert code == 200 and "aspen_connections_current" in text


def test_metrics_port_checked():
    out = aspen_proc.refused_start("metrics-bad", ["--metrics-port", "70000"])
    assert "metrics" in out, out
