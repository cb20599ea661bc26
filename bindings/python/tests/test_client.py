"""The wheel against the real server: threads, offline and online, both transports, SIGKILL,
bad input, closing."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

import backfill
from conftest import iso_to_ms

THREADS = 8
PER_THREAD = 150
DAY_MS = 86_400_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def open_client(server, db: pathlib.Path, **settings) -> backfill.Client:
    return backfill.Client(endpoint=server.url, client_id=server.project,
                           client_secret=server.secret, database_path=db, **settings)


def track_from_threads(client: backfill.Client, name: str, base_ms: int) -> dict[str, int]:
    """Tracks from THREADS threads at once; returns each insert id with its event time."""
    recorded: dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(THREADS)
    failures: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            start.wait()
            for i in range(PER_THREAD):
                at = base_ms + thread * PER_THREAD + i
                insert_id = client.track(name, {"thread": thread, "i": i, "temp": 20.5 + i / 10},
                                         timestamp_ms=at)
                with lock:
                    recorded[insert_id] = at
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert len(recorded) == THREADS * PER_THREAD, "every call returned its own insert id"
    return recorded


def assert_stored_once_at_their_time(server, name: str, recorded: dict[str, int]) -> None:
    stored = server.events(name=name)
    ids = [e["insert_id"] for e in stored]
    assert len(ids) == len(set(ids)), "no event is stored twice"
    assert set(ids) == set(recorded), "every recorded event is stored"
    for e in stored:
        assert iso_to_ms(e["created_at"]) == recorded[e["insert_id"]], e


@pytest.mark.parametrize("transport", ["built-in", "urllib"])
def test_threads_offline_online_every_event_once_at_its_time(server, tmp_path, transport):
    http_client = backfill.UrllibHttpClient(timeout=30) if transport == "urllib" else None
    client = open_client(server, tmp_path / "sdk.db", http_client=http_client)
    base = now_ms() - DAY_MS
    online = track_from_threads(client, "reading", base)
    # Waits for a background drain still running, so that none is under way offline.
    client.flush()

    client.set_online(False)
    offline = track_from_threads(client, "reading", base + DAY_MS // 2)
    assert client.stats().buffered == len(offline), "offline: the events wait"

    client.set_online(True)
    report = client.flush()
    assert report.end.is_empty(), report
    stats = client.stats()
    assert stats.buffered == 0
    assert stats.sent == 2 * THREADS * PER_THREAD
    assert stats.requests >= 1
    assert_stored_once_at_their_time(server, "reading", {**online, **offline})
    client.close()


def test_a_raising_http_client_is_a_network_failure_and_loses_nothing(server, tmp_path):
    class Unplugged(backfill.HttpClient):
        def post(self, url, headers, body):
            raise ConnectionRefusedError("cable unplugged")

        def get(self, url, headers):
            raise ConnectionRefusedError("cable unplugged")

    db = tmp_path / "sdk.db"
    with open_client(server, db, http_client=Unplugged(), background_upload=False) as client:
        insert_id = client.track("kept", {"n": 1})
        report = client.flush()
        assert isinstance(report.end, backfill.DrainEnd.RETRY_LATER), report
        stats = client.stats()
        assert stats.buffered == 1 and "cable unplugged" in (stats.last_error or ""), stats.last_error
    with open_client(server, db, http_client=backfill.UrllibHttpClient(), background_upload=False) as client:
        assert client.flush().sent == 1
    assert [e["insert_id"] for e in server.events(name="kept")] == [insert_id]


CHILD = """
import sys, backfill
client = backfill.Client(endpoint=sys.argv[2], client_id=sys.argv[3], client_secret=sys.argv[4],
                         database_path=sys.argv[1], flush_threshold=25, flush_interval_ms=50)
i = 0
while True:
    insert_id = client.track("tick", {"i": i})
    sys.stdout.write(insert_id + "\\n")
    sys.stdout.flush()
    i += 1
"""


def test_sigkill_while_tracking_loses_nothing_track_returned_for(server, tmp_path):
    db = tmp_path / "sdk.db"
    returned: list[str] = []
    for round_ in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(db), server.url, server.project,
                                  server.secret], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        target = 300 * (round_ + 1)
        while len(returned) < target:
            line = child.stdout.readline()
            assert line, "the child died on its own"
            returned.append(line.strip())
        child.send_signal(signal.SIGKILL)
        # Whatever it printed before dying was also returned by `track`.
        returned.extend(line.strip() for line in child.stdout if line.strip())
        child.wait()
    with open_client(server, db, background_upload=False) as client:
        report = client.flush()
        assert report.end.is_empty(), report
    stored = [e["insert_id"] for e in server.events(name="tick")]
    assert len(stored) == len(set(stored)), "no event is stored twice"
    missing = set(returned) - set(stored)
    assert not missing, f"{len(missing)} events that track returned for were lost"


def test_invalid_input_raises_invalid_argument_and_records_nothing(server, tmp_path):
    with open_client(server, tmp_path / "sdk.db", background_upload=False) as client:
        bad_calls = [
            lambda: client.track(""),
            lambda: client.track(" "),
            lambda: client.track("\t \n"),
            lambda: client.track("a\nb"),
            lambda: client.track("session_start"),
            lambda: client.track("x" * 81),
            lambda: client.track("ok", [1, 2]),
            lambda: client.track("ok", {"v": float("nan")}),
            lambda: client.track("ok", {"v": object()}),
            lambda: client.track("ok", {"n": _nested(20)}),
            lambda: client.track("ok", device_id=""),
            lambda: client.identify("u1", {"email": "not-an-email"}),
            # Wrong types name the argument instead of escaping as TypeError.
            lambda: client.track(5),
            lambda: client.track("ok", timestamp_ms=time.time() * 1000),
            lambda: client.track("ok", device_id=7),
            # Past 64 bits an integer would reach the server as a rounded double.
            lambda: client.track("ok", {"iccid": 2**64 + 1}),
            # Keys the SDK sets itself: a value given here would be replaced without a word.
            lambda: client.track("ok", {"__insertId": "my-key-1"}),
            lambda: client.track("ok", {"__timestamp": 5}),
            lambda: client.track("ok", {"__deviceId": "d"}),
            lambda: client.track("ok", {"__sessionId": "s"}),
            lambda: client.identify("u1", {"__insertId": "k"}),
            lambda: client.register("__deviceId", "d"),
        ]
        for call in bad_calls:
            with pytest.raises(backfill.InvalidArgument) as raised:
                call()
            assert isinstance(raised.value, backfill.BackfillError)
            assert str(raised.value), "the error says what to fix"
        assert client.stats().buffered == 0
    for settings in [{"endpoint": "ftp://nowhere"}, {"client_id": " "},
                     {"max_batch_events": 0}, {"no_such_setting": 1}]:
        arguments = dict(endpoint=server.url, client_id=server.project, client_secret=server.secret,
                         database_path=tmp_path / "other.db")
        arguments.update(settings)
        with pytest.raises(backfill.InvalidArgument):
            backfill.Client(**arguments)


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"n": value}
    return value


def test_use_after_close_raises(server, tmp_path):
    db = tmp_path / "sdk.db"
    with open_client(server, db) as client:
        client.track("before")
    for call in [lambda: client.track("after"), client.flush, client.stats,
                 lambda: client.identify("u1"), client.opt_out,
                 lambda: client.device_id, lambda: client.set_online(False),
                 lambda: client.register("plan", "pro"), lambda: client.unregister("plan")]:
        with pytest.raises(backfill.Closed):
            call()
    client.close()  # closing twice is harmless
    with open_client(server, db, background_upload=False) as again:
        assert again.stats().buffered == 1, "the buffered event stays for the next client"


def test_opt_out_persists_and_reset_keeps_the_device(server, tmp_path):
    db = tmp_path / "sdk.db"
    with open_client(server, db, background_upload=False) as client:
        device = client.device_id
        client.identify("user-1", {"firstName": "Ada"})
        client.opt_out()
        assert client.track("hidden") == ""
    with open_client(server, db, background_upload=False) as client:
        assert client.opted_out, "opting out survives a restart"
        client.track("hidden")
        stats = client.stats()
        assert (stats.buffered, stats.opted_out, stats.opted_out_calls) == (1, True, 1)
        client.opt_in()
        client.track("signed-in")
        client.reset()
        assert client.device_id == device
        client.track("signed-out")
        client.flush()
    by_name = {e["name"]: e for e in server.events()}
    assert "hidden" not in by_name
    assert by_name["signed-in"]["profile_id"] == "user-1"
    assert not by_name["signed-out"]["profile_id"]
    assert by_name["signed-in"]["session_id"] != by_name["signed-out"]["session_id"]
    assert by_name["signed-out"]["device_id"] == device


UNCLOSED = """
import sys, backfill
class Duck:  # an HTTP client by its methods alone, not a subclass
    def __init__(self):
        self.inner = backfill.UrllibHttpClient()
    def post(self, url, headers, body):
        return self.inner.post(url, headers, body)
    def get(self, url, headers):
        return self.inner.get(url, headers)
client = backfill.Client(endpoint=sys.argv[2], client_id=sys.argv[3], client_secret=sys.argv[4],
                         database_path=sys.argv[1], http_client=Duck(), flush_threshold=1)
for i in range(20):
    client.track("unclosed", {"i": i})
# no close(): the interpreter exits with the uploader possibly inside Duck.post
"""


def test_a_script_that_never_closes_its_client_exits_cleanly(server, tmp_path):
    db = tmp_path / "sdk.db"
    for _ in range(3):
        child = subprocess.run([sys.executable, "-c", UNCLOSED, str(db), server.url,
                                server.project, server.secret], capture_output=True, text=True,
                               timeout=120)
        assert child.returncode == 0, child.stderr
    with open_client(server, db, background_upload=False) as client:
        assert client.flush().end.is_empty()
    stored = [e["properties"]["i"] for e in server.events(name="unclosed")]
    assert sorted(stored) == sorted(list(range(20)) * 3), "every event once, none lost"


def test_keys_that_are_not_str_are_refused_naming_them(server, tmp_path):
    with open_client(server, tmp_path / "sdk.db", background_upload=False) as client:
        for properties, named in [
            ({1: "a", "1": "b"}, "1"),            # json.dumps would write both as "1"
            ({"ok": 1, (2, 3): "t"}, "(2, 3)"),
            ({"device": {"model": "x", 7: "y"}}, "'device'"),
            ({"tags": [{"n": 1}, {None: 2}]}, "'tags[1]'"),
        ]:
            with pytest.raises(backfill.InvalidArgument) as raised:
                client.track("keys", properties)
            assert named in str(raised.value) and "str" in str(raised.value), str(raised.value)
        with pytest.raises(backfill.InvalidArgument, match="'plan.tiers'"):
            client.register("plan", {"tiers": {1: "basic"}})
        # A value JSON cannot hold is named by its key too.
        with pytest.raises(backfill.InvalidArgument, match=r"'reading\.at'.*datetime"):
            import datetime
            client.track("keys", {"reading": {"at": datetime.datetime.now()}})
        with pytest.raises(backfill.InvalidArgument, match=r"'v\[1\]' is nan"):
            client.track("keys", {"v": [1.0, float("nan")]})
        assert client.stats().buffered == 0


class StallingServer:
    """A TCP server that reads a request and never answers it, until released (or 30 s)."""

    def __init__(self, on_request=None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.on_request = on_request
        self.holding = threading.Event()
        self.released = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        held = []
        try:
            connection, _ = self.listener.accept()
            held.append(connection)
            connection.recv(65536)
            self.holding.set()
            if self.on_request:
                self.on_request()
            self.released.wait(30)
        finally:
            self.holding.clear()
            for c in held:
                c.close()

    def close(self) -> None:
        self.released.set()
        self.thread.join()
        self.listener.close()


def test_the_urllib_client_takes_the_clients_request_timeout(tmp_path):
    stalling = StallingServer()
    try:
        with backfill.Client(endpoint=stalling.url, client_id=str(uuid.uuid4()), client_secret="s",
                             database_path=tmp_path / "sdk.db", background_upload=False,
                             request_timeout_ms=200, http_client=backfill.UrllibHttpClient()) as client:
            client.track("waits")
            report = client.flush()
            assert isinstance(report.end, backfill.DrainEnd.RETRY_LATER), report
            assert stalling.holding.is_set(), "the request timed out while the server held it"
            stats = client.stats()
            assert stats.buffered == 1
            assert "timed out" in (stats.last_error or ""), stats.last_error
    finally:
        stalling.close()


@pytest.mark.parametrize("transport", ["built-in", "urllib"])
def test_ctrl_c_during_flush_reaches_the_caller_and_keeps_the_events(tmp_path, transport):
    main = threading.main_thread().ident
    stalling = StallingServer(on_request=lambda: signal.pthread_kill(main, signal.SIGINT))
    db = tmp_path / "sdk.db"
    project = str(uuid.uuid4())
    http_client = backfill.UrllibHttpClient() if transport == "urllib" else None
    client = backfill.Client(endpoint=stalling.url, client_id=project, client_secret="s",
                             database_path=db, background_upload=False, http_client=http_client)
    try:
        ids = [client.track("kept", {"i": i}) for i in range(3)]
        with pytest.raises(KeyboardInterrupt):
            client.flush()
        assert stalling.holding.is_set(), "Ctrl-C came through while the request was still waiting"
    finally:
        stalling.close()
        client.close()  # waits for the drain, which ends once the server hangs up
    with backfill.Client(endpoint=stalling.url, client_id=project, client_secret="s",
                         database_path=db, background_upload=False) as again:
        assert again.stats().buffered == len(ids), "every event is kept"


def test_a_given_insert_id_makes_a_reading_recorded_twice_one_event(server, tmp_path):
    at = now_ms() - 3_600_000
    with open_client(server, tmp_path / "sdk.db", background_upload=False) as client:
        first = client.track("log-line", {"line": 7}, timestamp_ms=at, insert_id="gw-1:log:7")
        assert first == "gw-1:log:7"
        client.flush()
        # The gateway reads its log again after a restart: the same line, the same key.
        assert client.track("log-line", {"line": 7}, device_id="sensor-1",
                            insert_id="gw-1:log:7") == "gw-1:log:7"
        report = client.flush()
        assert (report.sent, report.duplicates) == (1, 1), report
        with pytest.raises(backfill.InvalidArgument):
            client.track("log-line", insert_id="")
        with pytest.raises(backfill.InvalidArgument):
            client.track("log-line", insert_id="x" * 65)
        with pytest.raises(backfill.InvalidArgument):
            client.track("log-line", insert_id=7)
    stored = server.events(name="log-line")
    assert [e["insert_id"] for e in stored] == ["gw-1:log:7"], stored
    assert iso_to_ms(stored[0]["created_at"]) == at
