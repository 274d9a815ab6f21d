"""ShellActor: interactive shell sessions in containers (PROTOCOL §4.4, §5.8, §3.6).

Each session is an exec with a TTY whose hijacked Docker socket is owned by a
:class:`ShellSession` and two helper threads the actor starts:

* the **reader** (``ShellActor-reader``) creates and attaches the exec, sends ``started``, then
  sends every output chunk (at most 4096 bytes) as a ``shell_data`` ``data`` event, and ``closed``
  when the output ends for any reason (``error`` instead of ``started`` if the exec cannot be
  created or attached). It is the only producer of a session's events, so they leave in order.
* the **writer** (``ShellActor-writer``) takes input and resizes from the session's FIFO queue and
  writes them to the exec one at a time. The actor only enqueues, so a shell that stops reading its
  stdin never stalls it, and input is written in exactly the order the frames arrived (§3.6; the Go
  agent handles each frame in its own goroutine and may reorder keystrokes).

Closing a session (``close``, connection loss, actor stop) shuts the socket down. Docker keeps a
TTY exec running when its attach stream closes, so the writer then hangs up the shell: a one-off
exec sends SIGHUP to every process of the session, found by a random marker in its environment
(``DOCKMON_SHELL_SESSION``), which needs ``sh`` and ``grep`` in the image.

``shell_data`` events are sent with ``buffer=False``: on a disconnect the backend closes the
browser terminals of this agent and the agent closes every session, so output kept for a later
connection would belong to sessions that no longer exist on either side.

A container the agent's policy protects (``protected_containers``) gets ``error`` instead of a
shell. Shell input and output are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import docker
import pykka

from actors.base import ActorContext, SupervisedActor
from actors.docker_client import api_client
from actors.docker_tools import describe_docker_error
from actors.policy import Guard, Policy, Refused
from messages.common import RawJson
from messages.outbound import EventOut, LinkStateChanged
from messages.shell import (
    OUTPUT_CHUNK,
    CloseShell,
    ResizeShell,
    ShellEnded,
    ShellInput,
    StartShell,
    shell_data,
)

log = logging.getLogger(__name__)

#: PROTOCOL §4.4: bash if the image has it, else sh
SHELL_COMMAND = (
    "/bin/sh",
    "-c",
    "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi",
)
MARKER_VARIABLE = "DOCKMON_SHELL_SESSION"
#: SIGHUP every process whose environment carries the session's marker (exit 1 if none found)
_HANGUP_SCRIPT = (
    "found=1; for f in $(grep -l '" + MARKER_VARIABLE + "={marker}' /proc/[0-9]*/environ "
    '2>/dev/null); do p=${{f#/proc/}}; kill -HUP "${{p%/environ}}" 2>/dev/null && found=0; done; '
    "exit $found"
)
#: the backend uses an ``error`` text as a WebSocket close reason, which is capped at 123 bytes
ERROR_LIMIT = 120


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecStream:
    """An attached exec: its id and the hijacked socket (``keepalive`` pins docker-py's response,
    whose garbage collection would close the socket)."""

    exec_id: str
    sock: socket.socket
    keepalive: object = None

    def close(self) -> None:
        close = getattr(self.keepalive, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
        with contextlib.suppress(OSError):
            self.sock.close()


class ShellBackend(Protocol):
    """The Docker side of one session; used by one thread at a time (reader, then writer)."""

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        """Docker's inspect object (the policy's guard resolves the container with it)."""
        ...

    def open(self, container_id: str, marker: str) -> ExecStream: ...

    def resize(self, exec_id: str, rows: int, cols: int) -> None: ...

    def hang_up(self, exec_id: str, container_id: str, marker: str) -> bool | None:
        """End the exec's processes if it still runs: None = not running, else success."""
        ...

    def close(self) -> None: ...


def raw_socket(handle: object) -> socket.socket:
    """The OS socket behind docker-py's ``exec_start(socket=True)`` result.

    docker-py returns the ``socket.SocketIO`` of the hijacked HTTP connection for unix and plain
    tcp hosts (the socket is its ``_sock``) and a socket itself for TLS hosts; anything else (ssh
    channels, named pipes) is not supported.
    """
    if isinstance(handle, socket.socket):
        return handle
    inner = getattr(handle, "_sock", None)
    if isinstance(inner, socket.socket):
        return inner
    raise TypeError(f"unsupported exec attach stream: {type(handle).__name__}")


class DockerShellBackend:
    """docker-py implementation; the client is created lazily on the session's reader thread."""

    def __init__(self, docker_host: str, timeout: int = 15, api_version: str | None = None) -> None:
        self._docker_host = docker_host
        self._timeout = timeout
        self._api_version = api_version
        self._api: docker.APIClient | None = None

    def _client(self) -> docker.APIClient:
        if self._api is None:
            self._api = api_client(
                self._docker_host, timeout=self._timeout, api_version=self._api_version
            )
        return self._api

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        return dict(self._client().inspect_container(container_id))

    def open(self, container_id: str, marker: str) -> ExecStream:
        api = self._client()
        created = api.exec_create(
            container_id,
            list(SHELL_COMMAND),
            stdout=True,
            stderr=True,
            stdin=True,
            tty=True,
            environment=["TERM=xterm-256color", f"{MARKER_VARIABLE}={marker}"],
        )
        exec_id = str(created["Id"])
        handle = api.exec_start(exec_id, tty=True, socket=True)
        try:
            sock = raw_socket(handle)
            sock.settimeout(None)  # docker-py leaves the client's read timeout on it
        except Exception:
            with contextlib.suppress(Exception):
                handle.close()
            raise
        return ExecStream(exec_id=exec_id, sock=sock, keepalive=handle)

    def resize(self, exec_id: str, rows: int, cols: int) -> None:
        self._client().exec_resize(exec_id, height=rows, width=cols)

    def hang_up(self, exec_id: str, container_id: str, marker: str) -> bool | None:
        api = self._client()
        if not api.exec_inspect(exec_id).get("Running"):
            return None
        killer = api.exec_create(
            container_id,
            ["/bin/sh", "-c", _HANGUP_SCRIPT.format(marker=marker)],
            stdout=True,
            stderr=True,
        )
        api.exec_start(killer["Id"])  # waits for the (short) script to finish
        return api.exec_inspect(killer["Id"]).get("ExitCode") == 0

    def close(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            with contextlib.suppress(Exception):
                api.close()


@dataclass(frozen=True, slots=True)
class _Resize:
    rows: int
    cols: int


_STOP = object()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _short(text: str) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= ERROR_LIMIT:
        return text
    return raw[: ERROR_LIMIT - 3].decode("utf-8", "ignore") + "..."


class ShellSession:
    """One session's exec socket and its reader and writer threads (owned by the ShellActor)."""

    def __init__(
        self,
        *,
        session_id: str,
        container_id: str,
        serial: int,
        backend: ShellBackend,
        emit: Callable[[dict[str, str]], None],
        ended: Callable[[], None],
        describe_error: Callable[[str, BaseException], str],
        guard: Guard | None = None,
        join_timeout: float = 2.0,
    ) -> None:
        self.session_id = session_id
        self.container_id = container_id
        self.serial = serial
        self.marker = uuid.uuid4().hex
        self._backend = backend
        self._emit = emit
        self._ended = ended
        self._describe_error = describe_error
        self._guard = guard or Guard()
        self._join_timeout = join_timeout
        self._pending: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closing = False
        self._stream: ExecStream | None = None
        self._reader = threading.Thread(target=self._read, name="ShellActor-reader", daemon=True)
        self._writer = threading.Thread(target=self._write, name="ShellActor-writer", daemon=True)

    # --- called by the actor (never blocks) ------------------------------------------------------

    def start(self) -> None:
        self._reader.start()

    def backlog(self) -> int:
        return self._pending.qsize()

    def write(self, data: bytes) -> None:
        self._pending.put(data)

    def resize(self, rows: int, cols: int) -> None:
        self._pending.put(_Resize(rows, cols))

    def close(self) -> None:
        """Idempotent: end the output (the reader sends ``closed``) and stop the writer."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            stream = self._stream
        if stream is not None:
            _shutdown(stream.sock)
        self._pending.put(_STOP)

    def join(self, deadline: float) -> None:
        for thread in (self._reader, self._writer):
            if thread.ident is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        return self._reader.is_alive() or self._writer.is_alive()

    # --- reader thread ---------------------------------------------------------------------------

    def _read(self) -> None:
        denial: str | None = None
        stream = None
        try:
            # resolve once, check, then exec in exactly that container (never by name again)
            start = StartShell(session_id=self.session_id, container_id=self.container_id)
            resolved = self._guard.check(self._backend, start)
            assert resolved is not None
            self.container_id = resolved.container_id
            stream = self._backend.open(self.container_id, self.marker)
        except Refused as exc:
            denial = str(exc)
        except Exception as exc:
            denial = self._describe_error("start shell", exc)
        if stream is None:
            error = _short(denial or "failed to start shell")
            log.warning("shell session %s: could not open a shell: %s", self.session_id, error)
            self._backend.close()
            self._emit(shell_data(self.session_id, "error", error=error))
            self._ended()
            return
        with self._lock:
            self._stream = stream
            closing = self._closing
        log.info("shell session %s: attached (exec %s)", self.session_id, stream.exec_id[:12])
        self._emit(shell_data(self.session_id, "started"))
        self._writer.start()
        if closing:
            _shutdown(stream.sock)
        reason = "end of output"
        try:
            while True:
                chunk = stream.sock.recv(OUTPUT_CHUNK)
                if not chunk:
                    break
                self._emit(shell_data(self.session_id, "data", data=chunk))
        except OSError as exc:
            reason = type(exc).__name__
        finally:
            self.close()
            self._emit(shell_data(self.session_id, "closed"))
            log.info("shell session %s: closed (%s)", self.session_id, reason)
            self._ended()

    # --- writer thread ---------------------------------------------------------------------------

    def _write(self) -> None:
        stream = self._stream
        assert stream is not None
        try:
            while True:
                item = self._pending.get()
                if item is _STOP:
                    return
                if isinstance(item, _Resize):
                    try:
                        self._backend.resize(stream.exec_id, item.rows, item.cols)
                    except Exception as exc:
                        log.info(
                            "shell session %s: resize failed: %s",
                            self.session_id,
                            _short(self._describe_error("resize shell", exc)),
                        )
                    continue
                assert isinstance(item, bytes)
                try:
                    stream.sock.sendall(item)
                except OSError as exc:
                    log.info(
                        "shell session %s: input not written (%s); closing",
                        self.session_id,
                        type(exc).__name__,
                    )
                    return
        finally:
            self.close()
            self._finish(stream)

    def _finish(self, stream: ExecStream) -> None:
        """Hang up the shell if it still runs, then release the socket and the client."""
        try:
            hung_up = self._backend.hang_up(stream.exec_id, self.container_id, self.marker)
            if hung_up is False:
                log.warning(
                    "shell session %s: the shell in container %s still runs after its stream "
                    "closed and could not be hung up (the image needs sh and grep)",
                    self.session_id,
                    self.container_id[:12],
                )
        except Exception as exc:
            log.info(
                "shell session %s: could not check or end the shell process: %s",
                self.session_id,
                _short(self._describe_error("end shell", exc)),
            )
        finally:
            self._backend.close()
            self._reader.join(self._join_timeout)  # never close the fd under a running recv()
            stream.close()


BackendFactory = Callable[[], ShellBackend]


class ShellActor(SupervisedActor):
    """Role ``shell``: routes ``shell_session`` commands to their :class:`ShellSession`."""

    def __init__(
        self,
        ctx: ActorContext,
        *,
        docker_host: str,
        backend_factory: BackendFactory | None = None,
        policy: Policy | None = None,
        max_backlog: int = 4096,
        stop_timeout: float = 2.0,
        docker_api_version: str | None = None,
    ) -> None:
        super().__init__(ctx)
        if max_backlog < 1:
            raise ValueError("max_backlog must be positive")
        self._docker_host = docker_host
        self._backend_factory: BackendFactory = backend_factory or (
            lambda: DockerShellBackend(docker_host, api_version=docker_api_version)
        )
        self._guard = Guard(policy or Policy())
        self._max_backlog = max_backlog
        self._stop_timeout = stop_timeout
        self._sessions: dict[str, ShellSession] = {}
        self._serial = 0

    @property
    def session_ids(self) -> tuple[str, ...]:
        return tuple(self._sessions)

    def _release(self) -> None:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            session.close()
        deadline = time.monotonic() + self._stop_timeout
        for session in sessions:
            session.join(deadline)
        stuck = sum(1 for s in sessions if s.alive)
        if stuck:
            log.warning("%d shell session thread(s) did not stop in time", stuck)

    def handle(self, message: Any) -> Any:
        match message:
            case StartShell():
                self._start(message)
            case ShellInput(session_id=sid, data=data):
                self._input(sid, data)
            case ResizeShell(session_id=sid, cols=cols, rows=rows):
                session = self._sessions.get(sid)
                if session is None:
                    log.info("ignored resize for unknown shell session %s", sid)
                else:
                    session.resize(rows, cols)
            case CloseShell(session_id=sid):
                session = self._sessions.pop(sid, None)
                if session is None:
                    log.info("ignored close for unknown shell session %s", sid)
                else:
                    session.close()
            case ShellEnded(session_id=sid, serial=serial):
                session = self._sessions.get(sid)
                if session is not None and session.serial == serial:
                    del self._sessions[sid]
            case LinkStateChanged(connected=False):
                self._close_all("connection to DockMon lost")
            case LinkStateChanged():
                pass
            case _:
                log.warning("ShellActor ignored %s", type(message).__name__)
        return None

    def _start(self, msg: StartShell) -> None:
        if msg.session_id in self._sessions:
            log.info("ignored start for shell session %s: already in use", msg.session_id)
            return
        self._serial += 1
        serial = self._serial
        ref = self.actor_ref
        peers = self.ctx.peers
        session_id = msg.session_id

        def emit(payload: dict[str, str]) -> None:
            peers.tell(
                "connection",
                EventOut(command="shell_data", payload=RawJson.of(payload), buffer=False),
            )

        def ended() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(ShellEnded(session_id=session_id, serial=serial))

        session = ShellSession(
            session_id=session_id,
            container_id=msg.container_id,
            serial=serial,
            backend=self._backend_factory(),
            emit=emit,
            ended=ended,
            describe_error=self._describe_error,
            guard=self._guard,
        )
        self._sessions[session_id] = session
        log.info("shell session %s: opening a shell in %s", session_id, msg.container_id[:64])
        session.start()

    def _describe_error(self, what: str, exc: BaseException) -> str:
        return describe_docker_error(what, exc, self._docker_host)[0]

    def _input(self, session_id: str, data: bytes) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            log.info("ignored shell input for unknown session %s", session_id)
            return
        if not data:
            return
        if session.backlog() >= self._max_backlog:
            log.warning(
                "shell session %s: more than %d input frames wait for the shell; closing it",
                session_id,
                self._max_backlog,
            )
            del self._sessions[session_id]
            session.close()
            return
        session.write(data)

    def _close_all(self, reason: str) -> None:
        if not self._sessions:
            return
        log.info("%s: closing %d shell session(s)", reason, len(self._sessions))
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            session.close()
