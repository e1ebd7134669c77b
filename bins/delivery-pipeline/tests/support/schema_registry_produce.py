"""Produces the Schema Registry test's records with Confluent's own serializers (the Python
confluent-kafka package's AvroSerializer, ProtobufSerializer and JSONSerializer), registering
their schemas in the registry at --registry.

    python3 schema_registry_produce.py --brokers B --registry URL --auth USER:PASSWORD \
        --avro-topic T1 --proto-topic T2 --json-topic T3 --count N

Record i (0 <= i < N) of each topic carries values derived from i alone; the Rust test
computes the same values to check every row. Avro: records 0..N/2 use the first version of
the schema, the rest an evolved one (a new nullable field), keys are Avro strings. Protobuf:
every tenth record is a `Correction` (message index [1]), the others a `Parcel` importing a
registered `common/address.proto` and the well-known Timestamp. After the good records the
Avro topic gets four that cannot be decoded (see `bad`), then two tombstones with Avro keys
(`TOMBSTONES`). Prints one JSON line of what it produced.
"""

import argparse
import datetime
import decimal
import json

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

BASE = datetime.datetime(2026, 12, 1, 8, 0, 0, tzinfo=datetime.timezone.utc)

SHIPMENT_V1 = {
    "type": "record",
    "name": "Shipment",
    "namespace": "acme.avro",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "weight", "type": ["null", "double"], "default": None},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PICKED_UP", "DELIVERED"]}},
        {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
            {"name": "city", "type": "string"},
            {"name": "zip", "type": ["null", "string"], "default": None},
        ]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
}
SHIPMENT_V2 = json.loads(json.dumps(SHIPMENT_V1))
SHIPMENT_V2["fields"].append({"name": "note", "type": ["null", "string"], "default": None})

PARCEL_SCHEMA_JSON = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Item",
    "type": "object",
    "properties": {"id": {"type": "string"}, "qty": {"type": "integer"}, "sku": {"type": "string"}},
    "required": ["id", "qty"],
}

STATUSES = ["NEW", "PICKED_UP", "DELIVERED"]
# The Avro records whose rows a tombstone (keyed with an Avro string) deletes.
TOMBSTONES = [10, 211]


def avro_value(i, count):
    value = {
        "id": f"A{i:05d}",
        "weight": None if i % 5 == 0 else i * 0.25,
        "price": decimal.Decimal(i * 7 - 100) / 100,
        "at": BASE + datetime.timedelta(seconds=i, milliseconds=i % 1000),
        "day": (BASE + datetime.timedelta(days=i % 30)).date(),
        "status": STATUSES[i % 3],
        "address": {"city": f"City{i % 7}", "zip": None if i % 2 else f"{i:05d}"},
        "tags": [f"t{j}" for j in range(i % 3)],
    }
    if i >= count // 2:
        value["note"] = f"note {i}" if i % 4 else None
    return value


def proto_classes():
    """Parcel, Correction: built at run time from descriptors (no protoc here)."""
    pool = descriptor_pool.Default()
    address = descriptor_pb2.FileDescriptorProto(name="common/address.proto", package="acme.common", syntax="proto3")
    m = address.message_type.add(name="Address")
    m.field.add(name="city", number=1, type=9, label=1)
    pool.Add(address)
    parcel = descriptor_pb2.FileDescriptorProto(
        name="acme/parcel.proto",
        package="acme",
        syntax="proto3",
        dependency=["common/address.proto", "google/protobuf/timestamp.proto"],
    )
    # Make sure the well-known type is in the pool before the file that imports it.
    pool.FindMessageTypeByName(timestamp_pb2.Timestamp.DESCRIPTOR.full_name)
    p = parcel.message_type.add(name="Parcel")
    p.field.add(name="id", number=1, type=9, label=1)
    p.field.add(name="grams", number=2, type=3, label=1)  # int64
    p.field.add(name="status", number=3, type=14, label=1, type_name=".acme.Status")
    p.field.add(name="at", number=4, type=11, label=1, type_name=".google.protobuf.Timestamp")
    p.field.add(name="to", number=5, type=11, label=1, type_name=".acme.common.Address")
    p.field.add(name="fragile", number=6, type=8, label=1)
    leg = p.nested_type.add(name="Leg")
    leg.field.add(name="hub", number=1, type=9, label=1)
    p.field.add(name="legs", number=7, type=11, label=3, type_name=".acme.Parcel.Leg")
    c = parcel.message_type.add(name="Correction")
    c.field.add(name="id", number=1, type=9, label=1)
    c.field.add(name="status", number=2, type=14, label=1, type_name=".acme.Status")
    e = parcel.enum_type.add(name="Status")
    for n, name in enumerate(STATUSES):
        e.value.add(name=name, number=n)
    pool.Add(parcel)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("acme.Parcel")), get(pool.FindMessageTypeByName("acme.Correction"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--auth")
    ap.add_argument("--avro-topic", required=True)
    ap.add_argument("--proto-topic", required=True)
    ap.add_argument("--json-topic", required=True)
    ap.add_argument("--count", type=int, required=True)
    args = ap.parse_args()
    conf = {"url": args.registry}
    if args.auth:
        conf["basic.auth.user.info"] = args.auth
    registry = SchemaRegistryClient(conf)
    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 5})
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    def send(topic, key, value):
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
        producer.poll(0)

    n = args.count
    # Avro, keys included; the schema evolves half-way.
    avro_key = AvroSerializer(registry, '"string"')
    v1 = AvroSerializer(registry, json.dumps(SHIPMENT_V1))
    v2 = AvroSerializer(registry, json.dumps(SHIPMENT_V2))
    value_ctx = SerializationContext(args.avro_topic, MessageField.VALUE)
    key_ctx = SerializationContext(args.avro_topic, MessageField.KEY)
    good = None
    for i in range(n):
        value = (v1 if i < n // 2 else v2)(avro_value(i, n), value_ctx)
        good = good or value
        send(args.avro_topic, avro_key(f"K{i:05d}", key_ctx), value)
    # Bad records: an id no registry holds (twice: it is fetched once), a datum cut short,
    # and a plain JSON value on the Avro topic.
    bad = [
        b"\x00\x00\x00\x27\x0f" + good[5:],
        b"\x00\x00\x00\x27\x0f" + good[5:],
        good[:12],
        b'{"id":"A-json"}',
    ]
    for j, value in enumerate(bad):
        send(args.avro_topic, avro_key(f"BAD{j}", key_ctx), value)
    # Tombstones keyed by Avro strings: deletes of two rows.
    for i in TOMBSTONES:
        send(args.avro_topic, avro_key(f"K{i:05d}", key_ctx), None)
    # Protobuf: two message types of one file, and a registered import.
    parcel_cls, correction_cls = proto_classes()
    parcel = ProtobufSerializer(parcel_cls, registry)
    correction = ProtobufSerializer(correction_cls, registry)
    ctx = SerializationContext(args.proto_topic, MessageField.VALUE)
    for i in range(n):
        if i % 10 == 9:
            msg = correction_cls(id=f"P{i:05d}", status=i % 3)
            send(args.proto_topic, f"P{i:05d}".encode(), correction(msg, ctx))
            continue
        msg = parcel_cls(id=f"P{i:05d}", grams=(1 << 40) + i, status=i % 3, fragile=i % 2 == 1)
        msg.at.FromDatetime(BASE + datetime.timedelta(minutes=i))
        getattr(msg, "to").city = f"Hub{i % 4}"
        for h in range(i % 3):
            msg.legs.add(hub=f"H{h}")
        send(args.proto_topic, f"P{i:05d}".encode(), parcel(msg, ctx))
    # JSON Schema.
    items = JSONSerializer(json.dumps(PARCEL_SCHEMA_JSON), registry)
    ctx = SerializationContext(args.json_topic, MessageField.VALUE)
    for i in range(n):
        value = {"id": f"J{i:05d}", "qty": i * 3}
        if i % 2:
            value["sku"] = f"SKU-{i}"
        send(args.json_topic, f"J{i:05d}".encode(), items(value, ctx))
    left = producer.flush(30)
    if left or failures:
        raise SystemExit(f"{left} records not delivered; failures: {failures[:3]}")
    print(json.dumps({"avro": n + len(bad) + len(TOMBSTONES), "protobuf": n, "json_schema": n}))


if __name__ == "__main__":
    main()
