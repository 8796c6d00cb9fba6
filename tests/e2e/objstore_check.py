"""Reads back what aspen's $emit wrote to S3 (moto, through boto3) or Azure
Blob Storage (Azurite, through azure-storage-blob), never through aspen.

  objstore_check.py s3 ENDPOINT mkbucket BUCKET
  objstore_check.py s3 ENDPOINT iamkey USER
      (a moto that checks credentials) creates USER, allowed everything,
      and prints a new access key id and secret
  objstore_check.py azure ENDPOINT mkbucket CONTAINER
  objstore_check.py STORE ENDPOINT rmbucket BUCKET   (and what it holds)
  objstore_check.py STORE ENDPOINT count BUCKET PREFIX
      prints the number of objects under PREFIX
  objstore_check.py STORE ENDPOINT expect BUCKET PREFIX [options]
      --ids N           documents carry field `i` = 0..N-1
      --once            each of them exactly once (default: at least once)
      --per-object K    every object but the last-cut ones holds exactly K
                        documents, none more than K
      --max-bytes B     no object of more than one document exceeds B bytes
      --suffix S        every key ends with S (".json.gz": gunzip first)
      --delimiter D     documents separated by D (default newline)
      --check EXPR      a Python expression over `doc` true for every one
      --min-objects M   at least M objects
      --multipart       every object was uploaded in parts (S3: its ETag
                        is a multipart one, "<md5>-<parts>"; Azure: it has
                        more than one committed block)
S3 credentials: OS_S3_KEY / OS_S3_SECRET (default test / test).
Every object must decompress and each of its documents parse as JSON (a
truncated object fails). Exit status 0 when every expectation holds; the
reasons otherwise.
"""
import argparse
import gzip
import json
import sys

AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")


class S3:
    def __init__(self, endpoint):
        import boto3
        import os
        self.endpoint = endpoint
        self.c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=os.environ.get("OS_S3_KEY", "test"),
                              aws_secret_access_key=os.environ.get("OS_S3_SECRET", "test"))

    def iamkey(self, user):
        import boto3
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="test", aws_secret_access_key="test")
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        k = iam.create_access_key(UserName=user)["AccessKey"]
        print(k["AccessKeyId"], k["SecretAccessKey"])

    def mkbucket(self, name):
        self.c.create_bucket(Bucket=name)

    def rmbucket(self, name):
        for key, _ in self.objects(name, ""):
            self.c.delete_object(Bucket=name, Key=key)
        self.c.delete_bucket(Bucket=name)

    def objects(self, bucket, prefix):
        out = []
        for page in self.c.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                body = self.c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                out.append((o["Key"], body))
        return out

    def parts(self, bucket, key):
        etag = self.c.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        return int(etag.split("-")[1]) if "-" in etag else 1


class Azure:
    def __init__(self, endpoint):
        from azure.storage.blob import BlobServiceClient
        conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                "AccountKey=%s;BlobEndpoint=%s;" % (AZURITE_KEY, endpoint))
        self.c = BlobServiceClient.from_connection_string(conn)

    def mkbucket(self, name):
        self.c.create_container(name)

    def rmbucket(self, name):
        self.c.delete_container(name)

    def objects(self, container, prefix):
        cc = self.c.get_container_client(container)
        return [(b.name, cc.download_blob(b.name).readall())
                for b in cc.list_blobs(name_starts_with=prefix)]

    def parts(self, container, key):
        committed, _ = self.c.get_blob_client(container, key).get_block_list("committed")
        return len(committed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("store", choices=["s3", "azure"])
    ap.add_argument("endpoint")
    ap.add_argument("cmd", choices=["mkbucket", "rmbucket", "iamkey", "count", "expect"])
    ap.add_argument("bucket")
    ap.add_argument("prefix", nargs="?", default="")
    ap.add_argument("--ids", type=int)
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--per-object", type=int)
    ap.add_argument("--max-bytes", type=int)
    ap.add_argument("--suffix")
    ap.add_argument("--delimiter", default="\n")
    ap.add_argument("--check")
    ap.add_argument("--min-objects", type=int, default=1)
    ap.add_argument("--multipart", action="store_true")
    a = ap.parse_args()
    store = (S3 if a.store == "s3" else Azure)(a.endpoint)
    if a.cmd in ("mkbucket", "rmbucket", "iamkey"):
        getattr(store, a.cmd)(a.bucket)
        return 0
    objs = store.objects(a.bucket, a.prefix)
    if a.cmd == "count":
        print(len(objs))
        return 0
    bad = []
    counts = {}
    per = []
    if len(objs) < a.min_objects:
        bad.append("%d objects under %r, expected at least %d"
                   % (len(objs), a.prefix, a.min_objects))
    for key, body in objs:
        if a.multipart and store.parts(a.bucket, key) < 2:
            bad.append("%s was not uploaded in parts" % key)
        if a.suffix and not key.endswith(a.suffix):
            bad.append("key %s does not end with %s" % (key, a.suffix))
        if key.endswith(".gz"):
            try:
                body = gzip.decompress(body)
            except Exception as e:  # noqa: BLE001 - any failure is a finding
                bad.append("%s: not gzip: %s" % (key, e))
                continue
        text = body.decode("utf-8")
        docs = []
        for part in text.split(a.delimiter):
            if not part.strip():
                continue
            try:
                docs.append(json.loads(part))
            except ValueError as e:
                bad.append("%s: a document does not parse (truncated?): %s: %r"
                           % (key, e, part[:80]))
        per.append((key, len(docs), len(body)))
        for d in docs:
            if a.check and not eval(a.check, {}, {"doc": d}):  # noqa: S307
                bad.append("%s: %s is false for %s" % (key, a.check, json.dumps(d)[:200]))
            if a.ids is not None:
                i = d.get("i")
                if isinstance(i, dict):  # canonical JSON
                    i = int(next(iter(i.values())))
                counts[i] = counts.get(i, 0) + 1
        if a.max_bytes and len(docs) > 1 and len(body) > a.max_bytes:
            bad.append("%s: %d bytes, more than %d" % (key, len(body), a.max_bytes))
    if a.per_object:
        over = [p for p in per if p[1] > a.per_object]
        full = [p for p in per if p[1] == a.per_object]
        if over:
            bad.append("objects with more than %d documents: %s" % (a.per_object, over))
        total = sum(p[1] for p in per)
        if len(full) < total // a.per_object:
            bad.append("only %d full objects of %d documents for %d documents: %s"
                       % (len(full), a.per_object, total, per))
    if a.ids is not None:
        missing = [i for i in range(a.ids) if i not in counts]
        if missing:
            bad.append("%d documents missing, e.g. %s" % (len(missing), missing[:10]))
        extra = [i for i in counts if not isinstance(i, int) or not 0 <= i < a.ids]
        if extra:
            bad.append("unexpected documents: %s" % extra[:10])
        dups = sum(c - 1 for c in counts.values() if c > 1)
        if a.once and dups:
            bad.append("%d duplicates" % dups)
        print("# %d objects, %d documents, %d duplicates" % (len(objs), sum(counts.values()), dups))
    for b in bad:
        print("# " + b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
