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
import json
import os
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


def _json(value: Optional[Mapping[str, Any]], what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{what} must be a mapping (a dict), not {type(value).__name__}")
    try:
        return _dumps(value)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{what} cannot be sent as JSON: {e}") from None


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
        if http_client is not None and not isinstance(http_client, HttpClient):
            http_client = _DuckHttpClient(http_client)
        try:
            self._client = _ffi.BackfillClient(config, http_client)
        except (TypeError, ValueError, OverflowError) as e:
            raise InvalidArgument(f"a setting has the wrong type or range: {e}") from None
        self._track = self._client.track
        _open_clients.add(self)

    def track(
        self,
        name: str,
        properties: Optional[Mapping[str, Any]] = None,
        *,
        timestamp_ms: Optional[int] = None,
        device_id: Optional[str] = None,
    ) -> str:
        """Records an event, committed to the buffer before this returns: now, or at
        ``timestamp_ms`` (epoch ms); for this device, or for ``device_id`` (a gateway's
        sensor). Returns the event's insert id (empty while opted out). Raises
        ``InvalidArgument`` for an event the server would refuse."""
        try:
            return self._track(name, _json(properties, "properties"), timestamp_ms, device_id)
        except (TypeError, ValueError, OverflowError, UnicodeError) as e:
            if isinstance(e, BackfillError):
                raise
            raise InvalidArgument(
                f"track({name!r}): {e} (name and device_id are str, timestamp_ms an int of "
                "milliseconds since the epoch)") from None

    def identify(self, profile_id: str, traits: Optional[Mapping[str, Any]] = None) -> str:
        """Names the user; later events carry the profile id. ``traits`` may hold
        ``firstName``, ``lastName``, ``email``, ``avatar`` and other properties."""
        return self._client.identify(profile_id, _json(traits, "traits"))

    def register(self, key: str, value: Any) -> None:
        """Sets a property merged into every later event (the event's own value wins)."""
        try:
            text = _dumps(value)
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"the value of {key!r} cannot be sent as JSON: {e}") from None
        self._client.register(key, text)

    def unregister(self, key: str) -> None:
        """Removes a property set by ``register``."""
        self._client.unregister(key)

    def set_online(self, online: bool) -> None:
        """Tells the SDK whether the network is up; going online starts a drain at once."""
        self._client.set_online(bool(online))

    def flush(self) -> DrainReport:
        """Drains now, on this thread, and reports ``sent``, ``requests``, ``expired``, ...
        Raises ``InvalidArgument`` when the server refuses the credentials."""
        return self._client.flush()

    def stats(self) -> Stats:
        """The buffer and upload figures (``buffered``, ``sent``, ``expired``, ...)."""
        return self._client.stats()

    @property
    def device_id(self) -> str:
        """This device's id, sent with its own events."""
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
        """Stops the uploader and closes the buffer; later calls raise ``Closed``. Buffered
        events stay for the next client on the same file. A client still open when the
        interpreter exits is closed then (its uploader may call a Python ``http_client``,
        which must not outlive the interpreter)."""
        _open_clients.discard(self)
        self._client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DuckHttpClient(HttpClient):
    """Any object with ``post`` and ``get`` as an ``HttpClient``."""

    def __init__(self, inner: Any) -> None:
        if not (callable(getattr(inner, "post", None)) and callable(getattr(inner, "get", None))):
            raise InvalidArgument(
                "http_client needs post(url, headers, body) and get(url, headers) methods")
        self._inner = inner

    def post(self, url, headers, body):  # type: ignore[no-untyped-def]
        return self._inner.post(url, headers, body)

    def get(self, url, headers):  # type: ignore[no-untyped-def]
        return self._inner.get(url, headers)


_open_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    for client in list(_open_clients):
        client.close()


class UrllibHttpClient(HttpClient):
    """An ``HttpClient`` on the standard library's ``urllib`` (proxies from the environment,
    the system's certificates). ``timeout`` in seconds."""

    def __init__(self, timeout: float = 60.0) -> None:
        import urllib.request

        self._request = urllib.request
        self._timeout = timeout

    def post(self, url: str, headers: "dict[str, str]", body: bytes) -> HttpResponse:
        return self._send(self._request.Request(url, data=bytes(body), headers=headers, method="POST"))

    def get(self, url: str, headers: "dict[str, str]") -> HttpResponse:
        return self._send(self._request.Request(url, headers=headers, method="GET"))

    def _send(self, request: Any) -> HttpResponse:
        import urllib.error

        try:
            with self._request.urlopen(request, timeout=self._timeout) as answer:
                return HttpResponse(status=answer.status, headers=dict(answer.headers.items()), body=answer.read())
        except urllib.error.HTTPError as answer:
            # 4xx and 5xx are answers, not failures: the SDK decides what they mean.
            with answer:
                return HttpResponse(status=answer.code, headers=dict(answer.headers.items()), body=answer.read())
