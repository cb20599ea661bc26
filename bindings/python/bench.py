"""Python `track` against Rust `track`, one thread, in the same run; optionally the library sizes.

    pip install ./bindings/python            # the release-ffi wheel
    python bindings/python/bench.py [EVENTS] [--sizes]

Each API records EVENTS events ({"temp": 21.5, "i": i}) into a fresh buffer with uploads off
and times every call. The Rust figures come from `cargo bench -p backfill-ffi --bench track`
(the Rust API, and the FFI wrapper called from Rust). `--sizes` also builds the shipped library
with and without the built-in HTTP (bindings/build-library.sh) and prints the stripped sizes.
"""

from __future__ import annotations

import json
import os
import pathlib
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
        start = clock()
        for i in range(events):
            t = clock()
            track("reading", {"temp": 21.5, "i": i})
            micros.append((clock() - t) / 1000)
        elapsed = (clock() - start) / 1e9
        client.close()
    micros.sort()
    at = lambda q: micros[int((len(micros) - 1) * q)]  # noqa: E731
    return {"api": "python", "events": events, "events_per_s": events / elapsed,
            "p50_us": at(0.50), "p99_us": at(0.99)}


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
    events = next((int(a) for a in sys.argv[1:] if a.isdigit()), 20_000)
    rows = [python_track(events), *rust_track(events)]
    rust = next(r for r in rows if r["api"] == "rust")
    print(f"{'api':<18}{'events/s':>12}{'p50 µs':>10}{'p99 µs':>10}{'× rust':>9}")
    for r in rows:
        print(f"{r['api']:<18}{r['events_per_s']:>12,.0f}{r['p50_us']:>10.1f}{r['p99_us']:>10.1f}"
              f"{r['events_per_s'] / rust['events_per_s']:>9.2f}")
    if "--sizes" in sys.argv:
        sizes()


if __name__ == "__main__":
    main()
