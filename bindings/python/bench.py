"""Python `track` against Rust `track`, one thread, in the same run; optionally the library sizes.

    pip install ./bindings/python            # the release-ffi wheel
    python bindings/python/bench.py [EVENTS] [--rounds N] [--sizes]

Each API records EVENTS events ({"temp": 21.5, "i": i}) into a fresh buffer with uploads off
(the same work and durability on both sides: each event committed to SQLite before the call
returns) and times every call. The Rust figures come from `cargo bench -p backfill-ffi --bench
track` (the Rust API, and the FFI wrapper called from Rust). Python and Rust take turns for
`--rounds` rounds (default 3), so that a load that comes and goes on a shared machine falls on
both; each figure is the median over the rounds, and `× rust` compares medians (events/s, and
the median call's latency). `--sizes` also builds the shipped library with and without the
built-in HTTP (bindings/build-library.sh) and prints the stripped sizes.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import backfill

ROOT = pathlib.Path(__file__).resolve().parents[2]


def python_track(events: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        client = backfill.Client(endpoint="http://127.0.0.1:9", client_id="3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f",
                                 client_secret="bench", database_path=os.path.join(tmp, "py.db"),
                                 background_upload=False)
        track = client.track
        clock = time.perf_counter_ns
        micros = []
        cpu = thread_cpu_us()
        start = clock()
        for i in range(events):
            t = clock()
            track("reading", {"temp": 21.5, "i": i})
            micros.append((clock() - t) / 1000)
        elapsed = (clock() - start) / 1e9
        after = thread_cpu_us()
        client.close()
    micros.sort()
    at = lambda q: micros[int((len(micros) - 1) * q)]  # noqa: E731
    return {"api": "python", "events": events, "events_per_s": events / elapsed,
            "p50_us": at(0.50), "p99_us": at(0.99),
            "cpu_us_per_event": None if cpu is None or after is None else (after - cpu) / events}


def thread_cpu_us() -> "float | None":
    """CPU time of this thread in µs from /proc/thread-self/stat (utime + stime, 100 ticks a
    second), the clock the Rust bench reads; None off Linux."""
    try:
        with open("/proc/thread-self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 10_000.0
    except (OSError, IndexError, ValueError):
        return None


def rust_track(events: int) -> list[dict]:
    out = subprocess.run(["cargo", "bench", "--quiet", "-p", "backfill-ffi", "--bench", "track", "--", str(events)],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def sizes() -> None:
    for args, what in [([], "without the built-in HTTP"), (["--http"], "with the built-in HTTP")]:
        out = subprocess.run([str(ROOT / "bindings" / "build-library.sh"), *args], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        size = int(out.split()[0])
        print(f"stripped libbackfill_ffi.so {what}: {size:,} bytes ({size / 1048576:.2f} MiB)")


def main() -> None:
    args = sys.argv[1:]
    rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 3
    events = next((int(a) for i, a in enumerate(args) if a.isdigit() and (i == 0 or args[i - 1] != "--rounds")), 20_000)
    runs: dict[str, list[dict]] = {}
    for _ in range(rounds):
        for row in [python_track(events), *rust_track(events)]:
            runs.setdefault(row["api"], []).append(row)
    def median(rows: list[dict], key: str) -> "float | None":
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.median(values) if values else None

    keys = ("events_per_s", "p50_us", "p99_us", "cpu_us_per_event")
    rows = {api: {k: median(rs, k) for k in keys} for api, rs in runs.items()}
    rust = rows["rust"]
    print(f"{events:,} events per run, {rounds} rounds; medians. × rust: events/s, median call,"
          " and CPU time per event (the work itself, whatever else the machine runs)")
    print(f"{'api':<22}{'events/s':>10}{'p50 µs':>9}{'p99 µs':>9}{'cpu µs/ev':>11}"
          f"{'× rust':>8}{'p50 ×':>7}{'cpu ×':>7}")
    for api, r in rows.items():
        cpu, rust_cpu = r["cpu_us_per_event"], rust["cpu_us_per_event"]
        print(f"{api:<22}{r['events_per_s']:>10,.0f}{r['p50_us']:>9.1f}{r['p99_us']:>9.1f}"
              f"{cpu if cpu is not None else float('nan'):>11.1f}"
              f"{r['events_per_s'] / rust['events_per_s']:>8.2f}{rust['p50_us'] / r['p50_us']:>7.2f}"
              f"{rust_cpu / cpu if cpu and rust_cpu else float('nan'):>7.2f}")
    if "--sizes" in args:
        sizes()


if __name__ == "__main__":
    main()
