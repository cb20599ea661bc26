"""Backfill for Python: record events on a device or gateway, keep each one in SQLite before
``track`` returns, and drain the backlog to a Backfill (or OpenPanel-compatible) server without
loss or duplicates, however long the device was offline.

    import backfill

    with backfill.Client(endpoint="http://127.0.0.1:8080", client_id=ID,
                         client_secret=SECRET, database_path="events.db") as client:
        client.track("reading", {"temp": 21.5})
        client.track("reading", {"temp": 21.0}, timestamp_ms=ts, device_id="sensor-7")
        report = client.flush()     # report.sent, report.requests, report.expired, ...

This module is a thin layer over the generated bindings of the Rust SDK
(``backfill._native.backfill_ffi``): it turns properties into JSON text and gives the client
keyword arguments and a context manager. Every rule (names, sizes, timestamps, sessions,
retries) is the Rust core's.
"""

from __future__ import annotations

import atexit
import copy
import json
import json.encoder
import math
import os
import threading
import weakref
from typing import Any, Mapping, Optional, Union

from ._native import backfill_ffi as _ffi

__all__ = [
    "BackfillError",
    "Client",
    "Closed",
    "DrainEnd",
    "DrainReport",
    "HttpClient",
    "HttpError",
    "HttpResponse",
    "InvalidArgument",
    "NetworkError",
    "Stats",
    "StorageError",
    "UrllibHttpClient",
]

#: Base class of every error the SDK raises.
BackfillError = _ffi.BackfillError
#: A bad argument: an event the server would refuse, properties that are not a JSON object,
#: a setting out of range, credentials the server refused. Retrying as is fails the same way.
InvalidArgument = _ffi.BackfillError.InvalidArgument
#: The on-device buffer could not be written or read (disk full, damaged file).
StorageError = _ffi.BackfillError.Storage
#: The client was closed.
Closed = _ffi.BackfillError.Closed
#: The network failed where a call itself sends.
NetworkError = _ffi.BackfillError.Network

#: What ``stats()`` returns: ``buffered``, ``sent``, ``duplicates``, ``dead_lettered``,
#: ``expired``, ``evicted``, ``requests``, ``bytes_sent``, ``opted_out``, ``last_error``, ...
Stats = _ffi.BackfillStats
#: What ``flush()`` returns: ``sent``, ``duplicates``, ``dead_lettered``, ``expired``,
#: ``requests``, ``bytes_sent`` and ``end`` (a ``DrainEnd``).
DrainReport = _ffi.DrainReport
DrainEnd = _ffi.DrainEnd
#: Implement ``post(url, headers, body)`` and ``get(url, headers)`` returning an
#: ``HttpResponse`` to upload through your own HTTP stack (see ``UrllibHttpClient``).
HttpClient = _ffi.HttpClient
HttpResponse = _ffi.HttpResponse
#: Raise it (or any exception) from an ``HttpClient`` when no answer came.
HttpError = _ffi.HttpError

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _one_shot_encoder() -> Any:
    """The C encoder ``_json`` writes properties with, made once: ``JSONEncoder.encode``
    makes one per call (with a table of cycles: ``_check_keys`` bounds the depth instead, and
    a cycle ends in ``RecursionError``), a third of this layer's own time per ``track``.
    CPython's ``json.encoder.c_make_encoder``; None where it is missing (``_dumps`` then)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    return make(None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False)


_c_encoder = _one_shot_encoder()


#: Containers whose keys and items are checked before encoding (the JSON encoder writes
#: subclasses of these as objects and arrays too).
_CONTAINERS = (dict, list, tuple)
#: Deeper than this the core refuses the event anyway (SPEC §4: 16 levels); the walk stops
#: there, which also ends it on a container that holds itself.
_MAX_WALK_DEPTH = 20


def _json(value: Optional[Mapping[str, Any]], what: str) -> str:
    """The JSON object text of ``value`` ("" for None). Raises ``InvalidArgument`` naming the
    key of a value JSON cannot hold, or of a mapping whose keys are not ``str`` (the encoder
    would turn ``1`` into ``"1"``, which can collide with a real ``"1"``)."""
    if value is None:
        return ""
    if not isinstance(value, dict):
        if not isinstance(value, Mapping):
            raise InvalidArgument(f"{what} must be a mapping (a dict), not {type(value).__name__}")
        value = dict(value)
    _check_keys(value, what, "", 0)
    try:
        return "".join(_c_encoder(value, 0)) if _c_encoder is not None else _dumps(value)
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidArgument(_why_not_json(value, what) or f"{what} cannot be sent as JSON: {e}") from None


def _check_keys(mapping: dict, what: str, path: str, depth: int) -> None:
    for key, item in mapping.items():
        if type(key) is not str and not isinstance(key, str):
            where = f"{_one(what)} {path!r}" if path else what
            raise InvalidArgument(
                f"{where} has the key {key!r} of type {type(key).__name__}; keys must be str "
                "(JSON would turn it into a string, which may collide with another key)")
        if isinstance(item, _CONTAINERS) and depth < _MAX_WALK_DEPTH:
            _check_items(item, what, f"{path}.{key}" if path else key, depth + 1)


def _check_items(value: Any, what: str, path: str, depth: int) -> None:
    if isinstance(value, dict):
        _check_keys(value, what, path, depth)
        return
    for index, item in enumerate(value):
        if isinstance(item, _CONTAINERS) and depth < _MAX_WALK_DEPTH:
            _check_items(item, what, f"{path}[{index}]", depth + 1)


def _one(what: str) -> str:
    """``properties`` → ``property``, ``traits`` → ``trait``."""
    return "property" if what == "properties" else what.rstrip("s")


def _why_not_json(value: Any, what: str, path: str = "", depth: int = 0) -> Optional[str]:
    """After the encoder refused ``value``: which key holds what it cannot write."""
    if depth > _MAX_WALK_DEPTH:
        return None
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else k, v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{_one(what)} {path!r} is {value!r}; JSON has no NaN or infinity"
    elif value is None or isinstance(value, (str, int, float)):
        return None
    else:
        return (f"{_one(what)} {path!r} has the type {type(value).__name__}, which JSON cannot "
                "hold; use str, int, float, bool, None, list or dict (a date as ISO-8601 text "
                "or epoch milliseconds)")
    for where, item in items:
        found = _why_not_json(item, what, where, depth + 1)
        if found:
            return found
    return None


class Client:
    """The SDK for one buffer file. Thread-safe: share one client across threads.

    ``endpoint``, ``client_id``, ``client_secret`` and ``database_path`` are required; any
    other keyword sets a ``BackfillConfig`` field (``device_id``, ``flush_threshold``,
    ``flush_interval_ms``, ``max_buffer_events``, ``background_upload``, ...).
    ``http_client``: an object with ``post(url, headers, body)`` and ``get(url, headers)``
    returning ``HttpResponse`` (e.g. ``UrllibHttpClient()``); default: the built-in one.

    Raises ``InvalidArgument`` for a bad setting, ``StorageError`` when the buffer cannot be
    opened.
    """

    def __init__(
        self,
        endpoint: str,
        client_id: str,
        client_secret: str,
        database_path: Union[str, "os.PathLike[str]"],
        *,
        http_client: Optional[Any] = None,
        **settings: Any,
    ) -> None:
        try:
            config = _ffi.BackfillConfig(
                endpoint=endpoint,
                client_id=client_id,
                client_secret=client_secret,
                database_path=os.fspath(database_path),
                **settings,
            )
        except TypeError as e:
            raise InvalidArgument(f"unknown or mistyped setting: {e}") from None
        if http_client is not None:
            timeout_ms = settings.get("request_timeout_ms") or _DEFAULT_REQUEST_TIMEOUT_MS
            http_client = _HostHttpClient(http_client, timeout_ms / 1000)
        try:
            self._client = _ffi.BackfillClient(config, http_client)
        except (TypeError, ValueError, OverflowError) as e:
            raise InvalidArgument(f"a setting has the wrong type or range: {e}") from None
        self._track = self._client.track
        self._track_utf8 = self._client.track_utf8
        self._closed = False
        _open_clients.add(self)

    def track(
        self,
        name: str,
        properties: Optional[Mapping[str, Any]] = None,
        *,
        timestamp_ms: Optional[int] = None,
        device_id: Optional[str] = None,
        insert_id: Optional[str] = None,
    ) -> str:
        """Records an event, committed to the buffer before this returns: now, or at
        ``timestamp_ms`` (epoch ms); for this device, or for ``device_id`` (a gateway's
        sensor); with its own ``insert_id`` (1 to 64 characters: the server stores one event
        per insert id, so a reading recorded twice, say read again from a log, is stored once),
        or a fresh UUIDv7. Returns the event's insert id (empty while opted out). Raises
        ``InvalidArgument`` for an event the server would refuse (a blank name, properties
        JSON cannot hold or with keys that are not ``str``, ...)."""
        try:
            if timestamp_ms is None and device_id is None and insert_id is None \
                    and type(name) is str:
                # The common call crosses as two borrowed byte strings: no buffer allocated
                # in Rust per argument, no optional arguments to encode.
                return self._track_utf8(name.encode(), _json(properties, "properties").encode())
            return self._track(name, _json(properties, "properties"), timestamp_ms, device_id,
                               insert_id)
        except (TypeError, ValueError, OverflowError, UnicodeError) as e:
            if isinstance(e, BackfillError):
                raise
            raise InvalidArgument(
                f"track({name!r}): {e} (name, device_id and insert_id are str, timestamp_ms "
                "an int of milliseconds since the epoch)") from None

    def identify(self, profile_id: str, traits: Optional[Mapping[str, Any]] = None) -> str:
        """Names the user; later events carry the profile id. ``traits`` may hold
        ``firstName``, ``lastName``, ``email``, ``avatar`` and other properties."""
        return self._client.identify(profile_id, _json(traits, "traits"))

    def register(self, key: str, value: Any) -> None:
        """Sets a property merged into every later event (the event's own value wins)."""
        self._ensure_open()
        if isinstance(value, _CONTAINERS):
            _check_items(value, "properties", key, 1)
        try:
            text = _dumps(value)
        except (TypeError, ValueError, RecursionError) as e:
            why = _why_not_json({key: value}, "properties")
            raise InvalidArgument(why or f"the value of {key!r} cannot be sent as JSON: {e}") from None
        self._client.register(key, text)

    def unregister(self, key: str) -> None:
        """Removes a property set by ``register``."""
        self._ensure_open()
        self._client.unregister(key)

    def set_online(self, online: bool) -> None:
        """Tells the SDK whether the network is up; going online starts a drain at once.
        Raises ``Closed`` after ``close()``: nothing would be uploaded any more."""
        self._ensure_open()
        self._client.set_online(bool(online))

    def flush(self) -> DrainReport:
        """Drains now and reports ``sent``, ``requests``, ``expired``, ... Raises
        ``InvalidArgument`` when the server refuses the credentials.

        Ctrl-C (``KeyboardInterrupt``) reaches the caller at once, on the main thread, even
        while a request waits for the server: the drain runs on a thread of its own and ends
        by itself (at the latest after ``request_timeout_ms``), settling what the server
        answered; every event not acknowledged stays buffered. ``close()`` waits for it."""
        return _interruptible(self._client.flush)

    def stats(self) -> Stats:
        """The buffer and upload figures (``buffered``, ``sent``, ``expired``, ...)."""
        return self._client.stats()

    @property
    def device_id(self) -> str:
        """This device's id, sent with its own events. Raises ``Closed`` after ``close()``,
        like every other call (the id is the buffer's: open a client on it to read it)."""
        self._ensure_open()
        return self._client.device_id()

    def reset(self, new_device_id: bool = False) -> None:
        """Signs the user out: forgets the profile and registered properties, starts a new
        session with the next event; the device id stays unless ``new_device_id``."""
        self._client.reset(new_device_id)

    def opt_out(self) -> None:
        """Records nothing from now on, across restarts, until ``opt_in()``."""
        self._client.opt_out()

    def opt_in(self) -> None:
        """Records again."""
        self._client.opt_in()

    @property
    def opted_out(self) -> bool:
        """Whether the user has opted out."""
        return self._client.is_opted_out()

    def close(self) -> None:
        """Stops the uploader and closes the buffer; later calls raise ``Closed``. Waits for
        a drain under way. Buffered events stay for the next client on the same file. A
        client still open when the interpreter exits is closed then (its uploader may call a
        Python ``http_client``, which must not outlive the interpreter)."""
        _open_clients.discard(self)
        self._closed = True
        self._client.close()

    def _ensure_open(self) -> None:
        # The calls that do not reach the buffer (the core answers them from memory) raise
        # here, so that every call on a closed client raises `Closed` alike.
        if self._closed:
            raise Closed("the client is closed")

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: `BackfillConfig.request_timeout_ms`'s default (the core's `Config`), for a Python HTTP
#: client given no timeout of its own.
_DEFAULT_REQUEST_TIMEOUT_MS = 60_000
#: The most of an answer's body read (the Rust core's ``MAX_ANSWER_BYTES``): the contract's
#: largest answer is well under 1 MiB, and a proxy's endless page must not exhaust a gateway.
_MAX_ANSWER_BYTES = 4 * 1024 * 1024


def _interruptible(call: Any) -> Any:
    """Runs ``call`` (a drain, which may wait long on the network) on a thread of its own
    when called from the main thread, and waits for it there. Python runs a signal's handler
    only on the main thread, between instructions: blocked inside the native call, Ctrl-C
    would wait for the whole drain; a wait on an event is interrupted at once."""
    if threading.current_thread() is not threading.main_thread():
        return call()
    outcome: list = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            outcome.append((False, e))
        finally:
            done.set()

    try:
        threading.Thread(target=run, name="backfill-flush", daemon=True).start()
    except RuntimeError:
        # No new threads once the interpreter shuts down (an atexit hook that flushes).
        return call()
    done.wait()
    ok, value = outcome[0]
    if ok:
        return value
    raise value


class _HostHttpClient(HttpClient):
    """The app's HTTP client (any object with ``post`` and ``get``) as the core calls it.

    A ``UrllibHttpClient`` made without a timeout takes the Backfill client's
    ``request_timeout_ms``. An exception that is not an ``Exception`` (``KeyboardInterrupt``,
    ``SystemExit``) would be dropped inside the native call with no answer to read: it is
    raised as a network failure (the events stay, the upload is retried later)."""

    def __init__(self, inner: Any, timeout_s: float) -> None:
        if not (callable(getattr(inner, "post", None)) and callable(getattr(inner, "get", None))):
            raise InvalidArgument(
                "http_client needs post(url, headers, body) and get(url, headers) methods")
        if isinstance(inner, UrllibHttpClient) and inner._timeout is None:
            inner = copy.copy(inner)
            inner._timeout = timeout_s
        self._inner = inner

    def post(self, url, headers, body):  # type: ignore[no-untyped-def]
        try:
            return self._inner.post(url, headers, body)
        except Exception:
            raise
        except BaseException as e:
            raise HttpError.Failed(reason=f"the HTTP client was stopped: {e!r}") from None

    def get(self, url, headers):  # type: ignore[no-untyped-def]
        try:
            return self._inner.get(url, headers)
        except Exception:
            raise
        except BaseException as e:
            raise HttpError.Failed(reason=f"the HTTP client was stopped: {e!r}") from None


_open_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    for client in list(_open_clients):
        client.close()


class UrllibHttpClient(HttpClient):
    """An ``HttpClient`` on the standard library's ``urllib`` (proxies from the environment,
    the system's certificates). ``timeout``: seconds per request; by default the Backfill
    client's ``request_timeout_ms`` (60 s unless set)."""

    def __init__(self, timeout: Optional[float] = None) -> None:
        import urllib.request

        self._request = urllib.request
        self._timeout = timeout

    def post(self, url: str, headers: "dict[str, str]", body: bytes) -> HttpResponse:
        return self._send(self._request.Request(url, data=bytes(body), headers=headers, method="POST"))

    def get(self, url: str, headers: "dict[str, str]") -> HttpResponse:
        return self._send(self._request.Request(url, headers=headers, method="GET"))

    def _timeout_s(self) -> float:
        return _DEFAULT_REQUEST_TIMEOUT_MS / 1000 if self._timeout is None else self._timeout

    def _send(self, request: Any) -> HttpResponse:
        import urllib.error

        try:
            with self._request.urlopen(request, timeout=self._timeout_s()) as answer:
                return HttpResponse(status=answer.status, headers=dict(answer.headers.items()),
                                    body=answer.read(_MAX_ANSWER_BYTES))
        except urllib.error.HTTPError as answer:
            # 4xx and 5xx are answers, not failures: the SDK decides what they mean.
            with answer:
                return HttpResponse(status=answer.code, headers=dict(answer.headers.items()),
                                    body=answer.read(_MAX_ANSWER_BYTES))
