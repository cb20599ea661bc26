"""Fixtures: the real `backfill-server` binary on 127.0.0.1:0 with a temp data directory, and
its read API."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import subprocess
import urllib.parse
import urllib.request
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


def server_binary() -> str:
    """`BACKFILL_SERVER_BIN`, else the workspace's debug build (`cargo build -p backfill-server`)."""
    path = os.environ.get("BACKFILL_SERVER_BIN") or str(ROOT / "target" / "debug" / "backfill-server")
    if not os.path.exists(path):
        pytest.fail(f"no server binary at {path}: run `cargo build -p backfill-server` or set BACKFILL_SERVER_BIN")
    return path


def iso_to_ms(text: str) -> int:
    stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(stamp.timestamp() * 1000)


class Server:
    def __init__(self, data_dir: pathlib.Path) -> None:
        self.project = str(uuid.uuid4())
        self.secret = "python-test-secret"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}
        env["RUST_LOG"] = "warn"
        self.process = subprocess.Popen(
            [server_binary(), "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
             "--project", f"{self.project}:{self.secret}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline().strip()
        if not first.startswith("listening on http://127.0.0.1:"):
            self.process.kill()
            raise RuntimeError(f"the server did not start: {first!r}")
        self.url = first.removeprefix("listening on ")

    def get(self, path: str) -> dict:
        request = urllib.request.Request(self.url + path, headers={
            "openpanel-client-id": self.project, "openpanel-client-secret": self.secret})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)

    def events(self, **query: str) -> list[dict]:
        """Every stored event matching `query`, across pages."""
        rows: list[dict] = []
        cursor = None
        while True:
            params = dict(query, limit="1000")
            if cursor:
                params["cursor"] = cursor
            page = self.get("/api/events?" + urllib.parse.urlencode(params))
            rows.extend(page["events"])
            cursor = page.get("next_cursor")
            if not cursor:
                return rows

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def server(tmp_path: pathlib.Path):
    s = Server(tmp_path / "server-data")
    try:
        yield s
    finally:
        s.stop()
