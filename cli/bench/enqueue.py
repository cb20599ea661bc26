#!/usr/bin/env python3
"""Peak memory and rate of `backfill enqueue` on a generated NDJSON log.

    cargo build --release -p backfill-cli
    python3 cli/bench/enqueue.py target/release/backfill [OTHER_BINARY ...] [--readings 200000]

Writes a log of N readings (a week of three sensors, ISO-8601 timestamps, two properties:
about 120 bytes a line) to a temporary directory, then runs `BINARY enqueue --db NEW.db LOG`
for each binary given, in turn, --runs times, each into a new buffer. Prints, per binary, the
median wall time, readings per second and the peak resident memory (`ru_maxrss` of that child
alone: each run is the only child of a fresh Python process). Give an older build beside the
new one to compare them in the same run: the machine's load moves both alike.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROBE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
wall = time.perf_counter() - start
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def write_log(path, readings):
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    step = datetime.timedelta(days=7) / readings
    with open(path, "w", encoding="utf-8") as log:
        for i in range(readings):
            t = now - step * (readings - i)
            log.write(json.dumps({
                "name": "reading",
                "device_id": f"sensor-{i % 3:02}",
                "timestamp": t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03}Z",
                "properties": {"temp": round(20 + (i % 100) / 10, 1), "humidity": 40 + i % 20},
            }, separators=(",", ":")) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binaries", nargs="+")
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "readings.ndjson")
        write_log(log, args.readings)
        size = os.path.getsize(log)
        print(f"{args.readings} readings, {size / 1e6:.1f} MB of NDJSON")
        results = {b: [] for b in args.binaries}
        for run in range(args.runs):
            for binary in args.binaries:
                db = os.path.join(tmp, f"run{run}-{len(results[binary])}-{os.path.basename(binary)}.db")
                out = subprocess.run(
                    [sys.executable, "-c", PROBE, binary, "enqueue", "--db", db, log],
                    capture_output=True, text=True, check=True)
                wall, peak_kib, code = out.stdout.split()
                if code != "0":
                    sys.exit(f"{binary} enqueue exited {code}")
                results[binary].append((float(wall), int(peak_kib)))
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(db + suffix):
                        os.remove(db + suffix)
        for binary, runs in results.items():
            wall = statistics.median(w for w, _ in runs)
            peak = max(p for _, p in runs) / 1024
            print(f"{binary}: {wall:.2f} s median of {len(runs)}, "
                  f"{args.readings / wall:,.0f} readings/s, peak RSS {peak:.1f} MiB")


if __name__ == "__main__":
    main()
