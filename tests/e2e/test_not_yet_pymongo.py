"""Connection types ASP has and aspen does not run yet (issue 16, item 5).

Google Cloud Pub/Sub is an $emit-only connection type of ASP, but ASP does
not document (where aspen could check) its connection fields or $emit's
options for it, so aspen refuses it by name: an aspen whose config has a
Pub/Sub connection does not start, and says the type is ASP's but not yet
aspen's, not that it is unknown. The types built by issue 16 start.
"""

import json
import os

import pytest

import aspen_proc

NOT_YET = ("is supported by Atlas Stream Processing but not yet by this "
           "version of aspen (Google Cloud Pub/Sub)")


def _config(name, connections):
    path = os.path.join(aspen_proc.run_dir(), name)
    with open(path, "w") as f:
        json.dump({"connections": connections}, f)
    return path


@pytest.mark.parametrize("conn", [
    {"name": "gps", "type": "pubsub"},
    {"name": "gps", "type": "PubSub", "gcp": {"projectId": "p"}},
    # With a working sink beside it: still refused, by its position.
    {"name": "gps", "type": "pubsub", "topic": "t"},
])
def test_pubsub_connection_refuses_start(conn):
    conns = [{"name": "kin", "type": "kinesis", "region": "us-east-1",
              "credentials": {"accessKeyId": "a", "secretAccessKey": "b"}}, conn]
    config = _config("aspen-notyet.json", conns)
    out = aspen_proc.refused_start("not-yet", [
        "--config", config,
        "--state-dir", os.path.join(aspen_proc.run_dir(), "state-not-yet")])
    want = ("config key 'connections[1].type': connection type '%s' %s"
            % (conn["type"], NOT_YET))
    assert want in out, out


def test_built_cloud_types_start():
    """s3, azure-blob and kinesis are no longer on the not-yet list."""
    config = _config("aspen-cloud-types.json", [
        {"name": "lake", "type": "s3", "region": "us-east-1",
         "credentials": {"accessKeyId": "a", "secretAccessKey": "b"}},
        {"name": "blob", "type": "azure-blob",
         "azure": {"storageAccountName": "devstoreaccount1"},
         "endpoint": "http://127.0.0.1:1/devstoreaccount1", "accountKey": "a2V5"},
        {"name": "kin", "type": "kinesis", "region": "us-east-1",
         "credentials": {"accessKeyId": "a", "secretAccessKey": "b"}},
    ])
    a = aspen_proc.start("cloud-types", [
        "--config", config,
        "--state-dir", os.path.join(aspen_proc.run_dir(), "state-cloud-types")])
    aspen_proc.stop(a)
