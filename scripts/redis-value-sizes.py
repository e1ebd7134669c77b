#!/usr/bin/env python3
"""How small a buffered payload could get, and what Redis holds per key: docs/PERFORMANCE.md.

Run after `delivery-pipeline demo` (its table holds the events' payloads), against the local
MariaDB and Redis:

    python3 scripts/redis-value-sizes.py [--samples 6000]

Prints, for the demo's payloads:
- their size compressed alone by zstd at a few levels (the buffer's `redis.compression = "zstd"`
  compresses each record alone, at level 1);
- their size compressed with a zstd dictionary trained on two thirds of them, measured on the
  other third (what `redis.compression = "zstd-dictionary"` does with the whole record, its
  dictionary trained on the first 2,000 records; `delivery-pipeline bench` measures that);
- what Redis holds per key of the buffer's shape (`msg:buffer:<instance-id>:<32 hex>`, 64
  characters as in `bench`) for values of a range of sizes (`MEMORY USAGE`), so a value size
  reads as bytes per message. The value is the whole record: its payload plus topic, key,
  headers and coordinates.

Payloads are read back from MariaDB's JSON column, which stores them as sent (MySQL's would
normalise them).

Needs `zstandard` (bins/delivery-pipeline/tests/support/requirements.txt), the `mysql` and
`redis-cli` clients, MariaDB on 127.0.0.1 as root (database `test`) and Redis on 127.0.0.1:6379,
as the demo uses them. Writes one scratch key to Redis and deletes it.
"""

import argparse
import statistics
import subprocess

import zstandard


def payloads(limit: int) -> list[bytes]:
    out = subprocess.run(
        ["mysql", "-uroot", "-h127.0.0.1", "-N", "-B", "-e",
         f"SELECT payload FROM test.demo_delivery_events LIMIT {limit}"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [line.encode() for line in out.splitlines()]
    if len(rows) < min(limit, 300):
        raise SystemExit(f"only {len(rows)} payloads in test.demo_delivery_events: run `delivery-pipeline demo` first")
    return rows


def redis_usage(value_len: int) -> int:
    key = "msg:buffer:bench-mem-0123456789:" + "0" * 31 + "f"
    try:
        subprocess.run(["redis-cli", "set", key, "a" * value_len], capture_output=True, check=True)
        used = subprocess.run(["redis-cli", "memory", "usage", key], capture_output=True, text=True, check=True)
    finally:
        subprocess.run(["redis-cli", "del", key], capture_output=True, check=False)
    try:
        return int(used.stdout.strip())
    except ValueError:
        raise SystemExit(f"redis-cli memory usage answered {used.stdout.strip()!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6000, help="payloads to read (at least 30)")
    args = parser.parse_args()
    ps = payloads(args.samples)
    cut = len(ps) * 2 // 3
    train, test = ps[:cut], ps[cut:]
    mean = statistics.mean
    print(f"{len(ps)} payloads, mean {mean(map(len, ps)):.0f} bytes")
    for level in (1, 3, 19):
        c = zstandard.ZstdCompressor(level=level)
        print(f"zstd level {level}, each alone: mean {mean(len(c.compress(p)) for p in test):.0f} bytes")
    for size in (4096, 16384):
        d = zstandard.train_dictionary(size, train)
        c = zstandard.ZstdCompressor(level=1, dict_data=d, write_checksum=False)
        print(f"zstd level 1, {size // 1024} KiB dictionary trained on {len(train)}: "
              f"mean {mean(len(c.compress(p)) for p in test):.0f} bytes")
    print("Redis MEMORY USAGE of one key of the buffer's shape (64 characters), by value size:")
    for n in (150, 200, 250, 260, 300, 320, 400, 440, 448, 506, 512, 545, 600):
        print(f"  value {n:4} bytes: {redis_usage(n)} bytes")


if __name__ == "__main__":
    main()
