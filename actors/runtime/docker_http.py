"""The lean read path: keep-alive HTTP/1.1 GETs to the Docker API, bytes in, bytes out.

docker-py costs about 0.5 ms per call on top of the daemon (requests' session machinery, proxy
lookups from the environment, a JSON decode); the hot reads (``inspect``, ``list_containers``)
need none of it. :class:`LeanDocker` speaks just enough HTTP/1.1 over ``unix://`` or plain
``tcp://`` (``http://``) to GET a JSON body: Content-Length or chunked bodies, one connection kept
alive per instance (so per worker thread, like docker-py's clients), reopened once when the
daemon closed it in between (a restart). Any other ``DOCKER_HOST`` (TLS, ssh) keeps docker-py:
:func:`lean_address` says None.

Failures are raised as the exceptions docker-py raises for them, so the one wording
(``actors.commands.tools.describe_docker_error``) and the one diagnosis
(``actors.host.docker_access.diagnose``) stay those of docker-py: an error status is
``docker.errors.APIError`` (``NotFound`` for 404) with Docker's ``message`` as its explanation;
an unreachable daemon is ``requests.exceptions.ConnectionError`` wrapping the ``OSError``; a
daemon that does not answer in time is ``requests.exceptions.ReadTimeout``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import docker.errors
import requests.exceptions

from actors.runtime.docker_client import Address, api_path, daemon_address
from messages.common import dumps, loads

#: a header line (or chunk-size line) longer than this is not Docker talking
_MAX_LINE = 65536
#: image messages docker-py words as ImageNotFound (docker/errors.py), the rest of 404s NotFound
_IMAGE_NOT_FOUND = (
    "no such image",
    "not found: does not exist or no pull access",
    "repository does not exist",
    "was found but does not match the specified platform",
)


def lean_address(docker_host: str) -> Address | None:
    """Where the lean path connects for ``docker_host``, or None (docker-py keeps that host,
    and a ``tcp://`` one with a path prefix)."""
    address = daemon_address(docker_host)
    if address is not None and address[0] == "tcp" and urlsplit(docker_host).path.strip("/"):
        return None
    return address


class _Stale(Exception):
    """A kept-alive connection the daemon had closed before our request: reopen and retry."""


def api_error(status: int, reason: str, body: bytes) -> docker.errors.APIError:
    """The docker-py exception for an error status, worded from Docker's ``message``."""
    explanation: str
    try:
        parsed = loads(body)
        explanation = str(parsed["message"]) if isinstance(parsed, dict) else body.decode()
    except (ValueError, KeyError, UnicodeDecodeError):
        explanation = body.decode("utf-8", "replace").strip()
    cls: type[docker.errors.APIError] = docker.errors.APIError
    if status == 404:
        low = explanation.lower()
        if any(fragment in low for fragment in _IMAGE_NOT_FOUND):
            cls = docker.errors.ImageNotFound
        else:
            cls = docker.errors.NotFound
    return cls(f"{status} {reason}", explanation=explanation)


class LeanDocker:
    """GETs on one kept-alive connection to the daemon; one instance per thread."""

    def __init__(self, address: Address, *, timeout: float, api_version: str | None = None) -> None:
        self._address = address
        self._timeout = timeout
        self._api_version = api_version
        self._host = "localhost" if address[0] == "unix" else f"{address[1][0]}:{address[1][1]}"
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self.connections = 0  # opened so far (tests: keep-alive reuse, reopen after a restart)
        self.last_framing = ""  # how the last body was framed: length, chunked or eof

    # --- the reads the gateway needs, shaped like docker-py's ----------------------------------

    def inspect_container_raw(self, container: str) -> bytes:
        """Docker's inspect JSON, undecoded."""
        return self.get(f"/containers/{quote(container, safe='/:')}/json")

    def inspect_container(self, container: str) -> dict[str, Any]:
        return dict(loads(self.inspect_container_raw(container)))

    def inspect_image(self, image: str) -> dict[str, Any]:
        return dict(loads(self.get(f"/images/{quote(image, safe='/:')}/json")))

    def containers_raw(self, all: bool = False) -> bytes:
        """Docker's container list JSON (docker-py's ``containers()`` query), undecoded."""
        return self.get("/containers/json", f"limit=-1&all={1 if all else 0}&size=0&trunc_cmd=0")

    def containers(self, all: bool = False) -> list[dict[str, Any]]:
        return list(loads(self.containers_raw(all)))

    # --- HTTP ----------------------------------------------------------------------------------

    def get(self, path: str, query: str = "") -> bytes:
        """The body of a 2xx answer to ``GET path?query``; docker-py's exceptions otherwise."""
        request = self._request(path, query)
        with self._as_docker_py():
            try:
                status, reason, body, keep = self._exchange(request)
            except _Stale:
                self.close()
                status, reason, body, keep = self._exchange(request)
        if not keep:
            self.close()
        if status >= 400:
            raise api_error(status, reason, body)
        return body

    def events(self, *, since: int, filters: Mapping[str, Sequence[str]]) -> EventStream:
        """Docker's event stream from ``since`` (docker-py's ``events(since=, filters=,
        decode=True)``) on a connection of its own: each event's object, as it comes."""
        query = f"since={since}&filters={quote(dumps(filters))}"
        request = self._request("/events", query)
        with self._as_docker_py():
            self.close()  # a connection of its own
            _, status, reason, headers = self._head(request)
            body = self._body(headers) if status >= 400 else b""
            assert self._sock is not None
            self._sock.settimeout(None)  # events come when they come
        if status >= 400:  # raised outside: docker-py's APIError is an OSError too
            self.close()
            raise api_error(status, reason, body)
        return EventStream(self, headers)

    def _request(self, path: str, query: str) -> bytes:
        target = api_path(path, self._api_version) + (f"?{query}" if query else "")
        return (
            f"GET {target} HTTP/1.1\r\nHost: {self._host}\r\nUser-Agent: dockmon-agent\r\n"
            "Accept: application/json\r\n\r\n"
        ).encode("ascii")

    @contextlib.contextmanager
    def _as_docker_py(self) -> Iterator[None]:
        """Failures of the connection raised as docker-py raises them (the connection closed)."""
        try:
            yield
        except _Stale as exc:
            self.close()
            raise requests.exceptions.ConnectionError(
                f"Connection aborted: the daemon closed the connection ({exc})"
            ) from None
        except TimeoutError as exc:
            self.close()
            raise requests.exceptions.ReadTimeout(exc) from exc
        except OSError as exc:
            self.close()
            raise requests.exceptions.ConnectionError(exc) from exc
        except ValueError as exc:  # not HTTP: the connection is out of step
            self.close()
            raise requests.exceptions.ConnectionError(f"Connection aborted: {exc}") from exc

    def chunks(self, headers: Mapping[str, str]) -> Iterator[bytes]:
        """A streamed body, piece by piece as the daemon sends it, until it ends."""
        if "chunked" not in headers.get("transfer-encoding", "").lower():
            while data := self._reader.read1(65536):
                yield bytes(data)
            return
        while True:
            size_line = self._reader.readline(_MAX_LINE)
            if not size_line:
                return  # the daemon went away between two events
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                return
            yield self._exactly(size)
            self._reader.readline(_MAX_LINE)  # the CRLF after each chunk

    def _connect(self) -> None:
        kind, where = self._address
        family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
        if kind == "tcp":
            family = socket.getaddrinfo(where[0], where[1], type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._timeout)
            sock.connect(where)
            if kind == "tcp":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        self._sock, self._reader = sock, sock.makefile("rb", buffering=65536)
        self.connections += 1

    def _exchange(self, request: bytes) -> tuple[int, str, bytes, bool]:
        version, status, reason, headers = self._head(request)
        body = self._body(headers)
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        ):
            keep = False  # the body ran to the end of the connection
        return status, reason, body, keep

    def _head(self, request: bytes) -> tuple[str, int, str, dict[str, str]]:
        """Send ``request`` (connecting first if no connection is kept) and read the answer's
        status line and headers; a kept connection the daemon had closed raises ``_Stale``."""
        reused = self._sock is not None
        if not reused:
            self._connect()
        assert self._sock is not None
        try:
            self._sock.sendall(request)
            line = self._reader.readline(_MAX_LINE)
        except (BrokenPipeError, ConnectionResetError) as exc:
            if reused:
                raise _Stale(exc) from exc
            raise
        if not line:
            if reused:
                raise _Stale("no answer on a kept-alive connection")
            raise ConnectionResetError("the daemon closed the connection without an answer")
        version, status, reason = _status_line(line)
        return version, status, reason, self._headers()

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        while True:
            line = self._reader.readline(_MAX_LINE)
            if not line:
                raise ConnectionResetError("the daemon closed the connection inside the headers")
            if line in (b"\r\n", b"\n"):
                return headers
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ValueError(f"malformed header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()

    def _body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.last_framing = "chunked"
            parts: list[bytes] = []
            while True:
                size_line = self._reader.readline(_MAX_LINE)
                if not size_line:
                    raise ConnectionResetError("the daemon closed the connection inside a body")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self._reader.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self._exactly(size))
                self._reader.readline(_MAX_LINE)  # the CRLF after each chunk
        if "content-length" in headers:
            self.last_framing = "length"
            return self._exactly(int(headers["content-length"]))
        self.last_framing = "eof"
        return bytes(self._reader.read())

    def _exactly(self, size: int) -> bytes:
        data = self._reader.read(size)
        if len(data) != size:
            raise ConnectionResetError("the daemon closed the connection inside a body")
        return bytes(data)

    def abort(self) -> None:
        """From another thread: make a request blocked on the daemon fail at once (the thread
        that made it closes the connection)."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.abort()  # first: a thread blocked reading holds the reader's lock until it wakes
        sock, reader, self._sock, self._reader = self._sock, self._reader, None, None
        if reader is not None:
            with contextlib.suppress(OSError):
                reader.close()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class EventStream:
    """What :meth:`LeanDocker.events` answers: iterate it for the events' objects (one JSON
    object a line, however the daemon's chunks cut them); :meth:`close` from another thread
    ends a read blocked between events, as closing docker-py's stream does. Failures of the
    connection are raised as docker-py raises them."""

    def __init__(self, connection: LeanDocker, headers: Mapping[str, str]) -> None:
        self._connection = connection
        self._headers = headers

    def __iter__(self) -> Iterator[Any]:
        carry = b""
        with self._connection._as_docker_py():
            for chunk in self._connection.chunks(self._headers):
                *lines, carry = (carry + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield loads(line)

    def close(self) -> None:
        self._connection.abort()


def _status_line(line: bytes) -> tuple[str, int, str]:
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"malformed status line {line[:80]!r}")
    return parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""
