"""boto3 side of the Kinesis e2e tests: writes and reads kinesalite
independently of aspen. Usage (endpoint from $KINESIS_ENDPOINT):

  kin.py create STREAM SHARDS       create a stream, wait until ACTIVE
  kin.py put STREAM FROM TO         put {"_id": i, "n": i} for FROM <= i < TO,
                                    partition key "k<i % 7>"; _id 13 gets
                                    n: "bad" (fails a $validate), _id 17
                                    is not JSON
  kin.py split STREAM               split the first open shard at its middle
  kin.py shards STREAM              print the shards: id, parent, open/closed
  kin.py bench-put STREAM N        put N events {"_id", "k": i % 100, ...}
                                    in batches of 500 (for bench/kinesis.sh);
                                    prints the events/s
  kin.py read STREAM N [SECONDS]    read every shard from TRIM_HORIZON until N
                                    records came (or SECONDS, default 60,
                                    passed: exit 1); print each as a JSON line
                                    {"shard", "key", "data"}
"""
import json
import os
import sys
import time

import boto3


def client():
    return boto3.client(
        "kinesis", endpoint_url=os.environ["KINESIS_ENDPOINT"],
        region_name="us-east-1", aws_access_key_id="test",
        aws_secret_access_key="test")


def wait_active(k, stream):
    for _ in range(200):
        s = k.describe_stream_summary(StreamName=stream)
        if s["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        time.sleep(0.05)
    raise SystemExit(f"stream {stream} did not become ACTIVE")


def main(argv):
    k = client()
    cmd, stream = argv[1], argv[2]
    if cmd == "create":
        k.create_stream(StreamName=stream, ShardCount=int(argv[3]))
        wait_active(k, stream)
    elif cmd == "put":
        lo, hi = int(argv[3]), int(argv[4])
        recs = []
        for i in range(lo, hi):
            if i == 17:
                data = b"this is not json"
            elif i == 13:
                data = json.dumps({"_id": i, "n": "bad"}).encode()
            else:
                data = json.dumps({"_id": i, "n": i}).encode()
            recs.append({"Data": data, "PartitionKey": f"k{i % 7}"})
        for j in range(0, len(recs), 500):
            r = k.put_records(StreamName=stream, Records=recs[j:j + 500])
            if r.get("FailedRecordCount"):
                raise SystemExit(f"put_records failed: {r}")
    elif cmd == "bench-put":
        n, t0 = int(argv[3]), time.time()
        for j in range(0, n, 500):
            recs = [{"Data": json.dumps(
                        {"_id": i, "k": i % 100, "v": i * 0.5,
                         "tag": f"sensor-{i % 1000}", "ok": True}).encode(),
                     "PartitionKey": f"sensor-{i % 1000}"}
                    for i in range(j, min(n, j + 500))]
            while recs:
                r = k.put_records(StreamName=stream, Records=recs)
                recs = [rec for rec, res in zip(recs, r["Records"])
                        if "ErrorCode" in res]
        print(int(n / max(time.time() - t0, 1e-3)))
    elif cmd == "split":
        shards = k.list_shards(StreamName=stream)["Shards"]
        s = next(s for s in shards
                 if "EndingSequenceNumber" not in s["SequenceNumberRange"])
        h = s["HashKeyRange"]
        mid = (int(h["StartingHashKey"]) + int(h["EndingHashKey"])) // 2
        k.split_shard(StreamName=stream, ShardToSplit=s["ShardId"],
                      NewStartingHashKey=str(mid))
        wait_active(k, stream)
        print(s["ShardId"])
    elif cmd == "shards":
        for s in k.list_shards(StreamName=stream)["Shards"]:
            closed = "EndingSequenceNumber" in s["SequenceNumberRange"]
            print(s["ShardId"], s.get("ParentShardId", "-"),
                  "closed" if closed else "open")
    elif cmd == "read":
        want = int(argv[3])
        end = time.time() + (float(argv[4]) if len(argv) > 4 else 60)
        shards = k.list_shards(StreamName=stream)["Shards"]
        its = {s["ShardId"]: k.get_shard_iterator(
            StreamName=stream, ShardId=s["ShardId"],
            ShardIteratorType="TRIM_HORIZON")["ShardIterator"] for s in shards}
        got = []
        while len(got) < want and time.time() < end:
            for sid in list(its):
                it = its[sid]
                if not it:
                    continue
                r = k.get_records(ShardIterator=it, Limit=10000)
                its[sid] = r.get("NextShardIterator")
                for rec in r["Records"]:
                    got.append({"shard": sid, "key": rec["PartitionKey"],
                                "data": rec["Data"].decode()})
            time.sleep(0.2)
        for g in got:
            print(json.dumps(g))
        if len(got) < want:
            print(f"only {len(got)} of {want} records", file=sys.stderr)
            return 1
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
