"""The Avro e2e tests' independent client: confluent-kafka (librdkafka's
Python binding) to produce and consume, fastavro to encode and decode, and
the registry's own REST API (urllib) for schema ids, so nothing of aspen's
Avro path (Apache Avro C, libcurl) is on this side.

  avro_client.py produce BOOTSTRAP REGISTRY TOPIC N
      registers SCHEMA under TOPIC-value, sends records 0..N-1 in the
      registry's wire format, then one message that is not in the wire
      format and one with a schema id the registry does not have.
  avro_client.py produce BOOTSTRAP REGISTRY TOPIC N FIRST ""
      sends records FIRST..FIRST+N-1 and nothing else.
  avro_client.py produce_one BOOTSTRAP REGISTRY TOPIC I
      sends record I alone (its ts is I seconds after record 0's).
  avro_client.py consume BOOTSTRAP REGISTRY TOPIC N SKIP...
      reads N messages of TOPIC (from the beginning, 60 s at most), decodes
      each with the writer's schema fetched by its id, and checks they are
      records 0..N-1 except the ids in SKIP, every field and logical type
      equal to what produce sent. Prints OK or what differs; exit 1 then.
"""
import datetime
import decimal
import io
import json
import struct
import sys
import urllib.request
import uuid

import fastavro
from confluent_kafka import Consumer, Producer

SCHEMA = {
    "type": "record", "name": "Reading", "namespace": "aspen.test",
    "fields": [
        {"name": "id", "type": "int"},
        {"name": "device", "type": "string"},
        {"name": "ok", "type": "boolean"},
        {"name": "count", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "temp", "type": "double"},
        {"name": "raw", "type": "bytes"},
        {"name": "kind", "type": {"type": "enum", "name": "Kind",
                                  "symbols": ["A", "B", "C"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "long"}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "loc", "type": {"type": "record", "name": "Loc", "fields": [
            {"name": "lat", "type": "double"},
            {"name": "lon", "type": "double"}]}},
        {"name": "mac", "type": {"type": "fixed", "name": "Mac", "size": 6}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal",
                                   "precision": 10, "scale": 2}},
        {"name": "cents", "type": {"type": "fixed", "name": "Cents",
                                   "size": 8, "logicalType": "decimal",
                                   "precision": 12, "scale": 3}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "ts", "type": {"type": "long",
                                "logicalType": "timestamp-millis"}},
        {"name": "tsu", "type": {"type": "long",
                                 "logicalType": "timestamp-micros"}},
        {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
    ],
}

UTC = datetime.timezone.utc


def record(i):
    """Record i. temp > 500 for i % 5 == 4 ($validate sends those to the
    DLQ). Timestamps are whole milliseconds: BSON dates hold no finer."""
    ts = datetime.datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC) + \
        datetime.timedelta(seconds=i)
    return {
        "id": i, "device": "dev-%d" % (i % 3), "ok": i % 2 == 0,
        "count": 10_000_000_000 + i, "ratio": 0.5 + i, "temp": 20.25 + i
        if i % 5 != 4 else 999.5,
        "raw": bytes([i % 256, 0, 255]), "kind": "ABC"[i % 3],
        "tags": ["t%d" % i, "x"], "attrs": {"a": i, "b": -i},
        "note": None if i % 2 else "n%d" % i,
        "loc": {"lat": 48.5 + i, "lon": -2.25},
        "mac": bytes([1, 2, 3, 4, 5, i % 256]),
        "price": decimal.Decimal("%d.%02d" % (100 + i, i % 100)).quantize(
            decimal.Decimal("0.01")) * (-1 if i % 4 == 1 else 1),
        "cents": decimal.Decimal("-%d.125" % i),
        "day": datetime.date(2026, 3, 1) + datetime.timedelta(days=i),
        "ts": ts, "tsu": ts + datetime.timedelta(milliseconds=7),
        "uid": uuid.UUID(int=0x1234_5678_9ABC_DEF0_1234_5678_9ABC_0000 + i),
    }


def http(url, body=None):
    req = urllib.request.Request(
        url, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def produce(bootstrap, registry, topic, n, first=0, extras=True):
    sid = http("%s/subjects/%s-value/versions" % (registry, topic),
               {"schema": json.dumps(SCHEMA)})["id"]
    parsed = fastavro.parse_schema(SCHEMA)
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(int(first), int(first) + int(n)):
        buf = io.BytesIO()
        buf.write(struct.pack(">bI", 0, sid))
        fastavro.schemaless_writer(buf, parsed, record(i))
        p.produce(topic, buf.getvalue(), key=str(i))
    if extras:
        p.produce(topic, b"not avro at all", key="garbage")
        p.produce(topic, struct.pack(">bI", 0, 999_999) + b"\x02",
                  key="unknown")
    if p.flush(30):
        sys.exit("produce: messages left unsent")
    print("produced %s records with schema id %d" % (n, sid))


def consume(bootstrap, registry, topic, n, skip):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "avro-check-%s"
                  % uuid.uuid4(), "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    schemas, got = {}, {}
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=60)
    while len(got) < int(n) and datetime.datetime.now() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        v = m.value()
        magic, sid = struct.unpack(">bI", v[:5])
        if magic != 0:
            sys.exit("consume: magic byte %d" % magic)
        if sid not in schemas:
            schemas[sid] = fastavro.parse_schema(json.loads(
                http("%s/schemas/ids/%d" % (registry, sid))["schema"]))
        rec = fastavro.schemaless_reader(io.BytesIO(v[5:]), schemas[sid])
        got[rec["id"]] = rec
    c.close()
    want = {i: record(i) for i in range(int(n) + len(skip))
            if i not in skip}
    bad = []
    for i, w in want.items():
        g = got.get(i)
        if g is None:
            bad.append("record %d missing" % i)
            continue
        for k, wv in w.items():
            gv = g.get(k)
            if k == "ratio":  # a float: compare as one
                ok = abs(gv - wv) < 1e-6
            else:
                ok = gv == wv
            if not ok:
                bad.append("record %d field %s: got %r, want %r" % (i, k, gv,
                                                                    wv))
    extra = sorted(set(got) - set(want))
    if extra:
        bad.append("unexpected records %s" % extra)
    if bad:
        print("\n".join(bad[:20]))
        sys.exit(1)
    print("OK %d records, every field equal" % len(want))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "produce":  # BOOTSTRAP REGISTRY TOPIC N [FIRST [EXTRAS]]
        produce(*args[:5], extras=len(args) < 6 or bool(args[5]))
    elif cmd == "produce_one":  # BOOTSTRAP REGISTRY TOPIC I: record I only
        produce(args[0], args[1], args[2], 1, int(args[3]), False)
    elif cmd == "consume":
        consume(args[0], args[1], args[2], args[3],
                {int(x) for x in args[4:]})
    else:
        sys.exit("usage: avro_client.py produce|consume ...")
