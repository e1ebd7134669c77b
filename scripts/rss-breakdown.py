#!/usr/bin/env python3
"""What the pipeline's resident memory is made of at its peak: docs/PERFORMANCE.md.

Start it, then the benchmark, in a second shell (or in the background):

    python3 scripts/rss-breakdown.py &
    delivery-pipeline bench --count 1000000 --repeat 1

It waits for the pipeline process that `bench` starts (`delivery-pipeline --config
target/bench/<id>.toml run`; `--match` names another command line), reads its
`/proc/<pid>/smaps` every half second until it exits, and prints the snapshot with the most
resident memory, by kind of mapping:

- `file:<name>`: pages of the binary and its shared libraries (code, read-only data);
- `glibc-arena`: glibc malloc's per-thread arenas (64 MiB reservations), which only C code
  allocating with glibc's `malloc` creates;
- `stack`: thread stacks (a mapping behind a one-page guard);
- `anon`: every other anonymous mapping; with jemalloc, its extents.

Then the largest anonymous mappings, and the total every two seconds.
"""

import argparse
import os
import re
import sys
import time

ARENA_KIB = 64 * 1024


def find(pattern):
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern in cmdline and "rss-breakdown" not in cmdline:
            return pid
    return None


def snapshot(pid):
    maps, current = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                start, end = (int(x, 16) for x in parts[0].split("-"))
                name = parts[5] if len(parts) > 5 else ""
                current = {"start": start, "kib": (end - start) // 1024, "perm": parts[1], "name": name, "rss": 0}
                maps.append(current)
            elif line.startswith("Rss:") and current is not None:
                current["rss"] = int(line.split()[1])
    return maps


def kind(maps, i):
    m = maps[i]
    if m["name"] and not m["name"].startswith("["):
        return "file:" + os.path.basename(m["name"])
    if m["name"]:
        return m["name"]
    after = maps[i + 1] if i + 1 < len(maps) else None
    before = maps[i - 1] if i > 0 else None
    adjoins = after is not None and after["start"] == m["start"] + m["kib"] * 1024
    if m["kib"] == ARENA_KIB or (adjoins and after["perm"].startswith("---") and m["kib"] + after["kib"] == ARENA_KIB):
        return "glibc-arena"
    if before is not None and before["perm"].startswith("---") and before["kib"] == 4:
        return "stack"
    return "anon"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--match", default="toml run", help="a string of the process's command line")
    parser.add_argument("--wait", type=float, default=1800, help="seconds to wait for the process")
    args = parser.parse_args()
    deadline = time.time() + args.wait
    pid = find(args.match)
    while pid is None:
        if time.time() > deadline:
            sys.exit(f"no process whose command line contains {args.match!r}")
        time.sleep(0.2)
        pid = find(args.match)
    peak, peak_kib, peak_at, totals, t0 = None, -1, 0.0, [], time.time()
    while True:
        try:
            maps = snapshot(pid)
        except OSError:
            break
        total = sum(m["rss"] for m in maps)
        totals.append(total)
        if total > peak_kib:
            peak, peak_kib, peak_at = maps, total, time.time() - t0
        time.sleep(0.5)
    if peak is None:
        sys.exit(f"process {pid} exited before it could be read")
    print(f"pid {pid}: peak resident {peak_kib / 1024:.1f} MiB, {peak_at:.1f} s after it was found")
    print("resident MiB every 2 s:", " ".join(f"{t / 1024:.0f}" for t in totals[::4]))
    kinds = {}
    for i, m in enumerate(peak):
        k = kinds.setdefault(kind(peak, i), [0, 0])
        k[0] += m["rss"]
        k[1] += 1
    print("at the peak, by kind:")
    for name, (rss, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        if rss >= 256:
            print(f"  {rss / 1024:6.1f} MiB  {n:3d} mappings  {name}")
    print("largest anonymous mappings (KiB mapped, KiB resident):")
    anon = [m for m in peak if not m["name"] and m["rss"] >= 1024]
    for m in sorted(anon, key=lambda m: -m["rss"])[:10]:
        print(f"  {m['start']:#x} {m['perm']} {m['kib']:8d} {m['rss']:8d}")


if __name__ == "__main__":
    main()
