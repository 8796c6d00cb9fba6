"""bench/avro.sh's producer: N events, the same data as JSON (topic jsonIn)
and as Avro in the schema registry's wire format (topic avroIn, schema
registered under avroIn-value), with confluent-kafka and fastavro.

  avro_produce.py BOOTSTRAP REGISTRY N   (prints the Avro schema as JSON)
"""
import io
import json
import struct
import sys
import urllib.request

import fastavro
from confluent_kafka import Producer

SCHEMA = {"type": "record", "name": "Event", "fields": [
    {"name": "_id", "type": "int"}, {"name": "k", "type": "int"},
    {"name": "v", "type": "double"}, {"name": "tag", "type": "string"},
    {"name": "ok", "type": "boolean"}]}


def main(bootstrap, registry, n):
    req = urllib.request.Request(
        "%s/subjects/avroIn-value/versions" % registry,
        data=json.dumps({"schema": json.dumps(SCHEMA)}).encode(),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        sid = json.loads(r.read())["id"]
    parsed = fastavro.parse_schema(SCHEMA)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                  "batch.size": 262144})
    head = struct.pack(">bI", 0, sid)
    for i in range(int(n)):
        ev = {"_id": i, "k": i % 100, "v": i * 0.5, "tag": "sensor-%d" % (i % 1000),
              "ok": True}
        buf = io.BytesIO()
        buf.write(head)
        fastavro.schemaless_writer(buf, parsed, ev)
        for topic, value in (("jsonIn", json.dumps(ev).encode()),
                             ("avroIn", buf.getvalue())):
            while True:
                try:
                    p.produce(topic, value)
                    break
                except BufferError:
                    p.poll(0.1)
        if i % 10000 == 0:
            p.poll(0)
    if p.flush(120):
        sys.exit("avro_produce: events left unsent")
    print(json.dumps(SCHEMA))


if __name__ == "__main__":
    main(*sys.argv[1:])
