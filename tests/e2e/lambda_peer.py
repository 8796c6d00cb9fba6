#!/usr/bin/env python3
"""Sets up moto's server (started by peers.sh's start_moto) as the AWS Lambda
peer of test_https.sh:

    lambda_peer.py PORT FUNCTION...

Turns Docker off for moto's Lambda backend (POST /moto-api/config: without
Docker an invoke answers with the request's payload, an echo), then creates
an IAM role and each FUNCTION (python3.12, a trivial handler) in us-east-1
with boto3 and dummy credentials. Prints "LAMBDA_READY" when done.
"""
import io
import json
import sys
import urllib.request
import zipfile

import boto3

port = int(sys.argv[1])
url = "http://127.0.0.1:%d" % port
req = urllib.request.Request(url + "/moto-api/config",
                             data=json.dumps({"lambda": {"use_docker": False}}).encode(),
                             headers={"Content-Type": "application/json"}, method="POST")
urllib.request.urlopen(req, timeout=10).read()

kw = dict(endpoint_url=url, region_name="us-east-1",
          aws_access_key_id="AKIDASPEN", aws_secret_access_key="lambda-s3cr3t")
iam = boto3.client("iam", **kw)
role = iam.create_role(RoleName="asp-invoker", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
code = io.BytesIO()
with zipfile.ZipFile(code, "w") as z:
    z.writestr("handler.py", "def handler(event, context):\n    return event\n")
lam = boto3.client("lambda", **kw)
for name in sys.argv[2:]:
    lam.create_function(FunctionName=name, Runtime="python3.12", Role=role,
                        Handler="handler.handler", Code={"ZipFile": code.getvalue()})
print("LAMBDA_READY", flush=True)
