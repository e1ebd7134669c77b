#!/usr/bin/env python3
"""Produce synthetic delivery events with kafka-python, a Kafka client that is not librdkafka.

The integration tests (tests/independent_producers.rs) run the pipeline on what this script
writes, so the consumer is tested against another client's idea of the protocol: its record
batches, compression framing, keys and headers.

Each message is one ~500-byte JSON delivery event (unique uuid4 `event_id`, `tracking_id`,
`status`, `event_time` in RFC 3339 with milliseconds and `Z`, padding), with a key and three
headers:

  key        "<tracking_id>/<n>-ü" (UTF-8, unique per message)
  trace-id   "trace-<event_id>" (UTF-8)
  source     "kafka-python <version> ✓" (UTF-8)
  binary     b"\\xc3\\x28\\xff\\x00" plus the message number (not UTF-8)

After every message is acknowledged, `--out` gets one line per message, tab-separated:
`event_id`, key, `trace-id` header. Any error (an unknown codec, a missing codec library, a
refused or timed-out send) exits non-zero with one line on stderr saying what failed.

    python3 kafka_python_produce.py --brokers 127.0.0.1:9092 --topic t --count 5000 \
        --compression zstd --out ids.tsv

Dependencies: requirements.txt beside this file (`python3 -m pip install -r requirements.txt`).
"""

import argparse
import datetime
import json
import random
import sys
import time
import uuid

FIX = "python3 -m pip install -r bins/delivery-pipeline/tests/support/requirements.txt"
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
STATUSES = ("LABEL_CREATED", "PICKED_UP", "IN_TRANSIT", "AT_HUB", "OUT_FOR_DELIVERY", "DELIVERED", "EXCEPTION")
CARRIERS = ("DHL", "UPS", "FedEx", "DPD", "GLS", "PostNL")
CITIES = (("Berlin", "DE"), ("Paris", "FR"), ("Madrid", "ES"), ("Warsaw", "PL"), ("Milan", "IT"))
FILLER = "Parcel scanned at sorting facility; handed to linehaul for the next leg. "
TARGET_SIZE = 500
# Not UTF-8: 0xc3 0x28 is an invalid two-byte sequence, 0xff never occurs in UTF-8.
BINARY_HEADER = b"\xc3\x28\xff\x00"


def fail(message):
    print(f"kafka_python_produce: {message}", file=sys.stderr)
    sys.exit(1)


def event(seq, rng):
    """Event number `seq`: (event_id, key, trace header, JSON payload bytes)."""
    event_id = str(uuid.uuid4())
    shipment = seq // 8
    tracking_id = f"TRK{(shipment * 2654435761) % 1_000_000_000_000:012d}"
    now = datetime.datetime.now(datetime.timezone.utc)
    body = {
        "event_id": event_id,
        "tracking_id": tracking_id,
        "status": STATUSES[min(seq % 8, len(STATUSES) - 1)],
        "event_time": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "sequence": seq,
        "carrier": CARRIERS[shipment % len(CARRIERS)],
        "producer": "kafka-python",
        "location": dict(zip(("city", "country"), rng.choice(CITIES))),
        "weight_kg": round(rng.uniform(0.1, 30.0), 2),
        "note": "",
    }
    payload = json.dumps(body, separators=(",", ":"))
    # Pad the note to the target size, as the Rust producer does.
    pad = max(0, TARGET_SIZE - len(payload))
    body["note"] = (FILLER * (pad // len(FILLER) + 1))[:pad]
    return event_id, f"{tracking_id}/{seq}-ü", f"trace-{event_id}", json.dumps(body, separators=(",", ":")).encode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--compression", required=True, choices=CODECS)
    parser.add_argument("--out", required=True, help="file to write event_id<TAB>key<TAB>trace-id lines to")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for all sends to be acknowledged")
    args = parser.parse_args()

    try:
        import kafka
        import kafka.codec
        from kafka import KafkaProducer
    except ImportError as e:
        fail(f"kafka-python is not installed ({e}); run: {FIX}")
    have = {
        "none": True,
        "gzip": kafka.codec.has_gzip(),
        "snappy": kafka.codec.has_snappy(),
        "lz4": kafka.codec.has_lz4(),
        "zstd": kafka.codec.has_zstd(),
    }
    if not have[args.compression]:
        fail(f"kafka-python {kafka.__version__} cannot compress with {args.compression}: its library is missing; run: {FIX}")

    try:
        producer = KafkaProducer(
            bootstrap_servers=args.brokers.split(","),
            client_id="dp-test-kafka-python",
            compression_type=None if args.compression == "none" else args.compression,
            acks="all",
            retries=5,
            linger_ms=5,
            batch_size=256 * 1024,
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=30_000,
        )
    except Exception as e:  # noqa: BLE001 - one line naming the failure, whatever it is
        fail(f"cannot connect a kafka-python {kafka.__version__} producer to {args.brokers}: {e!r}")

    source = f"kafka-python {kafka.__version__} ✓".encode()
    rng = random.Random()
    lines = []
    futures = []
    started = time.monotonic()
    try:
        for seq in range(args.count):
            event_id, key, trace, payload = event(seq, rng)
            headers = [
                ("trace-id", trace.encode()),
                ("source", source),
                ("binary", BINARY_HEADER + seq.to_bytes(4, "big")),
            ]
            futures.append(producer.send(args.topic, value=payload, key=key.encode(), headers=headers))
            lines.append(f"{event_id}\t{key}\t{trace}\n")
        producer.flush(timeout=args.timeout)
        for seq, f in enumerate(futures):
            # Raises the broker's or the client's error for a refused or unsent message.
            f.get(timeout=max(1.0, args.timeout - (time.monotonic() - started)))
    except Exception as e:  # noqa: BLE001
        done = sum(1 for f in futures if f.succeeded())
        fail(
            f"producing to {args.topic} with compression {args.compression} failed after {done} of "
            f"{args.count} acknowledged: {e!r}"
        )
    finally:
        producer.close(timeout=10)

    with open(args.out, "w", encoding="utf-8") as out:
        out.writelines(lines)
    elapsed = time.monotonic() - started
    print(
        f"produced {args.count} events to {args.topic} with kafka-python {kafka.__version__}, "
        f"compression {args.compression}, in {elapsed:.1f}s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
